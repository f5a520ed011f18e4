"""Robustness: a metric's worst case over small, meaning-preserving input perturbations.

Perturbations (seeded, deterministic): ``typos`` (adjacent swaps, drops, doubled and
keyboard-neighbour letters), ``casing`` (lower / upper / title / random word case) and
``whitespace`` (runs of spaces, tabs and newlines between words, padding at the ends).

``worst_case`` scores every example clean and under ``num_variants`` variants of each
perturbation, and reports the mean over examples of the worst score, as HELM does
for its robustness metric:

    scores = worst_case(examples, lambda exs: [float(model(e["inputs"]) == e["targets"])
                                               for e in exs])
    scores["clean"], scores["worst_case"], scores["typos"]
"""
from __future__ import annotations

import random
import re
from typing import Callable, Mapping, Sequence, Union

import numpy as np

_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS = {}
for _r, _row in enumerate(_ROWS):
  for _c, _ch in enumerate(_row):
    near = [_row[j] for j in (_c - 1, _c + 1) if 0 <= j < len(_row)]
    for _rr in (_r - 1, _r + 1):
      if 0 <= _rr < len(_ROWS):
        near += [_ROWS[_rr][j] for j in (_c - 1, _c, _c + 1) if 0 <= j < len(_ROWS[_rr])]
    _NEIGHBOURS[_ch] = "".join(near)


def typos(text: str, seed: int = 0, rate: float = 0.05) -> str:
  """Introduces typos in about ``rate`` of the letters (at least one if any letter)."""
  rng = random.Random(f"typos-{seed}")
  chars = list(text)
  letters = [i for i, ch in enumerate(chars) if ch.isalpha()]
  if not letters:
    return text
  n = max(1, round(rate * len(letters)))
  for i in sorted(rng.sample(letters, min(n, len(letters))), reverse=True):
    ch = chars[i]
    op = rng.choice(("swap", "drop", "double", "neighbour"))
    if op == "swap" and i + 1 < len(chars) and chars[i + 1].isalpha() and chars[i + 1] != ch:
      chars[i], chars[i + 1] = chars[i + 1], ch
    elif op == "drop":
      del chars[i]
    elif op == "double":
      chars.insert(i, ch)
    else:  # neighbour (also the fallback for an impossible swap)
      near = _NEIGHBOURS.get(ch.lower(), "")
      if near:
        sub = rng.choice(near)
        chars[i] = sub.upper() if ch.isupper() else sub
      else:
        chars.insert(i, ch)
  return "".join(chars)


def casing(text: str, seed: int = 0) -> str:
  """Changes letter case: all lower, all upper, title case, or random words upper."""
  rng = random.Random(f"casing-{seed}")
  mode = rng.choice(("lower", "upper", "title", "words"))
  if mode == "lower":
    return text.lower()
  if mode == "upper":
    return text.upper()
  if mode == "title":
    return text.title()
  return re.sub(r"\S+", lambda m: m.group(0).upper() if rng.random() < 0.5
                else m.group(0).lower(), text)


def whitespace(text: str, seed: int = 0) -> str:
  """Replaces each run of whitespace by a random run; pads the ends."""
  rng = random.Random(f"whitespace-{seed}")
  def run(min_len):
    return "".join(rng.choice("  \t\n") for _ in range(rng.randint(min_len, 3)))
  body = re.sub(r"\s+", lambda m: run(1), text.strip())
  return run(0) + body + run(0)


PERTURBATIONS: dict[str, Callable[..., str]] = {
    "typos": typos, "casing": casing, "whitespace": whitespace}


def perturb(text: str, kind: str, seed: int = 0) -> str:
  if kind not in PERTURBATIONS:
    raise ValueError(f"unknown perturbation {kind!r}; have {sorted(PERTURBATIONS)}")
  return PERTURBATIONS[kind](text, seed)


def perturb_example(example: Mapping, kind: str, seed: int,
                    keys: Union[str, Sequence[str]] = "inputs") -> dict:
  """A copy of ``example`` with the text fields ``keys`` perturbed (others untouched)."""
  keys = (keys,) if isinstance(keys, str) else tuple(keys)
  out = dict(example)
  for j, k in enumerate(keys):
    out[k] = perturb(example[k], kind, seed * 1000 + j)
  return out


def worst_case(examples: Sequence[Mapping], score_fn: Callable[[list], Sequence[float]],
               keys: Union[str, Sequence[str]] = "inputs",
               perturbations: Sequence[str] = ("typos", "casing", "whitespace"),
               num_variants: int = 3, seed: int = 0, higher_is_better: bool = True) -> dict:
  """Worst-case metric over perturbed variants of each example.

  ``score_fn(list of example dicts) -> per-example scores`` (e.g. 1.0 if correct).
  Returns ``clean`` (mean clean score), one mean per perturbation (over its variants),
  and ``worst_case``: mean over examples of the worst of the clean score and all
  ``len(perturbations) * num_variants`` variant scores. Variant ``v`` of example ``i``
  uses seed ``(seed, i, v)``, so runs are reproducible.
  """
  pick = np.minimum if higher_is_better else np.maximum
  clean = np.asarray(score_fn([dict(e) for e in examples]), np.float64)
  if clean.shape != (len(examples),):
    raise ValueError(f"score_fn returned shape {clean.shape}, want ({len(examples)},)")
  worst = clean.copy()
  out = {"clean": float(clean.mean()) if len(clean) else 0.0}
  for kind in perturbations:
    variants = [perturb_example(e, kind, (seed * 100003 + i) * 97 + v, keys)
                for v in range(num_variants) for i, e in enumerate(examples)]
    scores = np.asarray(score_fn(variants), np.float64).reshape(num_variants, len(examples))
    worst = pick(worst, scores.min(0) if higher_is_better else scores.max(0))
    out[kind] = float(scores.mean()) if scores.size else 0.0
  out["worst_case"] = float(worst.mean()) if len(worst) else 0.0
  return out
