"""The transformer: a residual Block, a Stack of blocks (encoder or decoder), and the model.

One Transformer module covers the three families:
  decoder          causal self-attention
  prefix_decoder   the same parameters; `prefix` positions attend each other both ways
  encoder_decoder  a bidirectional encoder and a causal decoder with cross-attention
"""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.models.attention import Attention, make_mask
from jaxlm.models.config import TransformerConfig
from jaxlm.models.layers import MLP, Embed, Norm, constrain, dtype_of, normal, param
from jaxlm.models.moe import MoeMLP
from jaxlm.models.positions import RelativePositionBias, alibi_bias, sinusoidal

REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def deepnorm_alpha_beta(cfg: TransformerConfig, is_encoder: bool):
  """DeepNet's residual scale alpha and init gain beta (Wang et al. 2022, table 1)."""
  if cfg.norm_position != "deepnorm":
    return 1.0, 1.0
  if cfg.arch != "encoder_decoder":
    n = cfg.num_layers
    return (2 * n) ** 0.25, (8 * n) ** -0.25
  n, m = cfg.encoder_layers, cfg.num_layers
  if is_encoder:
    return 0.81 * (n ** 4 * m) ** (1 / 16), 0.87 * (n ** 4 * m) ** (-1 / 16)
  return (3 * m) ** 0.25, (12 * m) ** -0.25


class Block(nn.Module):
  """Self-attention, optional cross-attention, and a dense or MoE feed-forward, each a
  residual sub-layer with the configured norm placement. carry = (x, moe_aux_loss)."""
  config: TransformerConfig
  has_cross: bool = False
  use_moe: bool = False
  is_encoder: bool = False
  decode: bool = False
  deterministic: bool = True
  is_causal: bool = False

  @nn.compact
  def __call__(self, carry, ctx):
    cfg = self.config
    x, aux = carry
    alpha, beta = deepnorm_alpha_beta(cfg, self.is_encoder)
    d, inner = cfg.d_model, cfg.num_heads * cfg.dim_per_head
    if cfg.norm_position == "deepnorm":  # Xavier-normal with gain beta (1 for q, k)
      qk_std = math.sqrt(2.0 / (d + inner))
      v_std = out_std = beta * qk_std
      in_std, mlp_out_std = beta * math.sqrt(2.0 / (d + cfg.d_ff)), beta * math.sqrt(2.0 / (d + cfg.d_ff))
    else:  # GPT-2: residual projections scaled by 1/sqrt(2 * layers)
      total = cfg.num_layers + (cfg.encoder_layers if cfg.arch == "encoder_decoder" else 0)
      qk_std = v_std = in_std = cfg.init_std
      out_std = mlp_out_std = cfg.init_std / math.sqrt(2 * total)

    def residual(name, fn, x):
      drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)
      if cfg.norm_position == "pre":
        return x + drop(fn(Norm(cfg, name=f"{name}_norm")(x)))
      if cfg.norm_position == "sandwich":
        return x + drop(Norm(cfg, name=f"{name}_post_norm")(fn(Norm(cfg, name=f"{name}_norm")(x))))
      return Norm(cfg, name=f"{name}_norm")(x * alpha + drop(fn(x)))  # post-LN, DeepNorm

    attn = dict(config=cfg, qk_std=qk_std, v_std=v_std, out_std=out_std, decode=self.decode)
    x = residual("self_attention", lambda h: Attention(**attn, name="self_attention")(
        h, mask=ctx["self_mask"], bias=ctx["self_bias"], q_pos=ctx["q_pos"],
        is_causal=self.is_causal, decode_index=ctx["decode_index"]), x)
    if self.has_cross:
      x = residual("cross_attention", lambda h: Attention(**attn, is_cross=True, name="cross_attention")(
          h, ctx["encoded"], mask=ctx["cross_mask"]), x)

    moe_aux = []
    def feed_forward(h):
      if self.use_moe:
        y, a = MoeMLP(cfg, out_std=mlp_out_std, in_std=in_std, name="moe")(h, self.deterministic)
        moe_aux.append(a)
        return y
      return MLP(cfg, out_std=mlp_out_std, in_std=in_std, name="mlp")(h, self.deterministic)
    x = residual("mlp", feed_forward, x)
    x = constrain(x, ("batch", "length", "embed"))
    return (x, aux + sum(moe_aux)), None


class Stack(nn.Module):
  """Embedded tokens -> positions -> blocks -> final norm. An encoder or a decoder."""
  config: TransformerConfig
  num_layers: int
  is_encoder: bool = False
  has_cross: bool = False

  @nn.compact
  def __call__(self, x, *, segments, positions, prefix=None, encoded=None, encoder_segments=None,
               decode: bool = False, deterministic: bool = True):
    cfg = self.config
    causal = not self.is_encoder
    if cfg.position == "learned":
      x = x + Embed(cfg, cfg.max_len, axes=(None, "embed"), name="position_embedding")(positions)
    elif cfg.position == "sinusoidal":
      x = x + sinusoidal(positions, cfg.d_model).astype(x.dtype)
    if cfg.embed_norm:
      x = Norm(cfg, name="embed_norm")(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = constrain(x, ("batch", "length", "embed"))

    is_causal = causal and segments is None and prefix is None and not decode
    if segments is None:
      segments = jnp.ones(x.shape[:2], jnp.int32)
    k_pos, decode_index, self_mask = positions, None, None
    if decode:  # while the cache is being created, this returns no index and no mask
      decode_index, self_mask, k_pos, encoder_segments = self._decode_state(
          segments, positions, prefix, encoder_segments, encoded)
    elif not is_causal:
      self_mask = make_mask(segments, segments, causal=causal, q_prefix=prefix, k_prefix=prefix)

    self_bias = None
    if cfg.position == "t5_relative":
      bidirectional = self.is_encoder or cfg.arch == "prefix_decoder"
      self_bias = RelativePositionBias(cfg, bidirectional, name="relpos_bias")(positions, k_pos)
    elif cfg.position == "alibi":
      self_bias = alibi_bias(positions, k_pos, cfg.num_heads)
    cross_mask = None
    if self.has_cross:
      cross_mask = make_mask(segments, encoder_segments, causal=False)

    ctx = dict(self_mask=self_mask, self_bias=self_bias, q_pos=positions, cross_mask=cross_mask,
               encoded=encoded, decode_index=decode_index)
    block_args = dict(config=cfg, has_cross=self.has_cross, is_encoder=self.is_encoder,
                      decode=decode, deterministic=deterministic, is_causal=is_causal)
    block = Block
    if cfg.remat_policy != "none" and not decode:
      block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    carry = (x, jnp.zeros((), jnp.float32))
    if cfg.scan_layers:
      scanned = nn.scan(block, variable_axes={"params": 0, "cache": 0},
                        split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast,
                        length=self.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      carry, _ = scanned(use_moe=cfg.num_experts > 0, name="layers", **block_args)(carry, ctx)
    else:
      for i in range(self.num_layers):
        carry, _ = block(use_moe=cfg.is_moe_layer(i), name=f"layers_{i}", **block_args)(carry, ctx)
    x, aux = carry
    if cfg.norm_position in ("pre", "sandwich"):
      x = Norm(cfg, name="final_norm")(x)
    return x, aux

  def _decode_state(self, segments, positions, prefix, encoder_segments, encoded):
    """Cache bookkeeping shared by all layers: where to write, which keys are valid."""
    b, t = segments.shape
    index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    key_seg = self.variable("cache", "key_segments", jnp.zeros, (b, t), jnp.int32)
    key_pos = self.variable("cache", "key_positions", jnp.zeros, (b, t), jnp.int32)
    key_prefix = self.variable("cache", "key_prefix", jnp.zeros, (b, t), jnp.bool_)
    enc_seg = None
    if self.has_cross:
      shape = encoder_segments.shape if encoder_segments is not None else (b, 1)
      enc_seg = self.variable("cache", "encoder_segments", jnp.zeros, shape, jnp.int32)
      if encoder_segments is not None and encoded is not None:
        enc_seg.value = encoder_segments
    if self.is_initializing():
      return None, None, positions, encoder_segments
    idx = index.value
    if prefix is None:
      prefix = jnp.zeros_like(segments, jnp.bool_)
    key_seg.value = jax.lax.dynamic_update_slice(key_seg.value, segments.astype(jnp.int32), (0, idx))
    key_pos.value = jax.lax.dynamic_update_slice(key_pos.value, positions.astype(jnp.int32), (0, idx))
    key_prefix.value = jax.lax.dynamic_update_slice(key_prefix.value, prefix, (0, idx))
    index.value = idx + t
    s = key_seg.value.shape[1]
    mask = make_mask(segments, key_seg.value, causal=True, q_index=idx + jnp.arange(t)[None],
                     k_index=jnp.arange(s)[None], q_prefix=prefix, k_prefix=key_prefix.value)
    return idx, mask, key_pos.value, None if enc_seg is None else enc_seg.value


class Transformer(nn.Module):
  """Token embedding, optional encoder, decoder, output projection to float32 logits."""
  config: TransformerConfig

  def setup(self):
    cfg = self.config
    self.token_embedding = Embed(cfg, cfg.vocab_size)
    if cfg.arch == "encoder_decoder":
      self.encoder = Stack(cfg, cfg.encoder_layers, is_encoder=True)
    self.decoder = Stack(cfg, cfg.num_layers, has_cross=cfg.arch == "encoder_decoder")
    if not cfg.tie_embeddings:
      self.lm_head = param(self, "lm_head", normal(cfg.init_std), (cfg.d_model, cfg.vocab_size),
                           ("embed", "vocab"))

  def _embed(self, tokens):
    x = self.token_embedding(tokens)
    if self.config.scale_embeddings:
      x = x * jnp.asarray(math.sqrt(self.config.d_model), x.dtype)
    return x

  def encode(self, tokens, segments=None, positions=None, deterministic: bool = True):
    """Encoder outputs [b, s, d], the moe aux loss and the encoder segments (0 = padding)."""
    if segments is None:
      segments = (tokens > 0).astype(jnp.int32)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    encoded, aux = self.encoder(self._embed(tokens), segments=segments, positions=positions,
                                deterministic=deterministic)
    return encoded, aux, segments

  def decode(self, tokens, *, encoded=None, encoder_segments=None, segments=None, positions=None,
             prefix=None, decode: bool = False, deterministic: bool = True):
    """Decoder logits [b, t, vocab] in float32 and the moe aux loss."""
    cfg = self.config
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    if prefix is not None:
      prefix = prefix.astype(jnp.bool_)
    x, aux = self.decoder(self._embed(tokens), segments=segments, positions=positions, prefix=prefix,
                          encoded=encoded, encoder_segments=encoder_segments, decode=decode,
                          deterministic=deterministic)
    if cfg.scale_decoder_outputs:
      x = x * jnp.asarray(cfg.d_model ** -0.5, x.dtype)
    if cfg.tie_embeddings:
      logits = self.token_embedding.attend(x)
    else:
      logits = jnp.dot(x, self.lm_head.astype(x.dtype))
    logits = constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))
    return logits, aux

  def __call__(self, decoder_input_tokens, encoder_input_tokens=None, *, decoder_segment_ids=None,
               decoder_positions=None, decoder_causal_attention=None, encoder_segment_ids=None,
               encoder_positions=None, decode: bool = False, deterministic: bool = True):
    cfg = self.config
    encoded = enc_segments = None
    aux = jnp.zeros((), jnp.float32)
    if cfg.arch == "encoder_decoder":
      encoded, aux, enc_segments = self.encode(encoder_input_tokens, encoder_segment_ids,
                                               encoder_positions, deterministic)
    prefix = decoder_causal_attention if cfg.arch == "prefix_decoder" else None
    logits, dec_aux = self.decode(decoder_input_tokens, encoded=encoded, encoder_segments=enc_segments,
                                  segments=decoder_segment_ids, positions=decoder_positions,
                                  prefix=prefix, decode=decode, deterministic=deterministic)
    return logits, aux + dec_aux
