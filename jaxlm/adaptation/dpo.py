"""Direct preference optimisation (DPO, Rafailov et al. 2023, "Direct Preference
Optimization: Your Language Model is Secretly a Reward Model") and its IPO and hinge
variants, as an objective of the one trainer: the policy is trained on preference pairs
against a frozen reference model (the SFT checkpoint) with no reward model and no sampling.

For a prompt x with a preferred response y_w and a dispreferred y_l, the log-ratios
h(y) = log pi(y | x) - log pi_ref(y | x) (summed over the response tokens: the positions
where decoder_loss_weights > 0) and delta = h(y_w) - h(y_l):
  sigmoid  -(1 - eps) log sigmoid(beta delta) - eps log sigmoid(-beta delta)   DPO eq. 7;
           eps = label_smoothing > 0 is conservative DPO (cDPO, Mitchell 2023: the labels
           are flipped with probability eps)
  ipo      (delta - 1 / (2 beta))^2        IPO (Azar et al. 2023, "A General Theoretical
           Paradigm to Understand Learning from Human Preferences", eq. 17), on the summed
           log-ratios as the paper writes it (TRL divides them by the response lengths)
  hinge    max(0, 1 - beta delta)          SLiC-HF's calibration loss (Zhao et al. 2023)
With `rpo_alpha` > 0 each pair adds rpo_alpha * NLL(y_w) / |y_w|, the preferred response's
mean token negative log-likelihood (RPO: Pang et al. 2024, "Iterative Reasoning Preference
Optimization"; Liu et al. 2024; TRL's rpo_alpha). Pure DPO can lower the likelihood of both
responses; when the preferred ones are unlikely under the reference (off-policy data, e.g.
a format the SFT model never writes) its greedy samples can degrade while its preference
accuracy rises (tests/test_adaptation_dpo.py measured it), and the NLL term keeps the
preferred responses likely. The implicit reward of a response is beta h(y). A prompt with K ranked responses
(jaxlm.data.preferences batches; K = 2 for pairwise data) contributes the mean of the loss
over its C(K, 2) ordered pairs (jaxlm.adaptation.reward.preference_pairs); the step divides
the summed loss by the number of prompts.

The reference log-probabilities come either from `frozen['reference']` on the fly (a frozen
model tree that travels with the state: `train.frozen_models = {'reference': SFT_DIR}`), or
precomputed once for the whole data set into the batches as `reference_logps` (float32 [rows];
`reference='cached'` with `PreferenceData.reference = @reference_scorer()`, which saves the
reference's memory and its forward pass at every step). Both give the same loss.

Metric sums (divided by the prompts; per prompt the mean over its pairs): accuracy (implicit
reward of the preferred response above the other's, strictly: ties at the start, where the
policy is the reference, count as wrong, as in TRL), reward_margin (beta delta),
rewards_chosen / rewards_rejected (beta h), logps_chosen / logps_rejected (log pi), dpo_loss,
nll_chosen (the preferred responses' mean token NLL, what rpo_alpha weighs) and aux_loss (the MoE load-balancing loss, weighted by the prompts, added to the loss).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.adaptation.reward import preference_pairs
from jaxlm.training.objectives import model_params

LOSS_TYPES = ("sigmoid", "ipo", "hinge")
REFERENCES = ("on_the_fly", "cached")


def dpo_losses(delta, beta: float, label_smoothing: float = 0.0, loss_type: str = "sigmoid"):
  """The per-pair loss of the log-ratio differences `delta` (see the module docstring)."""
  if loss_type == "sigmoid":
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * delta) - label_smoothing * jax.nn.log_sigmoid(
        -beta * delta)
  if loss_type == "ipo":
    return jnp.square(delta - 1.0 / (2.0 * beta))
  if loss_type == "hinge":
    return jax.nn.relu(1.0 - beta * delta)
  raise ValueError(f"DPOObjective.loss_type={loss_type!r}: must be one of {LOSS_TYPES}")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DPOObjective:
  """DPO / cDPO / IPO / hinge on preference batches against a frozen reference; see the
  module docstring. beta > 0; label_smoothing in [0, 0.5), 'sigmoid' only; loss_type in
  LOSS_TYPES; reference 'on_the_fly' (frozen['reference']) or 'cached' (the batch's
  reference_logps); rpo_alpha >= 0 the weight of the preferred responses' NLL. A bad value
  raises ValueError naming the field."""
  beta: float = 0.1
  label_smoothing: float = 0.0
  loss_type: str = "sigmoid"
  reference: str = "on_the_fly"
  rpo_alpha: float = 0.0

  def __post_init__(self):
    if self.loss_type not in LOSS_TYPES:
      raise ValueError(f"DPOObjective.loss_type={self.loss_type!r}: must be one of {LOSS_TYPES}")
    if self.reference not in REFERENCES:
      raise ValueError(f"DPOObjective.reference={self.reference!r}: must be one of {REFERENCES}")
    if not self.beta > 0:
      raise ValueError(f"DPOObjective.beta={self.beta} must be > 0")
    if self.rpo_alpha < 0:
      raise ValueError(f"DPOObjective.rpo_alpha={self.rpo_alpha} must be >= 0")
    if not 0.0 <= self.label_smoothing < 0.5:
      raise ValueError(f"DPOObjective.label_smoothing={self.label_smoothing} must be in [0, 0.5)")
    if self.label_smoothing and self.loss_type != "sigmoid":
      raise ValueError(f"DPOObjective.label_smoothing={self.label_smoothing} is cDPO: it needs "
                       f"loss_type='sigmoid', not {self.loss_type!r}")

  def reference_logps(self, model, frozen, batch):
    """[rows] the reference model's log-probability of each response (no gradient)."""
    if self.reference == "cached":
      if "reference_logps" not in batch:
        raise ValueError("DPOObjective.reference='cached' needs the batch feature 'reference_logps': "
                         "set PreferenceData.reference = @reference_scorer() (or use 'on_the_fly')")
      return jax.lax.stop_gradient(jnp.asarray(batch["reference_logps"], jnp.float32))
    if "reference" not in frozen:
      raise ValueError("DPOObjective.reference='on_the_fly' needs a frozen reference model: set "
                       "train.frozen_models = {'reference': SFT_CHECKPOINT} (or use 'cached')")
    return jax.lax.stop_gradient(model.score_batch(frozen["reference"], batch))

  def __call__(self, model, trainable, frozen, batch, rng=None):
    t = model.token_losses(model_params(trainable, frozen), batch, rng)
    logps = -t.nll.sum(-1)
    ratios = logps - self.reference_logps(model, frozen, batch)
    pairs = preference_pairs(batch, t.weights)
    w = pairs.weights
    delta = ratios[:, None] - ratios[None, :]  # [chosen i, rejected j]
    losses = dpo_losses(delta, self.beta, self.label_smoothing, self.loss_type)
    rewards = self.beta * ratios
    sums = {"dpo_loss": (w * losses).sum(), "accuracy": (w * (rewards[:, None] > rewards[None, :])).sum(),
            "reward_margin": (w * self.beta * delta).sum(),
            "rewards_chosen": (w.sum(1) * rewards).sum(), "rewards_rejected": (w.sum(0) * rewards).sum(),
            "logps_chosen": (w.sum(1) * logps).sum(), "logps_rejected": (w.sum(0) * logps).sum(),
            "aux_loss": t.aux * pairs.prompts}
    mean_nll = t.nll.sum(-1) / jnp.maximum(t.weights.sum(-1), 1.0)
    sums["nll_chosen"] = (w.sum(1) * mean_nll).sum()
    loss = sums["dpo_loss"] + self.rpo_alpha * sums["nll_chosen"] + sums["aux_loss"]
    return loss, pairs.prompts, sums


def reference_logps(model, params, rows: Mapping[str, np.ndarray], batch_size: int = 32) -> np.ndarray:
  """float32 [rows]: `model.score_batch` (the summed log-probability of each row's weighted
  tokens) of every row, in chunks of batch_size rows (the last one padded, so one program)."""
  n = len(rows["decoder_target_tokens"])
  score = jax.jit(model.score_batch)
  out = []
  for start in range(0, n, batch_size):
    chunk = {k: np.asarray(v[start:start + batch_size]) for k, v in rows.items() if np.ndim(v) == 2}
    short = batch_size - len(chunk["decoder_target_tokens"])
    chunk = {k: np.pad(v, ((0, short), (0, 0))) for k, v in chunk.items()}
    out.append(np.asarray(score(params, chunk))[:batch_size - short])
  return np.concatenate(out).astype(np.float32)


@gin.configurable
def reference_scorer(checkpoint: str = gin.REQUIRED, config=None, batch_size: int = 32, step: Optional[int] = None):
  """A PreferenceData.reference: rows -> reference_logps of the model in `checkpoint` (a
  jaxlm MODEL_DIR or checkpoint; the model is `config`, default TransformerConfig() as gin
  binds it), computed once when the data source is built (DPOObjective.reference='cached')."""
  from jaxlm.models import TransformerConfig, build_model  # pylint: disable=import-outside-toplevel
  from jaxlm.training.checkpointing import restore_params  # pylint: disable=import-outside-toplevel

  def score(rows):
    model = build_model(config or TransformerConfig())
    params = restore_params(checkpoint, model.param_shapes(), step)
    return reference_logps(model, params, rows, batch_size)
  return score
