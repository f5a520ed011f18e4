"""PPO against a reward, with a KL penalty to a frozen reference (and PPO-ptx), as an
objective of the one trainer: the recipe of Ziegler et al. 2019 ("Fine-Tuning Language
Models from Human Preferences"), Stiennon et al. 2020 and InstructGPT (Ouyang et al. 2022).

The rollout side (jaxlm.adaptation.rollouts.RolloutData) samples responses with the
current policy, scores them, and hands each rollout to `PPOAdvantages`, which turns it
into per-token training targets:
  rewards   r_t = -beta * (log pi_old(y_t) - log pi_ref(y_t)), plus the response's score at
            its last token (the per-token KL penalty; beta from a KL controller)
  GAE       delta_t = r_t + gamma V_{t+1} - V_t (V after the last token is 0),
            A_t = delta_t + gamma lambda A_{t+1}, returns R_t = A_t + V_t (Schulman et al. 2016)
  whitening advantages shifted and scaled to mean 0, variance 1 over the rollout's tokens
  KL control FixedKLController (beta constant) or AdaptiveKLController (Ziegler et al.: beta
            *= 1 + clip(KL / target - 1, -0.2, 0.2) * rows / horizon, after each rollout,
            from the rollout's measured KL)
Each rollout is then trained on for several epochs of shuffled minibatches, one train step
each, with `PPOObjective` (Schulman et al. 2017):
  policy    -min(rho A, clip(rho, 1 - clip_ratio, 1 + clip_ratio) A), rho = pi / pi_old
  value     0.5 max((V - R)^2, (V_old + clip(V - V_old, -value_clip, value_clip) - R)^2),
            weighted by value_coef; the value is the model's scalar head on the policy's own
            trunk (TransformerConfig.value_head: one forward gives logits and values)
  entropy   -entropy_coef * H(pi(. | context)) (0 by default)
  ptx       ptx_coef * the pretraining LM loss on pretraining rows the rollout source adds
            under 'ptx_*' keys (InstructGPT's PPO-ptx, which limits the alignment tax)
all averaged over the response tokens ('tokens') or per response then over responses
('sequences'). A separate value network is not an option: train() trains one parameter
tree of one TransformerConfig, so the critic shares the policy's trunk.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.adaptation.sft import NORMALIZE, per_example_means
from jaxlm.models.model import cross_entropy
from jaxlm.training.objectives import model_params

PTX_PREFIX = "ptx_"


# ---- the policy's forward pass ----
class PolicyOutputs(NamedTuple):
  logprobs: jax.Array   # [b, t] log pi(target), 0 where decoder_loss_weights is 0
  values: Any           # [b, t] the value head (None without it)
  logits: jax.Array     # [b, t, vocab] float32
  weights: jax.Array    # [b, t] decoder_loss_weights (the response tokens)
  aux: jax.Array        # MoE load-balancing loss


def policy_outputs(model, params, batch, values: bool = False, rng=None) -> PolicyOutputs:
  """Target log-probabilities (and with values=True the value head) of one forward pass."""
  heads = ("logits", "values") if values else ("logits",)
  outputs, aux = model.apply_heads(params, batch, heads=heads, rng=rng)
  targets, weights = model.targets_and_weights(batch)
  nll, _, _ = cross_entropy(outputs["logits"], targets, weights)
  return PolicyOutputs(-nll, outputs.get("values"), outputs["logits"], weights, aux)


# ---- the loss terms (per token) ----
def clipped_surrogate(logprobs, old_logprobs, advantages, clip_ratio: float):
  """(per-token loss -min(rho A, clip(rho) A), rho, where the clip is active): the gradient
  is zero where the clipped term is the minimum (rho beyond 1 +- clip_ratio on the side the
  advantage pushes it)."""
  ratio = jnp.exp(logprobs - old_logprobs)
  unclipped = ratio * advantages
  clipped = jnp.clip(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio) * advantages
  return -jnp.minimum(unclipped, clipped), ratio, clipped < unclipped


def clipped_value_loss(values, old_values, returns, value_clip: Optional[float]):
  """(per-token 0.5 max((V - R)^2, (V_clipped - R)^2), where the clipped error is larger);
  value_clip None: the plain squared error."""
  error = jnp.square(values - returns)
  if value_clip is None:
    return 0.5 * error, jnp.zeros_like(error, bool)
  clipped = old_values + jnp.clip(values - old_values, -value_clip, value_clip)
  clipped_error = jnp.square(clipped - returns)
  return 0.5 * jnp.maximum(error, clipped_error), clipped_error > error


def entropy(logits):
  """[b, t] entropy of softmax(logits) in nats."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def check_settings(owner: str, clip_ratio: float, normalize: str) -> None:
  """ValueError naming owner's field if clip_ratio or normalize is out of range."""
  if normalize not in NORMALIZE:
    raise ValueError(f"{owner}.normalize={normalize!r}: must be one of {NORMALIZE}")
  if not 0.0 < clip_ratio < 1.0:
    raise ValueError(f"{owner}.clip_ratio={clip_ratio} must be in (0, 1)")


def policy_terms(out: PolicyOutputs, batch, clip_ratio: float) -> dict:
  """The per-token terms of the clipped policy loss, weighted by the response tokens:
  policy_loss, entropy, clip_fraction, ratio and approx_kl (k3 estimate of KL(pi_old || pi))."""
  w = out.weights
  old = batch["old_logprobs"]
  policy, ratio, clipped = clipped_surrogate(out.logprobs, old, batch["advantages"], clip_ratio)
  log_ratio = out.logprobs - old
  return {"policy_loss": policy * w, "entropy": entropy(out.logits) * w, "ratio": ratio * w,
          "clip_fraction": clipped * w, "approx_kl": (jnp.exp(log_ratio) - 1.0 - log_ratio) * w}


def reduce_terms(terms: dict, weights, normalize: str, segment_ids=None):
  """(sums, normalizer) of per-token terms already multiplied by the weights: summed over
  tokens with the token count ('tokens'), or per-response means summed with the response
  count ('sequences', sft.per_example_means)."""
  if normalize == "tokens":
    return {k: x.sum() for k, x in terms.items()}, weights.sum()
  return per_example_means(terms, weights, segment_ids)


def ptx_rows(batch, setting: str = "PPOObjective.ptx_coef") -> dict:
  """The pretraining rows a batch carries under 'ptx_*' keys, without the prefix."""
  rows = {k[len(PTX_PREFIX):]: v for k, v in batch.items() if k.startswith(PTX_PREFIX)}
  if "decoder_target_tokens" not in rows:
    raise ValueError(f"{setting} > 0 needs pretraining rows in the batch ('ptx_decoder_target_tokens'): "
                     "set RolloutData.ptx_data_fn")
  return rows


def ptx_loss(model, params, rows, rng=None):
  """The mean pretraining token loss on pretraining rows (Model.token_losses)."""
  t = model.token_losses(params, rows, rng)
  return t.nll.sum() / jnp.maximum(t.weights.sum(), 1.0)


# ---- rollout side: rewards, GAE, whitening, KL control (numpy, on the host) ----
def whiten(x, mask, shift_mean: bool = True, eps: float = 1e-8):
  """x scaled to unit variance (and shifted to mean 0) over the entries where mask is 1;
  0 elsewhere."""
  x, mask = np.asarray(x, np.float64), np.asarray(mask, bool)
  mean, std = x[mask].mean(), x[mask].std()
  out = (x - mean) / (std + eps) if shift_mean else (x - mean) / (std + eps) + mean
  return np.where(mask, out, 0.0).astype(np.float32)


def gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
  """(advantages, returns) [b, T] of per-token rewards and values [b, T] over each row's
  tokens where mask is 1 (a prefix of the row); the value after the last token is 0."""
  rewards, values = np.asarray(rewards, np.float64), np.asarray(values, np.float64)
  mask = np.asarray(mask, np.float64)
  advantages = np.zeros_like(rewards)
  running, next_value = np.zeros(rewards.shape[0]), np.zeros(rewards.shape[0])
  for t in reversed(range(rewards.shape[1])):
    delta = rewards[:, t] + gamma * next_value - values[:, t]
    running = (delta + gamma * lam * running) * mask[:, t]
    advantages[:, t] = running
    next_value = values[:, t] * mask[:, t]
  returns = (advantages + values) * mask
  return advantages.astype(np.float32), returns.astype(np.float32)


def kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, kl_coef: float):
  """Per-token rewards [b, T]: -kl_coef * (log pi_old - log pi_ref) on every response token,
  plus the score at each row's last token."""
  mask = np.asarray(mask, np.float32)
  rewards = -kl_coef * (np.asarray(logprobs) - np.asarray(ref_logprobs)) * mask
  last = np.maximum(mask.sum(1).astype(int) - 1, 0)
  rewards[np.arange(len(last)), last] += np.asarray(scores, np.float32) * (mask.sum(1) > 0)
  return rewards.astype(np.float32)


@gin.configurable
@dataclasses.dataclass
class FixedKLController:
  """A constant KL coefficient beta."""
  coef: float = 0.1

  def update(self, kl: float, rows: int) -> None:
    del kl, rows

  def state(self) -> dict:
    return {"coef": self.coef}

  def restore(self, state: dict) -> None:
    self.coef = float(state["coef"])


@gin.configurable
@dataclasses.dataclass
class AdaptiveKLController:
  """Ziegler et al. 2019's proportional controller: after each rollout of `rows` samples
  with mean KL (per response, nats) `kl`, beta *= 1 + clip(kl / target - 1, -0.2, 0.2) *
  rows / horizon, so the KL drifts toward `target`."""
  coef: float = 0.1
  target: float = 6.0
  horizon: int = 10_000

  def __post_init__(self):
    if self.target <= 0 or self.horizon <= 0:
      raise ValueError(f"AdaptiveKLController.target={self.target} and horizon={self.horizon} must be > 0")

  def update(self, kl: float, rows: int) -> None:
    error = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))
    self.coef *= 1.0 + error * rows / self.horizon

  def state(self) -> dict:
    return {"coef": self.coef}

  def restore(self, state: dict) -> None:
    self.coef = float(state["coef"])


@gin.configurable
class PPOAdvantages:
  """What RolloutData asks of PPO: per-token advantages and returns of a scored rollout
  (KL-penalised rewards, GAE, whitening; see the module docstring), and the KL controller's
  update from the rollout's KL."""
  needs_values = True
  keys = ("old_logprobs", "old_values", "advantages", "returns")

  def __init__(self, gamma: float = 1.0, lam: float = 0.95, kl_controller: Any = None,
               whiten_advantages: bool = True):
    self.gamma, self.lam, self.whiten_advantages = gamma, lam, whiten_advantages
    self.kl = kl_controller if kl_controller is not None else AdaptiveKLController()

  def __call__(self, rollout) -> tuple:
    """({key: [rows, T] response-aligned arrays}, metrics) of rollout (rollouts.Rollout)."""
    mask = rollout.mask
    logprobs, ref = rollout.tokens("old_logprobs"), rollout.tokens("ref_logprobs")
    coef = self.kl.coef
    rewards = kl_penalized_rewards(rollout.scores, logprobs, ref, mask, coef)
    advantages, returns = gae(rewards, rollout.tokens("old_values"), mask, self.gamma, self.lam)
    if self.whiten_advantages:
      advantages = whiten(advantages, mask)
    kl = float(((logprobs - ref) * mask).sum(1).mean())
    self.kl.update(kl, len(mask))
    return ({"advantages": advantages, "returns": returns},
            {"kl_coef": coef, "penalized_reward": float(rewards.sum(1).mean())})

  def state(self) -> dict:
    return self.kl.state()

  def restore(self, state: dict) -> None:
    self.kl.restore(state)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PPOObjective:
  """The PPO loss on one minibatch of a rollout (see the module docstring). The batch has
  the rollout's decoder rows and, aligned with the targets, old_logprobs, old_values,
  advantages and returns (RolloutData with PPOAdvantages makes them). value_clip None: an
  unclipped value loss. ptx_coef > 0 needs 'ptx_*' pretraining rows (RolloutData.ptx_data_fn).

  Metric sums (read as means after the step's division): policy_loss, value_loss, entropy,
  clip_fraction (tokens whose ratio the clip holds), value_clip_fraction, approx_kl (the k3
  estimate of KL(pi_old || pi) on the minibatch), ratio, ptx_loss."""
  clip_ratio: float = 0.2
  value_clip: Optional[float] = 0.2
  value_coef: float = 0.1
  entropy_coef: float = 0.0
  ptx_coef: float = 0.0
  normalize: str = "tokens"

  def __post_init__(self):
    check_settings("PPOObjective", self.clip_ratio, self.normalize)

  def __call__(self, model, trainable, frozen, batch, rng=None):
    if self.value_coef and not model.config.value_head:
      raise ValueError("PPOObjective.value_coef > 0 needs a value head: set TransformerConfig.value_head=True")
    pretraining = ptx_rows(batch) if self.ptx_coef else None
    params = model_params(trainable, frozen)
    out = policy_outputs(model, params, batch, values=bool(self.value_coef), rng=rng)
    w = out.weights
    terms = policy_terms(out, batch, self.clip_ratio)
    if self.value_coef:
      value, value_clipped = clipped_value_loss(out.values, batch["old_values"], batch["returns"],
                                                self.value_clip)
      terms.update(value_loss=value * w, value_clip_fraction=value_clipped * w)
    sums, normalizer = reduce_terms(terms, w, self.normalize)
    loss = sums["policy_loss"] - self.entropy_coef * sums["entropy"]
    if self.value_coef:
      loss = loss + self.value_coef * sums["value_loss"]
    if self.ptx_coef:
      sums["ptx_loss"] = ptx_loss(model, params, pretraining, rng) * normalizer
      loss = loss + self.ptx_coef * sums["ptx_loss"]
    sums["aux_loss"] = out.aux * normalizer
    return loss + sums["aux_loss"], normalizer, sums
