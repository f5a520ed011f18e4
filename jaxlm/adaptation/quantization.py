"""Weight-only quantization of a parameter tree: float kernels -> the quantized leaves that
jaxlm.models.projection dequantizes on the fly (int8 per output channel; int4 and NF4 in
blocks, two codes per byte; NF4 with double-quantized scales, as QLoRA stores its base).

    qparams = quantize_params(params, config, "nf4")   # for config.replace(quantization="nf4")
    weight_bytes(qparams), weight_bytes(params)         # what the stored trees take

Written here rather than with qwix: qwix's PTQ and LoRA wrappers intercept Flax modules
and their `astype` paths, while jaxlm's projections are one function
(``projection.project``) that owns its storage format, so the format is explicit, saved
and restored by orbax like any tree, and the same code path serves PTQ, QLoRA and the
decoder. The numerics are checked in the tests against qwix's (same NF4 table, the same
reconstruction error for int8/int4), the NF4 construction of Dettmers et al. (normal
quantiles) and float matmuls.
"""
from __future__ import annotations

import math

import jax
import numpy as np
from flax import traverse_util

from jaxlm.models.projection import NF4_LEVELS, SCALE_BLOCK


def _pack(codes: np.ndarray) -> np.ndarray:
  """Codes 0..15 [n, m] -> uint8 [n / 2, m], row 2i in the low nibble, 2i + 1 in the high."""
  return (codes[0::2] | (codes[1::2] << 4)).astype(np.uint8)


def quantize_matrix(w: np.ndarray, kind: str, block: int) -> dict:
  """{leaf suffix: array} of one float [fan_in, fan_out] kernel (see projection.py)."""
  w = np.asarray(w, np.float32)
  fan_in, fan_out = w.shape
  if kind == "int8":
    scale = np.maximum(np.abs(w).max(0), 1e-12) / 127.0
    return {"_q": np.clip(np.round(w / scale), -127, 127).astype(np.int8), "_scale": scale.astype(np.float32)}
  blocks = w.reshape(fan_in // block, block, fan_out)
  absmax = np.maximum(np.abs(blocks).max(1), 1e-12)  # [blocks, fan_out]
  if kind == "int4":
    codes = np.clip(np.round(blocks / (absmax / 7.0)[:, None]), -7, 7) + 8
    return {"_q": _pack(codes.reshape(fan_in, fan_out).astype(np.uint8)), "_scale": (absmax / 7.0).astype(np.float32)}
  normalized = blocks / absmax[:, None]
  codes = np.abs(normalized[..., None] - NF4_LEVELS).argmin(-1).astype(np.uint8).reshape(fan_in, fan_out)
  mean = absmax.mean()
  flat = (absmax - mean).reshape(-1)
  groups = -(-flat.size // SCALE_BLOCK)
  padded = np.pad(flat, (0, groups * SCALE_BLOCK - flat.size)).reshape(groups, SCALE_BLOCK)
  group_max = np.maximum(np.abs(padded).max(1), 1e-12)
  scale_q = np.round(padded / group_max[:, None] * 127.0).reshape(-1)[:flat.size].reshape(absmax.shape)
  return {"_q": _pack(codes), "_scale_q": scale_q.astype(np.int8), "_scale_scale": group_max.astype(np.float32),
          "_scale_mean": np.float32(mean)}


def quantize_like(params, abstract, strict: bool = True) -> dict:
  """``params`` (float) in the layout of ``abstract`` (a quantized model's parameter
  shapes): every kernel the abstract tree holds as ``<k>_q`` is quantized; the rest is
  copied. Stacked (scanned) kernels are quantized layer by layer. ``strict``: every leaf
  of ``abstract`` must be produced (else the ones ``params`` lacks are left out)."""
  flat, want = traverse_util.flatten_dict(params), traverse_util.flatten_dict(abstract)
  kind = _kind(want)
  out = {k: v for k, v in flat.items() if k in want}
  for key, spec in want.items():
    if not key[-1].endswith("_q") or key[:-1] + (key[-1][:-2],) not in flat:
      continue
    name = key[:-1] + (key[-1][:-2],)
    w = np.asarray(flat[name], np.float32)
    stacked = len(spec.shape) == 3
    fan_out = spec.shape[-1]
    layers = w.shape[0] if stacked else 1
    fan_in = math.prod(w.shape) // layers // fan_out
    block = (fan_in // want[key[:-1] + (key[-1][:-2] + "_scale" + ("_q" if kind == "nf4" else ""),)].shape[-2]
             if kind != "int8" else 0)
    per_layer = [quantize_matrix(m.reshape(fan_in, fan_out), kind, block) for m in w.reshape(layers, -1)]
    for suffix in per_layer[0]:
      value = np.stack([p[suffix] for p in per_layer]) if stacked else per_layer[0][suffix]
      out[name[:-1] + (name[-1] + suffix,)] = value
  missing = sorted("/".join(k) for k in want if k not in out)
  if missing and strict:
    raise ValueError(f"quantize_like: no float source for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
  return traverse_util.unflatten_dict(out)


def _kind(flat_abstract) -> str:
  names = {k[-1] for k in flat_abstract}
  if any(n.endswith("_scale_q") for n in names):
    return "nf4"
  q = [v for k, v in flat_abstract.items() if k[-1].endswith("_q")]
  if not q:
    raise ValueError("quantize_like: the abstract tree has no quantized kernels")
  return "int8" if q[0].dtype == np.int8 else "int4"


def quantize_params(params, config, kind: str, block: int = 64) -> dict:
  """``params`` of a float model with ``config``, quantized for
  ``config.replace(quantization=kind, quantization_block=block)``."""
  from jaxlm.models import build_model  # pylint: disable=import-outside-toplevel
  quantized = build_model(config.replace(quantization=kind, quantization_block=block))
  return quantize_like(params, quantized.param_shapes())


def weight_bytes(params) -> int:
  """Bytes of every leaf of the tree, as stored."""
  return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(params)))
