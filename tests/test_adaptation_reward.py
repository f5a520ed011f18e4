"""Reward models (jaxlm/adaptation/reward.py): the K-way ranking loss against InstructGPT's
formula computed by hand, a K=4 ranking against its 6 pairs, and a reward model learned
from the tiny instruction model, measured on held-out generated preferences."""
from __future__ import annotations

import functools
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.adaptation import RewardObjective, pairwise_accuracy
from jaxlm.adaptation.reward import held_out_metrics
from jaxlm.data import preferences as prefs
from jaxlm.models import build_model
from jaxlm.vocabularies import ByteVocab

from train_helpers import QUIET_RUN, flat_params, tiny_config, use_compilation_cache

# Measured (fixed seeds, 2 CPU cores, ~6.5 steps/s): 60 steps of 8 prompts x 4 ranked
# responses ('length' rule: the concise answer first) from the tiny instruction model reach a
# held-out pairwise accuracy of 1.00 (0.996 over 150 prompts x 6 pairs; the fresh head: 0.47);
# the issue asks for >= 0.9 where the truth is learnable. (The 'correctness' rule on the word
# families, which needs the model to check the answer against the prompt, reached 0.72 in 150
# steps: not learnable at this size and budget.)
RM_STEPS, RM_MIN_ACCURACY = 60, 0.9
LENGTHS = {"inputs": 48, "targets": 24}


class ScoreModel:
  """A stand-in model whose value head reads params['r'][row] at every position."""

  def apply_heads(self, params, batch, heads=("values",), rng=None):
    b, t = np.shape(batch["decoder_target_tokens"])
    return {"values": jnp.broadcast_to(params["r"][:, None], (b, t))}, 0.0

  def targets_and_weights(self, batch):
    return jnp.asarray(batch["decoder_target_tokens"]), jnp.asarray(batch["decoder_loss_weights"], jnp.float32)


def _rows(groups, ranks, present):
  n = len(groups)
  weights = np.asarray(present, np.int32)[:, None] * np.ones((n, 3), np.int32)
  return {"decoder_target_tokens": weights * 5, "decoder_loss_weights": weights,
          "response_group": np.asarray(groups, np.int32), "response_rank": np.asarray(ranks, np.int32)}


def _log_sigmoid(x):
  return -np.log1p(np.exp(-x))


def test_ranking_loss_is_instructgpts_formula_with_margin_and_centering():
  """Prompt 1: 3 of 4 responses present (C(3,2) = 3 pairs); prompt 2: a pair; an empty
  padding row. loss = mean over prompts of -1/C(K,2) sum log sigmoid(r_w - r_l - m) +
  c * mean_k(r_k)^2, and its gradient, by hand."""
  r = np.array([1.5, 0.2, -0.4, 9.0, -0.3, 0.6, 7.0], np.float32)
  batch = _rows([1, 1, 1, 1, 2, 2, 0], [0, 1, 2, 3, 0, 1, 0], [1, 1, 1, 0, 1, 1, 0])
  margin, centering = 0.5, 0.1

  def by_hand(r):
    total = 0.0
    for rows in ([0, 1, 2], [4, 5]):
      pairs = list(itertools.combinations(rows, 2))  # rows are in rank order
      total += -sum(_log_sigmoid(r[w] - r[l] - margin) for w, l in pairs) / len(pairs)
      total += centering * np.mean(r[rows]) ** 2
    return total / 2
  objective = RewardObjective(margin=margin, centering=centering)
  loss, normalizer, sums = jax.jit(lambda r: objective(ScoreModel(), {"r": r}, {}, batch))(jnp.asarray(r))
  assert float(normalizer) == 2.0
  np.testing.assert_allclose(float(loss) / 2, by_hand(r.astype(np.float64)), rtol=1e-5)
  # prompt 1 (1.5 > 0.2 > -0.4) orders its 3 pairs, prompt 2 (-0.3 < 0.6) not its one
  np.testing.assert_allclose(float(sums["accuracy"]) / 2, (1.0 + 0.0) / 2)
  np.testing.assert_allclose(float(sums["pairs"]) / 2, 2.0)
  grad = jax.jit(jax.grad(lambda r: objective(ScoreModel(), {"r": r}, {}, batch)[0] / 2))(jnp.asarray(r))
  eps, numeric = 1e-4, []
  for i in range(len(r)):
    up, down = r.astype(np.float64).copy(), r.astype(np.float64).copy()
    up[i] += eps
    down[i] -= eps
    numeric.append((by_hand(up) - by_hand(down)) / (2 * eps))
  np.testing.assert_allclose(np.asarray(grad), numeric, atol=1e-4)
  assert float(grad[3]) == 0.0 and float(grad[6]) == 0.0  # the absent rows have no gradient


def test_negative_settings_are_rejected_by_name():
  with pytest.raises(ValueError, match="RewardObjective.margin"):
    RewardObjective(margin=-1.0)
  with pytest.raises(ValueError, match="response_group"):
    RewardObjective()(ScoreModel(), {"r": jnp.zeros(2)}, {},
                      {"decoder_target_tokens": np.ones((2, 3)), "decoder_loss_weights": np.ones((2, 3))})


def test_a_k4_ranking_gives_the_loss_and_gradient_of_its_six_pairs():
  """The same 4 responses as one ranking (one prompt, 6 pairs weighted 1/6) and as 6
  pairwise preferences (6 prompts): equal loss and gradient on a real model, so equal
  optima."""
  use_compilation_cache()
  config = tiny_config(vocab_size=260, value_head=True, max_len=64)
  model = build_model(config)
  v, lengths = ByteVocab(), {"inputs": 12, "targets": 8}
  responses = ("4", "5", "12", "nope")
  ranked = prefs.encode_preferences([prefs.Preference("2 + 2 = ", responses)], v, lengths, 4)
  pairs = prefs.encode_preferences([prefs.Preference("2 + 2 = ", (responses[i], responses[j]))
                                    for i, j in itertools.combinations(range(4), 2)], v, lengths, 2)
  ranked = {k: np.pad(x, [(0, 8)] + [(0, 0)] * (x.ndim - 1)) for k, x in ranked.items()}  # 12 rows: one program
  params = model.init(jax.random.key(1), {k: x for k, x in ranked.items() if x.ndim == 2})
  objective = RewardObjective()

  def mean_loss(p, batch):
    loss, normalizer, _ = objective(model, p, {}, batch)
    return loss / normalizer
  step = jax.jit(jax.value_and_grad(mean_loss))
  (a, ga), (b, gb) = (step(params, x) for x in (ranked, pairs))
  np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-7)
  normalizer = jax.jit(lambda p, x: objective(model, p, {}, x)[1])
  assert float(normalizer(params, ranked)) == 1.0 and float(normalizer(params, pairs)) == 6.0


def _fresh_head_params(model, path, config):
  from jaxlm.training import init_from
  shapes = model.param_shapes()
  loaded, _ = init_from.load_matching(path, shapes, config)
  fresh = jax.device_get(model.init(jax.random.key(0), model.dummy_batch(1, 8)))
  return {**fresh, **loaded}


def test_a_reward_model_from_the_instruction_model_ranks_held_out_preferences(tmp_path):
  pytest.importorskip("seqio")
  from jaxlm.training import adamw, train, warmup_cosine
  from jaxlm.training.checkpointing import restore_params
  from train_helpers import instruction_vocabulary, tiny_instruction_config, tiny_instruction_model
  use_compilation_cache()
  sft = tiny_instruction_model()
  v = instruction_vocabulary()
  source = prefs.generated_preference_source(["reverse_words", "multi_step_arithmetic", "word_problems"], "length",
                                             num_train=200, num_validation=50, num_responses=4)
  config = tiny_instruction_config(value_head=True)
  result = train(model_dir=str(tmp_path / "rm"), train_steps=RM_STEPS, batch_size=32, config=config,
                 data_fn=functools.partial(prefs.PreferenceData, source, LENGTHS, vocabulary=v),
                 optimizer=adamw, learning_rate=warmup_cosine(peak_value=1e-3, warmup_steps=10, decay_steps=RM_STEPS),
                 objective=RewardObjective(), init_from=sft, **{**QUIET_RUN, "log_every": RM_STEPS})
  held = prefs.PreferenceData(source, LENGTHS, batch_size=32, split="validation", vocabulary=v).epoch()
  model = result.model
  before = pairwise_accuracy(model, _fresh_head_params(model, sft, config), held)
  after = held_out_metrics(RewardObjective(), model, result.state.params, held)
  with open(tmp_path / "rm" / "metrics.jsonl", encoding="utf-8") as f:
    speed = [json.loads(line).get("steps_per_second") for line in f]
  print({"before": before, "after": after, "steps_per_second": speed})
  assert after["normalizer"] == 150 and after["pairs"] == 6.0
  assert after["accuracy"] >= RM_MIN_ACCURACY > before, (before, after)
  # The checkpoint evaluates as an LM (eval.gin's model has no head): its LM weights restore.
  lm = build_model(tiny_instruction_config())
  restored = flat_params(restore_params(str(tmp_path / "rm"), lm.param_shapes()))
  trained = flat_params(result.state.params)
  assert set(trained) - set(restored) == {"['value_head']['bias']", "['value_head']['kernel']"}
  for name, value in restored.items():
    np.testing.assert_array_equal(value, trained[name])
