"""Quality filtering: language, statistics (Gopher/C4), keywords, perplexity.

Every cleaning step -- here, in ``dedup.py`` and in ``pii.py`` -- is a :class:`Stage`:
``stage.process(text)`` returns a :class:`Result` whose ``text`` is None when the
document is dropped (with a ``reason``) or the possibly edited text (with ``edits``
counted by kind). ``cleaning_job.py`` chains stages over a corpus and reports what each
one removed; :func:`seqio_preprocessor` runs a stateless stage inside a SeqIO task.

Filters and their defaults:

* :class:`LanguageFilter` -- :func:`detect_language`: ``'code'`` when >= 40% of the
  lines look like source code, ``'unknown'`` for text under 30% letters, else
  :class:`LanguageIdentifier` (langdetect, 55 languages, seeded; its profiles ship in
  the package) with probability >= 0.5. ``benchmarks/README.md`` compares it with lingua.
* :class:`GopherQualityFilter` -- Rae et al. 2021 (Gopher, App. A): 50..100k words, mean
  word length 3..10, symbol ('#', '...') to word ratio <= 0.1, <= 90% of lines bullets,
  <= 30% of lines ending in an ellipsis, >= 80% of words with a letter, >= 2 of the
  stop words {the, be, to, of, and, that, have, with}; and (C4/FineWeb) >= 12% of lines
  ending in terminal punctuation.
* :class:`RepetitionFilter` -- Gopher's repetition limits: duplicate lines/paragraphs
  (by count and characters), top 2-4-gram character shares, duplicate 5-10-gram shares.
* :class:`KeywordFilter` -- HTML markup, boilerplate (C4's "lorem ipsum", cookie and
  JavaScript notices, ...), and a configurable block list of words/phrases.
* :class:`PerplexityFilter` -- perplexity per character under a scorer, any
  ``callable(text) -> total natural-log probability``. The default scorer is
  :class:`CharNgramLM`, an order-5 character n-gram model with Witten-Bell smoothing
  trained on 1M characters of the embedded prose corpus: a small, honest stand-in for
  the KenLM models of CCNet. Held-out embedded prose scores about 2-15 per character,
  German ~280, French ~100, keyboard mash ~2000; the default ceiling is 30. A jaxlm
  model's scorer can be plugged in the same way.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
import re
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import gin


@dataclasses.dataclass
class Result:
  """What a stage did to one document: ``text`` None = dropped, for ``reason``."""
  text: Optional[str]
  reason: str = ""
  edits: Mapping[str, int] = dataclasses.field(default_factory=dict)


class Stage:
  """A cleaning step. ``stateful`` stages (deduplication) depend on earlier documents."""
  name = "stage"
  stateful = False

  def process(self, text: str) -> Result:
    raise NotImplementedError


class Filter(Stage):
  """A stage that keeps or drops documents unchanged: implement :meth:`check`."""

  def check(self, text: str) -> Optional[str]:
    """The reason to drop ``text``, or None to keep it."""
    raise NotImplementedError

  def process(self, text: str) -> Result:
    reason = self.check(text)
    return Result(None, reason) if reason else Result(text)


def words(text: str) -> list:
  """Whitespace-separated words (the unit of Gopher's statistics)."""
  return text.split()


# ----------------------------------------------------------------- language
_CODE_LINE_RE = re.compile(r"^(?:def|class|import|from|return|if|elif|else|for|while|try|except|with|"
                           r"#include|public|private|function|var|let|const)\b|[;{}]$|:$|=|^#|^//")
# langdetect's profile names that are not ISO 639-1 codes.
_LANGDETECT_LABELS = {"zh-cn": "zh", "zh-tw": "zh"}


def code_line_fraction(text: str) -> float:
  """Share of non-empty lines that look like source code (keywords, '=', ':', braces)."""
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  return sum(bool(_CODE_LINE_RE.search(l)) for l in lines) / max(1, len(lines))


def letter_fraction(text: str) -> float:
  """Share of the non-space characters that are letters (0 for numbers, tables, mash)."""
  chars = [c for c in text if not c.isspace()]
  return sum(c.isalpha() for c in chars) / max(1, len(chars))


@functools.lru_cache(maxsize=8)
def _langdetect_factory(candidates: Optional[Tuple[str, ...]], seed: int):
  """A private, seeded ``langdetect.DetectorFactory`` with the candidates' profiles
  (all 55 when ``candidates`` is None); langdetect's own global factory is left alone."""
  import langdetect.detector_factory as ld  # pylint: disable=import-outside-toplevel

  profiles = sorted(os.listdir(ld.PROFILES_DIRECTORY))
  if candidates is not None:
    known = {_LANGDETECT_LABELS.get(p, p) for p in profiles}
    unknown = sorted(set(candidates) - known)
    if unknown:
      raise ValueError(f"LanguageIdentifier.candidates: no langdetect profile for {unknown}; "
                       f"known: {', '.join(sorted(known))}")
    profiles = [p for p in profiles if _LANGDETECT_LABELS.get(p, p) in candidates]
    if len(profiles) < 2:
      raise ValueError(f"LanguageIdentifier.candidates={list(candidates)}: give at least two languages "
                       "to choose between (the languages to keep are LanguageFilter.languages)")
  json_profiles = []
  for name in profiles:
    with open(os.path.join(ld.PROFILES_DIRECTORY, name), encoding="utf-8") as handle:
      json_profiles.append(handle.read())
  factory = ld.DetectorFactory()
  factory.load_json_profile(json_profiles)
  factory.set_seed(seed)
  return factory


@gin.configurable
class LanguageIdentifier:
  """langdetect (Shuyo 2010: naive Bayes over character 1-3-grams of Wikipedia, 55
  languages; the profiles ship inside the package, nothing downloads), seeded so the same
  text always gets the same label.

  ``identifier(text)`` is ``(ISO 639-1 code, probability)`` of the most probable
  language, ``('unknown', 0.0)`` for text without letters. ``candidates`` restricts the
  languages considered (None: all); ``max_chars`` caps the characters read per document.
  """

  def __init__(self, candidates: Optional[Sequence[str]] = None, seed: int = 0, max_chars: int = 10_000):
    self.candidates = tuple(sorted(candidates)) if candidates is not None else None
    self.seed, self.max_chars = seed, max_chars

  def __call__(self, text: str) -> Tuple[str, float]:
    from langdetect.lang_detect_exception import LangDetectException  # pylint: disable=import-outside-toplevel

    detector = _langdetect_factory(self.candidates, self.seed).create()
    detector.set_max_text_length(self.max_chars)
    detector.append(text)
    try:
      ranked = detector.get_probabilities()
    except LangDetectException:  # no letters: nothing to score
      return "unknown", 0.0
    probs = collections.Counter()
    for guess in ranked:  # zh-cn and zh-tw add up to zh
      probs[_LANGDETECT_LABELS.get(guess.lang, guess.lang)] += guess.prob
    if not probs:
      return "unknown", 0.0
    lang, prob = probs.most_common(1)[0]
    return lang, float(prob)


def detect_language(text: str, min_probability: float = 0.5, max_code_lines: float = 0.4,
                    min_letters: float = 0.3, identifier: Optional[Callable[[str], Tuple[str, float]]] = None
                    ) -> Tuple[str, float]:
  """``(label, probability)``: ``'code'`` when at least ``max_code_lines`` of the lines
  look like code, ``'unknown'`` when under ``min_letters`` of the characters are letters
  or the identifier's best language has probability under ``min_probability``, else the
  ISO 639-1 code (``en``, ``ru``, ``zh``, ``ja``, ``ar``, ``hi``, ...) and its probability.
  ``identifier`` defaults to :class:`LanguageIdentifier` as gin binds it."""
  if code_line_fraction(text) >= max_code_lines:
    return "code", 0.0
  if letter_fraction(text) < min_letters:
    return "unknown", 0.0
  lang, prob = (identifier or LanguageIdentifier())(text)
  return (lang, prob) if prob >= min_probability else ("unknown", prob)


@gin.configurable
class LanguageFilter(Filter):
  """Keep documents detected as one of ``languages`` (ISO 639-1 codes, or 'code'/'unknown')."""
  name = "language"

  def __init__(self, languages: Sequence[str] = ("en",), min_probability: float = 0.5,
               identifier: Optional[Callable[[str], Tuple[str, float]]] = None):
    self.languages, self.min_probability = tuple(languages), min_probability
    self.identifier = identifier or LanguageIdentifier()

  def check(self, text):
    lang, _ = detect_language(text, self.min_probability, identifier=self.identifier)
    return None if lang in self.languages else f"language={lang}"


# ----------------------------------------------------------- Gopher quality
GOPHER_STOPWORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])
BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "–", "-", "*", "·", "‣", "⁃")
TERMINAL_PUNCTUATION = (".", "!", "?", '"', "'", "”", "’", ":", ";", ")")


@gin.configurable
class GopherQualityFilter(Filter):
  """Gopher's document statistics plus the share of lines ending in punctuation."""
  name = "quality"

  def __init__(self, min_words: int = 50, max_words: int = 100_000, min_mean_word_length: float = 3.0,
               max_mean_word_length: float = 10.0, max_symbol_word_ratio: float = 0.1,
               max_bullet_line_fraction: float = 0.9, max_ellipsis_line_fraction: float = 0.3,
               min_alpha_word_fraction: float = 0.8, min_stopwords: int = 2,
               min_punctuated_line_fraction: float = 0.12):
    self.__dict__.update({k: v for k, v in locals().items() if k != "self"})

  def check(self, text):
    ws = words(text)
    n = len(ws)
    if n < self.min_words:
      return f"word_count<{self.min_words}"
    if n > self.max_words:
      return f"word_count>{self.max_words}"
    mean_len = sum(len(w) for w in ws) / n
    if not self.min_mean_word_length <= mean_len <= self.max_mean_word_length:
      return "mean_word_length"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / n > self.max_symbol_word_ratio:
      return "symbol_word_ratio"
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    if lines:
      if sum(l.startswith(BULLETS) for l in lines) / len(lines) > self.max_bullet_line_fraction:
        return "bullet_lines"
      if sum(l.endswith(("...", "…")) for l in lines) / len(lines) > self.max_ellipsis_line_fraction:
        return "ellipsis_lines"
      if sum(l.endswith(TERMINAL_PUNCTUATION) for l in lines) / len(lines) < self.min_punctuated_line_fraction:
        return "unpunctuated_lines"
    if sum(any(c.isalpha() for c in w) for w in ws) / n < self.min_alpha_word_fraction:
      return "alpha_words"
    if len(GOPHER_STOPWORDS.intersection(w.lower() for w in ws)) < self.min_stopwords:
      return "stopwords"
    return None


# ------------------------------------------------------- Gopher repetition
def _duplicate_fractions(parts: Sequence[str]) -> Tuple[float, float]:
  """(share of parts that repeat an earlier one, share of characters in them)."""
  if not parts:
    return 0.0, 0.0
  seen, dup_count, dup_chars = set(), 0, 0
  for part in parts:
    if part in seen:
      dup_count += 1
      dup_chars += len(part)
    seen.add(part)
  return dup_count / len(parts), dup_chars / max(1, sum(len(p) for p in parts))


def top_ngram_char_fraction(ws: Sequence[str], n: int) -> float:
  """Share of word characters inside the most frequent n-gram (if it repeats)."""
  grams = collections.Counter(tuple(ws[i:i + n]) for i in range(len(ws) - n + 1))
  if not grams:
    return 0.0
  gram, count = grams.most_common(1)[0]
  if count < 2:
    return 0.0
  return count * sum(len(w) for w in gram) / max(1, sum(len(w) for w in ws))


def duplicate_ngram_char_fraction(ws: Sequence[str], n: int) -> float:
  """Share of word characters covered by repeated occurrences of n-grams."""
  seen, covered = set(), [False] * len(ws)
  for i in range(len(ws) - n + 1):
    gram = tuple(ws[i:i + n])
    if gram in seen:
      for j in range(i, i + n):
        covered[j] = True
    seen.add(gram)
  total = sum(len(w) for w in ws)
  return sum(len(w) for w, c in zip(ws, covered) if c) / max(1, total)


@gin.configurable
class RepetitionFilter(Filter):
  """Gopher's repetition removal (Rae et al. 2021, Table A1)."""
  name = "repetition"

  def __init__(self, max_duplicate_line_fraction: float = 0.30, max_duplicate_paragraph_fraction: float = 0.30,
               max_duplicate_line_char_fraction: float = 0.20, max_duplicate_paragraph_char_fraction: float = 0.20,
               top_ngram_limits: Mapping[int, float] = None, duplicate_ngram_limits: Mapping[int, float] = None):
    self.line_limits = (max_duplicate_line_fraction, max_duplicate_line_char_fraction)
    self.paragraph_limits = (max_duplicate_paragraph_fraction, max_duplicate_paragraph_char_fraction)
    self.top_ngram_limits = dict(top_ngram_limits or {2: 0.20, 3: 0.18, 4: 0.16})
    self.duplicate_ngram_limits = dict(duplicate_ngram_limits or {
        5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})

  def check(self, text):
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    frac, chars = _duplicate_fractions(paragraphs)
    if frac > self.paragraph_limits[0] or chars > self.paragraph_limits[1]:
      return "duplicate_paragraphs"
    frac, chars = _duplicate_fractions([l.strip() for l in text.splitlines() if l.strip()])
    if frac > self.line_limits[0] or chars > self.line_limits[1]:
      return "duplicate_lines"
    ws = [w.lower() for w in words(text)]
    for n, limit in sorted(self.top_ngram_limits.items()):
      if top_ngram_char_fraction(ws, n) > limit:
        return f"top_{n}gram"
    for n, limit in sorted(self.duplicate_ngram_limits.items()):
      if duplicate_ngram_char_fraction(ws, n) > limit:
        return f"duplicate_{n}grams"
    return None


# ------------------------------------------------------------------ keywords
HTML_TAG_RE = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>")
HTML_MARKERS_RE = re.compile(r"<!doctype|<html|<body|<script|<style|<iframe|&nbsp;", re.IGNORECASE)
BOILERPLATE = ("lorem ipsum", "javascript is disabled", "enable javascript", "use of cookies", "we use cookies",
               "cookie policy", "accept cookies", "all rights reserved", "terms of use", "terms of service",
               "privacy policy", "click here", "sign up for our newsletter", "subscribe to our newsletter",
               "log in to reply", "powered by wordpress")


@gin.configurable
class KeywordFilter(Filter):
  """Drop HTML, boilerplate-heavy pages and documents that hit the block list."""
  name = "keywords"

  def __init__(self, blocklist: Sequence[str] = (), blocklist_file: Optional[str] = None,
               max_html_tag_ratio: float = 0.02, max_boilerplate_line_fraction: float = 0.2,
               max_blocklist_hits: int = 0):
    terms = [t.strip().lower() for t in blocklist if t.strip()]
    if blocklist_file:
      with open(blocklist_file, encoding="utf-8") as handle:
        terms += [l.strip().lower() for l in handle if l.strip() and not l.startswith("#")]
    self.blocklist_re = (re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, sorted(set(terms)))) + r")(?!\w)",
                                    re.IGNORECASE) if terms else None)
    self.max_html_tag_ratio = max_html_tag_ratio
    self.max_boilerplate_line_fraction = max_boilerplate_line_fraction
    self.max_blocklist_hits = max_blocklist_hits

  def check(self, text):
    lower = text.lower()
    n_words = max(1, len(words(text)))
    if HTML_MARKERS_RE.search(text) or len(HTML_TAG_RE.findall(text)) / n_words > self.max_html_tag_ratio:
      return "html"
    if "lorem ipsum" in lower:
      return "lorem_ipsum"
    lines = [l for l in lower.splitlines() if l.strip()]
    if lines and sum(any(b in l for b in BOILERPLATE) for l in lines) / len(lines) > self.max_boilerplate_line_fraction:
      return "boilerplate"
    if self.blocklist_re is not None and len(self.blocklist_re.findall(text)) > self.max_blocklist_hits:
      return "blocklist"
    return None


# ---------------------------------------------------------------- perplexity
class CharNgramLM:
  """Character n-gram language model with interpolated Witten-Bell smoothing.

  ``CharNgramLM(order).fit(texts)``; ``lm(text)`` is the total natural-log probability
  of ``text`` (each character given up to ``order - 1`` previous ones), the interface
  :class:`PerplexityFilter` expects.
  """

  def __init__(self, order: int = 5):
    self.order = order
    self.counts: Dict[str, int] = collections.Counter()     # context + char
    self.totals: Dict[str, int] = collections.Counter()     # context
    self.types: Dict[str, int] = collections.Counter()      # distinct chars after context
    self.alphabet = 1

  def fit(self, texts: Iterable[str], max_chars: int = 1_000_000) -> "CharNgramLM":
    """Count n-grams of up to ``max_chars`` characters of ``texts``."""
    seen = 0
    for text in texts:
      text = text[: max_chars - seen]
      padded = "\x02" * (self.order - 1) + text
      start = self.order - 1
      for k in range(self.order):
        self.counts.update(padded[i - k: i + 1] for i in range(start, len(padded)))
      seen += len(text)
      if seen >= max_chars:
        break
    self.totals, self.types = collections.Counter(), collections.Counter()
    for gram, count in self.counts.items():
      self.totals[gram[:-1]] += count
      self.types[gram[:-1]] += 1
    self.alphabet = self.types[""] + 1  # +1: unseen characters
    return self

  def char_logprob(self, context: str, char: str) -> float:
    prob = 1.0 / self.alphabet
    for k in range(0, self.order):
      ctx = context[len(context) - k:] if k else ""
      total = self.totals.get(ctx, 0)
      if total == 0:
        break
      types = self.types[ctx]
      prob = (self.counts.get(ctx + char, 0) + types * prob) / (total + types)
    return math.log(prob)

  def __call__(self, text: str) -> float:
    padded = "\x02" * (self.order - 1) + text
    return sum(self.char_logprob(padded[i - self.order + 1: i], padded[i])
               for i in range(self.order - 1, len(padded)))


_REFERENCE_LM: Dict[Tuple[str, int], CharNgramLM] = {}


def reference_lm(source: str = "embedded_prose", order: int = 5) -> CharNgramLM:
  """A :class:`CharNgramLM` trained on a source's 'train' split (memoized)."""
  if (source, order) not in _REFERENCE_LM:
    from jaxlm.data import sources  # pylint: disable=import-outside-toplevel

    texts = (d["text"] for d in sources.iter_documents(source, split="train"))
    _REFERENCE_LM[(source, order)] = CharNgramLM(order).fit(texts)
  return _REFERENCE_LM[(source, order)]


def perplexity(text: str, scorer: Callable[[str], float], units: Callable[[str], int] = len) -> float:
  """exp(-log p(text) / units(text)): per character by default."""
  return math.exp(-scorer(text) / max(1, units(text)))


@gin.configurable
class PerplexityFilter(Filter):
  """Keep documents whose perplexity under ``scorer`` lies in [min, max].

  ``scorer(text)`` returns the total natural-log probability; ``units(text)`` counts
  what the perplexity is per (characters by default; tokens for a subword model).
  """
  name = "perplexity"

  def __init__(self, scorer: Optional[Callable[[str], float]] = None, max_perplexity: float = 30.0,
               min_perplexity: Optional[float] = None, units: Callable[[str], int] = len,
               max_scored_chars: int = 20_000):
    self._scorer = scorer
    self.max_perplexity, self.min_perplexity = max_perplexity, min_perplexity
    self.units, self.max_scored_chars = units, max_scored_chars

  @property
  def scorer(self) -> Callable[[str], float]:
    if self._scorer is None:
      self._scorer = reference_lm()
    return self._scorer

  def check(self, text):
    if not text.strip():
      return "empty"
    ppl = perplexity(text[: self.max_scored_chars], self.scorer, self.units)
    if ppl > self.max_perplexity:
      return "perplexity_high"
    if self.min_perplexity is not None and ppl < self.min_perplexity:
      return "perplexity_low"
    return None


# ---------------------------------------------------------------- SeqIO glue
def seqio_preprocessor(stage: Stage, text_key: str = "text"):
  """A SeqIO preprocessor that runs a stateless ``stage`` on ``example[text_key]``.

  Dropped documents are filtered out; edited text replaces the original. Stateful
  stages (deduplication) are refused: a SeqIO task repeats its data every epoch, so
  they belong to the offline ``python -m jaxlm.data.cleaning_job`` run.
  """
  if stage.stateful:
    raise ValueError(f"stage {stage.name!r} is stateful; run it offline with python -m jaxlm.data.cleaning_job")

  def preprocess(dataset):
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    def run(raw):
      result = stage.process(raw.decode("utf-8", errors="replace"))
      return np.array((result.text or "").encode("utf-8"), dtype=object), np.bool_(result.text is not None)

    def apply(ex):
      text, keep = tf.numpy_function(run, [ex[text_key]], (tf.string, tf.bool), stateful=False)
      text.set_shape([])
      keep.set_shape([])
      return {**ex, text_key: text, "_keep": keep}

    ds = dataset.map(apply, num_parallel_calls=tf.data.AUTOTUNE).filter(lambda ex: ex["_keep"])
    return ds.map(lambda ex: {k: v for k, v in ex.items() if k != "_keep"})

  preprocess.__name__ = f"clean_{stage.name}"
  return preprocess
