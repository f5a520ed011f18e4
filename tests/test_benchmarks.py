"""The benchmark harnesses: no TensorFlow on import, and each runs end to end on the tiny
config and writes the JSON fields the README tables are made from."""
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--gin_file=gin_configs/models/tiny_decoder.gin"


def _run(args, tmp_path):
  out = subprocess.run([sys.executable, "-m", *args, "--out_dir", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  files = list(tmp_path.glob("*.json"))
  assert len(files) == 1, files
  return json.loads(files[0].read_text()), files[0].name


def _positive(record, keys):
  for key in keys:
    assert isinstance(record[key], (int, float)) and record[key] > 0, (key, record[key])


def _tiny_num_params(**overrides) -> int:
  """The parameter count of gin_configs/models/tiny_decoder.gin, as jaxlm.main builds it."""
  import gin
  from jaxlm.main import parse_gin
  from jaxlm.models import TransformerConfig, build_model
  gin.clear_config()
  try:
    parse_gin([TINY.split("=", 1)[1]], [f"TransformerConfig.{k} = {v}" for k, v in overrides.items()])
    model = build_model(TransformerConfig())
    return model.num_params(model.param_shapes())
  finally:
    gin.clear_config()


def _environment(record):
  env = record["environment"]
  for key in ("jax", "jaxlib", "flax", "device_kind", "platform"):
    assert env[key], key
  assert env["device_count"] >= 1


@pytest.mark.parametrize("levers", [[], ["--scan", "--remat", "dots", "--num_microbatches", "2",
                                         "--peak_flops", "1e12"]])
def test_train_throughput_end_to_end(tmp_path, levers):
  args = ["benchmarks.train_throughput", TINY, "--batch", "4", "--seq", "32", "--steps", "2",
          "--warmup", "1", "--gin.TransformerConfig.num_layers=3", *levers]
  record, name = _run(args, tmp_path)
  assert name == ("train_tiny_decoder_b4_s32_mb2_scan_remat-dots.json" if levers else "train_tiny_decoder_b4_s32.json")
  _positive(record, ("tokens_per_second", "step_time_mean_s", "step_time_min_s", "compile_s",
                     "peak_memory_bytes", "flops_per_token", "num_params", "loss_first_step",
                     "loss_last_step"))
  assert len(record["step_times_s"]) == 2 and record["step_time_min_s"] <= record["step_time_mean_s"]
  assert record["tokens_per_second"] == pytest.approx(4 * 32 / record["step_time_mean_s"])
  if levers:  # MFU against the given peak
    assert record["mfu"] == pytest.approx(record["tokens_per_second"] * record["flops_per_token"] / 1e12)
  else:
    assert record["mfu"] is None  # CPU: no peak FLOP/s known
  assert record["command"].startswith("python -m benchmarks.train_throughput " + TINY)
  assert record["config"]["num_layers"] == 3
  assert record["num_params"] == _tiny_num_params(num_layers=3)
  # uniform random tokens over 256 ids: a fresh model's loss starts near ln(256) = 5.55
  assert record["loss_first_step"] == pytest.approx(math.log(256), abs=0.3)
  assert record["config"]["scan_layers"] == ("--scan" in levers)
  assert record["config"]["remat_policy"] == ("dots" if levers else "none")
  assert record["num_microbatches"] == (2 if levers else 1)
  _environment(record)


def test_decode_throughput_end_to_end(tmp_path):
  args = ["benchmarks.decode_throughput", TINY, "--prompt_len", "8", "--new_tokens", "4",
          "--batch", "1", "--batch", "2,3", "--repeats", "1"]
  record, name = _run(args, tmp_path)
  assert name == "decode_tiny_decoder_p8_n4_b1-2-3.json"
  assert [r["batch"] for r in record["results"]] == [1, 2, 3]
  for r in record["results"]:
    _positive(r, ("new_tokens_per_second", "ttft_s", "call_time_mean_s", "first_call_s", "compile_s",
                  "ttft_compile_s", "peak_memory_bytes"))
    assert r["new_tokens_per_second"] == pytest.approx(r["batch"] * 4 / r["call_time_mean_s"])
    assert r["per_token_ms"] >= 0
  assert record["method"] == "greedy" and record["new_tokens"] == 4
  assert record["num_params"] == _tiny_num_params()
  _environment(record)


def test_torch_compare_end_to_end(tmp_path):
  """jaxlm beside transformers' GPT-2 on a tiny GPT-2-shaped config: both sides timed, ratios
  recorded."""
  gpt2_like = ["--gin.TransformerConfig.position='learned'", "--gin.TransformerConfig.tie_embeddings=True",
               "--gin.TransformerConfig.mlp_activation='gelu'", "--gin.TransformerConfig.norm_type='layernorm'"]
  args = ["benchmarks.torch_compare", TINY, *gpt2_like, "--batch", "2", "--seq", "16", "--steps", "1",
          "--warmup", "0", "--decode_batch", "1,2", "--prompt_len", "4", "--new_tokens", "3", "--repeats", "1"]
  record, name = _run(args, tmp_path)
  assert name == "torch_compare_tiny_decoder_b2_s16.json"
  train = record["train"]
  _positive(train["jaxlm"], ("tokens_per_second", "step_time_mean_s"))
  _positive(train["pytorch"], ("tokens_per_second", "step_time_mean_s"))
  assert train["ratio"] == pytest.approx(train["jaxlm"]["tokens_per_second"] / train["pytorch"]["tokens_per_second"])
  assert [d["batch"] for d in record["decode"]] == [1, 2]
  for d in record["decode"]:
    assert d["ratio"] == pytest.approx(d["jaxlm"]["new_tokens_per_second"] / d["pytorch"]["new_tokens_per_second"])
  _environment(record)
