"""Similarity and retrieval: BM25 and TF-IDF over words, the model's own embeddings, and
retrieval augmentation (top-k passages of a local corpus prepended to the prompt).

    index = BM25Index(passages)                 # rank-bm25's Okapi BM25 (k1, b)
    index.search("which room is the owl in", k=2)   # passage indices, best first
    similarities("tfidf", queries, documents)   # [q, d] cosine of TF-IDF vectors
    similarities("embedding", queries, documents, lm)   # cosine of mean-pooled hidden states

:class:`RetrievalAugmentation` (gin) reads a corpus (a JSONL path or glob, ``embedded_prose``,
any ``jaxlm.data.sources.iter_documents`` spec), cuts it into passages of at most
``passage_words`` words, indexes them with BM25 and prepends the top ``k`` to a prompt:
open-book. The same prompt without it is closed-book. Words are lower-cased ``\\w+`` runs.
"""
from __future__ import annotations

import dataclasses
import re
from typing import List, Optional, Sequence

import gin
import numpy as np

from jaxlm.data import sources

SIMILARITIES = ("tfidf", "bm25", "embedding")
_WORD = re.compile(r"\w+")


def words(text: str) -> List[str]:
  """The lower-cased word tokens BM25 and TF-IDF count."""
  return _WORD.findall(text.lower())


class BM25Index:
  """Okapi BM25 (rank-bm25's BM25Okapi) over passages' words."""

  def __init__(self, passages: Sequence[str], k1: float = 1.5, b: float = 0.75):
    try:
      from rank_bm25 import BM25Okapi  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError("BM25 needs rank-bm25: pip install -e '.[eval]'") from e
    if not passages:
      raise ValueError("BM25Index needs at least one passage")
    self.passages = list(passages)
    self._bm25 = BM25Okapi([words(p) or [""] for p in self.passages], k1=k1, b=b)

  def scores(self, query: str) -> np.ndarray:
    """BM25 score of every passage for the query [n]."""
    return np.asarray(self._bm25.get_scores(words(query)), np.float64)

  def search(self, query: str, k: int) -> List[int]:
    """The k best passages' indices, best first (ties: the earlier passage)."""
    return top_k(self.scores(query), k)


def top_k(scores: np.ndarray, k: int) -> List[int]:
  """Indices of the k highest scores, best first; ties go to the lower index."""
  return [int(i) for i in np.argsort(-np.asarray(scores), kind="stable")[:k]]


class TfidfIndex:
  """TF-IDF vectors (raw counts times smoothed idf log((1 + n) / (1 + df)) + 1, L2-normed,
  scikit-learn's defaults) of a document collection's words."""

  def __init__(self, documents: Sequence[str]):
    docs = [words(d) for d in documents]
    self.terms = {t: i for i, t in enumerate(sorted({w for d in docs for w in d}))}
    df = np.zeros(len(self.terms))
    for d in docs:
      for t in set(d):
        df[self.terms[t]] += 1
    self.idf = np.log((1 + len(docs)) / (1 + df)) + 1.0

  def vectors(self, texts: Sequence[str]) -> np.ndarray:
    """[n, terms] unit vectors (zero for a text with no known word)."""
    out = np.zeros((len(texts), len(self.terms)))
    for i, text in enumerate(texts):
      for w in words(text):
        if w in self.terms:
          out[i, self.terms[w]] += 1.0
    return normalize_rows(out * self.idf)


def normalize_rows(x: np.ndarray) -> np.ndarray:
  """Rows scaled to unit L2 norm (zero rows stay zero)."""
  norms = np.linalg.norm(x, axis=-1, keepdims=True)
  return np.asarray(x, np.float64) / np.where(norms > 0, norms, 1.0)


def similarities(kind: str, queries: Sequence[str], documents: Sequence[str], lm=None) -> np.ndarray:
  """[q, d] similarity of each query to each document: 'tfidf' (cosine, idf fitted on the
  documents), 'bm25' (BM25 scores) or 'embedding' (cosine of ``lm.embed``: a PromptLM)."""
  if kind == "tfidf":
    index = TfidfIndex(documents)
    return index.vectors(queries) @ index.vectors(documents).T
  if kind == "bm25":
    index = BM25Index(documents)
    return np.stack([index.scores(q) for q in queries]) if queries else np.zeros((0, len(documents)))
  if kind == "embedding":
    if lm is None:
      raise ValueError("similarity 'embedding' needs the model (a jaxlm.prompting.PromptLM)")
    return normalize_rows(lm.embed(list(queries))) @ normalize_rows(lm.embed(list(documents))).T
  raise ValueError(f"similarity {kind!r}: expected one of {SIMILARITIES}")


def passages_of(texts: Sequence[str], passage_words: int) -> List[str]:
  """Texts cut into passages of at most passage_words words (whitespace-split)."""
  out = []
  for text in texts:
    tokens = text.split()
    for start in range(0, len(tokens), passage_words):
      out.append(" ".join(tokens[start:start + passage_words]))
  return out


def read_corpus(spec: str, split: Optional[str] = "train", text_key: str = "text") -> List[str]:
  """The texts of a corpus spec (``jaxlm.data.sources.iter_documents``: a JSONL path or
  glob, 'embedded_prose', ...); an empty corpus is an error naming the spec."""
  texts = [d[text_key] for d in sources.iter_documents(spec, split, text_key)]
  if not texts:
    raise ValueError(f"RetrievalAugmentation.corpus={spec!r} has no documents")
  return texts


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RetrievalAugmentation:
  """Open-book prompting: the top ``k`` BM25 passages of ``corpus`` for the query, each
  worded by ``passage_format``, then a blank line, then the prompt.

  corpus          a JSONL path/glob ('text' per line: ``text_key``) or an iter_documents spec
  k               passages prepended (best last: nearest the question)
  passage_words   passages are corpus texts cut to at most this many words
  passage_format  str.format pattern with {passage}
  k1, b           BM25's term-frequency saturation and length normalisation
  """
  corpus: str = gin.REQUIRED
  k: int = 2
  passage_words: int = 100
  passage_format: str = "Passage: {passage}"
  text_key: str = "text"
  k1: float = 1.5
  b: float = 0.75

  def __post_init__(self):
    for field in ("k", "passage_words"):
      if getattr(self, field) < 1:
        raise ValueError(f"RetrievalAugmentation.{field}={getattr(self, field)} must be >= 1")
    if "{passage}" not in self.passage_format:
      raise ValueError(f"RetrievalAugmentation.passage_format={self.passage_format!r} must contain {{passage}}")

  def index(self) -> BM25Index:
    return _cached_index(self)

  def retrieve(self, query: str) -> List[str]:
    """The top-k passages for the query, best first."""
    index = self.index()
    return [index.passages[i] for i in index.search(query, self.k)]

  def augment(self, query: str, prompt: str) -> str:
    """The prompt with the query's passages in front (the best one last)."""
    shown = [self.passage_format.format(passage=p) for p in reversed(self.retrieve(query))]
    return "\n".join(shown) + "\n\n" + prompt


_INDICES = {}


def _cached_index(config: RetrievalAugmentation) -> BM25Index:
  """One index per (corpus, passage and BM25 settings) in a process."""
  key = (config.corpus, config.passage_words, config.text_key, config.k1, config.b)
  if key not in _INDICES:
    passages = passages_of(read_corpus(config.corpus, text_key=config.text_key), config.passage_words)
    _INDICES[key] = BM25Index(passages, k1=config.k1, b=config.b)
  return _INDICES[key]

