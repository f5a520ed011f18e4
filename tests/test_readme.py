"""The README's commands stay true: every `python -m jaxlm.main ...` command in it is checked.

Every command is parsed with its gin files and bindings as jaxlm.main parses them, gin's
finalize check included (no %gin.REQUIRED left unbound), and its model is built (shapes
only): the run file picks the job the README says, and each `--gin.TransformerConfig.X=V`
binding is in the model's config.

The quickstart examples (the "Change the model, the objective and the data" section) also
run, once, together: their bindings (a deeper ALiBi GQA model, the prefix LM objective on a
prefix decoder, the user's own JSONL) touch different knobs, so one shortened quickstart
with all of them exercises every example at the cost of one run. tests/test_quickstart.py
runs the full-length quickstart itself.
"""
from __future__ import annotations

import ast
import json
import os
import shlex

import gin
import pytest

from train_helpers import ROOT

# Less data, 10 steps of 4 sequences (warmed up in 2), a small evaluation: the run costs
# about its compilations. The model and the examples' knobs are the README's.
SHORT = ["--gin.TRAIN_STEPS=10", "--gin.BATCH_SIZE=4", "--gin.warmup_cosine.warmup_steps=2",
         "--gin.quickstart.max_documents_per_source=60", "--gin.quickstart.reasoning_documents=40",
         "--gin.quickstart.eval_documents=4", "--gin.quickstart.eval_tokens_per_document=200",
         "--gin.quickstart.reasoning_problems=2", "--gin.quickstart.eval_batch_size=4",
         "--gin.quickstart.prompts=['def f(x):']", "--gin.quickstart.max_new_tokens=4",
         "--gin.train.checkpoint_every=10", "--gin.train.progress_bar=False",
         "--gin.train.tensorboard=False", "--gin.train.async_checkpoints=False"]
QUICKSTART_GIN = "--gin_file=gin_configs/runs/quickstart.gin"
# The job each run file selects (run.mode); a command without a run file prints a summary.
MODES = {"quickstart.gin": "quickstart", "pretrain.gin": "train", "pretrain_synthetic.gin": "train",
         "sft.gin": "train", "reward.gin": "train", "dpo.gin": "train", "ppo.gin": "train", "grpo.gin": "train",
         "infer.gin": "infer", "eval.gin": "eval", "sweep.gin": "sweep"}


def readme_commands() -> list:
  """Every `python -m jaxlm.main` command of README.md, continuation lines joined."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read().replace("\\\n", " ")
  return [shlex.split(line, comments=True)[3:] for line in text.splitlines()
          if line.strip().startswith("python -m jaxlm.main")]


COMMANDS = readme_commands()
QUICKSTART = [c for c in COMMANDS if QUICKSTART_GIN in c and len(c) > 1]


def merged_quickstart(commands: list) -> list:
  """One quickstart command with the bindings of all `commands` but their MODEL_DIRs; fails
  naming the binding when two examples set it differently (they could not share a run)."""
  bindings = {}
  for command in commands:
    for arg in command:
      key, _, value = arg.partition("=")
      if arg == QUICKSTART_GIN or key == "--gin.MODEL_DIR":
        continue
      if bindings.setdefault(key, value) != value:
        pytest.fail(f"README quickstart examples set {key} to both {bindings[key]} and {value}: "
                    "they cannot share one test run")
  return [QUICKSTART_GIN, *(f"{k}={v}" for k, v in bindings.items())]


def test_readme_has_the_examples():
  assert len(QUICKSTART) >= 3 and len(COMMANDS) > len(QUICKSTART)
  assert any("objective" in " ".join(c) for c in QUICKSTART)
  assert any("quickstart.sources" in " ".join(c) for c in QUICKSTART)


def _write_corpus(path, count: int = 120):
  """my_corpus.jsonl, the README's own-data example: prose of the embedded corpus."""
  from jaxlm.data import sources
  docs = sources.embedded_documents("prose")[:count]
  with open(path, "w", encoding="utf-8") as f:
    for d in docs:
      f.write(json.dumps({"text": d["text"], "title": d["id"]}) + "\n")


def test_readme_quickstart_examples_run_together(tmp_path, monkeypatch, capsys):
  from jaxlm import main
  args = merged_quickstart(QUICKSTART) + ["--gin.MODEL_DIR='runs/readme'"] + SHORT
  monkeypatch.chdir(tmp_path)
  if any("my_corpus.jsonl" in a for a in args):
    _write_corpus(tmp_path / "my_corpus.jsonl")
  gin.clear_config()
  try:
    metrics = main.main(args)
  finally:
    gin.clear_config()
  out = capsys.readouterr().out
  assert "my_corpus.jsonl: 60 documents in" in out  # the own-data example's file was cleaned
  report = (tmp_path / "runs" / "readme" / "report.md").read_text(encoding="utf-8")
  assert "perplexity" in report and "def f(x):" in report
  # Untrained, held-out perplexity is about the vocabulary size (2048); 10 steps at the peak
  # learning rate bring it well below half of that (fixed seeds; 6 steps of the quickstart's
  # width-128 model gave 0.54): demand at least a 2x drop.
  held_out = metrics["held-out text"]
  assert held_out["untrained_perplexity"] > 1000, held_out
  assert held_out["ratio_to_untrained"] < 0.5, held_out


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a)[:60])
def test_readme_commands_parse_and_build(args):
  from jaxlm import main
  from jaxlm.models import TransformerConfig, build_model
  flags, bindings = main.parse_flags(args)
  gin.clear_config()
  try:
    main.parse_gin(flags.gin_file, bindings, flags.gin_search_paths)
    gin.finalize()  # as main.main does: every %gin.REQUIRED is bound by the command
    config = build_model(TransformerConfig()).config
    run_files = [os.path.basename(f) for f in flags.gin_file if "runs/" in f]
    try:
      mode = gin.query_parameter("run.mode")
    except ValueError:  # no run file binds it: run()'s default
      mode = "summary"
    assert mode == (MODES[run_files[-1]] if run_files else "summary")
    for binding in bindings:
      key, _, value = (part.strip() for part in binding.partition("="))
      if key.startswith("TransformerConfig."):
        assert getattr(config, key.split(".", 1)[1]) == ast.literal_eval(value), binding
  finally:
    gin.clear_config()
