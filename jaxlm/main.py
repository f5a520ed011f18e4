"""jaxlm's one entry point: `python -m jaxlm.main --gin_file=F [--gin.X=V ...]`.

The gin files pick the job (`run.mode`) and configure everything it builds:
  summary   build the model from TransformerConfig and print its parameter count and shapes
  train     jaxlm.training.trainer.train (gin_configs/runs/pretrain.gin)
  infer     jaxlm.inference.infer.infer: prompts file -> checkpoint -> JSONL (runs/infer.gin)
  eval      jaxlm.evaluation.evaluator.evaluate: SeqIO tasks -> metrics.json (runs/eval.gin)
  quickstart  jaxlm.quickstart.quickstart: clean, tokenize, pretrain, evaluate, decode, report
            (gin_configs/runs/quickstart.gin)
Bindings: `--gin.TransformerConfig.d_model=128` or `--gin_bindings="X = V"`, t5x style.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Sequence

import gin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Modules whose gin configurables a run file may name; each imports no TensorFlow at import time.
CONFIGURABLE_MODULES = ("jaxlm.models", "jaxlm.training", "jaxlm.inference",
                        "jaxlm.evaluation.evaluator")


def parse_flags(argv: Sequence[str]):
  parser = argparse.ArgumentParser(prog="python -m jaxlm.main", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
  parser.add_argument("--gin_bindings", action="append", default=[], help="a gin binding 'X = V'")
  parser.add_argument("--gin_search_paths", default=f".,{REPO_ROOT}")
  args, rest = parser.parse_known_args(argv)
  bindings = list(args.gin_bindings)
  for item in rest:
    if not item.startswith("--gin."):
      parser.error(f"unrecognized argument {item!r}")
    key, _, value = item[len("--gin."):].partition("=")
    bindings.append(f"{key} = {value}")
  return args, bindings


def load_configurables():
  for name in CONFIGURABLE_MODULES:
    try:
      importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name != name:
        raise


def parse_gin(gin_files: List[str], bindings: List[str], search_paths: str = f".,{REPO_ROOT}"):
  """Parses the files and bindings; a binding that names nothing real fails here."""
  load_configurables()
  paths = search_paths.split(",")
  for path in paths:
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings([find_gin_file(f, paths) for f in gin_files], bindings,
                                      finalize_config=False)


def find_gin_file(name: str, search_paths: Sequence[str]) -> str:
  """`name` itself, else the first search path holding it (so runs work from any directory)."""
  for candidate in [name] + [os.path.join(p, name) for p in search_paths if not os.path.isabs(name)]:
    if os.path.exists(candidate):
      return candidate
  raise FileNotFoundError(f"--gin_file={name}: no such file here or in {', '.join(search_paths)}")


def summary():
  from jaxlm.models import TransformerConfig, build_model
  import jax
  model = build_model(TransformerConfig())
  shapes = model.param_shapes()
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  for path, leaf in flat:
    print(f"{jax.tree_util.keystr(path):70s} {str(tuple(leaf.shape)):>20s}")
  cfg = model.config
  print(f"arch={cfg.arch} layers={cfg.num_layers} d_model={cfg.d_model} heads={cfg.num_heads}"
        f"/{cfg.kv_heads} position={cfg.position}")
  print(f"parameters: {model.num_params(shapes):,}")
  print(f"training FLOPs/token at length {cfg.max_len}: {model.flops_per_token(cfg.max_len):.4g}")
  return model.num_params(shapes)


# run.mode -> (module, function) of the job; 'summary' is summary() above.
JOBS = {"train": ("jaxlm.training.trainer", "train"),
        "infer": ("jaxlm.inference.infer", "infer"),
        "eval": ("jaxlm.evaluation.evaluator", "evaluate"),
        "quickstart": ("jaxlm.quickstart", "quickstart")}


@gin.configurable
def run(mode: str = "summary"):
  if mode == "summary":
    return summary()
  if mode not in JOBS:
    raise ValueError(f"run.mode={mode!r}: must be one of {['summary', *JOBS]}")
  module, function = JOBS[mode]
  return getattr(importlib.import_module(module), function)()


def main(argv: Sequence[str] = None):
  args, bindings = parse_flags(sys.argv[1:] if argv is None else argv)
  if not args.gin_file and not bindings:
    print("no --gin_file given; see --help", file=sys.stderr)
  parse_gin(args.gin_file, bindings, args.gin_search_paths)
  return run()


if __name__ == "__main__":
  main()
