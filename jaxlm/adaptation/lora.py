"""LoRA parameter trees: merge the low-rank updates into the base kernels, unmerge them,
split the adapter from the base (jaxlm.models.projection computes with them).

A LoRA model is the base model's config with ``lora_rank`` > 0: beside every targeted
kernel ``<k>`` its tree holds ``<k>_lora_a`` [fan_in, r] and ``<k>_lora_b`` [r, fan_out]
(a leading layer axis when layers are scanned). Train it from a base checkpoint with
``train.init_from`` and ``Trainable.added_only = True``; decode the merged tree with the
base config at no extra cost:

    merged = merge(lora_params, config)          # for config.replace(lora_rank=0)
    again = unmerge(merged, adapter(lora_params), config)   # == lora_params (to rounding)
"""
from __future__ import annotations

from typing import Any, Dict

import jax.numpy as jnp
from flax import traverse_util

from jaxlm.models.projection import lora_scale

SUFFIXES = ("_lora_a", "_lora_b")


def _delta(a, b, kernel_shape, config):
  return (jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32)) * lora_scale(config)).reshape(kernel_shape)


def _pairs(flat: Dict[tuple, Any]):
  """(kernel path, a path, b path) of every LoRA-targeted kernel in a flattened tree."""
  for path in flat:
    if path[-1].endswith("_lora_a"):
      name = path[-1][:-len("_lora_a")]
      yield path[:-1] + (name,), path, path[:-1] + (name + "_lora_b",)


def adapter(params) -> dict:
  """Only the LoRA leaves (the adapter to save or ship)."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: v for k, v in flat.items() if k[-1].endswith(SUFFIXES)})


def base(params) -> dict:
  """The tree without its LoRA leaves."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: v for k, v in flat.items() if not k[-1].endswith(SUFFIXES)})


def merge(params, config) -> dict:
  """W + (alpha / r) A B for every targeted kernel, the LoRA leaves dropped: the parameters
  of ``config.replace(lora_rank=0)``, computing the same function."""
  if config.quantization != "none":
    raise ValueError("merge: the base is quantized (TransformerConfig.quantization="
                     f"{config.quantization!r}); merge into float weights, then quantize")
  flat = traverse_util.flatten_dict(params)
  out = {k: v for k, v in flat.items() if not k[-1].endswith(SUFFIXES)}
  for kernel, a, b in _pairs(flat):
    w = flat[kernel]
    out[kernel] = (w.astype(jnp.float32) + _delta(flat[a], flat[b], w.shape, config)).astype(w.dtype)
  return traverse_util.unflatten_dict(out)


def unmerge(merged, lora, config) -> dict:
  """The LoRA model's tree again from merged weights and the adapter (``adapter(...)``)."""
  flat, extra = traverse_util.flatten_dict(merged), traverse_util.flatten_dict(lora)
  out = dict(flat)
  out.update(extra)
  for kernel, a, b in _pairs(extra):
    w = flat[kernel]
    out[kernel] = (w.astype(jnp.float32) - _delta(extra[a], extra[b], w.shape, config)).astype(w.dtype)
  return traverse_util.unflatten_dict(out)
