"""The trainer as a library: an objective written here trains through train() unchanged
(checkpoints, exact resume, spike rollback); a frozen subset stays bit-identical with no
optimizer state; a frozen reference model travels with the state; init_from a jaxlm
checkpoint or a Hugging Face GPT-2 directory starts from those weights; runs that cannot
fit or that forget a binding fail before their first step, naming why."""
import functools
import shutil

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train_helpers import BATCH, LENGTH, flat_params, losses, run_tiny, tiny_config
from jaxlm.models import build_model
from jaxlm.training import LossSpikeDetector, SyntheticData, Trainable, model_params, train
from jaxlm.training.memory import DoesNotFit


class ValueData(SyntheticData):
  """SyntheticData plus a float 'value_targets' feature: 1 + N(0, 0.3) per row, and 6 on
  the rows of the poisoned batches (a spike for the value objective)."""

  def global_batch(self, index):
    batch = super().global_batch(index)
    rng = np.random.default_rng((self.seed, index, 1))
    values = 1.0 + 0.3 * rng.standard_normal(self.batch_size)
    batch["value_targets"] = np.full_like(values, 6.0) if index in self.poison else values
    return {k: v.astype(np.float32) if k == "value_targets" else v for k, v in batch.items()}


class ValueRegression:
  """A toy objective on a value head: the mean of the last position's logits regressed onto
  value_targets by squared error, normalised by the number of rows."""

  def __call__(self, model, trainable, frozen, batch, rng=None):
    logits, _ = model.apply(model_params(trainable, frozen), batch, rng)
    error = logits[:, -1, :].mean(-1) - batch["value_targets"]
    return jnp.square(error).sum(), jnp.asarray(error.shape[0], jnp.float32), {"abs_error": jnp.abs(error).sum()}


def _value_run(model_dir, steps):
  detector = functools.partial(LossSpikeDetector, warmup=10, window=30)
  data_fn = functools.partial(ValueData, feature_lengths={"targets": LENGTH}, poison_batches=[20])
  return run_tiny(model_dir, steps, objective=ValueRegression(), data_fn=data_fn,
                  spike_detector=detector)


def test_an_objective_from_outside_trains_resumes_and_rolls_back(tmp_path):
  straight = _value_run(str(tmp_path / "straight"), 26)
  curve = losses(straight)
  assert np.mean(curve[:3]) > 5 * np.mean(curve[14:20]), curve      # it learns (measured 8.3x)
  assert np.mean(curve[14:20]) < 0.2, curve                         # near the noise floor 0.09
  rollbacks = [e for e in straight.events if e["event"] == "rollback"]
  assert len(rollbacks) == 1 and rollbacks[0]["spike_step"] == 21, straight.events
  assert rollbacks[0]["restored_step"] == 20 and rollbacks[0]["skipped_batches"] == 1
  assert int(straight.state.step) == 26

  first = _value_run(str(tmp_path / "resumed"), 12)
  second = _value_run(str(tmp_path / "resumed"), 26)
  assert second.events[0]["event"] == "resumed" and second.events[0]["step"] == 12
  assert losses(first) + losses(second) == curve                    # exactly, rollback included
  for name, value in flat_params(straight.state.params).items():
    np.testing.assert_array_equal(flat_params(second.state.params)[name], value, err_msg=name)


def _loss_on_first_batch(config, params):
  batch = SyntheticData(batch_size=BATCH, feature_lengths={"targets": LENGTH},
                        vocab_size=config.vocab_size).global_batch(0)
  return float(build_model(config).loss_fn(params, batch)[0])


def test_frozen_subset_reference_model_and_init_from_a_checkpoint(tmp_path):
  d = lambda name: str(tmp_path / name)
  base = run_tiny(d("base"), 5)
  base_params = flat_params(base.state.params)

  # init_from: step 0 of the new run scores the checkpoint's weights
  started = run_tiny(d("init"), 1, init_from=d("base"))
  assert started.history[0]["loss"] == pytest.approx(_loss_on_first_batch(tiny_config(), base.state.params),
                                                     rel=1e-5)
  assert started.history[0]["loss"] < losses(base)[0] - 0.1   # and not a fresh init's loss

  # only the second layer trains; the base is loaded, a reference copy rides along frozen
  kw = dict(init_from=d("base"), trainable=Trainable(include=("decoder/layers_1/",)),
            frozen_models={"reference": d("base")})
  straight = run_tiny(d("frozen"), 20, **kw)
  trained = {k for k in base_params if "['layers_1']" in k}
  assert trained and len(trained) < len(base_params)
  after = flat_params(straight.state.params)
  for name, value in base_params.items():
    if name in trained:
      assert not np.array_equal(after[name], value), name
    else:
      np.testing.assert_array_equal(after[name], value, err_msg=name)   # bit-identical
  for name, value in flat_params(straight.state.frozen_models["reference"]).items():
    np.testing.assert_array_equal(value, base_params[name], err_msg=name)
  trained_size = sum(base_params[k].size for k in trained)
  opt_size = sum(x.size for x in jax.tree.leaves(straight.state.opt_state) if np.ndim(x) > 0)
  assert opt_size == 2 * trained_size                                # Adam's mu and nu, nothing else
  assert losses(straight)[-1] < losses(straight)[0]

  shutil.copytree(d("base"), d("base_copy"))
  copy_kw = dict(kw, init_from=d("base_copy"), frozen_models={"reference": d("base_copy")})
  first = run_tiny(d("frozen_resumed"), 10, **copy_kw)
  shutil.rmtree(d("base_copy"))                                      # a resumed run reads neither
  second = run_tiny(d("frozen_resumed"), 20, **copy_kw)              # resuming wins over init_from
  assert second.events[0]["event"] == "resumed"
  assert losses(first) + losses(second) == losses(straight)
  for name, value in after.items():
    np.testing.assert_array_equal(flat_params(second.state.params)[name], value, err_msg=name)

  with pytest.raises(ValueError, match=r"wrong shape 6: decoder/layers_0/mlp/wi_0/kernel \(32, 64\) \(the model has \(32, 96\)\)"):
    run_tiny(d("mismatch"), 1, config=tiny_config(d_ff=96), init_from=d("base"))
  with pytest.raises(ValueError, match=r"missing 9: decoder/layers_2/.*; unexpected 1: lm_head"):
    run_tiny(d("mismatch2"), 1, config=tiny_config(num_layers=3, tie_embeddings=True),
             init_from=d("base"))


def test_init_from_a_hugging_face_gpt2_directory(tmp_path):
  import torch
  import transformers
  from jaxlm.models.convert import load_hf
  torch.manual_seed(0)
  hf = transformers.GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=4)
  transformers.GPT2LMHeadModel(hf).save_pretrained(str(tmp_path / "gpt2"))
  config, params = load_hf(str(tmp_path / "gpt2"))
  result = run_tiny(str(tmp_path / "run"), 1, config=config, init_from=str(tmp_path / "gpt2"))
  assert result.history[0]["loss"] == pytest.approx(_loss_on_first_batch(config, params), rel=1e-5)


def test_a_run_that_cannot_fit_fails_before_its_first_step(tmp_path):
  with pytest.raises(DoesNotFit, match=r"needs 0\.\d+ GiB per device but train.memory_limit_bytes is "
                                       r"0\.00 GiB; driven by BATCH_SIZE=8.*num_microbatches=1.*length 16"):
    run_tiny(str(tmp_path), 5, memory_limit_bytes=1000)
  assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())


def test_forgotten_bindings_fail_naming_them(tmp_path):
  gin.clear_config()
  try:
    with pytest.raises(Exception, match="data_fn"):
      train(model_dir=str(tmp_path), train_steps=1, batch_size=8, learning_rate=1e-3,
            config=tiny_config())
    with pytest.raises(Exception, match="learning_rate"):
      train(model_dir=str(tmp_path), train_steps=1, batch_size=8, data_fn=SyntheticData,
            config=tiny_config())
  finally:
    gin.clear_config()


def test_a_newcomers_oversized_run_stops_with_one_line(tmp_path):
  """pretrain_synthetic.gin at batch 1024 x 1024 tokens needs ~150 GiB: the command stops
  after compiling, before any step, with the estimate and the bindings (exit status 2)."""
  import subprocess
  import sys
  from train_helpers import ROOT, subprocess_env
  proc = subprocess.run(
      [sys.executable, "-m", "jaxlm.main", "--gin_file=gin_configs/runs/pretrain_synthetic.gin",
       f"--gin.MODEL_DIR='{tmp_path}'", "--gin.BATCH_SIZE=1024", "--gin.TASK_FEATURE_LENGTHS={'targets': 1024}",
       "--gin.TransformerConfig.vocab_size=4096", "--gin.train.progress_bar=False"],
      cwd=ROOT, env=subprocess_env(1), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("jaxlm: error: the train step needs ") and "BATCH_SIZE=1024" in last, proc.stderr[-3000:]
  needed = float(last.split("needs ")[1].split(" GiB")[0])
  assert needed > 100, last
