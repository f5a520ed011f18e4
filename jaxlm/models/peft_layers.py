"""Parameter-efficient tuning layers: bottleneck adapters, prefix tuning's key/value
prefixes and prompt tuning's soft prompt (TransformerConfig.adapter_size,
prefix_length / prefix_hidden, prompt_length). Each adds parameters beside the base
weights, which stay as they are; train them with Trainable(added_only=True).

* Adapters (``adapter_size`` > 0; Houlsby et al. 2019, He et al. 2022): a bottleneck
  ``up(relu(down(h)))`` beside every sub-layer of every Block (self-attention,
  cross-attention, the dense or MoE feed-forward), parameters ``<sub-layer>_adapter/down``,
  ``down_bias``, ``up``, ``up_bias``. 'serial' adds it to the sub-layer's output h
  (``h + A(h)``), 'parallel' feeds it the sub-layer's (normalized) input x (``h + A(x)``);
  both before the residual add. ReLU always (the config's activation may be gated). ``up``
  starts at zero, so a fresh adapter model computes exactly its base.
* Prefix tuning (``prefix_length`` > 0; Li and Liang 2021): every self-attention layer of
  every stack attends ``prefix_length`` trainable key/value positions in front of its
  keys, seen by every query (no mask, no position: no RoPE, no relative or ALiBi bias), so
  packed segments and the KV cache need nothing more: the prefix is prepended inside
  attention at every step and never enters the cache. The stack holds them in
  ``prefix_tuning``: plain ``key`` / ``value`` [layers, prefix_length, kv_heads, head_dim]
  (P-tuning v2, ``prefix_hidden`` = 0), or reparametrised (``prefix_hidden`` > 0) as an
  ``embedding`` [prefix_length, d_model] through ``tanh(e wi + wi_bias) wo + wo_bias``
  whose output holds every layer's keys and values
  (jaxlm.adaptation.prompts.export_prefix computes the plain ones once).
* Prompt tuning (``prompt_length`` > 0; Lester et al. 2021): ``soft_prompt/embedding``
  [prompt_length, d_model] rows in the token embedding's space, prepended to the embedded
  inputs of the decoder (decoder, prefix_decoder) or of the encoder (encoder_decoder). The
  prompt takes positions 0..prompt_length-1 and shifts the real tokens' positions by
  prompt_length. Every non-padding query attends the prompt (causally in a decoder, where
  the prompt attends only itself; an encoder's prompt attends every non-padding token of
  the row), so a packed decoder row equals its segments run alone, each after the prompt;
  in a packed encoder row the prompt is shared per row. The decoder returns logits for the
  real tokens only.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.models.config import TransformerConfig
from jaxlm.models.params import dtype_of, normal, param

zeros = jax.nn.initializers.zeros


class Adapter(nn.Module):
  """The bottleneck x [..., d] -> up(relu(down(x))) [..., d]: down ~ N(0, init_std),
  up = 0 (a near-identity start: the adapter adds exactly zero)."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    d, r = x.shape[-1], cfg.adapter_size
    dtype = dtype_of(cfg.dtype)
    down = param(self, "down", normal(cfg.init_std), (d, r), ("embed", None))
    down_bias = param(self, "down_bias", zeros, (r,), (None,))
    up = param(self, "up", zeros, (r, d), (None, "embed"))
    up_bias = param(self, "up_bias", zeros, (d,), ("embed",))
    h = jax.nn.relu(jnp.dot(x.astype(dtype), down.astype(dtype)) + down_bias.astype(dtype))
    return jnp.dot(h, up.astype(dtype)) + up_bias.astype(dtype)


def reparametrised_prefix(cfg: TransformerConfig, num_layers: int, embedding, wi, wi_bias, wo, wo_bias,
                          dtype=jnp.float32):
  """Li and Liang's MLP: the plain (key, value) prefixes [layers, P, kv_heads, head_dim]
  from the prefix embedding [P, d] (shared by the model and export_prefix)."""
  h = jnp.tanh(jnp.dot(embedding.astype(dtype), wi.astype(dtype)) + wi_bias.astype(dtype))
  out = jnp.dot(h, wo.astype(dtype)) + wo_bias.astype(dtype)
  out = out.reshape(cfg.prefix_length, num_layers, 2, cfg.kv_heads, cfg.dim_per_head)
  out = out.transpose(1, 2, 0, 3, 4)  # [layers, key|value, P, kv_heads, head_dim]
  return out[:, 0], out[:, 1]


class PrefixTuning(nn.Module):
  """A stack's prefix keys and values, each [layers, prefix_length, kv_heads, head_dim].

  Plain (prefix_hidden = 0): ``key`` and ``value`` ~ N(0, init_std). Reparametrised:
  ``embedding`` ~ N(0, 1), ``wi`` [d, prefix_hidden] ~ N(0, 1 / d), ``wo`` [prefix_hidden,
  layers * 2 * kv_heads * head_dim] ~ N(0, init_std), zero biases."""
  config: TransformerConfig
  num_layers: int

  @nn.compact
  def __call__(self):
    cfg = self.config
    p, kv, h = cfg.prefix_length, cfg.kv_heads, cfg.dim_per_head
    if not cfg.prefix_hidden:
      shape, axes = (self.num_layers, p, kv, h), ("layers", None, "kv_heads", "kv")
      return (param(self, "key", normal(cfg.init_std), shape, axes),
              param(self, "value", normal(cfg.init_std), shape, axes))
    d, hidden, out = cfg.d_model, cfg.prefix_hidden, self.num_layers * 2 * kv * h
    leaves = (param(self, "embedding", normal(1.0), (p, d), (None, "embed")),
              param(self, "wi", normal(d ** -0.5), (d, hidden), ("embed", None)),
              param(self, "wi_bias", zeros, (hidden,), (None,)),
              param(self, "wo", normal(cfg.init_std), (hidden, out), (None, None)),
              param(self, "wo_bias", zeros, (out,), (None,)))
    return reparametrised_prefix(cfg, self.num_layers, *leaves, dtype=dtype_of(cfg.dtype))


def prepend_prefix(prefix_kv, k, v):
  """Keys and values [b, s, kv_heads, head_dim] with one layer's prefix (key, value)
  [P, kv_heads, head_dim] in front: [b, P + s, ...]."""
  def cat(prefix, x):
    prefix = jnp.broadcast_to(prefix.astype(x.dtype)[None], (x.shape[0],) + prefix.shape)
    return jnp.concatenate([prefix, x], axis=1)
  return cat(prefix_kv[0], k), cat(prefix_kv[1], v)


def extend_for_prefix(mask, bias, length: int):
  """The self-attention mask [b, 1, t, s] and bias [b, heads, t, s] (either may be None)
  with `length` prefix key columns in front: every query may attend them, no bias."""
  if mask is not None:
    mask = jnp.concatenate([jnp.ones(mask.shape[:-1] + (length,), jnp.bool_), mask], axis=-1)
  if bias is not None:
    bias = jnp.concatenate([jnp.zeros(bias.shape[:-1] + (length,), bias.dtype), bias], axis=-1)
  return mask, bias


class SoftPrompt(nn.Module):
  """The soft prompt ``embedding`` [prompt_length, d] ~ N(0, init_std), like the token
  embedding's rows (jaxlm.adaptation.prompts.init_prompt_from_vocab: from sampled rows)."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x):
    """Embedded tokens x [b, t, d] -> [b, prompt_length + t, d], the prompt first."""
    cfg = self.config
    prompt = param(self, "embedding", normal(cfg.init_std), (cfg.prompt_length, cfg.d_model), (None, "embed"))
    prompt = jnp.broadcast_to(prompt.astype(x.dtype)[None], (x.shape[0],) + prompt.shape)
    return jnp.concatenate([prompt, x], axis=1)


def prompt_inputs(length: int, segments, positions, prefix=None):
  """Segments, positions and prefix-LM flags [b, t] (segments and prefix may be None) for
  the row with a `length`-position soft prompt in front: the prompt is segment 1, positions
  0..length-1, not part of the prefix; the real tokens' positions shift by `length`."""
  def cat(front, x):
    return jnp.concatenate([jnp.broadcast_to(front, (x.shape[0], length)).astype(x.dtype), x], axis=1)
  if segments is not None:
    segments = cat(jnp.ones((), jnp.int32), segments)
  positions = cat(jnp.arange(length), positions + length)
  if prefix is not None:
    prefix = cat(jnp.zeros((), jnp.bool_), prefix)
  return segments, positions, prefix


def share_prompt(mask, length: int, q_segments, k_segments, *, k_index, q_index=None, causal: bool):
  """The mask [b, 1, q, k] with the soft prompt (the keys at row index < `length`) visible to
  every non-padding query, whatever its segment; causal: not to earlier queries (the prompt's
  own). A bidirectional stack's prompt queries (q_index < length) also attend every
  non-padding key; q_index=None: no query is a prompt position (cross-attention)."""
  shared = (k_index < length)[:, None, :] & (q_segments != 0)[:, :, None]
  if causal:
    shared &= q_index[:, :, None] >= k_index[:, None, :]
  elif q_index is not None:
    shared |= (q_index < length)[:, :, None] & (k_segments != 0)[:, None, :]
  return mask | shared[:, None]
