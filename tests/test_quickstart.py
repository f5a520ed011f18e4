"""The quickstart end to end: a shortened run of gin_configs/runs/quickstart.gin, Ctrl-C in
the middle of training, and the second run resuming from the checkpoint it left.

Shortened means less data, fewer steps and a smaller evaluation; the model, the stages and
the gin file are the real ones.
"""
from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys

import gin

from train_helpers import ROOT, interrupt, subprocess_env

SHORT = ["--gin.TRAIN_STEPS=40", "--gin.quickstart.max_documents_per_source=120",
         "--gin.quickstart.reasoning_documents=100", "--gin.quickstart.eval_documents=8",
         "--gin.quickstart.eval_tokens_per_document=300", "--gin.quickstart.reasoning_problems=8",
         "--gin.train.checkpoint_every=10", "--gin.train.log_every=2"]


def quickstart(model_dir: str) -> subprocess.Popen:
  cmd = [sys.executable, "-m", "jaxlm.main", "--gin_file=gin_configs/runs/quickstart.gin",
         f"--gin.MODEL_DIR='{model_dir}'", *SHORT]
  return subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(1), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def events(model_dir: str) -> list:
  with open(os.path.join(model_dir, "events.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def test_quickstart_interrupted_resumes_and_reports(tmp_path):
  model_dir = str(tmp_path / "quickstart")

  first = quickstart(model_dir)
  interrupt([(first, model_dir, 12, signal.SIGINT)], timeout=400)  # Ctrl-C during training
  out, _ = first.communicate(timeout=240)
  assert first.returncode == 0, out[-4000:]
  assert "[1/6]" in out and "near_dedup" in out and "pii" in out  # the cleaning report
  assert "stopped at step" in out and "run the same command again to resume" in out
  assert not os.path.exists(os.path.join(model_dir, "report.md"))
  saved = sorted(int(s) for s in os.listdir(os.path.join(model_dir, "checkpoints")) if s.isdigit())
  assert saved and 12 <= saved[-1] < 40

  second = quickstart(model_dir)
  out, _ = second.communicate(timeout=600)
  assert second.returncode == 0, out[-4000:]
  assert "(cached)" in out  # data and tokenizer are not redone
  resumed = [e for e in events(model_dir) if e.get("event") == "resumed"]
  assert resumed and resumed[-1]["step"] == saved[-1]

  report = open(os.path.join(model_dir, "report.md"), encoding="utf-8").read()
  for needle in ("perplexity", "ratio_to_untrained", "accuracy", "loss_curve.png", "Samples"):
    assert needle in report, needle
  assert os.path.getsize(os.path.join(model_dir, "loss_curve.png")) > 1000
  with open(os.path.join(model_dir, "metrics.json"), encoding="utf-8") as f:
    held_out = json.load(f)["metrics"]["held-out text"]
  # 40 steps of 16 x 256 tokens take held-out perplexity from ~2000 (untrained, about the
  # vocabulary size) to a few hundred; demand at least a 3x drop.
  assert held_out["untrained_perplexity"] > 1000
  assert held_out["ratio_to_untrained"] < 1 / 3, held_out


def test_quickstart_gin_binds_the_trainer_inputs_and_no_code_defaults():
  from jaxlm import main, quickstart as quickstart_lib  # pylint: disable=import-outside-toplevel
  gin.clear_config()
  try:
    main.parse_gin(["gin_configs/runs/quickstart.gin"], [])
    gin.finalize()  # every gin.REQUIRED (train.data_fn, train.learning_rate, ...) is bound
    assert "DataPipeline" in str(gin.query_parameter("train.data_fn"))
    assert "warmup_cosine" in str(gin.query_parameter("train.learning_rate"))
    assert str(gin.query_parameter("DataPipeline.mixture_or_task_name")) == "%MIXTURE_OR_TASK_NAME"
    defaults = inspect.signature(quickstart_lib.quickstart.__wrapped__).parameters
    for name, param in defaults.items():
      try:
        bound = gin.query_parameter(f"quickstart.{name}")
      except ValueError:
        continue
      if not isinstance(bound, gin.config.ConfigurableReference):  # also a %MACRO
        assert bound != param.default, f"quickstart.gin restates quickstart.{name}'s default"
  finally:
    gin.clear_config()
