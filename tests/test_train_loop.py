"""The loop: logged metrics, gradient accumulation, the batch-size ramp with exact token
counts, gin run files, and the memory options (scan, remat, bfloat16)."""
import glob
import json
import os

import gin
import jax
import numpy as np
import pytest

from train_helpers import BATCH, LENGTH, ROOT, flat_params, losses, run_tiny, tiny_config, use_compilation_cache
from jaxlm.models import build_model
from jaxlm.training import SyntheticData, batch_ramp, build_train_step, sgd, metrics, train, warmup_cosine
from jaxlm.training.partitioning import global_batch
from jaxlm.training.train_state import mesh_context


def test_gradient_accumulation_equals_the_big_batch():
  """One step on 8 rows equals one step on the same rows as 2 microbatches of 4 (and 4 of 2),
  with rows of different lengths so the loss normalisation matters."""
  use_compilation_cache()
  tx = sgd(1.0, clip_norm=None)  # parameters move by exactly the summed gradient
  rows = SyntheticData(batch_size=BATCH, feature_lengths={"targets": LENGTH}, min_length=4).global_batch(0)
  assert len(set(rows["decoder_loss_weights"].sum(1))) > 2
  results = {}
  for k in (1, 2, 4):
    micro = [{f: v[i * BATCH // k:(i + 1) * BATCH // k] for f, v in rows.items()} for i in range(k)]
    setup = build_train_step(tiny_config(), tx, micro[0], learning_rate=1.0)
    state = setup.init_state(jax.random.key(0))
    with mesh_context(setup.mesh, setup.rules):
      new, m = setup.step(state, global_batch(setup.mesh, micro))
    results[k] = (float(m["loss"]), float(m["grad_norm"]), float(m["accuracy"]), flat_params(new.params))
  for k in (2, 4):
    assert results[k][0] == pytest.approx(results[1][0], rel=1e-6)
    assert results[k][1] == pytest.approx(results[1][1], rel=1e-5)
    assert results[k][2] == pytest.approx(results[1][2], rel=1e-6)
    for name, value in results[1][3].items():
      np.testing.assert_allclose(results[k][3][name], value, rtol=1e-5, atol=1e-7, err_msg=name)


def test_batch_ramp_counts_tokens_exactly_and_logs_everything(tmp_path):
  """Microbatches of 8 rows, 1 -> 2 -> 4 per step; rows have random lengths (padding)."""
  ramp = batch_ramp(start_microbatches=1, end_microbatches=4, ramp_steps=6)
  schedule = warmup_cosine(peak_value=1e-2, warmup_steps=3, decay_steps=30)  # run_tiny's
  result = run_tiny(str(tmp_path), 8, batch_size=32, num_microbatches=4, batch_schedule=ramp,
                    data={"min_length": 5}, log_every=2, tensorboard=True)
  ks = [h["microbatches"] for h in result.history]
  assert ks == [1, 1, 2, 2, 2, 2, 4, 4]       # 1 + 3 * step / 6, rounded down to a power of 2
  assert [h["batch_size"] for h in result.history] == [8 * k for k in ks]
  source = SyntheticData(batch_size=8, feature_lengths={"targets": LENGTH}, min_length=5)
  expected = sum(int((source.global_batch(i)["decoder_target_tokens"] != 0).sum()) for i in range(sum(ks)))
  assert expected < sum(ks) * 8 * LENGTH                     # there is padding to not count
  assert result.tokens_seen == expected

  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl", encoding="utf-8")]
  assert [r["step"] for r in records] == [2, 4, 6, 8]
  for r in records:
    for key in ("step", "loss", "learning_rate", "grad_norm", "tokens_per_second", "mfu", "tokens_seen"):
      assert key in r, key
    assert r["learning_rate"] == pytest.approx(float(schedule(r["step"] - 1)), rel=1e-6)  # the step's own
  assert records[-1]["loss"] < records[0]["loss"] - 0.15, records  # it learns (measured -0.34)
  assert records[-1]["tokens_seen"] == expected
  assert records[-1]["tokens_per_second"] > 0
  assert records[-1]["mfu"] is None                          # CPU: peak FLOP/s unknown
  assert glob.glob(str(tmp_path / "train" / "events.out.tfevents.*"))


def test_mfu_and_peak_flops():
  assert metrics.peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
  assert metrics.peak_flops_per_device("NVIDIA A100-SXM4-80GB") == 312e12
  assert metrics.peak_flops_per_device("TPU v4") == 275e12
  assert metrics.peak_flops_per_device("TPU v5 lite") == 197e12
  assert metrics.peak_flops_per_device("cpu") is None
  assert metrics.peak_flops_per_device("cpu", override=1e12) == 1e12
  model = build_model(tiny_config())
  fpt = model.flops_per_token(LENGTH)
  assert metrics.mfu(1000.0, fpt, 2, 1e9) == pytest.approx(1000 * fpt / 2e9)
  assert metrics.mfu(1000.0, fpt, 2, None) is None


def _parse(files, bindings):
  import jaxlm.main  # registers run.mode, which run files set  # noqa: F401
  gin.clear_config()
  gin.add_config_file_search_path(ROOT)
  gin.parse_config_files_and_bindings([os.path.join(ROOT, f) for f in files], bindings)


def test_gin_run_file_trains_and_bad_bindings_fail_first(tmp_path):
  use_compilation_cache()
  tiny = [f"TransformerConfig.{k} = {v!r}" for k, v in tiny_config().__dict__.items()
          if k in ("d_model", "num_layers", "num_heads", "d_ff", "max_len", "dtype")]
  try:
    _parse(["gin_configs/runs/pretrain_synthetic.gin"],
           [f"MODEL_DIR = '{tmp_path}'", "TRAIN_STEPS = 4", "BATCH_SIZE = 8",
            "TASK_FEATURE_LENGTHS = {'targets': 16}", "train.progress_bar = False",
            "train.log_every = 2"] + tiny)
    assert str(gin.query_parameter("warmup_cosine.decay_steps")) == "%TRAIN_STEPS"
    assert gin.query_parameter("run.mode") == "train"
    assert gin.query_parameter("%TRAIN_STEPS") == 4
    result = train()
    assert len(result.history) == 4 and np.isfinite(losses(result)).all()
    # the run file's schedule reached the step: linear warmup to 1e-2 over 5 steps
    assert [h["learning_rate"] for h in result.history] == pytest.approx([0, 2e-3, 4e-3, 6e-3], abs=1e-9)
    assert len(open(tmp_path / "metrics.jsonl", encoding="utf-8").readlines()) == 2
    with pytest.raises(ValueError, match="No configurable matching 'no_such_thing'"):
      _parse(["gin_configs/runs/pretrain_synthetic.gin"], ["no_such_thing.x = 1"])
    with pytest.raises(ValueError, match="bogus"):
      _parse(["gin_configs/runs/pretrain_synthetic.gin"], ["train.bogus = 1"])
    # the SeqIO run file and both optimizer files parse and bind the t5x macros
    _parse(["gin_configs/runs/pretrain.gin", "gin_configs/optimizers/adafactor.gin"],
           ["MODEL_DIR = '/tmp/x'"])
    assert str(gin.query_parameter("DataPipeline.mixture_or_task_name")) == "%MIXTURE_OR_TASK_NAME"
    assert str(gin.query_parameter("train.batch_size")) == "%BATCH_SIZE"
    assert gin.query_parameter("TransformerConfig.dtype") == "bfloat16"
    assert str(gin.query_parameter("TransformerConfig.vocab_size")) == "%VOCAB_SIZE"
    assert gin.query_parameter("adafactor.decay_rate") == 0.8
  finally:
    gin.clear_config()


def test_scan_remat_bfloat16_step(tmp_path):
  config = tiny_config(scan_layers=True, remat_policy="dots", dtype="bfloat16")
  result = run_tiny(str(tmp_path), 3, config=config, checkpoint_every=100)
  assert losses(result)[-1] < losses(result)[0] - 0.02, losses(result)  # it learns (measured -0.052)
  dtypes = {x.dtype for x in jax.tree.leaves(result.state.params)}
  assert dtypes == {np.dtype("float32")}                     # float32 parameters, bf16 compute
  assert result.state.params["decoder"]["layers"]["mlp"]["wi_0"]["kernel"].shape == (2, 32, 64)
