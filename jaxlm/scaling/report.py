"""A sweep's fits, written beside its runs: fit.json, loss_vs_compute.png and table.md.

The fits are jaxlm.scaling.laws': Kaplan-style L(N), L(D), L(C) (C on the compute
frontier), and, with at least 5 runs over at least 2 sizes and 2 budgets, the Chinchilla
L(N, D) with bootstrap intervals and the compute-optimal plan (model size, tokens, closest
model file) for each budget asked for. N is the non-embedding parameter count, D the
tokens trained on, C the training FLOPs (Model.flops_per_token x tokens).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Mapping, Sequence

import numpy as np

from jaxlm.scaling import laws, planner

PLOT_NAME, TABLE_NAME, FIT_NAME = "loss_vs_compute.png", "table.md", "fit.json"


def fit_runs(records: Sequence[Mapping[str, Any]], plan_flops: Sequence[float] = (),
             bootstrap_samples: int = 100) -> Dict[str, Any]:
  """The fits of a sweep's records (see the module docstring) as a JSON-able dict."""
  n, d, c, loss = (np.array([r[k] for r in records], np.float64)
                   for k in ("non_embedding_params", "tokens", "flops", "loss"))
  out = {"runs": len(records), "frontier": [records[i]["name"] for i in laws.frontier(c, loss)],
         "kaplan": {k: dataclasses.asdict(v) for k, v in laws.kaplan_fits(n, d, c, loss).items()},
         "chinchilla": None, "plans": []}
  if len(records) < 5 or len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
    out["chinchilla_skipped"] = (f"L(N, D) has 5 parameters: it needs at least 5 runs over at least 2 model "
                                 f"sizes and 2 token budgets ({len(records)} runs, {len(np.unique(n))} sizes, "
                                 f"{len(np.unique(d))} budgets)")
    return out
  if bootstrap_samples:
    boot = laws.bootstrap_chinchilla(n, d, loss, samples=bootstrap_samples)
    law, intervals = boot.fit, {k: list(v) for k, v in boot.intervals.items()}
  else:
    law, intervals = laws.fit_chinchilla(n, d, loss)[0], None
  out["chinchilla"] = {**law.as_dict(), **laws.optimal_exponents(law), "intervals": intervals}
  for budget in plan_flops:
    plan = planner.compute_optimal(law, budget)
    pick = planner.closest_model(plan.params, flops=budget)
    out["plans"].append({**dataclasses.asdict(plan), "model_file": pick.name,
                         "model_file_params": pick.size.non_embedding_params, "model_file_tokens": pick.tokens})
  return out


def plot(records: Sequence[Mapping[str, Any]], fit: Mapping[str, Any], path: str) -> str:
  """Loss against training FLOPs: one line per model size, the compute frontier, L(C)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(6.5, 4.5), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for size in sorted({r["non_embedding_params"] for r in records}):
    runs = sorted((r for r in records if r["non_embedding_params"] == size), key=lambda r: r["flops"])
    ax.plot([r["flops"] for r in runs], [r["loss"] for r in runs], marker="o", label=f"N={size:,}")
  on = sorted((r for r in records if r["name"] in fit["frontier"]), key=lambda r: r["flops"])
  ax.plot([r["flops"] for r in on], [r["loss"] for r in on], color="black", lw=2.5, alpha=0.4, label="frontier")
  if "L(C)" in fit["kaplan"]:
    law = laws.PowerLaw(**fit["kaplan"]["L(C)"])
    xs = np.geomspace(min(r["flops"] for r in records), max(r["flops"] for r in records), 50)
    ax.plot(xs, law(xs), "k--", label=f"L(C) ~ C^-{law.exponent:.3f}")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("training FLOPs C")
  ax.set_ylabel("loss")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  return path


def table(records: Sequence[Mapping[str, Any]], fit: Mapping[str, Any]) -> str:
  """Markdown: one row per run (frontier runs marked), then the fitted laws and plans."""
  lines = ["| run | N (non-embedding) | params | tokens D | FLOPs C | loss | frontier |",
           "| --- | ---: | ---: | ---: | ---: | ---: | :---: |"]
  for r in sorted(records, key=lambda r: r["flops"]):
    lines.append(f"| {r['name']} | {r['non_embedding_params']:,} | {r['params']:,} | {r['tokens']:,} | "
                 f"{r['flops']:.3g} | {r['loss']:.4f} | {'*' if r['name'] in fit['frontier'] else ''} |")
  lines += ["", "| law | fit |", "| --- | --- |"]
  for name, law in fit["kaplan"].items():
    offset = f"{law['offset']:.3g} + " if law["offset"] else ""
    lines.append(f"| {name} | {offset}({law['scale']:.3g} / X)^{law['exponent']:.3f} |")
  chin = fit["chinchilla"]
  if chin:
    ci = chin["intervals"] or {}
    span = lambda k: f" [{ci[k][0]:.3g}, {ci[k][1]:.3g}]" if k in ci else ""
    lines.append(f"| L(N, D) | E={chin['E']:.3g}{span('E')}, A={chin['A']:.3g}{span('A')}, B={chin['B']:.3g}"
                 f"{span('B')}, alpha={chin['alpha']:.3f}{span('alpha')}, beta={chin['beta']:.3f}{span('beta')}; "
                 f"N_opt ~ C^{chin['a']:.3f}{span('a')} |")
  else:
    lines.append(f"| L(N, D) | not fitted: {fit['chinchilla_skipped']} |")
  if fit["plans"]:
    lines += ["", "| budget C | N_opt | D_opt | predicted loss | closest model file (N, tokens) |",
              "| ---: | ---: | ---: | ---: | --- |"]
    for p in fit["plans"]:
      lines.append(f"| {p['flops']:.3g} | {p['params']:.3g} | {p['tokens']:.3g} | {p['loss']:.4f} | "
                   f"{p['model_file']} ({p['model_file_params']:.3g}, {p['model_file_tokens']:.3g}) |")
  return "\n".join(lines) + "\n"


def write_report(sweep_dir: str, records: Sequence[Mapping[str, Any]], plan_flops: Sequence[float] = (),
                 bootstrap_samples: int = 100) -> Dict[str, Any]:
  """Fits the records and writes fit.json, the plot and table.md into sweep_dir; returns the fit."""
  fit = fit_runs(records, plan_flops, bootstrap_samples)
  with open(os.path.join(sweep_dir, FIT_NAME), "w", encoding="utf-8") as f:
    json.dump(fit, f, indent=1)
  plot(records, fit, os.path.join(sweep_dir, PLOT_NAME))
  with open(os.path.join(sweep_dir, TABLE_NAME), "w", encoding="utf-8") as f:
    f.write(table(records, fit))
  return fit
