"""Throughput and MFU, and the metric writers: JSONL, TensorBoard, console progress bar.

MFU (model FLOPs utilisation, PaLM appendix B) = achieved model FLOP/s / peak FLOP/s, where
model FLOPs per token = 6 N (non-embedding parameters, active experts only) + 12 L H Q T
(attention), as `model.flops_per_token(seq_len)` computes. Peak is per device, dense bf16,
from the table below by `device.device_kind`; unknown devices (CPUs) give mfu = None
unless `peak_flops_per_device` is set in gin.
"""
from __future__ import annotations

import json
import logging
import math
import numbers
import os
import time
from typing import Mapping, Optional, Sequence

import gin
import jax

# Dense bf16 peak FLOP/s per device (per chip for TPUs), no sparsity.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10G": 125e12,
    "V100": 125e12,
    "TPU v2": 45e12,
    "TPU v3": 123e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12, "TPU v5e": 197e12,
    "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


@gin.configurable
def peak_flops_per_device(device_kind: Optional[str] = None,
                          override: Optional[float] = None) -> Optional[float]:
  """Peak FLOP/s of one device: the gin override, else the longest table key contained in
  device_kind (default: this host's first device), else None."""
  if override:
    return float(override)
  kind = device_kind if device_kind is not None else jax.devices()[0].device_kind
  matches = [k for k in PEAK_FLOPS if k.lower() in kind.lower()]
  return PEAK_FLOPS[max(matches, key=len)] if matches else None


def mfu(tokens_per_second: float, flops_per_token: float, num_devices: int,
        peak_per_device: Optional[float]) -> Optional[float]:
  if not peak_per_device:
    return None
  return tokens_per_second * flops_per_token / (num_devices * peak_per_device)


class Throughput:
  """Tokens/s, steps/s and MFU over the steps since the last report. Tokens here are the
  positions the model computed (batch x length, padding included), as MFU needs; steps
  that compiled a new program restart the clock."""

  def __init__(self, flops_per_token: float, num_devices: int, peak_per_device: Optional[float]):
    self.flops_per_token, self.num_devices, self.peak = flops_per_token, num_devices, peak_per_device
    self.start, self.positions, self.steps = time.perf_counter(), 0, 0

  def step(self, positions: int, compiled: bool) -> None:
    if compiled:
      self.start, self.positions, self.steps = time.perf_counter(), 0, 0
    else:
      self.positions, self.steps = self.positions + positions, self.steps + 1

  def report(self) -> dict:
    elapsed = time.perf_counter() - self.start
    tps = self.positions / elapsed if self.positions and elapsed > 0 else None
    out = {"tokens_per_second": tps,
           "steps_per_second": self.steps / elapsed if self.steps and elapsed > 0 else None,
           "mfu": mfu(tps, self.flops_per_token, self.num_devices, self.peak) if tps else None}
    self.start, self.positions, self.steps = time.perf_counter(), 0, 0
    return out


def mean_of(records: Sequence[Mapping], keys: Sequence[str]) -> dict:
  """Means over the records with a finite loss (all records if none is finite)."""
  finite = [r for r in records if math.isfinite(r["loss"])] or list(records)
  return {k: float(sum(r[k] for r in finite) / len(finite)) for k in keys}


def eval_record(step: int, results: Mapping) -> dict:
  """{'step': step, 'eval/<task>/<metric>': float} of {'task/metric': value} results; values
  that are not numbers (e.g. seqio Text) are left out."""
  record = {"step": int(step)}
  for name, value in results.items():
    value = getattr(value, "value", value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
      record[f"eval/{name}"] = float(value)
  return record


class MetricsWriter:
  """Writes one record per logging step to MODEL_DIR/metrics.jsonl, TensorBoard event
  files under MODEL_DIR/train (tags train/<key>, and eval/<task>/<metric> for evaluation
  records), and a tqdm bar; events (resume, rollback, preemption) go to
  MODEL_DIR/events.jsonl. Only process 0 writes; others no-op."""

  def __init__(self, model_dir: str, total_steps: int, initial_step: int = 0,
               tensorboard: bool = True, progress_bar: bool = True):
    self.active = jax.process_index() == 0
    self.jsonl = self.events = self.tb = self.bar = None
    if not self.active:
      return
    os.makedirs(model_dir, exist_ok=True)
    self.jsonl = open(os.path.join(model_dir, "metrics.jsonl"), "a", encoding="utf-8")
    self.events = open(os.path.join(model_dir, "events.jsonl"), "a", encoding="utf-8")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(os.path.join(model_dir, "train"))
      except ImportError:  # pragma: no cover
        logging.warning("tensorboardX missing: no TensorBoard events")
    if progress_bar:
      from tqdm.auto import tqdm
      self.bar = tqdm(total=total_steps, initial=initial_step, desc="train", dynamic_ncols=True)

  def step(self, step: int, loss: float) -> None:
    if self.bar is not None:
      self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
      self.bar.update(step - self.bar.n)  # tqdm throttles the redraws

  def write(self, record: Mapping) -> None:
    if not self.active:
      return
    self.jsonl.write(json.dumps(record) + "\n")
    self.jsonl.flush()
    if self.tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
          self.tb.add_scalar(k if k.startswith("eval/") else f"train/{k}", v, record["step"])
      self.tb.flush()

  def event(self, record: Mapping) -> None:
    """Resumes, rollbacks, skipped steps, preemption: MODEL_DIR/events.jsonl and the console."""
    logging.warning("train event: %s", record)
    if not self.active:
      return
    if self.bar is not None:
      self.bar.write(f"[jaxlm.train] {json.dumps(dict(record))}")
    self.events.write(json.dumps(dict(record)) + "\n")
    self.events.flush()

  def close(self) -> None:
    for x in (self.bar, self.tb, self.jsonl, self.events):
      if x is not None:
        x.close()
