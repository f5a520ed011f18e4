"""The per-run report, and that the evaluation package imports without TensorFlow."""
import json
import subprocess
import sys

import numpy as np

from jaxlm.evaluation import report

PNG = b"\x89PNG\r\n\x1a\n"


def test_write_report(tmp_path):
  out = tmp_path / "checkpoints" / "step_100"
  metrics = {"mmlu": {"acc": 0.3125, "acc_norm": np.float32(0.5)},
             "wiki|text": {"bits_per_byte": 1.234567, "perplexity": float("nan")},
             "humaneval": {"pass@1": 0.0}}
  samples = [{"prompt": "def f():\n    ```tricky```", "prediction": "    return 1", "passed": True},
             {"prompt": "Q: 2+2?", "prediction": "4"}]
  path = report.write_report(str(out), metrics, loss_curve=[(0, 5.0), (50, 3.0), (100, 2.5)],
                             samples=samples * 15, title="tiny run", config={"model": "tiny"})
  assert path == str(out / "report.md")
  text = (out / "report.md").read_text()
  assert text.startswith("# tiny run\n")
  table = [l for l in text.splitlines() if l.startswith("| ")]
  assert table[0] == "| Task | Metric | Value |"
  assert "| mmlu | acc | 0.3125 |" in table
  assert "| mmlu | acc_norm | 0.5000 |" in table
  assert "| wiki\\|text | bits_per_byte | 1.2346 |" in table  # pipes escaped
  assert "| wiki\\|text | perplexity | nan |" in table
  assert "| humaneval | pass@1 | 0.0000 |" in table
  assert len(table) == 2 + 5
  assert "![loss curve](loss_curve.png)" in text and "final loss 2.5000 at step 100" in text
  assert "![metrics](metrics.png)" in text
  assert "20 of 30 shown" in text and "### Sample 20" in text and "### Sample 21" not in text
  assert "````\ndef f():\n    ```tricky```\n````" in text  # multi-line: fenced
  assert "**prompt**: `Q: 2+2?`" in text and "**passed**: `true`" in text  # short: inline
  for name in ("loss_curve.png", "metrics.png"):
    data = (out / name).read_bytes()
    assert data.startswith(PNG) and len(data) > 5000
  saved = json.loads((out / "metrics.json").read_text())
  assert saved["title"] == "tiny run" and saved["metrics"]["mmlu"]["acc"] == 0.3125


def test_report_fences_survive_backticks_and_flat_metrics(tmp_path):
  code = "x = '''\n```\n'''\n" + "y = 1\n" * 20
  path = report.write_report(str(tmp_path), {"loss": 2.0, "note": "text"},
                             samples=[{"completion": code}])
  text = open(path).read()
  assert "| - | loss | 2.0000 |" in text and "| - | note | text |" in text
  assert "````\n" + code + "\n````" in text  # fence longer than any backtick run inside
  assert not (tmp_path / "loss_curve.png").exists()


def test_evaluation_package_imports_without_tensorflow():
  code = ("import sys\n"
          "import jaxlm.evaluation, jaxlm.evaluation.metrics, jaxlm.evaluation.suites\n"
          "import jaxlm.evaluation.humaneval, jaxlm.evaluation.code_exec\n"
          "import jaxlm.evaluation.report, jaxlm.evaluation.robustness\n"
          "bad = [m for m in ('tensorflow', 'seqio', 'matplotlib', 'sacrebleu') if m in sys.modules]\n"
          "assert not bad, bad\n")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_flatten_metrics_is_the_record_layout():
  flat = report.flatten_metrics({"mmlu": {"acc": np.float32(0.5), "n": np.int64(3)}, "loss": 2.0})
  assert flat == {"mmlu/acc": 0.5, "mmlu/n": 3.0, "loss": 2.0}
  assert all(type(v) is float for v in flat.values())
