"""The quickstart end to end: the whole lifecycle of gin_configs/runs/quickstart.gin shortened
(pretrain, instruction-tune, align with DPO, prompt, evaluate, report), Ctrl-C in the
middle of instruction tuning, and the second run resuming that stage at its checkpoint with
the earlier stages cached; then each stage's effect against a stated margin.

Shortened means less data, fewer steps and a smaller evaluation; the model, the stages, the
suite and the gin file are the real ones.
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

SFT_STEPS = 240
SHORT = ["--gin.TRAIN_STEPS=40", "--gin.quickstart.max_documents_per_source=120",
         "--gin.quickstart.reasoning_documents=100", "--gin.quickstart.eval_documents=8",
         "--gin.quickstart.eval_tokens_per_document=300", "--gin.quickstart.reasoning_problems=24",
         "--gin.quickstart.max_new_tokens=16", f"--gin.instruction_tuning.steps={SFT_STEPS}",
         "--gin.instruction_tuning.batch_size=16",
         "--gin.preference_source.num_validation=24", "--gin.train.checkpoint_every=10", "--gin.train.log_every=2",
         "--gin.train.progress_bar=False"]
# Margins, measured with these settings and seeds on 2 CPU cores (the measured values in
# brackets, +- the binomial standard error; the interrupted and resumed run measures the same):
MIN_PERPLEXITY_DROP = 3.0    # untrained / pretrained held-out perplexity (2147 / 441 = 4.9x)
MIN_SFT_EM_GAIN = 0.2        # held-out instruction exact match, instruction-tuned - pretrained
                             # (0.50 +- 0.07 - 0.00: 240 steps of 16 learn count_words /
                             # unit_conversion partly; the full quickstart's 250 steps of 32 reach 0.86)
MIN_PROMPTING_GAIN = 0.15    # the instruction-tuned model's best prompting strategy over its
                             # baseline on 24 held-out problems: k-NN over random demonstrations
                             # (0.33 +- 0.10 vs 0.04) or the calculator over no tool (0.17 vs 0.00)
MIN_PREFERENCE_GAIN = 0.5    # DPO: held-out preference accuracy, aligned - instruction-tuned (0.00 -> 1.00)
MIN_TRUE_REWARD_GAIN = 0.5   # DPO: true reward of greedy answers (0.00 -> 0.96 +- 0.03 after 30 steps)
STAGES = ("untrained", "pretrained", "instruction-tuned (full)", "aligned (dpo)")


def quickstart(model_dir: str) -> subprocess.Popen:
  cmd = [sys.executable, "-m", "jaxlm.main", "--gin_file=gin_configs/runs/quickstart.gin",
         f"--gin.MODEL_DIR='{model_dir}'", *SHORT]
  return subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(1), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def events(model_dir: str) -> list:
  with open(os.path.join(model_dir, "events.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def checkpoints(model_dir: str) -> list:
  return sorted(int(s) for s in os.listdir(os.path.join(model_dir, "checkpoints")) if s.isdigit())


def test_quickstart_lifecycle_interrupted_resumes_and_reports(tmp_path):
  model_dir = str(tmp_path / "quickstart")
  sft_dir = os.path.join(model_dir, "sft")

  first = quickstart(model_dir)
  interrupt([(first, sft_dir, 12, signal.SIGINT)], timeout=900)  # Ctrl-C during instruction tuning
  out, _ = first.communicate(timeout=240)
  assert first.returncode == 0, out[-4000:]
  assert "[1/7]" in out and "near_dedup" in out and "pii" in out  # the cleaning report
  assert "stopped at step" in out and "instruction tuning stage" in out and "run the same command again" in out
  assert not os.path.exists(os.path.join(model_dir, "report.md"))
  assert checkpoints(model_dir)[-1] == 40  # pretraining finished
  saved = checkpoints(sft_dir)
  assert saved and 12 <= saved[-1] < SFT_STEPS

  second = quickstart(model_dir)
  out, _ = second.communicate(timeout=1500)  # minutes on 2 idle cores; far more on shared ones
  assert second.returncode == 0, out[-4000:]
  assert "tokenizer" in out and "(cached)" in out and "pretrained: step 40 checkpoint" in out  # not redone
  assert not any(e.get("event") == "resumed" for e in events(model_dir))  # pretraining was not rerun
  resumed = [e for e in events(sft_dir) if e.get("event") == "resumed"]
  assert resumed and resumed[-1]["step"] == saved[-1]
  assert checkpoints(os.path.join(model_dir, "dpo"))[-1] == 30  # alignment.steps: the default

  report = open(os.path.join(model_dir, "report.md"), encoding="utf-8").read()
  for needle in (*STAGES, "perplexity", "instruction EM", "preference acc", "true reward", "few-shot k-NN",
                 "CoT self-consistency", "calculator", "ECE", " ± ", "What each stage bought", "Time",
                 "loss_curve.png", "metrics.png", "Samples"):
    assert needle in report, needle
  chat_sample = report.split("<|assistant|>", 1)[1].split("### Sample", 1)[0]  # the held-out chat prompt
  sft_answer = chat_sample.split("**instruction-tuned (full)**", 1)[1].split("**aligned (dpo)**", 1)[0]
  assert "<|end|>" in sft_answer, chat_sample  # instruction tuning taught the chat turn's end
  for name in ("loss_curve.png", "metrics.png"):
    assert os.path.getsize(os.path.join(model_dir, name)) > 5000
  with open(os.path.join(model_dir, "metrics.json"), encoding="utf-8") as f:
    rows = json.load(f)["metrics"]
  assert list(rows) == list(STAGES)
  untrained, pretrained, sft, aligned = (rows[s] for s in STAGES)
  print(json.dumps(rows, indent=1))
  # 40 steps of 16 x 256 tokens take held-out perplexity from ~2000 (untrained, about the
  # vocabulary size) to a few hundred.
  assert untrained["perplexity"] > 1000
  assert untrained["perplexity"] / pretrained["perplexity"] >= MIN_PERPLEXITY_DROP, rows
  assert sft["instruction EM"] - pretrained["instruction EM"] >= MIN_SFT_EM_GAIN, rows
  assert max(sft["few-shot k-NN"] - sft["few-shot random"], sft["calculator"] - sft["no tool"]) >= MIN_PROMPTING_GAIN, rows
  assert aligned["preference acc"] - sft["preference acc"] >= MIN_PREFERENCE_GAIN, rows
  assert aligned["true reward"] - sft["true reward"] >= MIN_TRUE_REWARD_GAIN, rows


def test_quickstart_gin_binds_the_trainer_inputs_and_no_code_defaults():
  from jaxlm import main  # pylint: disable=import-outside-toplevel
  from jaxlm.quickstart import job  # pylint: disable=import-outside-toplevel
  gin.clear_config()
  try:
    main.parse_gin(["gin_configs/runs/quickstart.gin"], [])
    gin.finalize()  # every gin.REQUIRED (train.data_fn, train.learning_rate, ...) is bound
    assert "DataPipeline" in str(gin.query_parameter("train.data_fn"))
    assert "warmup_cosine" in str(gin.query_parameter("train.learning_rate"))
    assert str(gin.query_parameter("DataPipeline.mixture_or_task_name")) == "%MIXTURE_OR_TASK_NAME"
    assert str(gin.query_parameter("quickstart.pretrain_steps")) == "%TRAIN_STEPS"
    from jaxlm.quickstart import stages  # pylint: disable=import-outside-toplevel
    for name, fn in (("quickstart", job.quickstart), ("instruction_tuning", stages.instruction_tuning),
                     ("alignment", stages.alignment), ("preference_source", stages.preference_source)):
      for param_name, param in inspect.signature(fn.__wrapped__).parameters.items():
        try:
          bound = gin.query_parameter(f"{name}.{param_name}")
        except ValueError:
          continue
        if not isinstance(bound, gin.config.ConfigurableReference):  # also a %MACRO
          assert bound != param.default, f"quickstart.gin restates {name}.{param_name}'s default"
  finally:
    gin.clear_config()


def test_quickstart_names_a_wrong_method():
  from jaxlm.quickstart import stages  # pylint: disable=import-outside-toplevel
  for fn, setting in ((stages.instruction_tuning, "quickstart.sft_method"), (stages.alignment, "quickstart.alignment")):
    try:
      fn("/nonexistent", None, None, method="rlhf")
    except ValueError as e:
      assert setting in str(e) and "rlhf" in str(e)
    else:
      raise AssertionError(f"{setting}='rlhf' was accepted")


def test_a_stage_trained_with_other_settings_is_refused_and_kept(tmp_path):
  """A rerun with a changed setting names the stage's directory and the setting, and
  trains nothing over it; the same settings find the stage as it was."""
  import dataclasses
  import pytest
  from jaxlm.models import TransformerConfig
  from jaxlm.quickstart import stages
  config = TransformerConfig(vocab_size=64, d_model=16, num_layers=1, num_heads=2, d_ff=32, max_len=16)
  sft_dir = tmp_path / "sft"
  (sft_dir / "checkpoints" / "30").mkdir(parents=True)
  settings = {"parent": "abc:200", "peak_learning_rate": 2e-3, "register_sft_mixture": {"num_train": 2000}}
  flat = {**{k: json.dumps(v) for k, v in settings.items() if not isinstance(v, dict)},
          "register_sft_mixture.num_train": "2000", "steps": "30",
          **{f"config.{k}": json.dumps(v, default=str) for k, v in dataclasses.asdict(config).items()}}
  (sft_dir / "quickstart_stage.json").write_text(json.dumps({"settings": flat, "train_seconds": 1.0}))
  changed = {**settings, "register_sft_mixture": {"num_train": 500}}
  with pytest.raises(ValueError, match=r"sft holds the instruction-tuned \(full\) stage trained with other settings "
                                       r"\(register_sft_mixture.num_train: 2000 -> 500\)\. Delete"):
    stages.run_stage("instruction-tuned (full)", str(sft_dir), 30, config, changed)
  with pytest.raises(ValueError, match=r"parent: \"abc:200\" -> \"abc:400\""):  # a retrained parent
    stages.run_stage("instruction-tuned (full)", str(sft_dir), 30, config, {**settings, "parent": "abc:400"})
  assert sorted(os.listdir(sft_dir / "checkpoints")) == ["30"]
  assert json.loads((sft_dir / "quickstart_stage.json").read_text())["settings"] == flat
