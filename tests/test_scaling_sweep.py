"""jaxlm.scaling.sweep: a 4-run sweep (2 tiny model sizes x 2 token budgets) trains end to
end with the trainer, writes its records, fits, plot and table, and a second call skips
every done run; a run that is not done resumes; a bad override names the setting."""
import json
import os

import pytest

from jaxlm.scaling import sweep
from jaxlm.training import SyntheticData, trainer

from train_helpers import use_compilation_cache

MODELS = [{"d_model": 16, "num_layers": 1, "d_ff": 32}, {"d_model": 32, "num_layers": 1, "d_ff": 64}]
STEPS = [10, 20]


def counting_train(calls):
  """trainer.train with the tiny sweep's fixed settings, recording each call's model_dir."""
  def train_fn(**kwargs):
    calls.append(kwargs["model_dir"])
    return trainer.train(batch_size=8, data_fn=lambda **kw: SyntheticData(feature_lengths={"targets": 16}, **kw),
                         log_every=5, checkpoint_every=1000, progress_bar=False, tensorboard=False,
                         async_checkpoints=False, **kwargs)
  return train_fn


def run(sweep_dir, calls, **kwargs):
  import gin
  gin.bind_parameter("TransformerConfig.vocab_size", 128)  # the base model is TransformerConfig() as gin binds it
  gin.bind_parameter("TransformerConfig.num_heads", 2)
  gin.bind_parameter("TransformerConfig.dtype", "float32")
  gin.bind_parameter("warmup_cosine.peak_value", 1e-2)  # each run: warmup_cosine(decay_steps=its steps)
  gin.bind_parameter("warmup_cosine.warmup_steps", 3)
  return sweep.run_sweep(sweep_dir=sweep_dir, models=MODELS, steps=STEPS, seq_len=16, train_fn=counting_train(calls),
                         **kwargs)


def test_four_run_sweep_end_to_end_then_skips(tmp_path):
  use_compilation_cache()
  calls = []
  out = run(str(tmp_path), calls)
  runs = out["runs"]
  assert len(calls) == 4 and [r["name"] for r in runs] == [
      "d_ff32_d_model16_num_layers1_steps10", "d_ff32_d_model16_num_layers1_steps20",
      "d_ff64_d_model32_num_layers1_steps10", "d_ff64_d_model32_num_layers1_steps20"]
  for r in runs:
    assert r["tokens"] == r["steps"] * 8 * 16
    assert r["flops"] == pytest.approx(r["flops_per_token"] * r["tokens"])
    assert r["non_embedding_params"] < r["params"]
  # More steps -> lower loss for each size; the larger model is better at 20 steps.
  loss = {r["name"]: r["loss"] for r in runs}
  assert loss["d_ff32_d_model16_num_layers1_steps20"] < loss["d_ff32_d_model16_num_layers1_steps10"]
  assert loss["d_ff64_d_model32_num_layers1_steps20"] < loss["d_ff64_d_model32_num_layers1_steps10"]
  fit = out["fit"]
  assert set(fit["kaplan"]) == {"L(N)", "L(D)", "L(C)"} and fit["kaplan"]["L(D)"]["exponent"] > 0
  assert fit["chinchilla"] is None and "at least 5 runs" in fit["chinchilla_skipped"]
  assert fit["frontier"][0] == runs[0]["name"]  # the cheapest run is always on the frontier
  for name in ("results.json", "fit.json", "loss_vs_compute.png", "table.md"):
    assert os.path.getsize(tmp_path / name) > 0, name
  table = (tmp_path / "table.md").read_text()
  assert all(r["name"] in table for r in runs) and "L(C)" in table
  assert json.loads((tmp_path / "results.json").read_text()) == runs

  # Again: every run is done and skipped; the records are the same.
  again = []
  assert run(str(tmp_path), again)["runs"] == runs and again == []
  # A run without its result.json (e.g. stopped mid-way) trains again, resuming its checkpoint.
  os.remove(tmp_path / runs[1]["name"] / sweep.RESULT_NAME)
  assert run(str(tmp_path), again)["runs"][1]["loss"] == pytest.approx(runs[1]["loss"])
  assert again == [str(tmp_path / runs[1]["name"])]
  events = (tmp_path / runs[1]["name"] / "events.jsonl").read_text()
  assert '"resumed"' in events


def test_a_bad_override_names_the_setting(tmp_path):
  with pytest.raises(ValueError, match=r"run_sweep.models: \['widht'\]"):
    sweep.run_sweep(sweep_dir=str(tmp_path), models=[{"widht": 3}], steps=[1])
