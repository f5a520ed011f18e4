"""A HELM-style report across models and tasks: one table and one set of plots.

    python -m jaxlm.evaluation.holistic --output_dir /tmp/report \\
      --model pretrained=checkpoint_dir=/runs/pt,gin_file=gin_configs/models/tiny_decoder.gin \\
      --model sft=checkpoint_dir=/runs/sft,gin_file=gin_configs/models/tiny_decoder.gin \\
      --model gpt2=hf_dir=/models/gpt2 --task astronomy=/data/astronomy_val.csv

Each model is lm-eval's `jaxlm` model (jaxlm.evaluation.lm_eval.JaxlmLM; its arguments in
lm-eval's k=v,... form) and each task a multiple-choice file in jaxlm.evaluation.suites'
formats (the letters prompt, rank classification by log-likelihood). Per (model, task):
  accuracy     the gold choice has the highest log-likelihood;
  calibration  ECE with 10 equal-width bins of the softmax-over-choices confidence
               (metrics.expected_calibration_error) and a reliability diagram;
  robustness   HELM's worst case: the mean over examples of the worst accuracy over the
               clean question and its perturbed variants (robustness.worst_case: typos,
               casing, whitespace);
  efficiency   tokens scored per second and seconds per example of a timed second pass
               (the first one compiles), and the parameter count.
Writes report.md (the table), report.png (accuracy, reliability diagrams, clean vs worst
case) and holistic.json into output_dir.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from jaxlm.evaluation import robustness, suites
from jaxlm.evaluation.metrics import calibration_bins, expected_calibration_error
from jaxlm.evaluation.report import format_value, markdown_cell

COLUMNS = (("accuracy", "Accuracy"), ("ece", "ECE (10 bins)"), ("worst_case", "Worst-case accuracy"),
           ("tokens_per_second", "Tokens/s"), ("seconds_per_example", "s/example"), ("parameters", "Parameters"))


def choice_scores(lm, examples: Sequence[Mapping]) -> List[np.ndarray]:
  """Each example's choices' log-likelihoods (suites' letters prompt) by lm.loglikelihood."""
  from lm_eval.api.instance import Instance  # pylint: disable=import-outside-toplevel
  requests, sizes = [], []
  for ex in examples:
    context, continuations = suites.multiple_choice_requests(ex)
    requests += [(context, c) for c in continuations]
    sizes.append(len(continuations))
  lls = [ll for ll, _ in lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)])]
  bounds = np.cumsum([0] + sizes)
  return [np.asarray(lls[a:b], np.float64) for a, b in zip(bounds[:-1], bounds[1:])]


def confidences(scores: Sequence[np.ndarray]) -> np.ndarray:
  """The softmax-over-choices probability of each example's argmax choice."""
  return np.array([1.0 / np.exp(s - s.max()).sum() for s in scores])


def evaluate_model_on_task(lm, examples: Sequence[Mapping], num_variants: int = 1, num_bins: int = 10) -> dict:
  """The report's row for one model and one task (see the module docstring)."""
  golds = [int(ex["answer"]) for ex in examples]

  def correct(exs):
    return [float(np.argmax(s) == int(e["answer"])) for s, e in zip(choice_scores(lm, exs), exs)]

  scores = choice_scores(lm, examples)  # compiles
  start = time.perf_counter()
  choice_scores(lm, examples)
  seconds = time.perf_counter() - start
  tokens = sum(len(lm.tok_encode(c + t)) for ex in examples
               for c, ts in [suites.multiple_choice_requests(ex)] for t in ts)
  right = [float(np.argmax(s) == g) for s, g in zip(scores, golds)]
  conf = confidences(scores)
  robust = robustness.worst_case(examples, correct, keys="question", num_variants=num_variants)
  return {"accuracy": float(np.mean(right)), "ece": expected_calibration_error(conf, right, num_bins),
          "reliability": calibration_bins(conf, right, num_bins), "clean": robust["clean"],
          "worst_case": robust["worst_case"], **{k: robust[k] for k in robustness.PERTURBATIONS},
          "tokens_per_second": tokens / seconds, "seconds_per_example": seconds / len(examples),
          "parameters": lm.model.num_params(lm.params), "confidences": conf.tolist(), "correct": right}


def holistic_report(models: Mapping[str, Any], tasks: Mapping[str, str], output_dir: str, batch_size: int = 8,
                    num_variants: int = 1, num_bins: int = 10) -> Dict[str, Dict[str, dict]]:
  """{model: {task: row}} for models {name: JaxlmLM keyword arguments, or a ready lm} and
  tasks {name: multiple-choice file}; writes report.md, report.png and holistic.json."""
  from jaxlm.evaluation.lm_eval import JaxlmLM  # pylint: disable=import-outside-toplevel
  if not models or not tasks:
    raise ValueError(f"holistic_report needs models and tasks; got {len(models)} models, {len(tasks)} tasks")
  data = {name: suites.load_multiple_choice(path) for name, path in tasks.items()}
  results = {}
  for name, spec in models.items():
    lm = JaxlmLM(**{"batch_size": batch_size, **spec}) if isinstance(spec, Mapping) else spec
    results[name] = {task: evaluate_model_on_task(lm, examples, num_variants, num_bins)
                     for task, examples in data.items()}
  os.makedirs(output_dir, exist_ok=True)
  write_markdown(results, os.path.join(output_dir, "report.md"))
  plot(results, os.path.join(output_dir, "report.png"))
  with open(os.path.join(output_dir, "holistic.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  return results


def write_markdown(results: Mapping[str, Mapping[str, dict]], path: str) -> str:
  lines = ["# Holistic evaluation", "",
           "Accuracy: rank classification by log-likelihood. ECE: 10 equal-width confidence bins. "
           "Worst case: mean over examples of the worst accuracy over clean and perturbed (typos, casing, "
           "whitespace) questions. Efficiency: a timed second pass.", "",
           "| Model | Task | " + " | ".join(title for _, title in COLUMNS) + " |",
           "| --- | --- |" + " ---: |" * len(COLUMNS)]
  for model, by_task in results.items():
    for task, row in by_task.items():
      values = " | ".join(format_value(row[k]) for k, _ in COLUMNS)
      lines.append(f"| {markdown_cell(model)} | {markdown_cell(task)} | {values} |")
  lines += ["", "![accuracy, reliability, robustness](report.png)", ""]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return path


def plot(results: Mapping[str, Mapping[str, dict]], path: str) -> str:
  """Accuracy per (model, task), each model's reliability diagram (pooled over tasks), and
  clean vs worst-case accuracy."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(15, 4.5), dpi=100)
  FigureCanvasAgg(fig)
  acc, rel, rob = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
  labels = [f"{m}\n{t}" for m, by_task in results.items() for t in by_task]
  rows = [row for by_task in results.values() for row in by_task.values()]
  x = np.arange(len(rows))
  acc.bar(x, [r["accuracy"] for r in rows], color="tab:blue")
  acc.set_xticks(x, labels, fontsize=8)
  acc.set_ylim(0, 1)
  acc.set_title("Accuracy")
  rel.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1)
  for model, by_task in results.items():
    conf = [c for row in by_task.values() for c in row["confidences"]]
    right = [c for row in by_task.values() for c in row["correct"]]
    bins = calibration_bins(conf, right)
    rel.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label=model)
  rel.set_xlabel("confidence")
  rel.set_ylabel("accuracy")
  rel.set_title("Reliability (10 bins)")
  rel.legend(fontsize=8)
  rob.bar(x - 0.2, [r["clean"] for r in rows], width=0.4, label="clean")
  rob.bar(x + 0.2, [r["worst_case"] for r in rows], width=0.4, label="worst case")
  rob.set_xticks(x, labels, fontsize=8)
  rob.set_ylim(0, 1)
  rob.set_title("Robustness")
  rob.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  return path


def main(argv: Optional[Sequence[str]] = None):
  from lm_eval.utils import simple_parse_args_string  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog="python -m jaxlm.evaluation.holistic", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", action="append", required=True, help="NAME=k=v,... (the jaxlm model's arguments)")
  parser.add_argument("--task", action="append", required=True, help="NAME=PATH (a multiple-choice file)")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--num_variants", type=int, default=1, help="perturbed variants per perturbation")
  args = parser.parse_args(argv)
  split = lambda items, flag: dict(_named(item, flag) for item in items)
  models = {name: simple_parse_args_string(spec) for name, spec in split(args.model, "--model").items()}
  holistic_report(models, split(args.task, "--task"), args.output_dir, args.batch_size, args.num_variants)
  print(os.path.join(args.output_dir, "report.md"))


def _named(item: str, flag: str):
  name, sep, value = item.partition("=")
  if not sep or not name or not value:
    raise SystemExit(f"{flag}={item!r}: want NAME=VALUE")
  return name, value


if __name__ == "__main__":
  main()
