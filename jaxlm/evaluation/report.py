"""A per-run evaluation report: one markdown file, its plots, and the metrics as JSON.

    path = write_report(checkpoint_dir, {"mmlu": {"acc": 0.31}, "wiki": {"bits_per_byte": 1.2}},
                        loss_curve=[(0, 5.1), (100, 3.2)], samples=[{"prompt": ..., "output": ...}],
                        title="tiny-lm step 1000")

writes ``report.md`` (a table of every metric, the plots, sample outputs),
``metrics.json``, ``loss_curve.png`` and ``metrics.png`` into the directory.
Plots use matplotlib's Agg canvas directly, so no global backend is changed.
"""
from __future__ import annotations

import datetime
import json
import math
import os
from typing import Any, Mapping, Optional, Sequence

REPORT_NAME = "report.md"


def metric_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
  """(task, metric, value) rows from ``{task: {metric: v}}`` or ``{metric: v}`` (task '')."""
  rows = []
  for key, value in metrics.items():
    if isinstance(value, Mapping):
      for name, v in value.items():
        rows.append((str(key), str(name), v))
    else:
      rows.append(("", str(key), value))
  return rows


def _to_python(value: Any) -> Any:
  value = getattr(value, "value", value)  # seqio.metrics.Scalar and friends
  if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy and jax scalars
    value = value.item()
    return float(value) if isinstance(value, (int, float)) else value
  return value


def flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
  """``{task: {metric: v}}`` -> ``{'task/metric': v}`` (a flat ``{metric: v}`` keeps its
  names), with seqio, numpy and jax scalars as Python numbers: the trainer's and the eval
  job's record layout."""
  return {f"{task}/{name}" if task else name: _to_python(v) for task, name, v in metric_rows(metrics)}


def _format_value(v: Any) -> str:
  if hasattr(v, "item") and getattr(v, "size", 1) == 1:
    v = v.item()
  if isinstance(v, bool) or isinstance(v, int):
    return str(v)
  if isinstance(v, float):
    if not math.isfinite(v):
      return str(v)
    return f"{v:.4g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.4f}"
  return str(v)


def _cell(text: str) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def _fence(text: str) -> str:
  """A fenced block that survives backticks inside ``text``."""
  longest, run = 0, 0
  for ch in text:
    run = run + 1 if ch == "`" else 0
    longest = max(longest, run)
  fence = "`" * max(3, longest + 1)
  return f"{fence}\n{text}\n{fence}"


def _numeric(v: Any) -> Optional[float]:
  if hasattr(v, "item") and getattr(v, "size", 1) == 1:
    v = v.item()
  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
    return float(v)
  return None


def plot_loss_curve(loss_curve: Sequence[tuple[float, float]], path: str,
                    title: str = "Training loss") -> str:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  steps = [float(s) for s, _ in loss_curve]
  losses = [float(v) for _, v in loss_curve]
  fig = Figure(figsize=(6, 4), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  ax.plot(steps, losses, marker="." if len(steps) < 50 else None)
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  return path


def plot_metrics(rows: Sequence[tuple[str, str, Any]], path: str, max_tasks: int = 12) -> str:
  """One horizontal bar chart per task (each with its own scale)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  tasks: dict[str, list[tuple[str, float]]] = {}
  for task, name, v in rows:
    x = _numeric(v)
    if x is not None:
      tasks.setdefault(task or "metrics", []).append((name, x))
  items = list(tasks.items())[:max_tasks]
  n = max(1, len(items))
  cols = min(3, n)
  nrows = math.ceil(n / cols)
  fig = Figure(figsize=(4.5 * cols, 0.5 + 0.45 * max([len(m) for _, m in items] + [2]) * nrows),
               dpi=100)
  FigureCanvasAgg(fig)
  for i, (task, ms) in enumerate(items):
    ax = fig.add_subplot(nrows, cols, i + 1)
    ax.barh([m for m, _ in ms][::-1], [v for _, v in ms][::-1], color="tab:blue")
    for y, (_, v) in enumerate(ms[::-1]):
      ax.text(v, y, " " + _format_value(v), va="center", fontsize=8)
    ax.set_title(task, fontsize=10)
    ax.margins(x=0.25)
  fig.tight_layout()
  fig.savefig(path)
  return path


def _jsonable(v: Any) -> Any:
  return v.item() if hasattr(v, "item") and getattr(v, "size", 1) == 1 else str(v)


def write_report(out_dir: str, metrics: Mapping[str, Any],
                 loss_curve: Optional[Sequence[tuple[float, float]]] = None,
                 samples: Optional[Sequence[Mapping[str, Any]]] = None,
                 title: str = "Evaluation report", max_samples: int = 20,
                 config: Optional[Mapping[str, Any]] = None) -> str:
  """Writes the report into ``out_dir`` (created if needed); returns report.md's path.

  ``metrics``: ``{task: {metric: value}}`` or ``{metric: value}``. ``loss_curve``:
  (step, loss) pairs. ``samples``: dicts (e.g. prompt / prediction / target), the
  first ``max_samples`` are shown. ``config``: optional run settings to list.
  """
  os.makedirs(out_dir, exist_ok=True)
  rows = metric_rows(metrics)
  now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  lines = [f"# {title}", "", f"Generated {now}.", ""]
  if config:
    lines += ["## Run", ""] + [f"- **{_cell(k)}**: `{_cell(v)}`" for k, v in config.items()]
    lines.append("")
  lines += ["## Metrics", ""]
  if rows:
    lines += ["| Task | Metric | Value |", "| --- | --- | ---: |"]
    lines += [f"| {_cell(t) or '-'} | {_cell(m)} | {_cell(_format_value(v))} |"
              for t, m, v in rows]
    if any(_numeric(v) is not None for _, _, v in rows):
      plot_metrics(rows, os.path.join(out_dir, "metrics.png"))
      lines += ["", "![metrics](metrics.png)"]
  else:
    lines.append("No metrics.")
  lines.append("")
  if loss_curve:
    plot_loss_curve(loss_curve, os.path.join(out_dir, "loss_curve.png"))
    last_step, last_loss = loss_curve[-1]
    lines += ["## Training loss", "",
              f"{len(loss_curve)} points; final loss {_format_value(float(last_loss))} "
              f"at step {_format_value(last_step)}.", "", "![loss curve](loss_curve.png)", ""]
  if samples:
    shown = list(samples)[:max_samples]
    lines += ["## Samples", "", f"{len(shown)} of {len(samples)} shown.", ""]
    for i, sample in enumerate(shown, 1):
      lines += [f"### Sample {i}", ""]
      for key, value in sample.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if "\n" in text or len(text) > 80:
          lines += [f"**{key}**:", "", _fence(text), ""]
        else:
          lines += [f"**{key}**: `{text}`" if "`" not in text else f"**{key}**: {text}",
                    ""]
  path = os.path.join(out_dir, REPORT_NAME)
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines).rstrip() + "\n")
  with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
    json.dump({"title": title, "metrics": metrics}, f, indent=2, default=_jsonable)
  return path
