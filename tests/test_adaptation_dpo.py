"""DPO (jaxlm/adaptation/dpo.py): the sigmoid / cDPO / IPO / hinge losses against the papers'
formulas computed by hand, the cached reference equal to the on-the-fly one, and DPO from
the tiny instruction model measured on held-out generated preferences and greedy samples.

There is no parity test against TRL: its DPO loss is not a separate function (TRL 1.x
computes it inside DPOTrainer._compute_loss from a model's forward pass), and TRL needs
datasets / pyarrow / pandas besides; the formulas are checked here instead.
"""
from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.adaptation import DPOObjective
from jaxlm.adaptation.dpo import reference_logps, reference_scorer
from jaxlm.adaptation.reward import held_out_metrics
from jaxlm.data import preferences as prefs
from jaxlm.models import build_model
from jaxlm.models.model import TokenLosses
from jaxlm.vocabularies import ByteVocab

from train_helpers import QUIET_RUN, tiny_config, use_compilation_cache

# Measured (fixed seeds, 2 CPU cores, ~12 steps/s), from the tiny instruction model, 'format'
# preferences ("The answer is X." over the bare answer, the rationale, or the sentence before
# the rationale) on three of its families, 80 steps of 8 pairs, beta 0.1, rpo_alpha 1, peak
# learning rate 1e-3, cached reference: held-out preference accuracy 0.00 (policy = reference:
# every implicit reward ties) -> 1.00; mean true reward (the format rule, 0-1) of greedy
# samples on 120 held-out prompts 0.00 -> 0.97 ("The answer is 16."), while their answers'
# mean distance to the right one stays about the same (4.6 -> 5.0). Pure DPO (rpo_alpha 0)
# on the same data reaches accuracy 1.00 too, but its greedy samples degrade ("en en en ...";
# format reward 0.00, answer distance 9.3): the preferred format is far outside the SFT
# model's distribution, and DPO lowers both responses' likelihood.
DPO_STEPS, DPO_MIN_ACCURACY, DPO_MIN_REWARD_GAIN = 80, 0.9, 0.5
FAMILIES = ("multi_step_arithmetic", "word_problems", "reverse_words")
LENGTHS = {"inputs": 48, "targets": 24}


class LogpModel:
  """A stand-in model: row i's response log-probability is params['logp'][i], on one token."""

  def token_losses(self, params, batch, rng=None):
    weights = jnp.asarray(batch["decoder_loss_weights"], jnp.float32)
    nll = -params["logp"][:, None] * weights
    return TokenLosses(nll, 0 * nll, 0 * nll, weights, jnp.float32(0.0))

  def score_batch(self, params, batch):
    return -self.token_losses(params, batch).nll.sum(-1)


def _pairs_batch(n_pairs):
  rows = 2 * n_pairs + 2  # + one empty prompt
  weights = np.ones((rows, 1), np.int32)
  weights[-2:] = 0
  return {"decoder_target_tokens": weights * 7, "decoder_loss_weights": weights,
          "response_group": np.repeat(np.r_[np.arange(1, n_pairs + 1), 0], 2).astype(np.int32),
          "response_rank": np.tile([0, 1], n_pairs + 1).astype(np.int32)}


def _log_sigmoid(x):
  return -np.log1p(np.exp(-x))


@pytest.mark.parametrize("loss_type,smoothing", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0), ("hinge", 0.0)])
def test_losses_and_gradients_are_the_papers_formulas(loss_type, smoothing):
  rng = np.random.default_rng(0)
  n, beta = 4, 0.3
  policy, ref = rng.normal(-8, 3, 2 * n + 2), rng.normal(-8, 3, 2 * n + 2)
  batch = _pairs_batch(n)

  def by_hand(pi):
    delta = (pi[0:2 * n:2] - ref[0:2 * n:2]) - (pi[1:2 * n:2] - ref[1:2 * n:2])
    if loss_type == "sigmoid":  # DPO eq. 7; cDPO: labels flipped with probability eps
      losses = -(1 - smoothing) * _log_sigmoid(beta * delta) - smoothing * _log_sigmoid(-beta * delta)
    elif loss_type == "ipo":  # IPO eq. 17
      losses = (delta - 1 / (2 * beta)) ** 2
    else:  # SLiC hinge
      losses = np.maximum(0.0, 1 - beta * delta)
    return losses.mean()
  objective = DPOObjective(beta=beta, label_smoothing=smoothing, loss_type=loss_type)
  frozen = {"reference": {"logp": jnp.asarray(ref, jnp.float32)}}
  mean_loss = jax.jit(lambda p: (lambda l, z, s: (l / z, s))(*objective(LogpModel(), {"logp": p}, frozen, batch)))
  (loss, sums), grad = jax.value_and_grad(mean_loss, has_aux=True)(jnp.asarray(policy, jnp.float32))
  np.testing.assert_allclose(float(loss), by_hand(policy), rtol=1e-5)
  eps = 1e-5
  numeric = [(by_hand(policy + eps * np.eye(len(policy))[i]) - by_hand(policy - eps * np.eye(len(policy))[i]))
             / (2 * eps) for i in range(len(policy))]
  np.testing.assert_allclose(np.asarray(grad), numeric, atol=1e-4)
  rewards = beta * (policy - ref)
  np.testing.assert_allclose(float(sums["accuracy"]) / n, np.mean(rewards[0:2 * n:2] > rewards[1:2 * n:2]))
  np.testing.assert_allclose(float(sums["rewards_chosen"]) / n, rewards[0:2 * n:2].mean(), rtol=1e-5)
  np.testing.assert_allclose(float(sums["logps_rejected"]) / n, policy[1:2 * n:2].mean(), rtol=1e-5)


def test_a_ranking_averages_its_pairs_and_rpo_adds_the_preferred_nll():
  """One prompt with 3 ranked responses: the mean loss over its 3 pairs; rpo_alpha adds
  alpha * the mean over pairs of the preferred response's mean token NLL."""
  policy, ref = np.array([-3.0, -5.0, -4.0]), np.array([-4.0, -4.0, -4.5])
  batch = {"decoder_target_tokens": np.ones((3, 1), np.int32), "decoder_loss_weights": np.ones((3, 1), np.int32),
           "response_group": np.array([1, 1, 1], np.int32), "response_rank": np.array([0, 1, 2], np.int32)}
  h = policy - ref
  pairs = [(0, 1), (0, 2), (1, 2)]
  dpo = np.mean([-_log_sigmoid(0.1 * (h[w] - h[l])) for w, l in pairs])
  nll = np.mean([-policy[w] for w, _ in pairs])
  frozen = {"reference": {"logp": jnp.asarray(ref, jnp.float32)}}
  for alpha in (0.0, 0.5):
    loss, normalizer, _ = DPOObjective(rpo_alpha=alpha)(LogpModel(), {"logp": jnp.asarray(policy, jnp.float32)},
                                                        frozen, batch)
    np.testing.assert_allclose(float(loss / normalizer), dpo + alpha * nll, rtol=1e-5)


def test_settings_and_missing_references_are_named():
  for kwargs, match in (({"loss_type": "kto"}, "DPOObjective.loss_type"), ({"beta": 0.0}, "DPOObjective.beta"),
                        ({"label_smoothing": 0.1, "loss_type": "ipo"}, "label_smoothing"),
                        ({"reference": "lazy"}, "DPOObjective.reference")):
    with pytest.raises(ValueError, match=match):
      DPOObjective(**kwargs)
  batch = _pairs_batch(1)
  with pytest.raises(ValueError, match="train.frozen_models"):
    DPOObjective()(LogpModel(), {"logp": jnp.zeros(4)}, {}, batch)
  with pytest.raises(ValueError, match="PreferenceData.reference"):
    DPOObjective(reference="cached")(LogpModel(), {"logp": jnp.zeros(4)}, {}, batch)


def test_the_cached_reference_equals_the_on_the_fly_one():
  """reference_logps computed once into the batches by the data source (in chunks of 4
  rows) give the on-the-fly loss, metrics and gradient."""
  use_compilation_cache()
  model = build_model(tiny_config(vocab_size=260, max_len=64))
  v, lengths = ByteVocab(), {"inputs": 12, "targets": 8}
  data = [prefs.Preference(f"{a} + {b} = ", (str(a + b), str(a + b + 1), f"{a}{b}")) for a, b in ((1, 2), (3, 4))]
  example = prefs.encode_preferences(data, v, lengths, 3)
  policy = model.init(jax.random.key(0), {k: x for k, x in example.items() if x.ndim == 2})
  ref = model.init(jax.random.key(1), {k: x for k, x in example.items() if x.ndim == 2})
  source = {"train": data}
  cached = prefs.PreferenceData(source, lengths, batch_size=6, vocabulary=v, shuffle=False,
                                reference=lambda rows: reference_logps(model, ref, rows, batch_size=4))
  plain = prefs.PreferenceData(source, lengths, batch_size=6, vocabulary=v, shuffle=False)
  a, b = next(cached), next(plain)
  assert a["reference_logps"].shape == (6,) and set(a) - set(b) == {"reference_logps"}

  def run(objective, batch, frozen):
    fn = lambda p: (lambda l, z, s: (l / z, s))(*objective(model, p, {"params": {}, **frozen}, batch))
    return jax.jit(jax.value_and_grad(fn, has_aux=True))(policy)
  (l1, m1), g1 = run(DPOObjective(reference="cached"), a, {})
  (l2, m2), g2 = run(DPOObjective(), b, {"reference": ref})
  np.testing.assert_allclose(float(l1), float(l2), rtol=1e-5)
  for key in m2:
    np.testing.assert_allclose(float(m1[key]), float(m2[key]), rtol=1e-5, atol=1e-6)
  for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def _greedy_true_rewards(model, params, data, v):
  from jaxlm.inference.decoding import DecodeConfig, predict_batch
  batch = data.epoch()[0]
  firsts = {k: x[::data.k] for k, x in batch.items()}  # one row per prompt (its prompt is what decodes)
  tokens = np.asarray(predict_batch(model, params, firsts, DecodeConfig(max_new_tokens=16)))
  texts = [v.decode([int(t) for t in row]) for row in tokens]
  return ([p.true_reward(s) for p, s in zip(data.preferences, texts)],
          [prefs.true_reward("correctness", p.truth["family"], p.truth["example"], s)
           for p, s in zip(data.preferences, texts)], texts)


def test_dpo_from_the_instruction_model_raises_preference_accuracy_and_true_reward(tmp_path):
  pytest.importorskip("seqio")
  from jaxlm.training import adamw, train, warmup_cosine
  from jaxlm.training.checkpointing import restore_params
  from train_helpers import instruction_vocabulary, tiny_instruction_config, tiny_instruction_model
  use_compilation_cache()
  sft, v, config = tiny_instruction_model(), instruction_vocabulary(), tiny_instruction_config()
  source = prefs.generated_preference_source(FAMILIES, "format", num_train=300, num_validation=40)
  objective = DPOObjective(beta=0.1, rpo_alpha=1.0, reference="cached")
  scorer = reference_scorer(sft, config=config, batch_size=64)
  result = train(model_dir=str(tmp_path / "dpo"), train_steps=DPO_STEPS, batch_size=16, config=config,
                 data_fn=functools.partial(prefs.PreferenceData, source, LENGTHS, vocabulary=v, reference=scorer),
                 optimizer=adamw, learning_rate=warmup_cosine(peak_value=1e-3, warmup_steps=10, decay_steps=DPO_STEPS),
                 objective=objective, init_from=sft, **{**QUIET_RUN, "log_every": DPO_STEPS})
  model = result.model
  reference = restore_params(sft, model.param_shapes())
  held = prefs.PreferenceData(source, LENGTHS, batch_size=2 * 40 * len(FAMILIES), split="validation",
                              vocabulary=v, reference=scorer)
  on_the_fly = DPOObjective(beta=0.1, rpo_alpha=1.0)
  scores = {}
  for label, params in (("before", reference), ("after", result.state.params)):
    fly = held_out_metrics(on_the_fly, model, params, held.epoch(), {"reference": reference})
    cached = held_out_metrics(objective, model, params, held.epoch())
    np.testing.assert_allclose(cached["loss"], fly["loss"], rtol=1e-4)
    reward, distance, texts = _greedy_true_rewards(model, params, held, v)
    scores[label] = {"accuracy": fly["accuracy"], "margin": fly["reward_margin"], "true_reward": np.mean(reward),
                     "answer_distance": -np.mean(distance), "samples": texts[:3]}
  with open(tmp_path / "dpo" / "metrics.jsonl", encoding="utf-8") as f:
    scores["steps_per_second"] = [json.loads(line).get("steps_per_second") for line in f]
  print(scores)
  before, after = scores["before"], scores["after"]
  assert before["accuracy"] == 0.0 and after["accuracy"] >= DPO_MIN_ACCURACY, scores
  assert after["true_reward"] - before["true_reward"] >= DPO_MIN_REWARD_GAIN, scores
