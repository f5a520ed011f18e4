"""Deduplication and decontamination stages (see ``cleaning.Stage``).

* :class:`ExactDedup` -- drops a document whose normalized text (NFKC, lower case, no
  punctuation, single spaces) hashes like an earlier one.
* :class:`NearDedup` -- MinHash over word 5-gram shingles with LSH banding (Broder 1997;
  as in Lee et al. 2022 and The Pile). A document is dropped when an earlier kept one
  shares an LSH bucket and their estimated Jaccard similarity is >= ``threshold``
  (default 0.8). Bands and rows are chosen for the threshold like ``datasketch`` does,
  weighting missed pairs 9x false candidates (candidates are verified anyway): with
  128 permutations that is 14 bands of 9 rows, which makes a pair at Jaccard 0.85 a
  candidate with probability 0.975 and at 0.9 with 0.999. ``benchmarks/dedup_compare.py``
  measures it against datasketch's MinHashLSH (same recall, 1.5x the documents/s).
* :class:`RepeatedSentenceRemover` -- removes the second and later copies of a sentence
  inside a document (sentences of at least ``min_words`` words).
* :class:`Decontaminator` -- drops training documents that share an n-gram (13 words, as
  GPT-3 did) with any evaluation text.

Exact and near dedup are *stateful*: they remember the documents already kept.
"""
from __future__ import annotations

import hashlib
import functools
import re
import unicodedata
import zlib
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import gin
import numpy as np

from jaxlm.data.cleaning import Result, Stage

_PUNCT_RE = re.compile(r"[\W_]+", re.UNICODE)
_MERSENNE = np.uint64((1 << 61) - 1)
_MAX_HASH = np.uint64((1 << 32) - 1)


def normalize(text: str) -> str:
  """NFKC, lower case, punctuation to spaces, whitespace collapsed."""
  return " ".join(_PUNCT_RE.sub(" ", unicodedata.normalize("NFKC", text).lower()).split())


def text_hash(text: str) -> bytes:
  return hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=16).digest()


@gin.configurable
class ExactDedup(Stage):
  """Keep the first document of every normalized-text hash."""
  name = "exact_dedup"
  stateful = True

  def __init__(self):
    self.seen: Set[bytes] = set()

  def process(self, text):
    digest = text_hash(text)
    if digest in self.seen:
      return Result(None, "exact_duplicate")
    self.seen.add(digest)
    return Result(text)


# ------------------------------------------------------------------ MinHash
def shingles(text: str, n: int = 5) -> Set[str]:
  """Word n-grams of the normalized text (the whole text if shorter than n words)."""
  ws = normalize(text).split()
  if len(ws) < n:
    return {" ".join(ws)} if ws else set()
  return {" ".join(ws[i:i + n]) for i in range(len(ws) - n + 1)}


def jaccard(a: str, b: str, n: int = 5) -> float:
  """Exact Jaccard similarity of two texts' word n-gram shingle sets."""
  sa, sb = shingles(a, n), shingles(b, n)
  return len(sa & sb) / max(1, len(sa | sb))


class MinHasher:
  """MinHash signatures: ``num_perm`` universal hashes (a*x + b mod 2^61-1) of crc32s."""

  def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1):
    rng = np.random.RandomState(seed)
    self.num_perm, self.ngram = num_perm, ngram
    self.a = rng.randint(1, (1 << 31) - 1, size=num_perm, dtype=np.int64).astype(np.uint64)
    self.b = rng.randint(0, (1 << 31) - 1, size=num_perm, dtype=np.int64).astype(np.uint64)

  def signature(self, text: str) -> np.ndarray:
    grams = shingles(text, self.ngram)
    if not grams:
      return np.full(self.num_perm, _MAX_HASH, dtype=np.uint64)
    x = np.fromiter((zlib.crc32(g.encode("utf-8")) for g in grams), dtype=np.uint64, count=len(grams))
    # a < 2^31 and x < 2^32, so a * x + b < 2^63: no overflow before the modulus.
    hashed = (x[:, None] * self.a[None, :] + self.b[None, :]) % _MERSENNE
    return (hashed & _MAX_HASH).min(axis=0)


def _probability_integral(f, lo: float, hi: float, steps: int = 200) -> float:
  xs = np.linspace(lo, hi, steps)
  return float(np.trapezoid(f(xs), xs)) if hasattr(np, "trapezoid") else float(np.trapz(f(xs), xs))


@functools.lru_cache(maxsize=None)
def optimal_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> Tuple[int, int]:
  """(bands, rows) with bands*rows <= num_perm minimizing weighted false +/- areas."""
  best, best_err = (1, num_perm), float("inf")
  for b in range(1, num_perm + 1):
    for r in range(1, num_perm // b + 1):
      fp = _probability_integral(lambda s: 1 - (1 - s ** r) ** b, 0.0, threshold)
      fn = _probability_integral(lambda s: (1 - s ** r) ** b, threshold, 1.0)
      err = fp_weight * fp + fn_weight * fn
      if err < best_err:
        best, best_err = (b, r), err
  return best


@gin.configurable
class NearDedup(Stage):
  """Drop documents whose MinHash-estimated Jaccard with a kept one is >= threshold."""
  name = "near_dedup"
  stateful = True

  def __init__(self, threshold: float = 0.8, num_perm: int = 128, ngram: int = 5, seed: int = 1,
               fp_weight: float = 0.1, fn_weight: float = 0.9):
    self.threshold = threshold
    self.hasher = MinHasher(num_perm, ngram, seed)
    self.bands, self.rows = optimal_bands(threshold, num_perm, fp_weight, fn_weight)
    self.buckets: List[Dict[bytes, List[int]]] = [dict() for _ in range(self.bands)]
    self.signatures: List[np.ndarray] = []

  def _band_keys(self, sig: np.ndarray) -> List[bytes]:
    return [sig[i * self.rows:(i + 1) * self.rows].tobytes() for i in range(self.bands)]

  def query(self, text: str) -> Tuple[Optional[int], float, np.ndarray]:
    """(index of the most similar kept document or None, its estimated Jaccard, signature)."""
    sig = self.hasher.signature(text)
    candidates = set()
    for band, key in zip(self.buckets, self._band_keys(sig)):
      candidates.update(band.get(key, ()))
    best, best_sim = None, 0.0
    for idx in candidates:
      sim = float(np.mean(self.signatures[idx] == sig))
      if sim > best_sim:
        best, best_sim = idx, sim
    return best, best_sim, sig

  def insert(self, sig: np.ndarray) -> int:
    """Index a kept document's signature; returns its index (what :meth:`query` names)."""
    idx = len(self.signatures)
    self.signatures.append(sig)
    for band, key in zip(self.buckets, self._band_keys(sig)):
      band.setdefault(key, []).append(idx)
    return idx

  def process(self, text):
    best, sim, sig = self.query(text)
    if best is not None and sim >= self.threshold:
      return Result(None, "near_duplicate")
    self.insert(sig)
    return Result(text)


# -------------------------------------------------------- repeated sentences
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+|\n+")


@gin.configurable
class RepeatedSentenceRemover(Stage):
  """Remove later copies of a sentence (>= ``min_words`` words) within a document."""
  name = "repeated_sentences"

  def __init__(self, min_words: int = 3):
    self.min_words = min_words

  def process(self, text):
    pieces, last = [], 0
    for match in _SENTENCE_END_RE.finditer(text):
      pieces.append((text[last:match.start()], match.group()))
      last = match.end()
    pieces.append((text[last:], ""))
    seen, kept, removed = set(), [], 0
    for sentence, sep in pieces:
      key = normalize(sentence)
      if len(key.split()) >= self.min_words:
        if key in seen:
          removed += 1
          continue
        seen.add(key)
      kept.append(sentence + sep)
    if not removed:
      return Result(text)
    out = "".join(kept).strip()
    if not out:
      return Result(None, "only_repeats")
    return Result(out, edits={"repeated_sentence": removed})


# ------------------------------------------------------------ decontamination
def ngrams(text: str, n: int) -> Set[Tuple[str, ...]]:
  ws = normalize(text).split()
  if len(ws) < n:
    return {tuple(ws)} if ws else set()
  return {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)}


@gin.configurable
class Decontaminator(Stage):
  """Drop documents that share an ``n``-word n-gram with an evaluation text."""
  name = "decontamination"

  def __init__(self, eval_texts: Iterable[str] = (), n: int = 13, min_overlaps: int = 1,
               eval_files: Sequence[str] = (), text_key: str = "text"):
    from jaxlm.data import sources  # pylint: disable=import-outside-toplevel

    self.n, self.min_overlaps = n, min_overlaps
    texts = list(eval_texts)
    for path in eval_files:
      texts += [d["text"] for d in (sources.read_jsonl_documents(path, text_key) if ".jsonl" in path
                                    else sources.read_text_files(path, "line"))]
    self.eval_ngrams: Set[Tuple[str, ...]] = set()
    for t in texts:
      self.eval_ngrams |= ngrams(t, n)

  def overlaps(self, text: str) -> int:
    ws = normalize(text).split()
    return sum(tuple(ws[i:i + self.n]) in self.eval_ngrams for i in range(max(1, len(ws) - self.n + 1)))

  def process(self, text):
    if self.eval_ngrams and self.overlaps(text) >= self.min_overlaps:
      return Result(None, "contaminated")
    return Result(text)


__all__ = ["normalize", "text_hash", "ExactDedup", "shingles", "jaccard", "MinHasher", "optimal_bands",
           "NearDedup", "RepeatedSentenceRemover", "ngrams", "Decontaminator"]
