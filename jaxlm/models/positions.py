"""Position information: sinusoidal, RoPE (with interpolation), ALiBi and T5 relative bias."""
from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxlm.models.config import TransformerConfig
from jaxlm.models.params import normal, param


def sinusoidal(positions, dim: int, max_timescale: float = 10000.0):
  """Transformer sinusoids (sin on the first half of the features, cos on the second)."""
  half = dim // 2
  inv = 1.0 / max_timescale ** (np.arange(half) / max(half - 1, 1))
  angles = positions[..., None].astype(jnp.float32) * inv
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def rope_inv_freq(cfg: TransformerConfig) -> np.ndarray:
  """Rotary inverse frequencies, with linear (position interpolation) or Llama-3 scaling."""
  dim = cfg.dim_per_head
  inv = 1.0 / (cfg.rope_base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
  if cfg.rope_scaling == "linear":
    inv = inv / cfg.rope_scaling_factor
  elif cfg.rope_scaling == "llama3":
    factor, old_len = cfg.rope_scaling_factor, cfg.rope_original_max_len
    low_wavelen = old_len / cfg.rope_low_freq_factor
    high_wavelen = old_len / cfg.rope_high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - cfg.rope_low_freq_factor) / (
        cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv = np.where(medium, smoothed, scaled)
  return inv.astype(np.float32)


def apply_rope(x, positions, cfg: TransformerConfig):
  """Rotates x [batch, length, heads, head_dim] by positions [batch, length] (half-split layout)."""
  angles = positions[..., None].astype(jnp.float32) * rope_inv_freq(cfg)  # [b, t, d/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
  """Head slopes of ALiBi (Press et al. 2022), including non-power-of-two head counts."""
  def power_of_two(n):
    start = 2 ** (-(2 ** -(math.log2(n) - 3)))
    return [start * start ** i for i in range(n)]
  if math.log2(num_heads).is_integer():
    return np.array(power_of_two(num_heads), np.float32)
  closest = 2 ** math.floor(math.log2(num_heads))
  extra = alibi_slopes(2 * closest)[0::2][: num_heads - closest]
  return np.concatenate([power_of_two(closest), extra]).astype(np.float32)


def alibi_bias(q_pos, k_pos, num_heads: int):
  """[batch, heads, q, k] bias -slope * |q - k| (the causal form for keys in the past)."""
  dist = jnp.abs(q_pos[:, :, None] - k_pos[:, None, :]).astype(jnp.float32)
  return -alibi_slopes(num_heads)[None, :, None, None] * dist[:, None]


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int,
                             max_distance: int):
  """T5's bucketing of key_position - query_position (exact for small, log-spaced beyond)."""
  ret = 0
  n = relative_position
  if bidirectional:
    num_buckets //= 2
    ret = (n > 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = -jnp.minimum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  large = max_exact + (
      jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
      / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return ret + jnp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
  """T5 relative attention bias, shared by all layers of a stack: [batch, heads, q, k]."""
  config: TransformerConfig
  bidirectional: bool

  @nn.compact
  def __call__(self, q_pos, k_pos):
    cfg = self.config
    table = param(self, "embedding", normal(cfg.init_std), (cfg.relative_num_buckets, cfg.num_heads),
                  (None, "heads"))
    buckets = relative_position_bucket(k_pos[:, None, :] - q_pos[:, :, None], self.bidirectional,
                                       cfg.relative_num_buckets, cfg.relative_max_distance)
    bias = jnp.take(table.astype(jnp.float32), buckets, axis=0)  # [b, q, k, heads]
    return bias.transpose(0, 3, 1, 2)
