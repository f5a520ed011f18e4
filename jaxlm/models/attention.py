"""Attention: MHA / MQA / GQA, self and cross, masks, two kernels, and the KV cache.

Masks are boolean [batch, 1, q, k] arrays (True = may attend), built once per stack by
`make_mask` and shared by every layer. Kernels:
  xla:   einsum + softmax in float32, any mask and additive bias.
  cudnn: jax.nn.dot_product_attention(implementation="cudnn"), the fused kernel on GPU;
         a plain causal mask goes through `is_causal` instead of an explicit mask.
"""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.models.config import TransformerConfig
from jaxlm.models import projection
from jaxlm.models.params import constrain, dtype_of, param
from jaxlm.models.peft_layers import prepend_prefix
from jaxlm.models.positions import apply_rope


def make_mask(q_segments, k_segments, *, causal: bool, q_index=None, k_index=None,
              q_prefix=None, k_prefix=None):
  """Boolean attention mask [batch, 1, q, k].

  Tokens attend only within their own segment (packing). Causal masks compare indices in
  the row (q_index >= k_index); a prefix (q_prefix & k_prefix) is attended both ways.
  """
  mask = q_segments[:, :, None] == k_segments[:, None, :]
  if causal:
    if q_index is None:
      q_index = jnp.arange(q_segments.shape[1])[None]
    if k_index is None:
      k_index = jnp.arange(k_segments.shape[1])[None]
    allowed = q_index[:, :, None] >= k_index[:, None, :]
    if q_prefix is not None:
      allowed |= q_prefix[:, :, None] & k_prefix[:, None, :]
    mask &= allowed
  return mask[:, None]


def resolve_kernel(cfg: TransformerConfig) -> str:
  if cfg.attention_kernel != "auto":
    return cfg.attention_kernel
  on_gpu = jax.default_backend() == "gpu"
  return "cudnn" if on_gpu and cfg.dtype in ("bfloat16", "float16") else "xla"


def attend(q, k, v, *, mask, bias, scale: float, kernel: str, is_causal: bool = False):
  """q [b, t, n, h], k/v [b, s, kv, h] (n a multiple of kv) -> [b, t, n, h]."""
  if kernel == "cudnn":
    return jax.nn.dot_product_attention(
        q, k, v, bias=None if bias is None else bias.astype(q.dtype),
        mask=None if is_causal else mask, scale=scale, is_causal=is_causal,
        implementation="cudnn")
  b, t, n, h = q.shape
  kv = k.shape[2]
  qg = q.reshape(b, t, kv, n // kv, h)
  logits = jnp.einsum("btkgh,bskh->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32).reshape(bias.shape[0], kv, n // kv, *bias.shape[2:])
  if is_causal and mask is None:
    mask = jnp.tril(jnp.ones((t, k.shape[1]), bool))[None, None]
  if mask is not None:
    logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
  return out.reshape(b, t, n, h)


class Attention(nn.Module):
  """Multi-head attention with num_kv_heads key/value heads (MHA, MQA, GQA).

  decode=True keeps keys and values in the 'cache' collection: each call writes its
  chunk at `decode_index` (prefill writes the prompt, a step writes one token).
  prefix_kv: prefix tuning's (key, value) [P, kv_heads, head_dim] of this layer, put in
  front of the (cached) keys and values at every call, without RoPE; the mask and bias
  must already have its P columns (peft_layers.extend_for_prefix).
  """
  config: TransformerConfig
  is_cross: bool = False
  qk_std: Optional[float] = None
  v_std: Optional[float] = None
  out_std: Optional[float] = None
  decode: bool = False

  @nn.compact
  def __call__(self, x, kv_input=None, *, mask=None, bias=None, q_pos=None, is_causal: bool = False,
               decode_index=None, deterministic: bool = True, prefix_kv=None):
    cfg = self.config
    n, kv, h, d = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head, cfg.d_model
    dtype = dtype_of(cfg.dtype)
    std = cfg.init_std

    def project(name, inp, heads, pstd):
      y = projection.project(self, name, inp, (d, heads, h), ("embed", "heads" if heads == n else "kv_heads", "kv"),
                             pstd or std, deterministic=deterministic)
      if cfg.use_bias:
        y = y + param(self, name + "_bias", jax.nn.initializers.zeros, (heads, h),
                      ("heads" if heads == n else "kv_heads", "kv")).astype(dtype)
      return y

    q = project("query", x, n, self.qk_std)
    q = constrain(q, ("batch", "length", "heads", "kv"))
    if self.is_cross:
      k, v = self._cross_kv(project, kv_input)
    else:
      k = project("key", x, kv, self.qk_std)
      v = project("value", x, kv, self.v_std)
      if cfg.position == "rope":
        q = apply_rope(q, q_pos, cfg)
        k = apply_rope(k, q_pos, cfg)
      if self.decode:
        k, v = self._update_cache(k, v, decode_index)
      if prefix_kv is not None:
        k, v = prepend_prefix(prefix_kv, k, v)
    scale = 1.0 / math.sqrt(h) if cfg.scale_attention else 1.0
    kernel = resolve_kernel(cfg)
    if self.decode:
      is_causal = False  # the cache is longer than the chunk: the mask says what is valid
    out = attend(q, k, v, mask=mask, bias=bias, scale=scale, kernel=kernel, is_causal=is_causal)
    out = constrain(out, ("batch", "length", "heads", "kv"))
    y = projection.project(self, "out", out, (n, h, d), ("heads", "kv", "embed"), self.out_std or std, num_in=2,
                           deterministic=deterministic)
    if cfg.use_bias:
      y = y + param(self, "out_bias", jax.nn.initializers.zeros, (d,), ("embed",)).astype(dtype)
    return y

  def _cross_kv(self, project, kv_input):
    """Cross-attention keys/values; in decode mode computed once (prefill) and cached."""
    cfg = self.config
    if not self.decode:
      return (project("key", kv_input, cfg.kv_heads, self.qk_std),
              project("value", kv_input, cfg.kv_heads, self.v_std))
    if kv_input is not None:
      k = project("key", kv_input, cfg.kv_heads, self.qk_std)
      v = project("value", kv_input, cfg.kv_heads, self.v_std)
      ck = self.variable("cache", "cross_key", jnp.zeros, k.shape, k.dtype)
      cv = self.variable("cache", "cross_value", jnp.zeros, v.shape, v.dtype)
      ck.value, cv.value = k, v
      return k, v
    return self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value")

  def _update_cache(self, k, v, index):
    ck = self.variable("cache", "key", jnp.zeros, k.shape, k.dtype)
    cv = self.variable("cache", "value", jnp.zeros, v.shape, v.dtype)
    if self.is_initializing():
      return k, v
    ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (0, index, 0, 0))
    cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), (0, index, 0, 0))
    return ck.value, cv.value
