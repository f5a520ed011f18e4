"""The compute-optimal planner: for a FLOP budget C, the model size N and token count D
that minimise a fitted L(N, D) = E + A / N^alpha + B / D^beta under C = 6 N D, and the model
file in gin_configs/models/ closest to that N.

Hoffmann et al. (2022), eq. 4: N_opt = G (C / 6)^(beta / (alpha + beta)),
D_opt = (C / 6)^(alpha / (alpha + beta)) / G, G = (alpha A / (beta B))^(1 / (alpha + beta)).
N is the non-embedding parameter count, as in the fits (jaxlm.scaling.flops). A model
file's token budget is C / its own flops_per_token (Model.flops_per_token: attention and
the output layer included), so it can differ from D_opt.

    plan = compute_optimal(law, 1e21)      # Plan(flops, params, tokens, loss)
    pick = closest_model(plan.params)      # ModelChoice('llama_1b', ...)
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Optional

import numpy as np

from jaxlm.scaling import flops as flops_lib
from jaxlm.scaling.laws import ChinchillaLaw


@dataclasses.dataclass(frozen=True)
class Plan:
  flops: float   # the budget C
  params: float  # N_opt
  tokens: float  # D_opt = C / (6 N_opt)
  loss: float    # the law's L(N_opt, D_opt)


def compute_optimal(law: ChinchillaLaw, flops: float) -> Plan:
  """The (N, D) minimising law(N, D) subject to 6 N D = flops (closed form)."""
  if not flops > 0:
    raise ValueError(f"compute_optimal: the FLOP budget must be positive, got {flops}")
  s = law.alpha + law.beta
  g = (law.alpha * law.A / (law.beta * law.B)) ** (1.0 / s)
  n = g * (flops / 6.0) ** (law.beta / s)
  d = flops / (6.0 * n)
  return Plan(flops=float(flops), params=float(n), tokens=float(d), loss=float(law(n, d)))


@dataclasses.dataclass(frozen=True)
class ModelChoice:
  name: str                    # the model file's name (gin_configs/models/<name>.gin)
  path: str
  size: flops_lib.ModelSize
  tokens: Optional[float]      # what the budget buys this model: C / flops_per_token
  log_distance: float          # |ln N_file - ln N_opt|


def closest_model(params: float, flops: Optional[float] = None, models_dir: str = flops_lib.MODELS_DIR,
                  arch: Optional[str] = None, seq_len: Optional[int] = None) -> ModelChoice:
  """The model file whose non-embedding parameter count is nearest `params` in log space
  (only files of TransformerConfig.arch `arch` if given), sized from shapes alone; with a
  budget `flops`, the tokens it buys at seq_len (default each file's max_len)."""
  best = None
  for name, path in flops_lib.model_files(models_dir).items():
    config, size = _file_size(path, os.path.getmtime(path), seq_len)
    if arch is not None and config.arch != arch:
      continue
    distance = abs(np.log(size.non_embedding_params) - np.log(params))
    if best is None or distance < best.log_distance:
      tokens = flops / size.flops_per_token if flops is not None else None
      best = ModelChoice(name=name, path=path, size=size, tokens=tokens, log_distance=float(distance))
  if best is None:
    raise ValueError(f"closest_model: no model file{f' of arch {arch!r}' if arch else ''} in {models_dir}")
  return best


@functools.lru_cache(maxsize=None)
def _file_size(path: str, mtime: float, seq_len: Optional[int]):
  """(config, ModelSize) of a model file, computed once per version of the file."""
  del mtime  # part of the cache key only
  config = flops_lib.model_config(path)
  return config, flops_lib.model_size(config, seq_len)
