"""jaxlm's one entry point: `python -m jaxlm.main --gin_file=F [--gin.X=V ...] [--debug]`.

The gin files pick the job (`run.mode`) and configure everything it builds:
  summary   build the model from TransformerConfig and print its parameter count and shapes
  train     jaxlm.training.trainer.train (gin_configs/runs/pretrain.gin)
  infer     jaxlm.inference.infer.infer: prompts file -> checkpoint -> JSONL (runs/infer.gin)
  eval      jaxlm.evaluation.evaluator.evaluate: SeqIO tasks -> metrics.json (runs/eval.gin)
  quickstart  jaxlm.quickstart.quickstart: clean, tokenize, pretrain, evaluate, decode, report
            (gin_configs/runs/quickstart.gin)
  sweep     jaxlm.scaling.sweep.run_sweep: model sizes x token budgets, then the scaling-law
            fits (gin_configs/runs/sweep.gin)
Bindings: `--gin.TransformerConfig.d_model=128` or `--gin_bindings="X = V"`, t5x style.

Errors. A user's mistake ends the command with one line on stderr naming the cause, e.g.
`jaxlm: error: checkpoint directory /x does not exist`, and exit status 2; a bug in jaxlm
keeps its full traceback (exit status 1). The mistakes are:
  - the command line: an unknown flag, no --gin_file, a --gin_file that is not there;
  - anything gin raises: an unknown configurable or parameter, a syntax error, an
    unbound %gin.REQUIRED or required parameter (with the gin file and line, or the
    binding, at fault);
  - a path that is not there or not usable (FileNotFoundError, NotADirectoryError,
    IsADirectoryError, PermissionError): a checkpoint directory, a data or prompts file;
  - a malformed input file (json.JSONDecodeError, and the readers' errors naming file:line);
  - ValueError or KeyError raised by a check in jaxlm's or seqio's own code: conflicting
    model options (TransformerConfig.validate), an unknown run.mode, objective or task, a
    checkpoint that does not fit the model.
A ValueError or KeyError raised inside jax, flax, optax, orbax or numpy, and every other
exception, is a bug. `--debug` (or JAXLM_DEBUG=1 in the environment) re-raises every error
with its traceback. gin re-raises errors with its location appended; the line printed is
the original message with that location made short.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import sys
from typing import List, Sequence, Tuple

import gin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Modules whose gin configurables a run file may name; each imports no TensorFlow at import time.
CONFIGURABLE_MODULES = ("jaxlm.models", "jaxlm.training", "jaxlm.adaptation", "jaxlm.inference",
                        "jaxlm.evaluation.evaluator")


class UsageError(ValueError):
  """A malformed command line (argparse's errors, raised instead of printed with the usage)."""


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    raise UsageError(f"{message}; see --help")


def parse_flags(argv: Sequence[str]):
  parser = _Parser(prog="python -m jaxlm.main", description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
  parser.add_argument("--gin_bindings", action="append", default=[], help="a gin binding 'X = V'")
  parser.add_argument("--gin_search_paths", default=f".,{REPO_ROOT}")
  parser.add_argument("--debug", action="store_true",
                      help="errors keep their full traceback (also: JAXLM_DEBUG=1)")
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
  paths = search_paths.split(",")
  files = [find_gin_file(f, paths) for f in gin_files]  # a missing file fails before any import
  load_configurables()
  for path in paths:
    gin.add_config_file_search_path(path)
  quiet = _QuietGinSearch()
  logging.getLogger().addFilter(quiet)
  try:
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
  finally:
    logging.getLogger().removeFilter(quiet)


class _QuietGinSearch(logging.Filter):
  """Drops gin's 'Path not found' log lines: it logs one for each search path an include is
  not under before it finds the one it is under (a missing include still fails, by name)."""

  def filter(self, record):
    return not (record.getMessage().startswith("Path not found")
                and os.path.basename(record.pathname) == "resource_reader.py")


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
        "quickstart": ("jaxlm.quickstart", "quickstart"),
        "sweep": ("jaxlm.scaling.sweep", "run_sweep")}


@gin.configurable
def run(mode: str = "summary"):
  if mode == "summary":
    return summary()
  if mode not in JOBS:
    raise ValueError(f"run.mode={mode!r}: must be one of {['summary', *JOBS]}")
  module, function = JOBS[mode]
  return getattr(importlib.import_module(module), function)()


def main(argv: Sequence[str] = None):
  """Parses the flags and gin, then runs the job; returns its result and raises its errors."""
  args, bindings = parse_flags(sys.argv[1:] if argv is None else argv)
  if not args.gin_file:
    raise UsageError("no --gin_file given (e.g. --gin_file=gin_configs/runs/quickstart.gin); "
                     "see --help")
  parse_gin(args.gin_file, bindings, args.gin_search_paths)
  gin.finalize()  # unbound %gin.REQUIRED macros and unknown @references fail here, not mid-run
  return run()


# ---- errors: one line for a user's mistake, the traceback for a bug (see the docstring) ----
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
CHECKED_ERRORS = (ValueError, KeyError)
CHECKING_PACKAGES = ("jaxlm", "seqio")  # whose ValueError/KeyError are deliberate checks


def unwrap_gin_error(error: BaseException) -> Tuple[BaseException, List[str]]:
  """(the original exception, the notes gin appended, innermost first) of an exception gin
  re-raised through utils.augment_exception_message_and_reraise, which wraps the original
  in a proxy class whose __str__ closes over it and the note."""
  notes = []
  while True:
    str_fn = type(error).__dict__.get("__str__")
    if "augment_exception_message" not in getattr(str_fn, "__qualname__", ""):
      return error, notes[::-1]
    cells = [c.cell_contents for c in str_fn.__closure__ or ()]
    inner = [v for v in cells if isinstance(v, BaseException)]
    if not inner:
      return error, notes[::-1]
    notes += [v for v in cells if isinstance(v, str)]
    error = inner[0]


def raised_in(error: BaseException) -> str:
  """The package among jaxlm, gin and seqio whose code raised `error`, else ''. By file,
  not module name: jaxlm.main runs as __main__."""
  tb = error.__traceback__
  if tb is None:
    return ""
  while tb.tb_next is not None:
    tb = tb.tb_next
  filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
  for name in ("jaxlm", "gin", "seqio"):
    module = sys.modules.get(name)
    if getattr(module, "__file__", None) and filename.startswith(
        os.path.dirname(os.path.abspath(module.__file__)) + os.sep):
      return name
  return ""


def is_user_mistake(error: BaseException) -> bool:
  """Whether `error` (unwrapped from gin) is the user's mistake rather than a bug in jaxlm."""
  where = raised_in(error)
  return (isinstance(error, (UsageError, json.JSONDecodeError, *PATH_ERRORS)) or where == "gin"
          or (isinstance(error, CHECKED_ERRORS) and where in CHECKING_PACKAGES))


def _location(note: str) -> str:
  """gin's location note made short: 'file.gin:3: X.y = 1' or 'binding X.y = 1' ('' for the
  'In call to configurable' notes, which the message does not need)."""
  found = re.search(r'In file "(.*)", line (\d+)\n\s*(.*)', note)
  if found:
    return f"{found[1]}:{found[2]}: {found[3].strip()}"
  found = re.search(r"In bindings string line \d+\n\s*(.*)", note)
  return f"binding {found[1].strip()}" if found else ""


def describe(error: BaseException, notes: Sequence[str] = ()) -> str:
  """One line naming the cause: the exception's own message, then where gin found it."""
  if isinstance(error, SyntaxError) and error.msg:  # gin's parser: a file's line or a binding's
    text = (error.text or "").strip()
    where = (f"{error.filename}:{error.lineno}" if error.filename and not error.filename.startswith("<")
             else f"binding {error.lineno} of the command line")
    message = f"{error.msg} ({where}{': ' + text if text else ''})"
  elif isinstance(error, OSError) and error.filename and error.strerror:
    message = f"{error.filename}: {error.strerror}"
  elif isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
    message = error.args[0]
  else:
    message = str(error) or type(error).__name__
  unbound = re.match(r"(\w+)/macro\.value set to `%gin\.REQUIRED`", message)  # gin.finalize's
  if unbound:
    message = f"{unbound[1]} is %gin.REQUIRED and not bound; bind it, e.g. --gin.{unbound[1]}=..."
  locations = [loc for loc in map(_location, notes) if loc]
  if locations:
    message += f" ({'; '.join(locations)})"
  return " ".join(line.strip() for line in message.splitlines() if line.strip())


def cli(argv: Sequence[str] = None) -> int:
  """`python -m jaxlm.main`: main() with a user's mistake printed as one line (exit status 2)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  debug = "--debug" in argv or os.environ.get("JAXLM_DEBUG", "0") not in ("", "0")
  try:
    main(argv)
  except Exception as e:  # pylint: disable=broad-except
    error, notes = unwrap_gin_error(e)
    if debug or not is_user_mistake(error):
      raise
    print(f"jaxlm: error: {describe(error, notes)}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(cli())
