"""Stability: the loss-spike detector, rollback past a poisoned batch, non-finite steps
never applied, embedding-gradient shrink."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from train_helpers import BATCH, LENGTH, flat_params, losses, run_tiny, tiny_config, use_compilation_cache
from jaxlm.models import build_model
from jaxlm.training import LossSpikeDetector, SyntheticData, build_train_step, sgd, stability
from jaxlm.training.partitioning import global_batch
from jaxlm.training.train_state import mesh_context


def test_detector_flags_jumps_but_not_noise_or_trend():
  rng = np.random.default_rng(0)
  det = LossSpikeDetector(warmup=10, window=50)
  # a falling, noisy loss (early training) is never a spike
  trend = 5.0 * np.exp(-np.arange(60) / 20) + 1.0 + rng.normal(0, 0.03, 60)
  assert all(det.check(float(x)) == stability.OK for x in trend)
  baseline = float(np.mean(trend[-10:]))
  assert det.check(baseline * 1.2) == stability.OK          # +20%: within the 25% floor
  assert det.check(baseline * 2.0) == stability.SPIKE
  assert len(det.history) == 50 and det.history[-1] == baseline * 1.2   # spikes are not recorded
  saved = det.state()
  assert det.check(float("nan")) == stability.NONFINITE
  assert det.check(float("inf")) == stability.NONFINITE
  assert det.check(float("nan")) == stability.SPIKE         # the third in a row: roll back
  fresh = LossSpikeDetector(warmup=10, window=50)
  fresh.restore(saved)
  assert fresh.check(baseline * 2.0) == stability.SPIKE     # the window survives a checkpoint


def test_poisoned_batch_is_rolled_back_and_skipped(tmp_path):
  detector = functools.partial(LossSpikeDetector, warmup=5, window=50)
  clean = run_tiny(str(tmp_path / "clean"), 30, spike_detector=detector)
  # batch 20 (used by step 21) is uniform noise: its loss is far above the trend
  poisoned = run_tiny(str(tmp_path / "poisoned"), 30, spike_detector=detector,
                      data={"poison_batches": [20]})
  assert clean.events == []                                 # no false alarm on the clean run
  rollbacks = [e for e in poisoned.events if e["event"] == "rollback"]
  assert len(rollbacks) == 1, poisoned.events
  rb = rollbacks[0]
  assert rb["spike_step"] == 21 and rb["restored_step"] == 20 and rb["skipped_batches"] == 1
  assert rb["loss"] > 1.25 * np.mean(losses(clean)[15:20])
  # the run finishes all 30 steps with the noise batch's tokens never counted ...
  assert int(poisoned.state.step) == 30 and poisoned.tokens_seen == clean.tokens_seen
  # ... and its model is as good as the clean run's: held-out loss within 0.015 nats (on this
  # seed: 0.003 apart; the same poisoned run without rollback ends 0.04 nats worse)
  model = build_model(tiny_config())
  held_out = SyntheticData(batch_size=64, feature_lengths={"targets": LENGTH}, seed=123).global_batch(0)
  eval_loss = lambda params: float(model.loss_fn(params, held_out)[0])
  clean_loss, recovered_loss = eval_loss(clean.state.params), eval_loss(poisoned.state.params)
  assert abs(recovered_loss - clean_loss) < 0.015, (recovered_loss, clean_loss)
  assert clean_loss < math.log(128) - 1.0                   # and it did learn


def _one_device_setup(optimizer, lr, **kw):
  """The trainer's own setup (build_train_step) of the tiny LM on one device, a batch, and
  the step-0 state."""
  use_compilation_cache()
  example = SyntheticData(batch_size=BATCH, feature_lengths={"targets": LENGTH}).global_batch(0)
  setup = build_train_step(tiny_config(), optimizer, example, learning_rate=lr, **kw)
  return setup, example, setup.init_state(jax.random.key(0))


def test_nonfinite_step_is_never_applied():
  setup, example, state = _one_device_setup(sgd(0.1), 0.1)
  mesh, rules, step = setup.mesh, setup.rules, setup.step
  weights = np.asarray(example["decoder_loss_weights"], np.float32)
  weights[3, 5] = np.nan                                     # one NaN makes loss and gradients NaN
  bad = global_batch(mesh, [dict(example, decoder_loss_weights=weights)])
  good = global_batch(mesh, [dict(example, decoder_loss_weights=np.asarray(example["decoder_loss_weights"], np.float32))])
  with mesh_context(mesh, rules):
    s1, m1 = step(state, good)
    after_good = flat_params(s1.params)                      # (the step donates s1)
    s2, m2 = step(s1, bad)
    after_bad, steps_after_bad = flat_params(s2.params), int(s2.step)
    s3, m3 = step(s2, good)
  assert bool(m1["applied"]) and not bool(m2["applied"]) and bool(m3["applied"])
  assert not np.isfinite(float(m2["loss"]))
  assert steps_after_bad == 2                                # the step still counts
  for k, v in after_bad.items():                             # but nothing changed
    np.testing.assert_array_equal(v, after_good[k], err_msg=k)
  assert all(np.isfinite(v).all() for v in flat_params(s3.params).values())
  assert float(m3["loss"]) < float(m1["loss"])


def test_embedding_gradient_shrink_scales_only_the_embedding():
  grads = {"token_embedding": {"embedding": jnp.ones((4, 2))}, "lm_head": jnp.ones((2, 4)),
           "decoder": {"layers_0": {"mlp": {"wi": {"kernel": jnp.ones((2, 2))}}}}}
  out = stability.shrink_embedding_grads(grads, 0.1)
  np.testing.assert_allclose(out["token_embedding"]["embedding"], 0.1)
  np.testing.assert_allclose(out["lm_head"], 1.0)
  np.testing.assert_allclose(out["decoder"]["layers_0"]["mlp"]["wi"]["kernel"], 1.0)
  # inside the step (plain SGD, no clipping): the embedding moves 10x less, the rest the same
  moved = {}
  for alpha in (1.0, 0.1):
    setup, example, state = _one_device_setup(sgd(1.0, clip_norm=None), 1.0, embedding_grad_shrink=alpha)
    before = flat_params(state.params)
    with mesh_context(setup.mesh, setup.rules):
      new, _ = setup.step(state, global_batch(setup.mesh, [example]))
    moved[alpha] = {k: v - before[k] for k, v in flat_params(new.params).items()}
  emb = "['token_embedding']['embedding']"
  np.testing.assert_allclose(moved[0.1][emb], 0.1 * moved[1.0][emb], rtol=1e-4, atol=1e-8)
  np.testing.assert_allclose(moved[0.1]["['lm_head']"], moved[1.0]["['lm_head']"], rtol=1e-4, atol=1e-8)
