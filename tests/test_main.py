"""The entry point: gin files and --gin.X=V bindings build the model; a user's mistake ends
the command with one line naming its cause and exit status 2, before any compiling; a bug
and --debug keep the traceback."""
import json
import os
import re
import subprocess
import sys

import gin
import numpy as np
import pytest

from jaxlm import main
from train_helpers import ROOT


def test_gin_file_and_binding_build_the_model(capsys):
  n = main.main(["--gin_file=gin_configs/models/tiny_decoder.gin", "--gin.TransformerConfig.d_model=96"])
  out = capsys.readouterr().out
  assert "d_model=96" in out and f"parameters: {n:,}" in out
  # tiny_decoder.gin: vocab 256, 2 layers of RMSNorm + 4 query / 2 KV heads + SwiGLU (d_ff
  # 128), a final norm, untied embedding and head; d_model 96 from the binding.
  d, vocab, d_ff, heads, kv_heads, head_dim = 96, 256, 128, 4, 2, 96 // 4
  layer = 2 * d + (2 * heads + 2 * kv_heads) * d * head_dim + 3 * d * d_ff
  assert n == 2 * layer + d + 2 * vocab * d


@pytest.mark.parametrize("name,low,high", [("gpt2_small", 123e6, 126e6), ("llama_1b", 1.0e9, 1.2e9),
                                           ("t5_1_1_base", 240e6, 255e6)])
def test_reference_configs_have_their_published_sizes(name, low, high, capsys):
  n = main.main([f"--gin_file=gin_configs/models/{name}.gin"])
  assert low < n < high


def run_main(*args, env=None):
  return subprocess.run([sys.executable, "-m", "jaxlm.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


# TensorFlow's C++ runtime writes these to stderr when it is imported, before its logging is
# set up (TF_CPP_MIN_LOG_LEVEL does not reach them); they are not jaxlm's report.
TF_STARTUP = re.compile(r"WARNING: All log messages before absl::InitializeLog"
                        r"|[IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\]")  # glog: I0000 00:00:17.6 7264 port.cc:153]


def error_line(proc) -> str:
  """The one line a user's mistake prints; fails unless that is all of stderr and status 2."""
  lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not TF_STARTUP.match(ln)]
  assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr[-3000:])
  assert lines[0].startswith("jaxlm: error: ")
  return lines[0]


TINY = "--gin_file=gin_configs/models/tiny_decoder.gin"


def _infer_without_checkpoint(tmp):
  (tmp / "prompts.txt").write_text("def f(x):\n")
  return ([TINY, "--gin_file=gin_configs/runs/infer.gin", "--gin.TransformerConfig.vocab_size=259",
           f"--gin.CHECKPOINT_DIR='{tmp / 'nowhere'}'", f"--gin.PROMPTS='{tmp / 'prompts.txt'}'",
           f"--gin.OUTPUT='{tmp / 'out.jsonl'}'"],
          [f"checkpoint directory {tmp / 'nowhere'} does not exist"])


def _quickstart_on_malformed_jsonl(tmp):
  (tmp / "mine.jsonl").write_text(json.dumps({"text": "fine"}) + '\n\n{"text": oops}\n')
  return (["--gin_file=gin_configs/runs/quickstart.gin", f"--gin.MODEL_DIR='{tmp / 'run'}'",
           f"--gin.quickstart.sources=['{tmp / 'mine.jsonl'}']"],
          [f"{tmp / 'mine.jsonl'}:3:", "invalid JSON"])


def _bad_line_in_a_gin_file(tmp):
  (tmp / "mine.gin").write_text("include 'gin_configs/models/tiny_decoder.gin'\n"
                                "TransformerConfig.d_modl = 3\n")
  return ([f"--gin_file={tmp / 'mine.gin'}"],
          ["doesn't have a parameter named 'd_modl'",
           f"{tmp / 'mine.gin'}:2: TransformerConfig.d_modl = 3"])


MISTAKES = {
    "missing checkpoint directory": _infer_without_checkpoint,
    "malformed JSONL line": _quickstart_on_malformed_jsonl,  # imports TensorFlow: ~10 s
    "conflicting model options": lambda tmp: (
        [TINY, "--gin.TransformerConfig.num_kv_heads=3"],
        ["TransformerConfig.num_heads=4 must be a multiple of num_kv_heads=3"]),
    "unknown binding": lambda tmp: (
        [TINY, "--gin.TransformerConfig.d_modl=3"],
        ["doesn't have a parameter named 'd_modl'", "binding TransformerConfig.d_modl = 3"]),
    "unknown binding in a gin file": _bad_line_in_a_gin_file,
    "missing required binding": lambda tmp: (
        ["--gin_file=gin_configs/runs/pretrain_synthetic.gin"],
        ["MODEL_DIR is %gin.REQUIRED and not bound", "--gin.MODEL_DIR="]),
    "missing gin file": lambda tmp: (["--gin_file=gin_configs/models/nope.gin"],
                                     ["--gin_file=gin_configs/models/nope.gin: no such file"]),
    "no gin file": lambda tmp: ([], ["no --gin_file given"]),
    "unknown flag": lambda tmp: ([TINY, "--gin_flie=x.gin"],
                                 ["unrecognized argument '--gin_flie=x.gin'"]),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_mistake_prints_one_line_naming_it_and_exits_2(mistake, tmp_path):
  args, needles = MISTAKES[mistake](tmp_path)
  proc = run_main(*args)
  line = error_line(proc)
  for needle in needles:
    assert needle in line, (needle, line)
  assert "parameters:" not in proc.stdout  # it failed before the job ran
  assert "[3/6]" not in proc.stdout  # (the quickstart: before pretraining)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_keeps_the_traceback(how, tmp_path):
  args = [TINY, "--gin.TransformerConfig.num_kv_heads=3"]
  env = dict(os.environ, JAXLM_DEBUG="1") if how == "env" else None
  proc = run_main(*args, *(["--debug"] if how == "flag" else []), env=env)
  assert proc.returncode == 1
  assert "Traceback (most recent call last)" in proc.stderr and "in validate" in proc.stderr
  assert "ValueError: TransformerConfig.num_heads=4 must be a multiple" in proc.stderr


def _raised(fn):
  try:
    fn()
  except Exception as e:  # pylint: disable=broad-except
    return main.unwrap_gin_error(e)[0]
  raise AssertionError("no exception")


def test_which_errors_count_as_user_mistakes():
  from jaxlm.models import TransformerConfig
  conflicting = _raised(lambda: TransformerConfig(num_kv_heads=3).validate())
  assert main.is_user_mistake(conflicting)  # a check in jaxlm's code
  assert main.is_user_mistake(_raised(lambda: open("/nonexistent/jaxlm/file")))
  assert main.is_user_mistake(_raised(lambda: json.loads("{oops")))
  # The same types raised inside numpy, or by plain code outside jaxlm's checks, are bugs.
  assert not main.is_user_mistake(_raised(lambda: np.linalg.inv(np.zeros((2, 3)))))
  assert not main.is_user_mistake(_raised(lambda: {}["key"]))
  assert not main.is_user_mistake(_raised(lambda: 1 / 0))


def test_gin_wrapped_errors_are_unwrapped_to_the_original_message():
  @gin.configurable
  def needs_positive(x=1):
    if x <= 0:
      raise ValueError(f"needs_positive.x={x} must be positive")

  gin.parse_config("needs_positive.x = -1")
  error = _raised(needs_positive)
  assert type(error) is ValueError and str(error) == "needs_positive.x=-1 must be positive"
  wrapped = pytest.raises(ValueError, needs_positive).value
  assert "In call to configurable" in str(wrapped)  # what gin re-raises
  assert main.describe(*main.unwrap_gin_error(wrapped)) == "needs_positive.x=-1 must be positive"
