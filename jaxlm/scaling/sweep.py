"""A scaling-law sweep: model sizes x token budgets, each an ordinary `train()` run, then the
fits (jaxlm.scaling.report).

    python -m jaxlm.main --gin_file=gin_configs/runs/sweep.gin --gin.SWEEP_DIR="'/tmp/sweep'"

`run_sweep` trains every (model, steps) pair with the same train() that `run.mode='train'`
calls, so everything `train.*` is bound to (data, batch size, optimizer, mesh) applies to
each run; the model is TransformerConfig() as gin binds it with the pair's overrides, and
the learning-rate schedule is `schedule(decay_steps=steps)` so every run decays over its
own budget (Hoffmann et al.: a cosine longer than the run overstates its loss).

Each run lives in SWEEP_DIR/<name>_steps<steps>/ (a normal MODEL_DIR: checkpoints,
metrics.jsonl). A run with a result.json there is done and skipped; any other resumes from
its latest checkpoint. A preempted run stops the sweep (run it again to go on). The run's
loss is the last record of its metrics.jsonl holding `loss_key` at its final step: by
default 'loss', the training loss averaged over the last logging window (train.log_every);
with train.eval_fn bound, e.g. 'eval/<task>/loss'.

SWEEP_DIR then holds results.json (one record per run: overrides, steps, tokens, params,
non-embedding params N, FLOPs C, loss), fit.json, loss_vs_compute.png and table.md.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import gin

from jaxlm.models import TransformerConfig
from jaxlm.scaling import flops as flops_lib
from jaxlm.scaling import report
from jaxlm.training import trainer
from jaxlm.training.schedules import warmup_cosine

RESULT_NAME = "result.json"


def run_name(overrides: Mapping[str, Any], steps: int) -> str:
  """SWEEP_DIR's subdirectory for a run, e.g. 'd_model32_num_layers1_steps20'."""
  parts = [f"{key}{value}" for key, value in sorted(overrides.items())]
  return "_".join(parts + [f"steps{steps}"])


@gin.configurable
def run_sweep(sweep_dir: str = gin.REQUIRED,
              models: Sequence[Mapping[str, Any]] = gin.REQUIRED,
              steps: Sequence[int] = gin.REQUIRED,
              config: Optional[TransformerConfig] = None,
              schedule: Optional[Callable[..., Any]] = warmup_cosine,
              loss_key: str = "loss",
              seq_len: Optional[int] = None,
              plan_flops: Sequence[float] = (),
              bootstrap_samples: int = 100,
              train_fn: Callable[..., trainer.TrainResult] = trainer.train) -> Dict[str, Any]:
  """Trains len(models) x len(steps) runs (skipping done ones), then writes the fits.

  models: TransformerConfig overrides, one dict per model size (e.g. {'d_model': 32,
  'num_layers': 1}); steps: train steps per run (the token budget: steps x BATCH_SIZE x
  length). config: the model the overrides apply to (default TransformerConfig() as gin
  binds it). schedule: called as schedule(decay_steps=steps) for each run's learning rate
  (None: train.learning_rate as bound). seq_len: the training sequence length, for the
  FLOPs' attention term (default TransformerConfig.max_len). plan_flops: budgets the
  report plans for with the Chinchilla fit (bootstrap_samples resamples for its intervals;
  0: none). Returns {'runs': records, 'fit': fit.json's content}, or {'runs', 'preempted':
  True} without a fit when a run was preempted."""
  if not models or not steps:
    raise ValueError(f"run_sweep: models={list(models)} and steps={list(steps)} must both be non-empty")
  base = config if config is not None else TransformerConfig()
  records = []
  for overrides in models:
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TransformerConfig)}
    if unknown:
      raise ValueError(f"run_sweep.models: {sorted(unknown)} are not TransformerConfig fields")
    run_config = dataclasses.replace(base, **overrides)
    for n in steps:
      record = _run_one(os.path.join(sweep_dir, run_name(overrides, n)), run_config, dict(overrides), int(n),
                        schedule, loss_key, seq_len, train_fn)
      if record is None:
        return {"runs": records, "preempted": True}
      records.append(record)
  with open(os.path.join(sweep_dir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(records, f, indent=1)
  return {"runs": records, "fit": report.write_report(sweep_dir, records, plan_flops, bootstrap_samples)}


def _run_one(model_dir, config, overrides, steps, schedule, loss_key, seq_len, train_fn) -> Optional[dict]:
  """The run's record: read from its result.json if done, else trained (or resumed) first.
  None if the run was preempted."""
  path = os.path.join(model_dir, RESULT_NAME)
  if os.path.exists(path):
    logging.info("sweep: %s is done, skipped", model_dir)
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  kwargs = {"learning_rate": schedule(decay_steps=steps)} if schedule is not None else {}
  result = train_fn(model_dir=model_dir, train_steps=steps, config=config, **kwargs)
  if result.preempted:
    return None
  final = _final_record(model_dir, steps, loss_key)
  size = flops_lib.model_size(config, seq_len)
  record = {"name": os.path.basename(model_dir), "overrides": overrides, "steps": steps,
            "tokens": int(final["tokens_seen"]), "params": size.params,
            "non_embedding_params": size.non_embedding_params, "flops_per_token": size.flops_per_token,
            "flops": size.flops_per_token * int(final["tokens_seen"]), "loss": float(final[loss_key]),
            "loss_key": loss_key}
  with open(path, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1)
  return record


def _final_record(model_dir: str, steps: int, loss_key: str) -> dict:
  """The last metrics.jsonl record at the final step, with `loss_key` and tokens_seen merged
  from the records of that step."""
  merged = {}
  with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      if record.get("step") == steps:
        merged.update(record)
  if loss_key not in merged or "tokens_seen" not in merged:
    raise ValueError(f"run_sweep.loss_key={loss_key!r}: {model_dir}/metrics.jsonl has no record of step "
                     f"{steps} with it and tokens_seen (keys there: {sorted(merged)})")
  return merged
