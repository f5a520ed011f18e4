"""The model as prompting strategies see it: text in; texts, log-likelihoods or embeddings out.

:class:`PromptLM` holds a model, its parameters and a vocabulary (anything with
``encode(str) -> ids`` and ``decode(ids) -> str``: a seqio vocabulary, ``jaxlm.vocabularies``'
byte or SentencePiece vocabularies). Decoding goes through the one decoder
(``jaxlm.inference.infer.decode_texts``), scoring through the model's ``score_batch`` (the
evaluator's jitted copy), so a strategy's numbers are the evaluator's numbers.

    lm = PromptLM(model, params, vocab)
    lm.generate(["Q: 2 + 3\\nA:"], DecodeConfig(max_new_tokens=8))   # ['5']
    lm.samples(prompts, k=5, decoding=...)                            # k sampled texts each
    lm.score(prompts, continuations)                                  # log p(cont | prompt)
    lm.embed(texts)                                                   # [n, d_model]

Embeddings are the mean over a text's tokens of the last hidden states (the decoder stack's
output, or the encoder's for encoder-decoders), read with flax's ``capture_intermediates``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.evaluation.evaluator import score_batch_jit
from jaxlm.inference.decoding import DecodeConfig, round_up_to_bucket
from jaxlm.inference.infer import decode_texts
from jaxlm.vocabularies import PAD_ID

BUCKET = 16  # rows are padded to a multiple of this many tokens: few compilations


@dataclasses.dataclass
class PromptLM:
  """A model, its parameters and its vocabulary; ``batch_size`` rows per model call (the
  last batch padded), ``max_length`` tokens per scored or embedded row (longer rows keep
  their end; None: the model's max_len)."""
  model: Any
  params: Any
  vocab: Any
  batch_size: int = 16
  max_length: Optional[int] = None

  @property
  def _limit(self) -> int:
    return self.max_length or self.model.config.max_len

  def encode(self, text: str) -> List[int]:
    return list(self.vocab.encode(text))

  def decode(self, ids: Sequence[int]) -> str:
    return self.vocab.decode(list(ids))

  def generate(self, prompts: Sequence[str], decoding: DecodeConfig) -> List[str]:
    """The decoded continuation of every prompt (cut at EOS)."""
    if not prompts:
      return []
    rows = decode_texts(self.model, self.params, self.vocab, list(prompts), decoding,
                        batch_size=self.batch_size)
    return [r["output"] for r in rows]

  def samples(self, prompts: Sequence[str], k: int, decoding: DecodeConfig) -> List[List[str]]:
    """k decoded continuations of every prompt (sample them: DecodeConfig.method='sample')."""
    flat = self.generate([p for p in prompts for _ in range(k)], decoding)
    return [flat[i * k:(i + 1) * k] for i in range(len(prompts))]

  def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
    """log p(continuation | prompt) [n], summed over the continuation's tokens (the prompt
    and the continuation tokenized apart, as lm-evaluation-harness does)."""
    if len(prompts) != len(continuations):
      raise ValueError(f"PromptLM.score: {len(prompts)} prompts but {len(continuations)} continuations")
    rows = [(self.encode(p), self.encode(c)) for p, c in zip(prompts, continuations)]
    out = []
    for start in range(0, len(rows), self.batch_size):
      batch = self._score_batch(rows[start:start + self.batch_size])
      out.append(np.asarray(score_batch_jit(self.model, self.params, batch))[:len(rows[start:start + self.batch_size])])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)

  def _score_batch(self, rows) -> dict:
    """SeqIO-feature arrays of (prompt ids, continuation ids) rows, padded to batch_size."""
    enc_dec = self.model.config.arch == "encoder_decoder"
    if enc_dec:
      enc = [self._tail(x + [getattr(self.vocab, "eos_id", 1)]) for x, _ in rows]
      dec = [self._tail(y) for _, y in rows]
      seqs, starts = dec, [0] * len(rows)
    else:
      seqs = [self._tail(x + y) for x, y in rows]
      starts = [max(0, len(s) - len(y)) for s, (_, y) in zip(seqs, rows)]
    width = round_up_to_bucket(max(1, max(map(len, seqs))), BUCKET)
    names = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
    batch = {k: np.zeros((self.batch_size, width), np.int32) for k in names}
    for i, (seq, start) in enumerate(zip(seqs, starts)):
      batch["decoder_target_tokens"][i, :len(seq)] = seq
      batch["decoder_input_tokens"][i, 1:len(seq)] = seq[:-1]  # BOS 0 first
      batch["decoder_loss_weights"][i, start:len(seq)] = 1
    if enc_dec:
      enc_width = round_up_to_bucket(max(map(len, enc)), BUCKET)
      batch["encoder_input_tokens"] = np.zeros((self.batch_size, enc_width), np.int32)
      for i, x in enumerate(enc):
        batch["encoder_input_tokens"][i, :len(x)] = x
    elif self.model.config.arch == "prefix_decoder":
      batch["decoder_causal_attention"] = np.zeros_like(batch["decoder_input_tokens"])
      for i, start in enumerate(starts):
        batch["decoder_causal_attention"][i, :start + 1] = 1  # BOS + prompt: attended both ways
    return batch

  def _tail(self, ids: List[int]) -> List[int]:
    keep = self._limit - (0 if self.model.config.arch == "encoder_decoder" else 1)
    return ids[-keep:] if len(ids) > keep else ids

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    """Mean-pooled last hidden states [n, d_model] of the texts (BOS excluded)."""
    out = []
    for start in range(0, len(texts), self.batch_size):
      chunk = [self._tail(self.encode(t)) or [PAD_ID] for t in texts[start:start + self.batch_size]]
      width = round_up_to_bucket(max(map(len, chunk)) + 1, BUCKET)
      tokens = np.zeros((self.batch_size, width), np.int32)
      mask = np.zeros((self.batch_size, width), np.int32)
      for i, ids in enumerate(chunk):
        tokens[i, 1:1 + len(ids)] = ids
        mask[i, 1:1 + len(ids)] = 1
      pooled = _mean_hidden(self.model, self.params, tokens, mask)
      out.append(np.asarray(pooled)[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, self.model.config.d_model), np.float32)


@functools.partial(jax.jit, static_argnums=0)
def _mean_hidden(model, params, tokens, mask):
  """Mean over mask of the last stack's hidden states: the decoder's (BOS + text) or, for encoder-decoders, the encoder's (the text)."""
  enc_dec = model.config.arch == "encoder_decoder"
  stack = "encoder" if enc_dec else "decoder"
  if enc_dec:
    inputs = dict(decoder_input_tokens=jnp.zeros((tokens.shape[0], 1), jnp.int32),
                  encoder_input_tokens=jnp.roll(tokens, -1, axis=1))
    mask = jnp.roll(mask, -1, axis=1)
  else:
    inputs = dict(decoder_input_tokens=tokens)  # causal: the right padding is never attended
  _, state = model.module.apply({"params": params}, **inputs, capture_intermediates=lambda m, name:
                                m.name == stack and name == "__call__", mutable=["intermediates"])
  hidden = state["intermediates"][stack]["__call__"][0][0].astype(jnp.float32)
  weights = mask.astype(jnp.float32)[..., None]
  return (hidden * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
