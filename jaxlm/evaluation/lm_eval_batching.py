"""Batches of lm-eval requests for a jaxlm model: sorted by length, padded to buckets.

`score_rows` runs scored rows (model inputs, targets, how many of the last targets count)
through one jitted call of the model's token losses per batch: rows longest first, each
batch padded to a multiple of `bucket` tokens and to `batch_size` rows, so a task compiles
one program per width it meets and the last batch costs no new shape. Rows are
right-padded: a causal decoder never attends the padding from a real token, so each row's
values are the ones it gets alone. `generate` decodes right-padded prompts with jaxlm's
decoder (jaxlm.inference.decoding.generate, which left-aligns them itself).
"""
from __future__ import annotations

import functools
from typing import List, NamedTuple, Sequence

import jax
import numpy as np

from jaxlm.inference.decoding import DecodeConfig, generate as decode, round_up_to_bucket


class ScoredRow(NamedTuple):
  """Predict targets[i] from inputs[:i + 1]; the last num_scored targets count."""
  inputs: Sequence[int]
  targets: Sequence[int]
  num_scored: int


@functools.partial(jax.jit, static_argnums=0)
def token_scores(model, params, inputs, targets, weights):
  """(log p(target) [b, t], target is the argmax [b, t]) where weights is 1, else 0: the
  model's own token losses (Model.token_losses)."""
  losses = model.token_losses(params, {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
                                       "decoder_loss_weights": weights})
  return -losses.nll, losses.correct


def score_rows(model, params, rows: Sequence[ScoredRow], batch_size: int, bucket: int, max_width: int):
  """[(log-probabilities [num_scored], is-argmax [num_scored])] of every row, in its order."""
  order = sorted(range(len(rows)), key=lambda i: (-len(rows[i].inputs), i))
  out: List = [None] * len(rows)
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    longest = max(len(rows[i].inputs) for i in chunk)
    width = max(longest, min(round_up_to_bucket(longest, bucket), max_width))
    arrays = {k: np.zeros((batch_size, width), np.int32) for k in ("inputs", "targets", "weights")}
    for j, i in enumerate(chunk):
      row = rows[i]
      n = len(row.inputs)
      arrays["inputs"][j, :n] = row.inputs
      arrays["targets"][j, :n] = row.targets
      arrays["weights"][j, n - row.num_scored:n] = 1
    logp, correct = (np.asarray(x) for x in token_scores(model, params, arrays["inputs"], arrays["targets"],
                                                         arrays["weights"]))
    for j, i in enumerate(chunk):
      n, k = len(rows[i].inputs), rows[i].num_scored
      out[i] = (logp[j, n - k:n], correct[j, n - k:n] > 0)
  return out


def generate(model, params, prompts: Sequence[Sequence[int]], config: DecodeConfig, batch_size: int, width: int,
             rng) -> List[List[int]]:
  """New tokens (EOS included, 0 after it) of each prompt (at most batch_size of them),
  decoded in one call with the prompts right-padded to `width` and the batch to batch_size
  rows."""
  tokens = np.zeros((batch_size, width), np.int32)
  mask = np.zeros((batch_size, width), np.int32)
  for i, ids in enumerate(prompts):
    tokens[i, :len(ids)] = ids
    mask[i, :len(ids)] = 1
  out = decode(model, params, tokens, mask, config=config, rng=rng)
  return np.asarray(out.tokens)[:len(prompts)].tolist()
