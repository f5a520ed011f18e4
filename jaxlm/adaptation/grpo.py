"""GRPO (Shao et al. 2024, "DeepSeekMath"): PPO without a value model, as an objective of
the one trainer.

Each prompt is sampled G times (RolloutData.samples_per_prompt = G, the group's rows
adjacent); a response's advantage is its reward normalised within its group,
A_i = (r_i - mean(r_group)) / (std(r_group) + eps), given to every one of its tokens
(outcome supervision). The loss is the clipped surrogate of PPO (ppo.clipped_surrogate)
plus beta times the KL to the frozen reference, in the unbiased, always-positive k3 form

    KL_t = pi_ref / pi - log(pi_ref / pi) - 1,

added to the loss rather than to the reward, and averaged per response then over
responses ('sequences', the paper's 1/G sum_i 1/|o_i| sum_t), or over all tokens ('tokens').
The reference log-probabilities are computed once per rollout (RolloutData carries them as
ref_logprobs), so the update needs no reference forward pass.
"""
from __future__ import annotations

import dataclasses

import gin
import jax.numpy as jnp
import numpy as np

from jaxlm.adaptation.ppo import check_settings, policy_outputs, policy_terms, reduce_terms
from jaxlm.training.objectives import model_params


def group_advantages(scores, group_size: int, scale: bool = True, eps: float = 1e-6):
  """float32 [n]: each score minus its group's mean, divided by the group's standard
  deviation (+ eps) when `scale`; groups are consecutive runs of group_size scores."""
  scores = np.asarray(scores, np.float64)
  if group_size < 2 or len(scores) % group_size:
    raise ValueError(f"GRPO needs groups of >= 2 samples per prompt (RolloutData.samples_per_prompt="
                     f"{group_size}) that divide the rollout's {len(scores)} rows")
  groups = scores.reshape(-1, group_size)
  centered = groups - groups.mean(1, keepdims=True)
  if scale:
    centered = centered / (groups.std(1, keepdims=True) + eps)
  return centered.reshape(-1).astype(np.float32)


def k3_kl(logprobs, ref_logprobs):
  """Per-token k3 estimate of KL(pi || pi_ref): exp(ref - logp) - (ref - logp) - 1 >= 0."""
  diff = ref_logprobs - logprobs
  return jnp.exp(diff) - diff - 1.0


@gin.configurable
class GRPOAdvantages:
  """What RolloutData asks of GRPO: the group-normalised advantage of each response on all
  of its tokens. scale=False: mean-centred only (Dr. GRPO's variant)."""
  needs_values = False
  keys = ("old_logprobs", "ref_logprobs", "advantages")

  def __init__(self, scale: bool = True):
    self.scale = scale

  def __call__(self, rollout) -> tuple:
    advantages = group_advantages(rollout.scores, rollout.group_size, self.scale)
    groups = np.asarray(rollout.scores).reshape(-1, rollout.group_size)
    return ({"advantages": advantages[:, None] * rollout.mask},
            {"group_score_std": float(groups.std(1).mean())})

  def state(self) -> dict:
    return {}

  def restore(self, state: dict) -> None:
    del state


@gin.configurable
@dataclasses.dataclass(frozen=True)
class GRPOObjective:
  """The GRPO loss on one minibatch of a rollout: clipped surrogate + kl_coef * k3 KL to the
  reference (see the module docstring). The batch has old_logprobs, ref_logprobs and
  advantages aligned with the targets (RolloutData with GRPOAdvantages).

  Metric sums (means after the step's division): policy_loss, kl (k3 to the reference, per
  token), entropy, clip_fraction, ratio, approx_kl (to the rollout's policy)."""
  clip_ratio: float = 0.2
  kl_coef: float = 0.04
  entropy_coef: float = 0.0
  normalize: str = "sequences"

  def __post_init__(self):
    check_settings("GRPOObjective", self.clip_ratio, self.normalize)

  def __call__(self, model, trainable, frozen, batch, rng=None):
    out = policy_outputs(model, model_params(trainable, frozen), batch, rng=rng)
    w = out.weights
    terms = {**policy_terms(out, batch, self.clip_ratio), "kl": k3_kl(out.logprobs, batch["ref_logprobs"]) * w}
    sums, normalizer = reduce_terms(terms, w, self.normalize)
    sums["aux_loss"] = out.aux * normalizer
    loss = sums["policy_loss"] + self.kl_coef * sums["kl"] - self.entropy_coef * sums["entropy"]
    return loss + sums["aux_loss"], normalizer, sums
