"""Reward models: an LM with a scalar head (TransformerConfig.value_head) whose output at a
response's last token is the response's reward (InstructGPT's step 2, Ouyang et al. 2022,
"Training language models to follow instructions with human feedback"), trained on ranked
preferences as an objective of the one trainer; start it from an SFT or pretrained
checkpoint with train.init_from (the head, absent there, keeps its init).

Batches (jaxlm.data.preferences.PreferenceData): rows are (prompt, response) sequences, the
responses of one prompt grouped by `response_group` [rows] (0: an empty row) and ranked by
`response_rank` [rows] (0 = best). `preference_pairs` turns them into all C(K, 2) ordered
pairs (w, l) of each prompt, w ranked above l, each weighted 1 / C(K, 2) (equal ranks make
no pair; an empty row none).

RewardObjective, per prompt x with K ranked responses (InstructGPT eq. 1, with Llama 2's
margin and a centering penalty in the spirit of Eisenstein et al. 2023):
  loss(x) = -1/C(K,2) * sum_{(w,l)} log sigmoid(r(x, y_w) - r(x, y_l) - margin)
            + centering * (mean_k r(x, y_k))^2
summed over the prompts of the batch and divided by their number (the normalizer), so a
prompt weighs the same whatever its K (InstructGPT's point: all pairs of a prompt in one
batch element, no overfitting to repeated responses) and K = 2 is the pairwise loss. A K=4
ranking gives exactly the loss and gradient of its 6 pairs given as pairwise preferences.
Metric sums (divided by the prompts): accuracy (the share of a prompt's pairs with
r_w > r_l), reward_margin (mean r_w - r_l), reward_mean, ranking_loss, centering_loss,
pairs (pairs per prompt).
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Optional

import gin
import jax
import jax.numpy as jnp

from jaxlm.training.objectives import model_params


def last_token_index(weights):
  """[b] int32: the position of each row's last weighted (response) token; 0 for a row
  without one. Rows are left-aligned or packed-free; padding after the response is fine."""
  weights = jnp.asarray(weights) > 0
  positions = jnp.arange(weights.shape[1], dtype=jnp.int32)
  return jnp.max(jnp.where(weights, positions, 0), axis=1)


def sequence_scores(model, params, batch, rng=None):
  """float32 [b]: the scalar head read at each row's last response token (the positions
  where decoder_loss_weights > 0; targets > 0 without weights)."""
  outputs, _ = model.apply_heads(params, batch, heads=("values",), rng=rng)
  _, weights = model.targets_and_weights(batch)
  index = last_token_index(weights)
  return jnp.take_along_axis(outputs["values"], index[:, None], axis=1)[:, 0]


@dataclasses.dataclass(frozen=True)
class PreferencePairs:
  """The pairs of a preference batch. weights [b, b]: w[i, j] = 1 / (pairs of the prompt)
  where rows i and j answer one prompt and i is ranked above j, else 0. same [b, b]: rows of
  one present prompt. size [b]: the present responses of row i's prompt (0 for an empty
  row). prompts: the number of prompts with at least one pair (the normalizer)."""
  weights: jax.Array
  same: jax.Array
  size: jax.Array
  prompts: jax.Array


def preference_pairs(batch, weights) -> PreferencePairs:
  """PreferencePairs of a batch with response_group and response_rank [rows]; `weights`
  are its loss weights [rows, length] (a row without any is absent)."""
  for key in ("response_group", "response_rank"):
    if key not in batch:
      raise ValueError(f"a preference batch needs the per-row feature {key!r} "
                       "(jaxlm.data.preferences.PreferenceData makes it)")
  group, rank = jnp.asarray(batch["response_group"]), jnp.asarray(batch["response_rank"])
  present = (group > 0) & (jnp.asarray(weights).sum(-1) > 0)
  same = (group[:, None] == group[None, :]) & present[:, None] & present[None, :]
  above = same & (rank[:, None] < rank[None, :])
  above, same = above.astype(jnp.float32), same.astype(jnp.float32)
  pairs_of_prompt = same @ above.sum(1)  # [b]: the pairs of row i's prompt
  has_pairs = pairs_of_prompt > 0
  w = above * jnp.where(has_pairs, 1.0 / jnp.where(has_pairs, pairs_of_prompt, 1.0), 0.0)[:, None]
  size = same.sum(1)
  prompts = jnp.where(has_pairs, 1.0 / jnp.maximum(size, 1.0), 0.0).sum()
  return PreferencePairs(w, same * has_pairs[:, None], size * has_pairs, prompts)


def per_prompt_mean(pairs: PreferencePairs, values):
  """[b]: the mean of `values` [b] over the responses of row i's prompt (0 if none)."""
  return (pairs.same @ values) / jnp.maximum(pairs.size, 1.0)


def prompt_sum(pairs: PreferencePairs, per_row):
  """Sum over prompts of a per-row quantity that is the same on every row of a prompt."""
  return jnp.where(pairs.size > 0, per_row / jnp.maximum(pairs.size, 1.0), 0.0).sum()


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RewardObjective:
  """InstructGPT's K-way ranking loss on the value head at each response's last token, with
  an optional `margin` (subtracted from every pair's reward difference, Llama 2) and a
  reward-centering penalty `centering` * (the prompt's mean reward)^2; see the module
  docstring. Negative settings raise ValueError naming the field."""
  margin: float = 0.0
  centering: float = 0.0

  def __post_init__(self):
    for name in ("margin", "centering"):
      if getattr(self, name) < 0:
        raise ValueError(f"RewardObjective.{name}={getattr(self, name)} must be >= 0")

  def __call__(self, model, trainable, frozen, batch, rng=None):
    params = model_params(trainable, frozen)
    scores = sequence_scores(model, params, batch, rng)
    _, weights = model.targets_and_weights(batch)
    pairs = preference_pairs(batch, weights)
    diff = scores[:, None] - scores[None, :]
    ranking = (pairs.weights * -jax.nn.log_sigmoid(diff - self.margin)).sum()
    mean = per_prompt_mean(pairs, scores)
    centering = self.centering * prompt_sum(pairs, jnp.square(mean))
    sums = {"ranking_loss": ranking, "centering_loss": centering,
            "accuracy": (pairs.weights * (diff > 0)).sum(), "reward_margin": (pairs.weights * diff).sum(),
            "reward_mean": prompt_sum(pairs, mean), "pairs": (pairs.weights > 0).sum().astype(jnp.float32)}
    return ranking + centering, pairs.prompts, sums


def held_out_metrics(objective, model, params, batches: Iterable[Mapping], frozen: Optional[Mapping] = None):
  """{'loss', each metric: summed over `batches`, divided by the summed normalizer;
  'normalizer': that sum} of any objective (reward model, DPO) on held-out batches, with
  `params` as the trained tree and `frozen` the extra frozen trees (e.g. {'reference': ...})."""
  step = jax.jit(lambda p, f, b: objective(model, p, {"params": {}, **f}, b, None))
  totals, normalizer = {}, 0.0
  for batch in batches:
    loss, norm, sums = step(params, dict(frozen or {}), batch)
    normalizer += float(norm)
    for key, value in {"loss": loss, **sums}.items():
      totals[key] = totals.get(key, 0.0) + float(value)
  out = {key: value / max(normalizer, 1e-8) for key, value in totals.items()}
  out["normalizer"] = normalizer
  return out


def pairwise_accuracy(model, params, batches: Iterable[Mapping]) -> float:
  """The reward model's held-out pairwise accuracy: per prompt the share of its ranked pairs
  scored in order (r_w > r_l), averaged over prompts (for pairwise data: the share of pairs)."""
  return held_out_metrics(RewardObjective(), model, params, batches)["accuracy"]
