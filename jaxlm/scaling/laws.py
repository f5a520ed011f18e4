"""Scaling-law fits: Kaplan et al. (2020)'s power laws and Hoffmann et al. (2022)'s
parametric loss, with bootstrap confidence intervals. numpy and scipy only.

Kaplan-style, one variable at a time (`fit_power_law`): L(X) = (X_c / X)^alpha, a straight
line in log-log space, optionally with an irreducible offset E: L(X) = E + (X_c / X)^alpha.
`kaplan_fits(N, D, C, L)` fits L(N) on each model size's lowest loss (its most data), L(D)
on each token budget's lowest loss (its largest model) and L(C) on the compute frontier
(`frontier`: the runs no cheaper run beats).

Chinchilla (`fit_chinchilla`): L(N, D) = E + A / N^alpha + B / D^beta, fitted as Hoffmann et
al. do (their appendix D.2): minimise the sum over runs of Huber_delta(LSE(a - alpha log N,
b - beta log D, e) - log L) with L-BFGS from every point of a grid of starts, keeping the
best; A = exp(a), B = exp(b), E = exp(e). The default grid is theirs (alpha, beta in
0..2 by 0.5, e in -1..1 by 0.5, a, b in 0..25 by 5: 4500 starts), the Huber delta 1e-3.
`bootstrap_chinchilla` resamples the runs with replacement, refits (from the full-data fit
and a few grid points) and reports percentile intervals of every parameter and of the
compute-optimal exponents a = beta / (alpha + beta) (N_opt ~ C^a) and b = alpha / (alpha + beta).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

CHINCHILLA_GRID = {"alpha": np.arange(0.0, 2.01, 0.5), "beta": np.arange(0.0, 2.01, 0.5),
                   "e": np.arange(-1.0, 1.01, 0.5), "a": np.arange(0.0, 25.1, 5.0),
                   "b": np.arange(0.0, 25.1, 5.0)}
HUBER_DELTA = 1e-3
EXPONENT_GRID = np.round(np.arange(0.05, 2.001, 0.05), 2)  # alpha, beta for linear_starts


# ---- one variable: Kaplan et al. ----
@dataclasses.dataclass(frozen=True)
class PowerLaw:
  """L(X) = offset + (scale / X)^exponent."""
  scale: float
  exponent: float
  offset: float = 0.0

  def __call__(self, x):
    return self.offset + (self.scale / np.asarray(x, np.float64)) ** self.exponent


def fit_power_law(x: Sequence[float], loss: Sequence[float], offset: bool = False) -> PowerLaw:
  """Least squares in log space: log L = alpha log X_c - alpha log X (a line), or with
  `offset`, log L = log(E + (X_c / X)^alpha) by L-BFGS from the line's fit and a few E."""
  x, loss = _positive(x, "x"), _positive(loss, "loss")
  if len(x) < 2 or np.ptp(np.log(x)) == 0:
    raise ValueError(f"fit_power_law: needs at least 2 distinct x values, got {x.tolist()}")
  slope, intercept = np.polyfit(np.log(x), np.log(loss), 1)
  line = PowerLaw(scale=float(np.exp(-intercept / slope)), exponent=float(-slope))
  if not offset:
    return line
  from scipy import optimize
  lx, ll = np.log(x), np.log(loss)

  def objective(theta):  # theta = (log E, alpha, alpha log X_c)
    terms = np.stack([np.full_like(lx, theta[0]), theta[2] - theta[1] * lx])
    return float(np.sum((np.logaddexp(*terms) - ll) ** 2))

  starts = [(np.log(f * loss.min()), line.exponent, line.exponent * np.log(line.scale))
            for f in (1e-3, 0.25, 0.5, 0.75, 0.9)]
  best = min((optimize.minimize(objective, s, method="L-BFGS-B") for s in starts), key=lambda r: r.fun)
  log_e, alpha, c = best.x
  return PowerLaw(scale=float(np.exp(c / alpha)), exponent=float(alpha), offset=float(np.exp(log_e)))


def frontier(compute: Sequence[float], loss: Sequence[float]) -> np.ndarray:
  """Indices of the compute-efficient runs, by compute: those whose loss is lower than that
  of every run with less (or equal) compute."""
  order = np.lexsort((np.asarray(loss), np.asarray(compute)))
  keep, best = [], np.inf
  for i in order:
    if loss[i] < best:
      keep.append(int(i))
      best = loss[i]
  return np.asarray(keep, np.int64)


def kaplan_fits(n, d, c, loss, offset: bool = False) -> Dict[str, PowerLaw]:
  """{'L(N)', 'L(D)', 'L(C)'}: each a power law over the best run per N, per D, and on the
  compute frontier (a variable with fewer than 2 distinct values gets no fit)."""
  n, d, c, loss = (np.asarray(v, np.float64) for v in (n, d, c, loss))
  fits = {}
  for name, x in (("L(N)", n), ("L(D)", d)):
    values = np.unique(x)
    if len(values) >= 2:
      fits[name] = fit_power_law(values, [loss[x == v].min() for v in values], offset)
  on = frontier(c, loss)
  if len(on) >= 2:
    fits["L(C)"] = fit_power_law(c[on], loss[on], offset)
  return fits


# ---- two variables: Hoffmann et al. ----
@dataclasses.dataclass(frozen=True)
class ChinchillaLaw:
  """L(N, D) = E + A / N^alpha + B / D^beta."""
  E: float
  A: float
  B: float
  alpha: float
  beta: float

  def __call__(self, n, d):
    n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
    return self.E + self.A / n ** self.alpha + self.B / d ** self.beta

  def as_dict(self) -> Dict[str, float]:
    return dataclasses.asdict(self)


def _huber_objective(theta, log_n, log_d, log_loss, delta):
  """(sum of Huber losses, gradient) at theta = (a, b, e, alpha, beta)."""
  a, b, e, alpha, beta = theta
  terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
  top = terms.max(axis=0)
  weights = np.exp(terms - top)
  total = weights.sum(axis=0)
  r = top + np.log(total) - log_loss
  soft = weights / total  # d LSE / d term
  small = np.abs(r) <= delta
  value = np.sum(np.where(small, 0.5 * r ** 2, delta * (np.abs(r) - 0.5 * delta)))
  g = np.clip(r, -delta, delta)  # d Huber / d r
  grad = np.array([np.sum(g * soft[0]), np.sum(g * soft[1]), np.sum(g * soft[2]),
                   -np.sum(g * soft[0] * log_n), -np.sum(g * soft[1] * log_d)])
  return value, grad


def _law(theta) -> ChinchillaLaw:
  a, b, e, alpha, beta = (float(t) for t in theta)
  with np.errstate(over="ignore"):  # a degenerate fit (a resample of few runs) may give A or B = inf
    return ChinchillaLaw(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=alpha, beta=beta)


def _theta(law: ChinchillaLaw):
  return np.array([np.log(law.A), np.log(law.B), np.log(law.E), law.alpha, law.beta])


def grid_starts(grid: Optional[Dict[str, Sequence[float]]] = None) -> np.ndarray:
  """[starts, 5] of (a, b, e, alpha, beta): every combination of the grid's values
  (default Hoffmann et al.'s 4500; pass them as fit_chinchilla's `starts` to search as they
  did, at about 10 ms of L-BFGS per start)."""
  grid = CHINCHILLA_GRID if grid is None else grid
  return np.array(list(itertools.product(grid["a"], grid["b"], grid["e"], grid["alpha"], grid["beta"])),
                  np.float64)


def linear_starts(n, d, loss, exponents: Sequence[float] = EXPONENT_GRID, keep: int = 8) -> np.ndarray:
  """[keep, 5] starts: for each (alpha, beta) on the grid of `exponents`, L(N, D) is linear
  in (E, A, B); their least squares in relative error (close to the log error the fit
  minimises; negative coefficients clipped to tiny ones) scores the pair, and the `keep`
  best pairs start L-BFGS."""
  n, d, loss = (np.asarray(v, np.float64) for v in (n, d, loss))
  alpha, beta = (g.reshape(-1) for g in np.meshgrid(exponents, exponents, indexing="ij"))
  design = np.stack([np.broadcast_to(1.0, (len(alpha), len(n))), n[None, :] ** -alpha[:, None],
                     d[None, :] ** -beta[:, None]], axis=-1) / loss[None, :, None]  # [pairs, runs, 3]
  gram = np.einsum("prk,prl->pkl", design, design) + 1e-12 * np.eye(3)
  coef = np.linalg.solve(gram, design.sum(axis=1)[..., None])[..., 0]
  coef = np.maximum(coef, 1e-6 * loss.min())
  residual = np.sum((np.einsum("prk,pk->pr", design, coef) - 1.0) ** 2, axis=1)
  best = np.argsort(residual)[:keep]
  return np.stack([np.log(coef[best, 1]), np.log(coef[best, 2]), np.log(coef[best, 0]), alpha[best], beta[best]],
                  axis=1)


def fit_chinchilla(n, d, loss, delta: float = HUBER_DELTA, starts: Optional[np.ndarray] = None
                   ) -> Tuple[ChinchillaLaw, float]:
  """(the fitted law, its summed Huber loss): L-BFGS from every start, the best end point
  kept. Default starts: linear_starts (8, from a 40 x 40 grid of exponents); grid_starts()
  gives Hoffmann et al.'s exhaustive grid instead."""
  from scipy import optimize
  n, d, loss = _positive(n, "N"), _positive(d, "D"), _positive(loss, "loss")
  if not len(n) == len(d) == len(loss):
    raise ValueError(f"fit_chinchilla: N, D and loss differ in length ({len(n)}, {len(d)}, {len(loss)})")
  if len(loss) < 5:
    raise ValueError(f"fit_chinchilla: 5 parameters need at least 5 runs, got {len(loss)}")
  args = (np.log(n), np.log(d), np.log(loss), delta)
  # Divided by delta^2: values of order 1, which scipy's default tolerances are made for.
  scaled = lambda theta: tuple(v / delta ** 2 for v in _huber_objective(theta, *args))
  best = None
  with _one_blas_thread():
    for start in (linear_starts(n, d, loss) if starts is None else np.atleast_2d(starts)):
      result = optimize.minimize(scaled, start, jac=True, method="L-BFGS-B")
      if np.isfinite(result.fun) and (best is None or result.fun < best.fun):
        best = result
  return _law(best.x), float(best.fun) * delta ** 2


@dataclasses.dataclass
class Bootstrap:
  """fit: the full-data law; intervals: {name: (low, high)} percentile intervals at `level`
  for E, A, B, alpha, beta and the compute-optimal exponents a and b; samples: one law per
  resample."""
  fit: ChinchillaLaw
  intervals: Dict[str, Tuple[float, float]]
  samples: list
  level: float


def optimal_exponents(law: ChinchillaLaw) -> Dict[str, float]:
  """N_opt ~ C^a and D_opt ~ C^b: a = beta / (alpha + beta), b = alpha / (alpha + beta)."""
  s = law.alpha + law.beta
  return {"a": law.beta / s, "b": law.alpha / s}


def bootstrap_chinchilla(n, d, loss, samples: int = 100, level: float = 0.95, seed: int = 0,
                         delta: float = HUBER_DELTA, keep: int = 4) -> Bootstrap:
  """The full-data fit and percentile intervals over `samples` refits on runs resampled
  with replacement; each refit starts from the full-data fit and its own `keep` best
  linear_starts."""
  n, d, loss = (np.asarray(v, np.float64) for v in (n, d, loss))
  fit, _ = fit_chinchilla(n, d, loss, delta)
  rng = np.random.default_rng(seed)
  laws = []
  for _ in range(samples):
    pick = rng.integers(0, len(loss), len(loss))
    starts = np.vstack([_theta(fit), linear_starts(n[pick], d[pick], loss[pick], keep=keep)])
    laws.append(fit_chinchilla(n[pick], d[pick], loss[pick], delta, starts=starts)[0])
  rows = [law.as_dict() | optimal_exponents(law) for law in laws]
  tail = 100 * (1 - level) / 2
  intervals = {k: tuple(float(q) for q in np.percentile([r[k] for r in rows], [tail, 100 - tail]))
               for k in rows[0]}
  return Bootstrap(fit=fit, intervals=intervals, samples=laws, level=level)


def _one_blas_thread():
  """L-BFGS on 5 parameters calls BLAS on tiny arrays; with OpenBLAS threads contending for
  busy cores each call can take milliseconds (measured 25x slower on 2 loaded cores), so the
  fits limit BLAS to one thread where threadpoolctl is installed."""
  try:
    from threadpoolctl import threadpool_limits
  except ImportError:
    return contextlib.nullcontext()
  return threadpool_limits(limits=1, user_api="blas")


def _positive(values, name: str) -> np.ndarray:
  values = np.asarray(values, np.float64).reshape(-1)
  if not np.all(np.isfinite(values)) or np.any(values <= 0):
    raise ValueError(f"scaling fit: {name} must be finite and positive, got {values.tolist()}")
  return values
