"""Decoding: greedy, temperature / top-k / top-p sampling, and beam search, with a KV cache.

One compiled program per (model, shapes, options): `jax.jit` around prefill + a
`jax.lax.while_loop` of single-token decode steps, so no Python runs per token.

Prompt layout. Callers give prompts right-padded, `prompt` [b, P] with `prompt_mask`
[b, P] (1 = real token), as SeqIO batches have them. Decoder-only prompts start with the
BOS token 0, exactly like training inputs (targets shifted right): for a SeqIO PrefixLM
batch the prompt is `decoder_input_tokens` where `decoder_causal_attention` is 1. The
decoder moves each prompt to the right end of the row (left padding), so every row's
next token is at the same cache index; positions still count from 0 at each prompt's
first real token and padded keys are masked by segment id 0. Prefix decoders attend the
prompt both ways. Encoder-decoders encode `encoder_input_tokens` once (cross-attention
keys and values are cached) and start the decoder from BOS.

Outputs hold the new tokens only: [b, max_new_tokens] (beam search: [b, beams, ...],
best first), the EOS included, 0 after it.

Methods:
  greedy   argmax.
  sample   softmax(logits / temperature), restricted to the top_k tokens (0: all) and to
           the smallest set of most likely tokens with probability >= top_p (nucleus,
           Holtzman et al. 2020; 1.0: all). temperature 0 is greedy.
  beam     beam search over log-probabilities; finished hypotheses are ranked by
           log p / ((5 + length) / 6) ** length_penalty (Wu et al. 2016, as in t5x).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("greedy", "sample", "beam")
NEG_INF = -1.0e7  # finite, so that sums and divisions of dead hypotheses stay finite


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """Every decoding knob; `generate` and `predict_batch` take it whole.

  The defaults decode greedily and stop at EOS id 1 (SeqIO vocabularies' EOS), so a run
  file binds only what it changes.
    method          'greedy', 'sample' or 'beam' (see the module docstring).
    max_new_tokens  tokens to decode after each prompt. None: the caller sizes it
                    (predict_batch: the room the shortest prompt leaves in the batch's rows;
                    the evaluator: the task's longest target); generate needs a number.
    temperature     sample: logits are divided by it; 0 is greedy.
    top_k           sample: keep the top_k most likely tokens; 0 keeps all.
    top_p           sample: keep the top_p nucleus, in (0, 1]; 1.0 keeps all.
    num_beams       beam: hypotheses kept per prompt.
    length_penalty  beam: alpha of ((5 + length) / 6) ** alpha; 0 ranks by log p.
    eos_id          decoding of a row stops after it; None: always max_new_tokens.
    seed            generate's sampling key is jax.random.key(seed) unless it is given rng.
    prompt_bucket   prompts are padded to a multiple of this many tokens before generate
                    sees them (predict_batch, infer.tokenize_prompts), so nearby prompt
                    lengths share one compiled program; 1: the longest prompt's width.
  An invalid value raises ValueError naming the field.
  """
  method: str = "greedy"
  max_new_tokens: Optional[int] = None
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  num_beams: int = 4
  length_penalty: float = 0.6
  eos_id: Optional[int] = 1
  seed: int = 0
  prompt_bucket: int = 16

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"DecodeConfig.method={self.method!r}: must be one of {METHODS}")
    if self.max_new_tokens is not None and self.max_new_tokens < 1:
      raise ValueError(f"DecodeConfig.max_new_tokens={self.max_new_tokens} must be >= 1 (or None)")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"DecodeConfig.top_p={self.top_p} must be in (0, 1]")
    for field in ("temperature", "top_k"):
      if getattr(self, field) < 0:
        raise ValueError(f"DecodeConfig.{field}={getattr(self, field)} must be >= 0")
    for field in ("num_beams", "prompt_bucket"):
      if getattr(self, field) < 1:
        raise ValueError(f"DecodeConfig.{field}={getattr(self, field)} must be >= 1")


class DecodeOutput(NamedTuple):
  tokens: jax.Array    # [b, n] (beam: [b, beams, n]) new tokens, EOS included, 0 after it
  scores: jax.Array    # [b] (beam: [b, beams]) ranking score: log p (beam: length-normalized)
  logprobs: jax.Array  # like scores: summed model log-probabilities of the tokens (temperature 1)
  lengths: jax.Array   # like scores: number of new tokens, EOS included


def brevity_penalty(alpha, length):
  """GNMT's length normalization ((5 + length) / 6) ** alpha."""
  return ((5.0 + length) / 6.0) ** alpha


# ---- token selection ----
def filter_logits(logits, top_k: int = 0, top_p: float = 1.0):
  """Sets logits outside the top_k and outside the top_p nucleus to -inf."""
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_before < top_p  # the most likely token is always kept
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def select_tokens(rng, logits, *, greedy: bool, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0):
  """Next tokens [b] from logits [b, vocab]."""
  if greedy or temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits.astype(jnp.float32) / temperature, top_k, top_p)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


# ---- prompts and prefill ----
def left_pad(tokens, mask):
  """Right-padded prompts -> (tokens, segment_ids, positions, lengths), left-padded."""
  lengths = jnp.maximum(jnp.sum(mask.astype(jnp.int32), axis=1), 1)
  width = tokens.shape[1]
  source = jnp.arange(width)[None, :] - (width - lengths)[:, None]
  valid = source >= 0
  moved = jnp.take_along_axis(tokens, jnp.maximum(source, 0), axis=1)
  return (jnp.where(valid, moved, 0).astype(jnp.int32), valid.astype(jnp.int32),
          jnp.maximum(source, 0).astype(jnp.int32), lengths.astype(jnp.int32))


def prefill(model, params, prompt, prompt_mask, encoder_input_tokens, max_new_tokens: int):
  """Fills a fresh cache with the prompts: (next-token logits [b, v], cache, lengths [b])."""
  tokens, segments, positions, lengths = left_pad(prompt, prompt_mask)
  b, width = tokens.shape
  enc_len = None if encoder_input_tokens is None else encoder_input_tokens.shape[1]
  cache = model.init_cache(b, width + max_new_tokens, enc_len)
  batch = {"decoder_input_tokens": tokens, "decoder_segment_ids": segments,
           "decoder_positions": positions, "decoder_causal_attention": segments}
  if encoder_input_tokens is not None:
    batch["encoder_input_tokens"] = encoder_input_tokens
  logits, cache = model.prefill(params, cache, batch)
  return logits[:, -1].astype(jnp.float32), cache, lengths


def _eos(eos_id):
  return -1 if eos_id is None else eos_id


def _lengths(tokens, eos_id):
  """Tokens up to and including the first EOS (all of them if there is none)."""
  is_eos = tokens == _eos(eos_id)
  return jnp.where(is_eos.any(-1), jnp.argmax(is_eos, -1) + 1, tokens.shape[-1]).astype(jnp.int32)


# ---- greedy and sampling ----
def _sample_loop(model, params, cache, logits, lengths, rng, *, max_new_tokens, eos_id, greedy,
                 temperature, top_k, top_p, done=None, limit=None, pause_ids=()):
  """The loop's final state: tokens [b, n] from `logits` on; row r's first new token is at
  position lengths[r]. Rows already `done` emit 0s; the loop stops after `limit` (<= n,
  traced) tokens, or as soon as a live row emits one of `pause_ids` (tools: that token is
  'last', not yet in the cache)."""
  b, n, eos = logits.shape[0], max_new_tokens, _eos(eos_id)
  done = jnp.zeros((b,), bool) if done is None else done
  limit = n if limit is None else limit
  pauses = jnp.asarray(pause_ids or (-2,), jnp.int32)

  def paused(tok, was_done):
    return jnp.any(jnp.isin(tok, pauses) & ~was_done)

  def pick(rng, logits, done):
    tok = select_tokens(rng, logits, greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tok[:, None], axis=-1)[:, 0]
    return jnp.where(done, 0, tok), jnp.where(done, 0.0, logp)

  rng, sub = jax.random.split(rng)
  tok, logp = pick(sub, logits, done)
  state = dict(i=jnp.array(1, jnp.int32), tokens=jnp.zeros((b, n), jnp.int32).at[:, 0].set(tok),
               last=tok, logprob=logp, done=done | (tok == eos), cache=cache, rng=rng,
               paused=paused(tok, done))

  def cond(s):
    return (s["i"] < limit) & ~jnp.all(s["done"]) & ~s["paused"]

  def body(s):
    i = s["i"]
    logits, cache = model.decode_step(params, s["cache"], s["last"][:, None], (lengths + i - 1)[:, None])
    rng, sub = jax.random.split(s["rng"])
    tok, logp = pick(sub, logits[:, 0].astype(jnp.float32), s["done"])
    return dict(i=i + 1, tokens=jax.lax.dynamic_update_slice(s["tokens"], tok[:, None], (0, i)),
                last=tok, logprob=s["logprob"] + logp, done=s["done"] | (tok == eos), cache=cache,
                rng=rng, paused=paused(tok, s["done"]))

  return jax.lax.while_loop(cond, body, state)


# ---- beam search ----
def _beam_loop(model, params, cache, logits, lengths, *, max_new_tokens, eos_id, num_beams, alpha):
  b, vocab = logits.shape
  k, n, eos = num_beams, max_new_tokens, _eos(eos_id)
  if 2 * k > vocab:
    raise ValueError(f"num_beams={k} needs a vocabulary of at least {2 * k} tokens, got {vocab}")
  rows = jnp.repeat(jnp.arange(b), k)
  cache = model.reorder_cache(cache, rows)   # every beam starts from its prompt's cache
  positions = lengths[rows]

  def take(x, idx):  # x [b, m, ...], idx [b, j] -> [b, j, ...]
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

  def expand(s, logits, i):
    """Extends every live beam by every token; keeps the k best live and k best finished."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(b, k, vocab)
    cand = (s["live_logprob"][:, :, None] + logp).reshape(b, k * vocab)
    top, idx = jax.lax.top_k(cand, 2 * k)  # 2k: at least k of them do not end in EOS
    origin, tok = idx // vocab, (idx % vocab).astype(jnp.int32)
    seqs = jax.lax.dynamic_update_slice(take(s["live_seqs"], origin), tok[:, :, None], (0, 0, i))
    is_eos = tok == eos
    live_logprob, li = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top), k)
    finish = (is_eos | (i == n - 1)) & (top > NEG_INF / 2)  # at the last step every hypothesis ends
    score = jnp.where(finish, top / brevity_penalty(alpha, (i + 1).astype(jnp.float32)), NEG_INF)
    all_scores = jnp.concatenate([s["fin_scores"], score], 1)
    fin_scores, fi = jax.lax.top_k(all_scores, k)
    flat = jnp.arange(b)[:, None] * k + take(origin, li)
    return dict(
        i=i + 1, live_seqs=take(seqs, li), live_logprob=live_logprob, last=take(tok, li).reshape(-1),
        fin_seqs=take(jnp.concatenate([s["fin_seqs"], seqs], 1), fi), fin_scores=fin_scores,
        fin_logprob=take(jnp.concatenate([s["fin_logprob"], top], 1), fi),
        fin_flags=take(jnp.concatenate([s["fin_flags"], finish], 1), fi),
        cache=model.reorder_cache(s["cache"], flat.reshape(-1)))

  first = jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF)  # one live beam until the first expansion
  state = dict(i=jnp.array(0, jnp.int32), live_seqs=jnp.zeros((b, k, n), jnp.int32),
               live_logprob=jnp.broadcast_to(first, (b, k)), last=jnp.zeros((b * k,), jnp.int32),
               fin_seqs=jnp.zeros((b, k, n), jnp.int32), fin_scores=jnp.full((b, k), NEG_INF),
               fin_logprob=jnp.full((b, k), NEG_INF), fin_flags=jnp.zeros((b, k), bool), cache=cache)
  state = expand(state, jnp.repeat(logits, k, axis=0), state["i"])

  def cond(s):
    # A row is done when its worst finished hypothesis beats the best score any live one can
    # still reach: log p only falls, and for alpha >= 0 the penalty is largest at length n.
    best_live = s["live_logprob"][:, 0] / brevity_penalty(alpha, float(n))
    worst_finished = jnp.min(jnp.where(s["fin_flags"], s["fin_scores"], NEG_INF), axis=1)
    return (s["i"] < n) & ~jnp.all(worst_finished > best_live)

  def body(s):
    logits, cache = model.decode_step(params, s["cache"], s["last"][:, None],
                                      (positions + s["i"] - 1)[:, None])
    return expand(dict(s, cache=cache), logits[:, 0], s["i"])

  s = jax.lax.while_loop(cond, body, state)
  return DecodeOutput(s["fin_seqs"], s["fin_scores"], s["fin_logprob"], _lengths(s["fin_seqs"], eos_id))


# ---- entry points ----
@functools.partial(jax.jit, static_argnames=("model", "config"))
def _generate(model, params, prompt, prompt_mask, encoder_input_tokens, rng, *, config: DecodeConfig):
  n = config.max_new_tokens
  logits, cache, lengths = prefill(model, params, prompt, prompt_mask, encoder_input_tokens, n)
  if config.method == "beam":
    return _beam_loop(model, params, cache, logits, lengths, max_new_tokens=n, eos_id=config.eos_id,
                      num_beams=config.num_beams, alpha=config.length_penalty)
  s = _sample_loop(model, params, cache, logits, lengths, rng, **_sampling(config))
  return DecodeOutput(s["tokens"], s["logprob"], s["logprob"], _lengths(s["tokens"], config.eos_id))


def _sampling(config: DecodeConfig) -> dict:
  return dict(max_new_tokens=config.max_new_tokens, eos_id=config.eos_id, greedy=config.method == "greedy",
              temperature=config.temperature, top_k=config.top_k, top_p=config.top_p)


# ---- resumable decoding (tool calls: jaxlm.prompting.tools) ----
class Segment(NamedTuple):
  """What decode_segment returns: `steps` new tokens per row (tokens [b, n], 0 past them
  and after EOS), the last one ('last' [b]) not yet in the cache; `done` [b] rows ended at
  EOS; `paused` whether a row emitted a pause token; the cache and the sampling key."""
  tokens: jax.Array
  logprobs: jax.Array
  steps: jax.Array
  last: jax.Array
  done: jax.Array
  paused: jax.Array
  cache: Any
  rng: jax.Array


@functools.partial(jax.jit, static_argnames=("model", "room"))
def start_decoding(model, params, prompt, prompt_mask, *, room: int):
  """prefill for decode_segment: (next-token logits [b, v], a cache with `room` positions
  after the prompt width, the next positions [b]) of right-padded decoder prompts."""
  return prefill(model, params, prompt, prompt_mask, None, room)


@functools.partial(jax.jit, static_argnames=("model", "config", "pause_ids"))
def decode_segment(model, params, cache, logits, positions, done, limit, rng, *, config: DecodeConfig,
                   pause_ids=()) -> Segment:
  """Greedy or sampled decoding (config, a decoder-only model) from a filled cache: the
  first new token comes from `logits` [b, v] at `positions` [b]; stops at EOS, after
  `limit` tokens (traced: one compilation for every limit <= config.max_new_tokens) or
  when a row emits a token of `pause_ids`, so that the caller can extend the cache
  (extend_cache) and resume."""
  if config.method == "beam":
    raise ValueError("decode_segment decodes greedily or by sampling; DecodeConfig.method='beam' cannot pause")
  s = _sample_loop(model, params, cache, logits, positions, rng, done=done, limit=limit,
                   pause_ids=pause_ids, **_sampling(config))
  return Segment(s["tokens"], s["logprob"], s["i"], s["last"], s["done"], s["paused"], s["cache"], s["rng"])


@functools.partial(jax.jit, static_argnums=0)
def extend_cache(model, params, cache, tokens, segments, positions):
  """Appends tokens [b, t] (segments [b, t]: 1 real, 0 padding; positions [b, t]) to every
  row of a decoder's cache after what it holds: (next-token logits [b, v] at the last
  column, cache). Nothing before them is encoded again."""
  batch = {"decoder_input_tokens": tokens, "decoder_segment_ids": segments, "decoder_positions": positions,
           "decoder_causal_attention": jnp.zeros_like(segments)}
  logits, cache = model.prefill(params, cache, batch)
  return logits[:, -1].astype(jnp.float32), cache


def generate(model, params, prompt=None, prompt_mask=None, encoder_input_tokens=None, *,
             config: DecodeConfig, rng=None) -> DecodeOutput:
  """Decodes config.max_new_tokens tokens after each prompt (layouts: the module docstring).

  prompt [b, P] right-padded (prompt_mask [b, P], default: all of it). Decoder-only models
  need it (BOS 0 first); encoder-decoders take encoder_input_tokens [b, S] (0 = padding)
  and default the decoder prompt to BOS. rng: the sampling key (default:
  jax.random.key(config.seed)). config.prompt_bucket is not read here: the prompt is
  decoded at the width it comes in.
  """
  if config.max_new_tokens is None:
    raise ValueError("generate needs DecodeConfig.max_new_tokens (None is for callers that size it, "
                     "such as predict_batch)")
  is_enc_dec = model.config.arch == "encoder_decoder"
  if is_enc_dec and encoder_input_tokens is None:
    raise ValueError("encoder_decoder models need encoder_input_tokens")
  if not is_enc_dec:
    encoder_input_tokens = None
  if prompt is None:
    if not is_enc_dec:
      raise ValueError(f"arch={model.config.arch!r} needs a prompt (start it with BOS 0)")
    prompt = jnp.zeros((encoder_input_tokens.shape[0], 1), jnp.int32)
  prompt = jnp.asarray(prompt, jnp.int32)
  prompt_mask = jnp.ones_like(prompt) if prompt_mask is None else jnp.asarray(prompt_mask, jnp.int32)
  if encoder_input_tokens is not None:
    encoder_input_tokens = jnp.asarray(encoder_input_tokens, jnp.int32)
  n = config.max_new_tokens
  if model.config.position == "learned" and prompt.shape[1] + n > model.config.max_len:
    raise ValueError(f"prompt width {prompt.shape[1]} + DecodeConfig.max_new_tokens={n} exceeds "
                     f"TransformerConfig.max_len={model.config.max_len} (learned positions)")
  rng = jax.random.key(config.seed) if rng is None else rng
  # The compiled program does not read seed or prompt_bucket: one compilation for all of them.
  program = dataclasses.replace(config, seed=0, prompt_bucket=1)
  return _generate(model, params, prompt, prompt_mask, encoder_input_tokens, rng, config=program)


def best_hypotheses(out: DecodeOutput) -> DecodeOutput:
  """Beam search's best hypothesis of each row (tokens [b, n], the rest [b]); a greedy or
  sampled output as it is."""
  return DecodeOutput(*(x[:, 0] for x in out)) if out.tokens.ndim == 3 else out


def round_up_to_bucket(length: int, bucket: int) -> int:
  """length rounded up to a multiple of bucket (DecodeConfig.prompt_bucket; 1: length)."""
  return -(-length // bucket) * bucket


def batch_prompts(model, batch: Mapping[str, Any], prompt_bucket: int):
  """(prompt, prompt_mask, encoder_input_tokens, room) of a SeqIO batch.

  Decoder-only: the prompt is decoder_input_tokens where decoder_causal_attention is 1
  (PrefixLM batches: BOS + inputs); without decoder_causal_attention only the BOS. The
  prompt width is the longest prompt rounded up to prompt_bucket; room is what the
  shortest prompt leaves in the row. Encoder-decoder: the encoder input, and room is the
  decoder width (None if the batch has no decoder features).
  """
  if model.config.arch == "encoder_decoder":
    enc = np.asarray(batch["encoder_input_tokens"])
    dec = batch.get("decoder_input_tokens", batch.get("decoder_target_tokens"))
    return None, None, enc, (None if dec is None else int(np.shape(dec)[1]))
  tokens = np.asarray(batch["decoder_input_tokens"])
  b, width = tokens.shape
  if batch.get("decoder_causal_attention") is not None:
    lengths = np.asarray(batch["decoder_causal_attention"]).astype(np.int32).sum(1)
  else:
    lengths = np.zeros((b,), np.int32)
  lengths = np.maximum(lengths, 1)
  p = min(width, round_up_to_bucket(int(lengths.max()), prompt_bucket))
  mask = (np.arange(p)[None] < lengths[:, None]).astype(np.int32)
  return tokens[:, :p] * mask, mask, None, max(1, int(width - lengths.min()))


def predict_batch_with_aux(model, params, batch: Mapping[str, Any], config: Optional[DecodeConfig] = None,
                           rng=None, return_all_beams: bool = False):
  """(tokens [b, n], aux) for a SeqIO-feature batch; the t5x predict_batch_with_aux role.

  config: DecodeConfig (default: DecodeConfig() as gin binds it); its max_new_tokens None
  decodes the room the batch leaves (see batch_prompts). aux: 'scores', 'logprobs' and
  'lengths' [b] of the returned (best) sequences, and with return_all_beams (beam search)
  also 'beams' [b, k, n] and 'beam_scores' [b, k].
  """
  config = config or DecodeConfig()
  prompt, mask, enc, room = batch_prompts(model, batch, config.prompt_bucket)
  if config.max_new_tokens is None:
    if room is None:
      raise ValueError("DecodeConfig.max_new_tokens is None and the batch has no decoder features "
                       "to size it by")
    config = dataclasses.replace(config, max_new_tokens=room)
  out = generate(model, params, prompt, mask, enc, config=config, rng=rng)
  best = best_hypotheses(out)
  aux = {"scores": best.scores, "logprobs": best.logprobs, "lengths": best.lengths}
  if return_all_beams and out.tokens.ndim == 3:
    aux.update(beams=out.tokens, beam_scores=out.scores)
  return best.tokens, aux


def predict_batch(model, params, batch: Mapping[str, Any], config: Optional[DecodeConfig] = None, rng=None):
  """Decoded tokens [b, n] for a SeqIO-feature batch (t5x's predict_batch role)."""
  return predict_batch_with_aux(model, params, batch, config, rng)[0]
