"""The transformer: a residual Block, a Stack of blocks (encoder or decoder), and the model.

One Transformer module covers the three families:
  decoder          causal self-attention
  prefix_decoder   the same parameters; `prefix` positions attend each other both ways
  encoder_decoder  a bidirectional encoder and a causal decoder with cross-attention
and, in every family, the parameter-efficient options of jaxlm.models.peft_layers
(adapters, prefix tuning, prompt tuning).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import flax.linen as nn
from flax import struct
import jax
import jax.numpy as jnp

from jaxlm.models.attention import Attention, make_mask
from jaxlm.models.config import TransformerConfig
from jaxlm.models.layers import MLP, Embed, Norm, ScalarHead
from jaxlm.models.params import constrain, normal, param
from jaxlm.models.moe import MoeMLP
from jaxlm.models import peft_layers
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


class InitStds(NamedTuple):
  """Initial standard deviations of a block's projections."""
  qk: float        # attention query and key
  v: float         # attention value
  attn_out: float  # attention output (a residual projection)
  mlp_in: float    # feed-forward input(s)
  mlp_out: float   # feed-forward output (a residual projection)


def block_init_stds(cfg: TransformerConfig, is_encoder: bool) -> InitStds:
  """DeepNorm: Xavier-normal, with gain beta on all but the query and key. Otherwise GPT-2:
  init_std, and residual projections scaled by 1/sqrt(2 * layers of the whole model)."""
  if cfg.norm_position == "deepnorm":
    _, beta = deepnorm_alpha_beta(cfg, is_encoder)
    qk = math.sqrt(2.0 / (cfg.d_model + cfg.num_heads * cfg.dim_per_head))
    mlp = beta * math.sqrt(2.0 / (cfg.d_model + cfg.d_ff))
    return InitStds(qk=qk, v=beta * qk, attn_out=beta * qk, mlp_in=mlp, mlp_out=mlp)
  total = cfg.num_layers + (cfg.encoder_layers if cfg.arch == "encoder_decoder" else 0)
  residual = cfg.init_std / math.sqrt(2 * total)
  return InitStds(qk=cfg.init_std, v=cfg.init_std, attn_out=residual, mlp_in=cfg.init_std,
                  mlp_out=residual)


@struct.dataclass
class AttentionInputs:
  """What every block of a stack attends with, built once by the Stack.

  positions are the query positions (RoPE); self_mask [b, 1, t, s] is None for a plain
  causal stack (the kernel's is_causal) and while the cache is being created; self_bias is
  ALiBi's or T5's [b, heads, t, s]; decode_index is where the chunk goes in the KV cache;
  encoded [b, s, d] and cross_mask are the encoder outputs and their mask (cross-attention).
  With prefix tuning, self_mask and self_bias have prefix_length more key columns in front.
  """
  positions: jax.Array
  self_mask: Optional[jax.Array] = None
  self_bias: Optional[jax.Array] = None
  decode_index: Optional[jax.Array] = None
  encoded: Optional[jax.Array] = None
  cross_mask: Optional[jax.Array] = None


class Block(nn.Module):
  """Self-attention, optional cross-attention, and a dense or MoE feed-forward, each a
  residual sub-layer with the configured norm placement (see `_norm_in` / `_residual`) and
  an optional bottleneck adapter (`_adapt`)."""
  config: TransformerConfig
  has_cross: bool = False
  use_moe: bool = False
  is_encoder: bool = False
  decode: bool = False
  deterministic: bool = True
  is_causal: bool = False

  @nn.compact
  def __call__(self, x, inputs: AttentionInputs, prefix_kv=None):
    """x [b, t, d] -> (x, moe_loss): the residual stream after the block and the MoE
    load-balancing loss (0 for a dense feed-forward). nn.scan runs it with x as the carry.
    prefix_kv: this layer's prefix-tuning (key, value), or None."""
    cfg = self.config
    std = block_init_stds(cfg, self.is_encoder)

    attention = Attention(cfg, qk_std=std.qk, v_std=std.v, out_std=std.attn_out, decode=self.decode,
                          name="self_attention")
    inp = self._norm_in("self_attention", x)
    h = attention(inp, mask=inputs.self_mask, bias=inputs.self_bias, q_pos=inputs.positions,
                  is_causal=self.is_causal, decode_index=inputs.decode_index, prefix_kv=prefix_kv,
                  deterministic=self.deterministic)
    x = self._residual("self_attention", x, self._adapt("self_attention", inp, h))

    if self.has_cross:
      cross = Attention(cfg, is_cross=True, qk_std=std.qk, v_std=std.v, out_std=std.attn_out,
                        decode=self.decode, name="cross_attention")
      inp = self._norm_in("cross_attention", x)
      h = cross(inp, inputs.encoded, mask=inputs.cross_mask, deterministic=self.deterministic)
      x = self._residual("cross_attention", x, self._adapt("cross_attention", inp, h))

    inp = self._norm_in("mlp", x)
    if self.use_moe:
      h, moe_loss = MoeMLP(cfg, out_std=std.mlp_out, in_std=std.mlp_in, name="moe")(inp, self.deterministic)
    else:
      h = MLP(cfg, out_std=std.mlp_out, in_std=std.mlp_in, name="mlp")(inp, self.deterministic)
      moe_loss = jnp.zeros((), jnp.float32)
    x = self._residual("mlp", x, self._adapt("mlp", inp, h))
    return constrain(x, ("batch", "length", "embed")), moe_loss

  def _adapt(self, name: str, inp, h):
    """The sub-layer output h with its bottleneck adapter `<name>_adapter` (adapter_size > 0):
    serial h + A(h) (Houlsby et al.), parallel h + A(inp), inp the sub-layer's input (He et al.)."""
    cfg = self.config
    if not cfg.adapter_size:
      return h
    adapter = peft_layers.Adapter(cfg, name=f"{name}_adapter")
    return h + adapter(h if cfg.adapter_kind == "serial" else inp)

  def _norm_in(self, name: str, x):
    """The sub-layer's input: normalized for pre-LN and sandwich-LN, as is for post-LN."""
    if self.config.norm_position in ("pre", "sandwich"):
      return Norm(self.config, name=f"{name}_norm")(x)
    return x

  def _residual(self, name: str, x, h):
    """Adds the sub-layer output h (after dropout) to the residual stream x: pre-LN x + h,
    sandwich-LN x + norm(h), post-LN norm(x + h), DeepNorm norm(alpha * x + h)."""
    cfg = self.config
    if cfg.norm_position == "sandwich":
      h = Norm(cfg, name=f"{name}_post_norm")(h)
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=self.deterministic)
    if cfg.norm_position in ("pre", "sandwich"):
      return x + h
    alpha, _ = deepnorm_alpha_beta(cfg, self.is_encoder)
    return Norm(cfg, name=f"{name}_norm")(x * alpha + h)


class Stack(nn.Module):
  """Embedded tokens -> positions -> blocks -> final norm. An encoder or a decoder.

  With prompt tuning the Transformer has put the soft prompt in front of x (the first
  `_prompt_length` row positions, see `peft_layers.share_prompt`); with prefix tuning every
  layer's self-attention gets its prefix keys and values (`peft_layers.PrefixTuning`).
  """
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

    is_causal = causal and segments is None and prefix is None and not decode and not cfg.prefix_length
    if segments is None:
      segments = jnp.ones(x.shape[:2], jnp.int32)
    k_pos, decode_index, self_mask = positions, None, None
    if decode:  # while the cache is being created, this returns no index and no mask
      decode_index, self_mask, k_pos, encoder_segments = self._decode_state(
          segments, positions, prefix, encoder_segments, encoded)
    elif not is_causal:
      self_mask = make_mask(segments, segments, causal=causal, q_prefix=prefix, k_prefix=prefix)
      if self._prompt_length:
        index = jnp.arange(x.shape[1])[None]
        self_mask = peft_layers.share_prompt(self_mask, self._prompt_length, segments, segments,
                                             q_index=index, k_index=index, causal=causal)

    self_bias = None
    if cfg.position == "t5_relative":
      bidirectional = self.is_encoder or cfg.arch == "prefix_decoder"
      self_bias = RelativePositionBias(cfg, bidirectional, name="relpos_bias")(positions, k_pos)
    elif cfg.position == "alibi":
      self_bias = alibi_bias(positions, k_pos, cfg.num_heads)
    cross_mask = None
    if self.has_cross:
      cross_mask = make_mask(segments, encoder_segments, causal=False)
      if cfg.prompt_length:  # the encoder's soft prompt
        k_index = jnp.arange(encoder_segments.shape[1])[None]
        cross_mask = peft_layers.share_prompt(cross_mask, cfg.prompt_length, segments, encoder_segments,
                                              k_index=k_index, causal=False)
    prefix_kv = None
    if cfg.prefix_length:
      self_mask, self_bias = peft_layers.extend_for_prefix(self_mask, self_bias, cfg.prefix_length)
      prefix_kv = peft_layers.PrefixTuning(cfg, self.num_layers, name="prefix_tuning")()

    inputs = AttentionInputs(positions=positions, self_mask=self_mask, self_bias=self_bias,
                             decode_index=decode_index, encoded=encoded, cross_mask=cross_mask)
    block_args = dict(config=cfg, has_cross=self.has_cross, is_encoder=self.is_encoder,
                      decode=decode, deterministic=deterministic, is_causal=is_causal)
    block = Block
    if cfg.remat_policy != "none" and not decode:
      block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:  # x is the carry, `inputs` is broadcast, the MoE losses are stacked
      layer_args, in_axes = ((inputs,), nn.broadcast) if prefix_kv is None else \
          ((inputs, prefix_kv), (nn.broadcast, 0))  # the prefixes are scanned over their layer axis
      scanned = nn.scan(block, variable_axes={"params": 0, "cache": 0},
                        split_rngs={"params": True, "dropout": True}, in_axes=in_axes,
                        length=self.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      x, moe_losses = scanned(use_moe=cfg.num_experts > 0, name="layers", **block_args)(x, *layer_args)
      aux = moe_losses.sum()
    else:
      aux = jnp.zeros((), jnp.float32)
      for i in range(self.num_layers):
        layer_args = (inputs,) if prefix_kv is None else (inputs, (prefix_kv[0][i], prefix_kv[1][i]))
        x, moe_loss = block(use_moe=cfg.is_moe_layer(i), name=f"layers_{i}", **block_args)(x, *layer_args)
        aux = aux + moe_loss
    if cfg.norm_position in ("pre", "sandwich"):
      x = Norm(cfg, name="final_norm")(x)
    return x, aux

  @property
  def _prompt_length(self) -> int:
    """How many positions at the start of this stack's rows are the soft prompt."""
    cfg = self.config
    on_this_stack = self.is_encoder or cfg.arch != "encoder_decoder"
    return cfg.prompt_length if on_this_stack else 0

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
    q_index, k_index = idx + jnp.arange(t)[None], jnp.arange(s)[None]
    mask = make_mask(segments, key_seg.value, causal=True, q_index=q_index, k_index=k_index,
                     q_prefix=prefix, k_prefix=key_prefix.value)
    if self._prompt_length:  # the prefill wrote the soft prompt in the first cache positions
      mask = peft_layers.share_prompt(mask, self._prompt_length, segments, key_seg.value,
                                      q_index=q_index, k_index=k_index, causal=True)
    return idx, mask, key_pos.value, None if enc_seg is None else enc_seg.value


class Transformer(nn.Module):
  """Token embedding, optional encoder, decoder, output projection to float32 logits.

  With prompt tuning (prompt_length > 0) the soft prompt goes in front of the encoder's
  inputs (encoder_decoder) or the decoder's (the other archs); the decoder's logits stay
  those of the real tokens.
  """
  config: TransformerConfig

  def setup(self):
    cfg = self.config
    self.token_embedding = Embed(cfg, cfg.vocab_size)
    if cfg.prompt_length:
      self.soft_prompt = peft_layers.SoftPrompt(cfg)
    if cfg.arch == "encoder_decoder":
      self.encoder = Stack(cfg, cfg.encoder_layers, is_encoder=True)
    self.decoder = Stack(cfg, cfg.num_layers, has_cross=cfg.arch == "encoder_decoder")
    if not cfg.tie_embeddings:
      self.lm_head = param(self, "lm_head", normal(cfg.init_std), (cfg.d_model, cfg.vocab_size),
                           ("embed", "vocab"))
    if cfg.value_head:
      self.value_head = ScalarHead(cfg)

  def _embed(self, tokens, with_prompt: bool = False):
    """Token embeddings [b, t, d], after the soft prompt's rows if with_prompt."""
    x = self.token_embedding(tokens)
    if with_prompt:
      x = self.soft_prompt(x)
    if self.config.scale_embeddings:
      x = x * jnp.asarray(math.sqrt(self.config.d_model), x.dtype)
    return x

  def encode(self, tokens, segments=None, positions=None, deterministic: bool = True):
    """Encoder outputs [b, s, d], the moe aux loss and the encoder segments (0 = padding);
    with prompt tuning s counts the soft prompt's positions too."""
    cfg = self.config
    if segments is None:
      segments = (tokens > 0).astype(jnp.int32)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    if cfg.prompt_length:
      segments, positions, _ = peft_layers.prompt_inputs(cfg.prompt_length, segments, positions)
    encoded, aux = self.encoder(self._embed(tokens, with_prompt=cfg.prompt_length > 0), segments=segments,
                                positions=positions, deterministic=deterministic)
    return encoded, aux, segments

  def decode(self, tokens, *, encoded=None, encoder_segments=None, segments=None, positions=None,
             prefix=None, decode: bool = False, deterministic: bool = True,
             with_prompt: Optional[bool] = None):
    """Decoder logits [b, t, vocab] in float32 and the moe aux loss.

    Prompt tuning of a decoder-only arch: positions count the real tokens (the soft prompt
    shifts them); with_prompt says whether the soft prompt goes in front of `tokens`: by
    default in a forward pass, not in a cached step (decode=True: the prefill, which
    __call__ runs with the prompt, has put it in the cache).
    """
    x, aux = self._decoder_states(tokens, encoded=encoded, encoder_segments=encoder_segments,
                                  segments=segments, positions=positions, prefix=prefix, decode=decode,
                                  deterministic=deterministic, with_prompt=with_prompt)
    return self._logits(x), aux

  def _decoder_states(self, tokens, *, encoded, encoder_segments, segments, positions, prefix, decode,
                      deterministic, with_prompt):
    """The decoder's final hidden states [b, t, d] of the real tokens, and the moe aux loss."""
    cfg = self.config
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    if prefix is not None:
      prefix = prefix.astype(jnp.bool_)
    prompt = cfg.prompt_length if cfg.arch != "encoder_decoder" else 0
    with_prompt = bool(prompt) and (not decode if with_prompt is None else with_prompt)
    if with_prompt:
      segments, positions, prefix = peft_layers.prompt_inputs(prompt, segments, positions, prefix)
    elif prompt:
      positions = positions + prompt
    x, aux = self.decoder(self._embed(tokens, with_prompt), segments=segments, positions=positions,
                          prefix=prefix, encoded=encoded, encoder_segments=encoder_segments,
                          decode=decode, deterministic=deterministic)
    if with_prompt:
      x = x[:, prompt:]  # the real tokens' outputs
    return x, aux

  def _features(self, x):
    """What the output layer multiplies: the final hidden states (scaled for T5.1.0)."""
    if self.config.scale_decoder_outputs:
      x = x * jnp.asarray(self.config.d_model ** -0.5, x.dtype)
    return x

  def output_weights(self):
    """The output layer [d_model, vocab]: the LM head, or the token embedding when tied."""
    return self.token_embedding.embedding.T if self.config.tie_embeddings else self.lm_head

  def _logits(self, x):
    x = self._features(x)
    logits = jnp.dot(x, self.output_weights().astype(x.dtype))
    return constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))

  def __call__(self, decoder_input_tokens, encoder_input_tokens=None, **inputs):
    """(float32 logits [b, t, vocab], moe aux loss) of a forward pass."""
    outputs, aux = self.forward(decoder_input_tokens, encoder_input_tokens, **inputs)
    return outputs["logits"], aux

  def forward(self, decoder_input_tokens, encoder_input_tokens=None, *, decoder_segment_ids=None,
              decoder_positions=None, decoder_causal_attention=None, encoder_segment_ids=None,
              encoder_positions=None, decode: bool = False, deterministic: bool = True,
              heads: tuple = ("logits",)):
    """({head: output} for the heads asked for, moe aux loss): 'logits' (float32 [b, t,
    vocab]), 'features' (what the output layer multiplies, [b, t, d_model]) and, with
    config.value_head, 'values' (float32 [b, t], the scalar head at every position)."""
    cfg = self.config
    encoded = enc_segments = None
    aux = jnp.zeros((), jnp.float32)
    if cfg.arch == "encoder_decoder":
      encoded, aux, enc_segments = self.encode(encoder_input_tokens, encoder_segment_ids,
                                               encoder_positions, deterministic)
    prefix = decoder_causal_attention if cfg.arch == "prefix_decoder" else None
    x, dec_aux = self._decoder_states(decoder_input_tokens, encoded=encoded, encoder_segments=enc_segments,
                                      segments=decoder_segment_ids, positions=decoder_positions,
                                      prefix=prefix, decode=decode, deterministic=deterministic,
                                      with_prompt=True)
    outputs = {}
    if "logits" in heads:
      outputs["logits"] = self._logits(x)
    if "features" in heads:
      outputs["features"] = self._features(x)
    if "values" in heads:
      if not cfg.value_head:
        raise ValueError("the 'values' head needs TransformerConfig.value_head=True")
      outputs["values"] = self.value_head(x)
    return outputs, aux + dec_aux
