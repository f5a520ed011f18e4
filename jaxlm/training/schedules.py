"""Learning-rate and batch-size schedules. Each is a gin-configurable factory.

Learning rate (step -> float, jnp-traceable so optax can use it inside the jitted step):
  warmup_cosine   linear warmup, then cosine decay to `final_fraction` of the peak
                  (GPT-3, Chinchilla: decay to 10% over the run)
  rsqrt           T5's inverse square root: peak / sqrt(max(step, warmup_steps))
  constant        a constant, optionally after a linear warmup

Batch size (step, tokens_seen -> number of microbatches in this step):
  constant_batch  always the same number of microbatches
  batch_ramp      grows the global batch by raising the number of accumulated microbatches,
                  linearly in tokens seen (GPT-3: 32k tokens up to the full batch over the
                  first 4-12B tokens) or in steps, rounded to powers of two by default
                  (PaLM doubled its batch twice) so only a few step shapes compile.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import gin
import jax.numpy as jnp

Schedule = Callable[[int], float]


@gin.configurable
def warmup_cosine(peak_value: float = 3e-4, warmup_steps: int = 2000,
                  decay_steps: Optional[int] = gin.REQUIRED, final_fraction: float = 0.1,
                  init_value: float = 0.0) -> Schedule:
  """Linear warmup from init_value to peak_value over warmup_steps, then a half cosine from
  peak to final_fraction * peak at decay_steps (counted from step 0), then flat."""
  floor = peak_value * final_fraction

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = init_value + (peak_value - init_value) * step / max(warmup_steps, 1)
    progress = jnp.clip((step - warmup_steps) / max(decay_steps - warmup_steps, 1), 0.0, 1.0)
    cosine = floor + 0.5 * (peak_value - floor) * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup_steps, warm, cosine)
  return schedule


@gin.configurable
def rsqrt(peak_value: float = 0.01, warmup_steps: int = 10000, linear_warmup: bool = False) -> Schedule:
  """T5: lr = 1/sqrt(max(step, warmup)) scaled so the plateau equals peak_value (T5 uses
  peak 0.01 = 1/sqrt(10^4)). linear_warmup=True ramps from 0 instead of holding flat."""
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    lr = peak_value * jnp.sqrt(warmup_steps / jnp.maximum(step, warmup_steps))
    if linear_warmup:
      lr = lr * jnp.minimum(1.0, step / max(warmup_steps, 1))
    return lr
  return schedule


@gin.configurable
def constant(value: float = 1e-3, warmup_steps: int = 0) -> Schedule:
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    if warmup_steps <= 0:
      return jnp.full((), value, jnp.float32) + 0.0 * step
    return value * jnp.minimum(1.0, step / warmup_steps)
  return schedule


# ---- batch size ----

BatchSchedule = Callable[[int, int], int]


@gin.configurable
def constant_batch(num_microbatches: int = 1) -> BatchSchedule:
  return lambda step, tokens_seen: num_microbatches


@gin.configurable
def batch_ramp(start_microbatches: int = 1, end_microbatches: int = gin.REQUIRED,
               ramp_tokens: Optional[int] = None, ramp_steps: Optional[int] = None,
               power_of_two: bool = True) -> BatchSchedule:
  """Microbatches per step grow linearly from start to end over ramp_tokens (or ramp_steps).
  The global batch is microbatches x the data source's batch, so with 8-sequence microbatches
  start=1, end=32 ramps 8 -> 256 sequences."""
  if (ramp_tokens is None) == (ramp_steps is None):
    raise ValueError("batch_ramp: set exactly one of ramp_tokens and ramp_steps")
  if not 1 <= start_microbatches <= end_microbatches:
    raise ValueError(f"batch_ramp: need 1 <= start_microbatches={start_microbatches} <= "
                     f"end_microbatches={end_microbatches}")

  def schedule(step: int, tokens_seen: int) -> int:
    frac = tokens_seen / ramp_tokens if ramp_tokens else step / ramp_steps
    k = start_microbatches + (end_microbatches - start_microbatches) * min(max(frac, 0.0), 1.0)
    k = int(k)
    if power_of_two and k < end_microbatches:
      k = 2 ** int(math.floor(math.log2(max(k, 1))))
    return int(min(max(k, start_microbatches), end_microbatches))
  return schedule
