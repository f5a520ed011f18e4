"""A per-run evaluation report: one markdown file, its plots, and the metrics as JSON.

    path = write_report(checkpoint_dir, {"mmlu": {"acc": 0.31}, "wiki": {"bits_per_byte": 1.2}},
                        loss_curve=[(0, 5.1), (100, 3.2)], samples=[{"prompt": ..., "output": ...}],
                        title="tiny-lm step 1000")

writes ``report.md`` (a table of every metric, the plots, sample outputs),
``metrics.json``, ``loss_curve.png`` and ``metrics.png`` (a panel per metric, a bar per
task) into the directory. Tasks that are stages of one run (the quickstart's untrained,
pretrained, instruction-tuned, aligned models) read best as ``table='wide'``: a row per
stage, a column per metric, standard errors in the cells.
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


def format_value(v: Any) -> str:
  if hasattr(v, "item") and getattr(v, "size", 1) == 1:
    v = v.item()
  if isinstance(v, bool) or isinstance(v, int):
    return str(v)
  if isinstance(v, float):
    if not math.isfinite(v):
      return str(v)
    return f"{v:.4g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.4f}"
  return str(v)


def markdown_cell(text: str) -> str:
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


def plot_loss_curve(loss_curve, path: str, title: str = "Training loss") -> str:
  """One line of (step, loss) points, or one line per label of {label: points} (stages
  run one after another: each label's steps continue where the previous one ended, and
  the loss axis is logarithmic, since objectives' losses differ in scale)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  curves = dict(loss_curve) if isinstance(loss_curve, Mapping) else {"": loss_curve}
  fig = Figure(figsize=(7 if len(curves) > 1 else 6, 4), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  offset = 0.0
  for label, points in curves.items():
    if not points:
      continue
    steps = [offset + float(s) for s, _ in points]
    losses = [float(v) for _, v in points]
    ax.plot(steps, losses, marker="." if len(steps) < 50 else None, label=label or None)
    if len(curves) > 1:
      offset = steps[-1]
  if len(curves) > 1:
    title = f"{title} of each stage (its own objective)"
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_xlabel("step (stages one after another)")
  else:
    ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  return path


def _is_count(v: Any) -> bool:
  if hasattr(v, "item") and getattr(v, "size", 1) == 1:
    v = v.item()
  return isinstance(v, int) and not isinstance(v, bool)


def plot_metrics(rows: Sequence[tuple[str, str, Any]], path: str, max_panels: int = 12,
                 groups: Optional[Mapping[str, Sequence[str]]] = None,
                 log_scale: Sequence[str] = ("perplexity",)) -> str:
  """One panel per metric (or per group of metrics: {panel title: [metric names]}) with a
  bar per task, side by side, so tasks (e.g. training stages) compare on each metric's own
  scale; `<metric>_stderr` rows become error bars. Counts (integer values: tokens,
  problems, shots) are not plotted. A panel whose metrics contain a `log_scale` word has a
  logarithmic value axis."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  values: dict[str, dict[str, float]] = {}
  errors: dict[tuple[str, str], float] = {}
  for task, name, v in rows:
    x = _numeric(v)
    if x is None or _is_count(v):
      continue
    if name.endswith("_stderr"):
      errors[(task, name[:-len("_stderr")])] = x
    else:
      values.setdefault(name, {})[task or "metrics"] = x
  if groups is None:
    groups = {name: [name] for name in values}
  panels = [(title, [m for m in names if m in values]) for title, names in groups.items()]
  panels = [(t, ms) for t, ms in panels if ms][:max_panels]
  tasks = list(dict.fromkeys(t for ms in values.values() for t in ms))
  n = max(1, len(panels))
  cols = min(2, n)
  nrows = math.ceil(n / cols)
  fig = Figure(figsize=(6 * cols, 3.6 * nrows), dpi=100)
  FigureCanvasAgg(fig)
  colors = [f"C{i}" for i in range(10)]
  width = 0.8 / max(1, len(tasks))
  for i, (title, names) in enumerate(panels):
    ax = fig.add_subplot(nrows, cols, i + 1)
    log = any(word in name for name in names for word in log_scale)
    for j, task in enumerate(tasks):
      xs = [k + (j - (len(tasks) - 1) / 2) * width for k, name in enumerate(names) if task in values[name]]
      ys = [values[name][task] for name in names if task in values[name]]
      err = [errors.get((task, name), 0.0) for name in names if task in values[name]]
      if not ys:
        continue
      ax.bar(xs, ys, width, yerr=err if any(err) else None, color=colors[j % 10], label=task, capsize=2)
      for x, y in zip(xs, ys):
        if y:
          ax.text(x, y, f"{y:.3g}", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, fontsize=7, rotation=15 if len(names) > 2 else 0)
    if log:
      ax.set_yscale("log")
    ax.set_title(title + (" (log scale)" if log else ""), fontsize=10)
    ax.margins(y=0.15)
    ax.grid(True, axis="y", alpha=0.3)
    if i == 0 and len(tasks) > 1:
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  return path


def wide_table(metrics: Mapping[str, Mapping[str, Any]],
               marks: Optional[Mapping[tuple[str, str], str]] = None) -> list[str]:
  """Markdown lines of a table with a row per task and a column per metric (every task's
  metrics, in first-seen order); `<metric>_stderr` joins its metric's cell as "v ± se",
  `marks[(task, metric)]` is appended to a cell, and a metric a task lacks reads "—"."""
  names = [m for m in dict.fromkeys(m for values in metrics.values() for m in values)
           if not m.endswith("_stderr")]
  lines = ["| | " + " | ".join(markdown_cell(m) for m in names) + " |", "| --- |" + " ---: |" * len(names)]
  for task, values in metrics.items():
    cells = []
    for name in names:
      if name not in values or values[name] is None:
        cells.append("—")
        continue
      text = format_value(values[name])
      if values.get(f"{name}_stderr") is not None:
        text += f" ± {format_value(values[f'{name}_stderr'])}"
      cells.append(markdown_cell(text + (marks or {}).get((task, name), "")))
    lines.append(f"| {markdown_cell(task)} | " + " | ".join(cells) + " |")
  return lines


def _jsonable(v: Any) -> Any:
  return v.item() if hasattr(v, "item") and getattr(v, "size", 1) == 1 else str(v)


def write_report(out_dir: str, metrics: Mapping[str, Any],
                 loss_curve: Optional[Any] = None,
                 samples: Optional[Sequence[Mapping[str, Any]]] = None,
                 title: str = "Evaluation report", max_samples: int = 20,
                 config: Optional[Mapping[str, Any]] = None, table: str = "long",
                 marks: Optional[Mapping[tuple[str, str], str]] = None,
                 plot_groups: Optional[Mapping[str, Sequence[str]]] = None,
                 sections: Optional[Mapping[str, str]] = None) -> str:
  """Writes the report into ``out_dir`` (created if needed); returns report.md's path.

  ``metrics``: ``{task: {metric: value}}`` or ``{metric: value}``. ``loss_curve``:
  (step, loss) pairs, or ``{label: pairs}`` (a line per label, e.g. per training stage).
  ``samples``: dicts (e.g. prompt / prediction / target), the first ``max_samples`` are
  shown. ``config``: optional run settings to list. ``table``: 'long' (a row per task and
  metric) or 'wide' (a row per task, a column per metric: :func:`wide_table`, with
  ``marks``). ``plot_groups``: metrics.png's panels (:func:`plot_metrics`). ``sections``:
  {heading: markdown} written after the metrics.
  """
  if table not in ("long", "wide"):
    raise ValueError(f"write_report: table={table!r}, expected 'long' or 'wide'")
  os.makedirs(out_dir, exist_ok=True)
  rows = metric_rows(metrics)
  now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  lines = [f"# {title}", "", f"Generated {now}.", ""]
  if config:
    lines += ["## Run", ""] + [f"- **{markdown_cell(k)}**: `{markdown_cell(v)}`" for k, v in config.items()]
    lines.append("")
  lines += ["## Metrics", ""]
  if rows and table == "wide":
    lines += wide_table(metrics, marks)
  elif rows:
    lines += ["| Task | Metric | Value |", "| --- | --- | ---: |"]
    lines += [f"| {markdown_cell(t) or '-'} | {markdown_cell(m)} | {markdown_cell(format_value(v))} |"
              for t, m, v in rows]
  if rows:
    if any(_numeric(v) is not None and not _is_count(v) for _, _, v in rows):
      plot_metrics(rows, os.path.join(out_dir, "metrics.png"), groups=plot_groups)
      lines += ["", "![metrics](metrics.png)"]
  else:
    lines.append("No metrics.")
  lines.append("")
  for heading, body in (sections or {}).items():
    lines += [f"## {heading}", "", body.rstrip(), ""]
  curves = dict(loss_curve) if isinstance(loss_curve, Mapping) else {"": loss_curve or []}
  if any(curves.values()):
    plot_loss_curve(loss_curve, os.path.join(out_dir, "loss_curve.png"))
    lines += ["## Training loss", ""]
    for label, points in curves.items():
      if points:
        last_step, last_loss = points[-1]
        lines.append(f"{f'{label}: ' if label else ''}{len(points)} points; final loss "
                     f"{format_value(float(last_loss))} at step {format_value(last_step)}.")
    lines += ["", "![loss curve](loss_curve.png)", ""]
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
