"""Model wrappers in the roles of t5x's BaseModel: what trainer, evaluator and decoder call.

Batches use SeqIO feature-converter names. `decoder_input_tokens` are taken as given (the
data pipeline shifts the targets), so any token sequence can be scored.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.models.config import TransformerConfig
from jaxlm.models.transformer import Transformer

Batch = Mapping[str, Any]
Params = Any

_MODEL_INPUTS = ("decoder_input_tokens", "encoder_input_tokens", "decoder_segment_ids",
                 "decoder_positions", "decoder_causal_attention", "encoder_segment_ids",
                 "encoder_positions")


def cross_entropy(logits, targets, weights, z_loss: float = 0.0):
  """Per-token negative log-likelihood, z-loss (PaLM) and correctness, all float32."""
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = (lse - target_logit) * weights
  zl = z_loss * jnp.square(lse) * weights
  correct = (jnp.argmax(logits, -1) == targets) * weights
  return nll, zl, correct


def chunked_cross_entropy(features, output_weights, targets, weights, z_loss: float = 0.0, chunk: int = 1024):
  """cross_entropy of the logits features @ output_weights, computed `chunk` tokens at a
  time and recomputed in the backward pass (jax.checkpoint): memory holds one chunk's
  float32 logits [chunk, vocab], never the whole batch's. The same values and gradients."""
  b, t, d = features.shape
  n = b * t
  pad = -n % chunk
  flat = lambda x, fill: jnp.pad(x.reshape(n, *x.shape[2:]), [(0, pad)] + [(0, 0)] * (x.ndim - 2),
                                 constant_values=fill).reshape(-1, chunk, *x.shape[2:])
  xs = (flat(features, 0), flat(targets, 0), flat(weights.astype(jnp.float32), 0))

  @jax.checkpoint
  def one(inputs):
    x, y, w = inputs
    logits = jnp.dot(x, output_weights.astype(x.dtype)).astype(jnp.float32)
    return cross_entropy(logits, y, w, z_loss)

  out = jax.lax.map(one, xs)
  return tuple(o.reshape(-1)[:n].reshape(b, t) for o in out)


class TokenLosses(NamedTuple):
  """Model.token_losses: float32 [b, t] per-token terms, each already multiplied by the
  loss weights, the weights themselves, and the scalar MoE load-balancing loss."""
  nll: jax.Array
  z_loss: jax.Array
  correct: jax.Array
  weights: jax.Array
  aux: jax.Array


class Model:
  """init / loss_fn / score_batch / decoding hooks around one Transformer module, for all
  three families (decoder, prefix_decoder, encoder_decoder: config.arch)."""

  def __init__(self, config: TransformerConfig):
    self.config = config.validate()
    self.module = Transformer(self.config)

  # ---- parameters ----
  def _inputs(self, batch: Batch) -> dict:
    inputs = {k: jnp.asarray(batch[k]) for k in _MODEL_INPUTS if batch.get(k) is not None}
    if self.config.arch != "encoder_decoder":
      for k in ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions"):
        inputs.pop(k, None)
    elif "encoder_input_tokens" not in inputs:
      raise KeyError("encoder_decoder batches need 'encoder_input_tokens'")
    if self.config.arch != "prefix_decoder":
      inputs.pop("decoder_causal_attention", None)
    return inputs

  def _init_variables(self, rng, batch: Batch):
    heads = ("logits", "values") if self.config.value_head else ("logits",)
    return self.module.init({"params": rng}, **self._inputs(batch), heads=heads, method=Transformer.forward)

  def init(self, rng, batch: Batch) -> Params:
    """Parameters (param_dtype arrays, no axis metadata) for batches shaped like `batch`."""
    return nn.unbox(jax.jit(self._init_variables)(rng, batch)["params"])

  def logical_axes(self, batch: Batch):
    """PartitionSpecs of logical axis names, in the same tree structure as the parameters."""
    abstract = jax.eval_shape(self._init_variables, jax.random.key(0), batch)
    return nn.get_partition_spec(abstract)["params"]

  def param_shapes(self, batch: Optional[Batch] = None):
    batch = batch or self.dummy_batch(1, 8)
    return nn.unbox(jax.eval_shape(self._init_variables, jax.random.key(0), batch)["params"])

  def dummy_batch(self, batch_size: int, length: int, encoder_length: Optional[int] = None) -> dict:
    tokens = np.ones((batch_size, length), np.int32)
    batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": tokens,
             "decoder_loss_weights": np.ones_like(tokens)}
    if self.config.arch == "encoder_decoder":
      batch["encoder_input_tokens"] = np.ones((batch_size, encoder_length or length), np.int32)
    if self.config.arch == "prefix_decoder":
      batch["decoder_causal_attention"] = np.zeros_like(tokens)
    return batch

  @staticmethod
  def num_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token: 6 * (matmul parameters, MoE counted as active) plus the
    attention term 12 * layers * heads * head_dim * seq_len (PaLM appendix B)."""
    cfg = self.config
    n = 0.0
    for path, leaf in jax.tree_util.tree_flatten_with_path(self.param_shapes())[0]:
      names = [getattr(p, "key", str(p)) for p in path]
      size = float(np.prod(leaf.shape))
      if "position_embedding" in names:
        continue
      if "token_embedding" in names:
        size = size if cfg.tie_embeddings else 0.0  # a lookup, unless it is also the output layer
      if "moe" in names and names[-1] != "router":
        size *= cfg.experts_per_token / cfg.num_experts
      n += size
    layers = cfg.num_layers + (cfg.encoder_layers if cfg.arch == "encoder_decoder" else 0)
    return 6.0 * n + 12.0 * layers * cfg.num_heads * cfg.dim_per_head * seq_len

  # ---- forward, loss, scores ----
  def apply(self, params, batch: Batch, rng=None):
    """(float32 logits [b, t, vocab], moe aux loss); dropout is active iff rng is given."""
    outputs, aux = self.apply_heads(params, batch, heads=("logits",), rng=rng)
    return outputs["logits"], aux

  def apply_heads(self, params, batch: Batch, heads=("logits", "values"), rng=None):
    """({head: output}, moe aux loss) of one forward pass: 'logits' float32 [b, t, vocab],
    'values' float32 [b, t] (the scalar head of config.value_head at every position: a
    reward model reads it at a response's last token, PPO's value function at each)."""
    rngs = {"dropout": rng} if rng is not None else None
    return self.module.apply({"params": params}, **self._inputs(batch), rngs=rngs, deterministic=rng is None,
                             heads=tuple(heads), method=Transformer.forward)

  def targets_and_weights(self, batch: Batch):
    """decoder_target_tokens and float32 decoder_loss_weights (default: targets > 0)."""
    targets = jnp.asarray(batch["decoder_target_tokens"])
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else jnp.asarray(weights)
    return targets, weights.astype(jnp.float32)

  def token_losses(self, params, batch: Batch, rng=None) -> TokenLosses:
    """The per-token loss terms (nll, z-loss with config.z_loss, correctness) weighted by
    decoder_loss_weights, and the MoE aux loss: the one token loss that loss_sums,
    score_batch and the objectives reduce. With config.loss_chunk_tokens the logits are
    made and dropped chunk by chunk (chunked_cross_entropy)."""
    cfg = self.config
    targets, weights = self.targets_and_weights(batch)
    if not cfg.loss_chunk_tokens:
      logits, aux = self.apply(params, batch, rng)
      nll, zl, correct = cross_entropy(logits, targets, weights, cfg.z_loss)
      return TokenLosses(nll, zl, correct, weights, aux)
    outputs, aux = self.apply_heads(params, batch, heads=("features",), rng=rng)
    w = self.module.apply({"params": params}, method=Transformer.output_weights)
    nll, zl, correct = chunked_cross_entropy(outputs["features"], w, targets, weights, cfg.z_loss,
                                             cfg.loss_chunk_tokens)
    return TokenLosses(nll, zl, correct, weights, aux)

  def loss_sums(self, params, batch: Batch, rng=None):
    """(summed loss, weighted target count, metric sums) of token cross-entropy + z-loss +
    MoE aux (weighted by the token count): the pretraining objective's terms, summed so
    that microbatches add up (jaxlm.training.objectives.NextTokenObjective)."""
    t = self.token_losses(params, batch, rng)
    weight_sum = t.weights.sum()
    sums = {"cross_entropy": t.nll.sum(), "z_loss": t.z_loss.sum(), "aux_loss": t.aux * weight_sum,
            "accuracy": t.correct.sum()}
    return sums["cross_entropy"] + sums["z_loss"] + sums["aux_loss"], weight_sum, sums

  def loss_fn(self, params, batch: Batch, rng=None):
    """(mean loss, metrics): loss_sums divided by the batch's weighted target count."""
    loss, weight_sum, sums = self.loss_sums(params, batch, rng)
    normalizer = jnp.maximum(weight_sum, 1e-8)
    metrics = {k: v / normalizer for k, v in sums.items()}
    metrics.update(loss=loss / normalizer, weight_sum=weight_sum, nll_sum=sums["cross_entropy"])
    return loss / normalizer, metrics

  def score_batch(self, params, batch: Batch, per_token: bool = False):
    """Target log-likelihoods weighted by decoder_loss_weights: the per-example sum [b], or
    with per_token=True each target token's [b, t] (0 where the weight is 0)."""
    nll = self.token_losses(params, batch).nll
    return -nll if per_token else -nll.sum(-1)

  # ---- decoding hooks (used by jaxlm.inference.decoding) ----
  def init_cache(self, batch_size: int, max_length: int, encoder_length: Optional[int] = None):
    """Zeroed KV cache for `max_length` decoder positions."""
    batch = self.dummy_batch(batch_size, max_length, encoder_length)
    fn = lambda: self.module.init({"params": jax.random.key(0)}, **self._inputs(batch), decode=True)
    shapes = jax.eval_shape(fn)["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def prefill(self, params, cache, batch: Batch):
    """Runs the prompt through the model, filling the cache. Prompts are left-padded:
    decoder_segment_ids marks real tokens with 1 and padding with 0, decoder_positions
    counts from 0 at each prompt's first real token. Returns (logits, cache)."""
    (logits, _), state = self.module.apply({"params": params, "cache": cache}, **self._inputs(batch),
                                           decode=True, mutable=["cache"])
    return logits, state["cache"]

  def decode_step(self, params, cache, tokens, positions):
    """One decoding step for tokens [b, 1] at positions [b, 1]: (logits [b, 1, v], cache)."""
    (logits, _), state = self.module.apply(
        {"params": params, "cache": cache}, tokens, segments=jnp.ones_like(tokens),
        positions=positions, decode=True, method=Transformer.decode, mutable=["cache"])
    return logits, state["cache"]

  def reorder_cache(self, cache, indices):
    """Selects cache rows (beam search); scanned layers keep the batch on axis 1."""
    def take(path, x):
      if x.ndim == 0:
        return x
      scanned = any(getattr(p, "key", None) == "layers" for p in path)
      return jnp.take(x, indices, axis=1 if scanned else 0)
    return jax.tree_util.tree_map_with_path(take, cache)


def build_model(config: TransformerConfig) -> Model:
  """The model for `config`, after validating it and the kernel against the backend."""
  config.validate()
  if config.attention_kernel == "cudnn" and jax.default_backend() != "gpu":
    raise ValueError(f"TransformerConfig.attention_kernel='cudnn' needs a GPU, but the backend is "
                     f"{jax.default_backend()!r}; use 'auto' or 'xla'")
  return Model(config)
