"""Training stability: loss-spike detection, non-finite step guards, embedding-gradient shrink.

Loss spikes (PaLM section 5.1, OPT logbook): the trainer restores the last good
checkpoint and skips the data batches consumed since, because those batches together
with that parameter state caused the spike. `LossSpikeDetector` decides what a spike is,
robustly to the downward trend of early training: with baseline = mean of the last
`baseline_window` accepted losses and noise = std of step-to-step differences over the
last `window` accepted losses / sqrt(2), a finite loss is a spike when it exceeds
baseline + z_threshold * noise *and* baseline * (1 + min_relative_increase), once
`warmup` losses have been accepted. Spikes are not added to the window.

Non-finite steps (NaN/Inf loss or gradient norm) are never applied: the train step keeps
the old parameters and optimizer state (`select_if_finite`); the detector counts them and
asks for a rollback after `max_consecutive_nonfinite` in a row.

Embedding-gradient shrink (GLM-130B): word_embedding = e * alpha + stop_gradient(e) * (1 - alpha)
leaves the forward pass unchanged and multiplies the embedding table's gradient by alpha
(0.1 in GLM-130B). With tied embeddings this also shrinks the output layer's gradient.
"""
from __future__ import annotations

import collections
import math
from typing import Mapping, Optional

import gin
import jax
import jax.numpy as jnp

OK, SPIKE, NONFINITE = "ok", "spike", "nonfinite"


@gin.configurable
class LossSpikeDetector:

  def __init__(self, window: int = 100, baseline_window: int = 10, warmup: int = 20,
               z_threshold: float = 6.0, min_relative_increase: float = 0.25,
               max_consecutive_nonfinite: int = 3):
    self.window, self.baseline_window, self.warmup = window, baseline_window, warmup
    self.z_threshold, self.min_relative_increase = z_threshold, min_relative_increase
    self.max_consecutive_nonfinite = max_consecutive_nonfinite
    self.history = collections.deque(maxlen=window)
    self.nonfinite_run = 0

  def stats(self) -> tuple[float, float]:
    """(baseline, noise) of the accepted losses."""
    h = list(self.history)
    recent = h[-self.baseline_window:]
    baseline = sum(recent) / max(len(recent), 1)
    diffs = [b - a for a, b in zip(h[:-1], h[1:])]
    if len(diffs) < 2:
      return baseline, 0.0
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return baseline, math.sqrt(var / 2.0)

  def check(self, loss: float) -> str:
    """Classifies one step's loss and, if accepted, adds it to the window.

    Returns OK, SPIKE (roll back), or NONFINITE (already not applied by the step; a
    rollback is due only once max_consecutive_nonfinite happen in a row -> SPIKE)."""
    if not math.isfinite(loss):
      self.nonfinite_run += 1
      return SPIKE if self.nonfinite_run >= self.max_consecutive_nonfinite else NONFINITE
    self.nonfinite_run = 0
    if len(self.history) >= self.warmup:
      baseline, noise = self.stats()
      if loss > baseline + self.z_threshold * noise and loss > baseline * (1 + self.min_relative_increase):
        return SPIKE
    self.history.append(float(loss))
    return OK

  def reset_nonfinite(self) -> None:
    self.nonfinite_run = 0

  def state(self) -> dict:
    return {"history": list(self.history), "nonfinite_run": self.nonfinite_run}

  def restore(self, state: Optional[Mapping]) -> None:
    if state:
      self.history = collections.deque(state["history"], maxlen=self.window)
      self.nonfinite_run = int(state["nonfinite_run"])


def is_finite(*xs) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]))


def select_if_finite(ok, new, old):
  """new where ok else old, leaf by leaf (inside jit: no host round trip)."""
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def shrink_embedding_grads(grads, alpha: float, name: str = "token_embedding"):
  """Multiplies the gradient of every parameter under a module called `name` by alpha."""
  if alpha == 1.0:
    return grads

  def scale(path, g):
    names = [str(getattr(k, "key", k)) for k in path]
    return g * alpha if name in names else g
  return jax.tree_util.tree_map_with_path(scale, grads)
