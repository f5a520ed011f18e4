"""The README's commands stay true: every `python -m jaxlm.main ...` command in it is run.

Quickstart commands (the "Change the model, the objective and the data" examples) run end
to end in a scratch directory, shortened by the bindings in SHORT; the others are parsed
with their gin files and bindings and their model is built (shapes only), since they name
full-size models.
"""
from __future__ import annotations

import json
import os
import re
import shlex

import gin
import pytest

from test_train_common import ROOT

SHORT = ["--gin.TRAIN_STEPS=6", "--gin.quickstart.max_documents_per_source=60",
         "--gin.quickstart.reasoning_documents=40", "--gin.quickstart.eval_documents=4",
         "--gin.quickstart.eval_tokens_per_document=200", "--gin.quickstart.reasoning_problems=4",
         "--gin.quickstart.prompts=['def f(x):']", "--gin.quickstart.max_new_tokens=8",
         "--gin.train.checkpoint_every=6", "--gin.train.progress_bar=False",
         "--gin.train.tensorboard=False", "--gin.train.async_checkpoints=False"]


def readme_commands() -> list:
  """Every `python -m jaxlm.main` command of README.md, continuation lines joined."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read().replace("\\\n", " ")
  return [shlex.split(line, comments=True)[3:] for line in text.splitlines()
          if line.strip().startswith("python -m jaxlm.main")]


COMMANDS = readme_commands()
QUICKSTART = [c for c in COMMANDS if "--gin_file=gin_configs/runs/quickstart.gin" in c and len(c) > 1]
OTHERS = [c for c in COMMANDS if c not in QUICKSTART]


def test_readme_has_the_examples():
  assert len(QUICKSTART) >= 3 and OTHERS
  assert any("objective" in " ".join(c) for c in QUICKSTART)
  assert any("quickstart.sources" in " ".join(c) for c in QUICKSTART)


def _write_corpus(path):
  """my_corpus.jsonl, the README's own-data example: prose of the embedded corpus."""
  from jaxlm.data import sources
  docs = sources.embedded_documents("prose")[:300]
  with open(path, "w", encoding="utf-8") as f:
    for d in docs:
      f.write(json.dumps({"text": d["text"], "title": d["id"]}) + "\n")


@pytest.mark.parametrize("index", range(3))
def test_readme_quickstart_examples_run(index, tmp_path, monkeypatch):
  from jaxlm import main
  args = QUICKSTART[index]
  monkeypatch.chdir(tmp_path)
  if any("my_corpus.jsonl" in a for a in args):
    _write_corpus(tmp_path / "my_corpus.jsonl")
  gin.clear_config()
  try:
    metrics = main.main(args + SHORT)
  finally:
    gin.clear_config()
  model_dir = next(a.split("=", 1)[1].strip("'") for a in args if a.startswith("--gin.MODEL_DIR="))
  assert os.path.exists(os.path.join(tmp_path, model_dir, "report.md"))
  held_out = metrics["held-out text"]
  assert held_out["num_tokens"] > 0 and held_out["perplexity"] > 1


@pytest.mark.parametrize("args", OTHERS, ids=lambda a: " ".join(a)[:60])
def test_readme_other_commands_parse_and_build(args):
  from jaxlm import main
  from jaxlm.models import TransformerConfig, build_model
  flags, bindings = main.parse_flags(args)
  gin.clear_config()
  try:
    main.parse_gin(flags.gin_file, bindings, flags.gin_search_paths)
    model = build_model(TransformerConfig())
    assert model.num_params(model.param_shapes()) > 0
    mode = gin.query_parameter("run.mode") if re.search(r"runs/", " ".join(args)) else "summary"
    assert mode in ("summary", "train", "infer", "eval", "quickstart")
  finally:
    gin.clear_config()
