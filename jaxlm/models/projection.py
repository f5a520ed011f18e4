"""Every dense projection of the model zoo: y = x . W (+ b), with W stored as it is or
quantized, and an optional LoRA branch beside it.

A projection's kernel has input axes then output axes (``(d, heads, head_dim)`` for the
query, ``(heads, head_dim, d)`` for the attention output, ``(d, d_ff)`` for the MLP);
``num_in`` says how many leading axes x contracts with. Viewed as a matrix it is
``[fan_in, fan_out]``, and that is how LoRA and quantization see it:

* LoRA (Hu et al. 2021): ``y += (alpha / r) * dropout(x) @ A @ B`` with ``A [fan_in, r]``
  Kaiming-uniform (peft's default) and ``B [r, fan_out]`` = 0, so a fresh LoRA model equals
  its base. rsLoRA scales by ``alpha / sqrt(r)``. Applied to the projections whose name
  (query, key, value, out in attention; wi, wi_0, wi_1, wo in the MLP) matches
  ``TransformerConfig.lora_targets``; the parameters are ``<kernel>_lora_a`` /
  ``<kernel>_lora_b`` beside the kernel.
* Quantized kernels (``TransformerConfig.quantization``), dequantized to the compute dtype
  on every call (weight-only, QLoRA-style): 'int8' per output channel (``<name>_q`` int8,
  ``<name>_scale`` per column); 'int4' and 'nf4' in blocks of ``quantization_block`` along
  fan_in, two 4-bit codes per byte (``<name>_q`` uint8 [fan_in / 2, fan_out]); int4 is
  symmetric absmax over the integers -7..7, NF4 the NormalFloat code of Dettmers et al. with
  double quantization: the per-block absmax scales are themselves int8 (``<name>_scale_q``)
  around their mean, with one float scale per 256 blocks. jaxlm.adaptation.quantization
  makes these trees from float parameters.
"""
from __future__ import annotations

import math
import re
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.models.params import dtype_of, normal, param

# The 16 NF4 levels (Dettmers et al. 2023, bitsandbytes' table): quantiles of N(0, 1)
# scaled to [-1, 1], with an exact zero.
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], np.float32)
SCALE_BLOCK = 256  # NF4 double quantization: blocks of first-level scales per second-level scale


def lora_applies(config, name: str) -> bool:
  return config.lora_rank > 0 and re.fullmatch(config.lora_targets, name) is not None


def lora_scale(config) -> float:
  r = config.lora_rank
  return config.lora_alpha / (math.sqrt(r) if config.lora_rslora else r)


def quantized_shapes(config, fan_in: int, fan_out: int) -> dict:
  """{leaf suffix: (shape, dtype)} of a quantized [fan_in, fan_out] kernel."""
  kind, block = config.quantization, config.quantization_block
  if kind == "int8":
    return {"_q": ((fan_in, fan_out), jnp.int8), "_scale": ((fan_out,), jnp.float32)}
  if fan_in % block:
    raise ValueError(f"TransformerConfig.quantization_block={block} does not divide a projection's "
                     f"fan-in {fan_in}")
  blocks = fan_in // block
  if kind == "int4":
    return {"_q": ((fan_in // 2, fan_out), jnp.uint8), "_scale": ((blocks, fan_out), jnp.float32)}
  groups = -(-blocks * fan_out // SCALE_BLOCK)
  return {"_q": ((fan_in // 2, fan_out), jnp.uint8), "_scale_q": ((blocks, fan_out), jnp.int8),
          "_scale_scale": ((groups,), jnp.float32), "_scale_mean": ((), jnp.float32)}


def unpack_4bit(packed):
  """uint8 [n / 2, m] -> the codes 0..15 [n, m] (low nibble first)."""
  low, high = packed & 0xF, packed >> 4
  return jnp.stack([low, high], axis=1).reshape(packed.shape[0] * 2, *packed.shape[1:])


def nf4_scales(scale_q, scale_scale, scale_mean):
  """The first-level NF4 block scales [blocks, m] from their int8 double quantization."""
  flat = scale_q.reshape(-1).astype(jnp.float32)
  groups = jnp.repeat(scale_scale, SCALE_BLOCK)[:flat.size]
  return (flat / 127.0 * groups + scale_mean).reshape(scale_q.shape)


def dequantize(config, leaves: dict, fan_in: int, fan_out: int):
  """The float32 [fan_in, fan_out] kernel of quantized ``leaves`` (keys: suffixes)."""
  kind, block = config.quantization, config.quantization_block
  if kind == "int8":
    return leaves["_q"].astype(jnp.float32) * leaves["_scale"][None, :]
  codes = unpack_4bit(leaves["_q"])
  if kind == "int4":
    values, scales = codes.astype(jnp.float32) - 8.0, leaves["_scale"]
  else:
    values = jnp.asarray(NF4_LEVELS)[codes]
    scales = nf4_scales(leaves["_scale_q"], leaves["_scale_scale"], leaves["_scale_mean"])
  return (values.reshape(fan_in // block, block, fan_out) * scales[:, None, :]).reshape(fan_in, fan_out)


def _kaiming_uniform(key, shape, dtype=jnp.float32):
  """peft's default init of LoRA A: kaiming_uniform_(a=sqrt(5)) = U(-1/sqrt(fan_in), ...)."""
  bound = 1.0 / math.sqrt(shape[0])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def project(module: nn.Module, name: str, x, shape: Sequence[int], axes: Sequence[str], init_std: float,
            num_in: int = 1, deterministic: bool = True, lora_name: Optional[str] = None):
  """x [..., *shape[:num_in]] . W -> [..., *shape[num_in:]] in the compute dtype, W the
  (maybe quantized) kernel ``name`` with logical ``axes``, plus its LoRA branch if
  ``lora_name`` (default ``name``) matches ``TransformerConfig.lora_targets``."""
  cfg = module.config
  dtype = dtype_of(cfg.dtype)
  shape = tuple(shape)
  fan_in, fan_out = math.prod(shape[:num_in]), math.prod(shape[num_in:])
  if cfg.quantization == "none":
    kernel = param(module, name, normal(init_std), shape, axes).astype(dtype)
  else:
    leaves = {suffix: module.param(name + suffix, nn.with_logical_partitioning(
                  jax.nn.initializers.zeros, _quantized_axes(suffix, axes, num_in, len(s))), s, dt)
              for suffix, (s, dt) in quantized_shapes(cfg, fan_in, fan_out).items()}
    kernel = dequantize(cfg, leaves, fan_in, fan_out).astype(dtype).reshape(shape)
  batch_shape = x.shape[:x.ndim - num_in]
  y = jnp.tensordot(x.astype(dtype), kernel, axes=num_in)
  if lora_applies(cfg, lora_name or name):
    r = cfg.lora_rank
    a = param(module, name + "_lora_a", _kaiming_uniform, (fan_in, r), (None, None))
    b = param(module, name + "_lora_b", jax.nn.initializers.zeros, (r, fan_out), (None, None))
    h = x.reshape(*batch_shape, fan_in).astype(dtype)
    if cfg.lora_dropout and not deterministic:
      h = nn.Dropout(cfg.lora_dropout)(h, deterministic=False)
    delta = (h @ a.astype(dtype)) @ b.astype(dtype) * lora_scale(cfg)
    y = y + delta.reshape(*batch_shape, *shape[num_in:])
  return y


def _quantized_axes(suffix: str, axes: Sequence[str], num_in: int, rank: int) -> tuple:
  """Logical axes of a quantized leaf: the output axis (if the leaf has one) keeps the
  kernel's last name; the rest are replicated."""
  out_name = axes[-1] if len(axes) - num_in == 1 else None
  if rank == 2:
    return (None, out_name)
  if rank == 1 and suffix == "_scale":
    return (out_name,)
  return (None,) * rank
