"""Evaluation metrics, as the literature defines them.

Functions named like seqio metric fns take ``(targets, predictions)`` or
``(targets, scores)`` and return a dict of floats, so they can be passed as
``metric_fns`` of a seqio Task. The rest are plain building blocks.

- Language modelling: rolling windows over long documents (as lm-evaluation-harness's
  ``loglikelihood_rolling``), perplexity, bits-per-byte.
- Generation: BLEU (sacrebleu), ROUGE (rouge-score), SQuAD exact match / token F1.
- Classification: multiple-choice log-likelihood ``acc`` / ``acc_norm``, calibration (ECE).
- Reasoning: final-answer extraction ("The answer is ...", "#### ...", last number).
- Code: the unbiased pass@k estimator of Chen et al. (2021).
"""
from __future__ import annotations

import collections
import dataclasses
import math
import re
import string
from typing import Callable, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

# ----------------------------------------------------------------------------------------
# Language modelling: rolling windows, perplexity, bits per byte.


@dataclasses.dataclass(frozen=True)
class Window:
  """One model call: predict ``targets[i]`` from ``inputs[:i + 1]``; score where mask."""

  inputs: list
  targets: list
  mask: list  # 1 where targets[i] is scored (each document position exactly once)

  @property
  def num_scored(self) -> int:
    return int(sum(self.mask))


def rolling_windows(tokens: Sequence[int], max_length: int, stride: Optional[int] = None,
                    prefix_token: Optional[int] = None) -> list[Window]:
  """Splits a long token sequence into model windows of at most ``max_length``.

  Every token is scored exactly once, each from as much preceding context as the
  window allows. The first window scores up to ``max_length`` tokens; each later one
  scores the next ``stride`` tokens with ``max_length - stride`` tokens of context
  (``stride = max_length``, the default, gives disjoint windows). With
  ``prefix_token`` (e.g. BOS/EOS) the first document token is scored too, predicted
  from the prefix; without it the first token is context only. Matches
  lm-evaluation-harness ``get_rolling_token_windows(tokens, prefix_token, max_length,
  context_len=max_length - stride + 1)``.
  """
  stride = max_length if stride is None else stride
  if not 1 <= stride <= max_length:
    raise ValueError(f"need 1 <= stride <= max_length, got {stride}, {max_length}")
  seq = list(tokens) if prefix_token is None else [prefix_token] + list(tokens)
  last = len(seq) - 1  # index in `seq` of the last target
  windows, scored = [], 0  # targets seq[1..scored] are scored
  while scored < last:
    end = min(last, max_length if scored == 0 else scored + stride)
    start = max(0, end - max_length)
    n_new = end - scored
    inputs, targets = seq[start:end], seq[start + 1:end + 1]
    mask = [0] * (len(targets) - n_new) + [1] * n_new
    windows.append(Window(inputs, targets, mask))
    scored = end
  return windows


def windows_to_arrays(windows: Sequence[Window], max_length: int, pad_id: int = 0):
  """Pads windows into (inputs, targets, weights) int/float arrays of [n, max_length]."""
  n = len(windows)
  inputs = np.full((n, max_length), pad_id, np.int32)
  targets = np.full((n, max_length), pad_id, np.int32)
  weights = np.zeros((n, max_length), np.float32)
  for i, w in enumerate(windows):
    inputs[i, :len(w.inputs)] = w.inputs
    targets[i, :len(w.targets)] = w.targets
    weights[i, :len(w.mask)] = w.mask
  return inputs, targets, weights


def rolling_loglikelihood(tokens: Sequence[int], logprob_fn: Callable, max_length: int,
                          stride: Optional[int] = None, prefix_token: Optional[int] = None,
                          batch_size: int = 8, pad_id: int = 0) -> tuple[float, int]:
  """Sum of log p(token | context) over a document, and the number of tokens scored.

  ``logprob_fn(inputs, targets) -> [batch, length]`` per-token log-probabilities of
  ``targets`` given ``inputs`` (int arrays ``[batch, max_length]``, padded with pad_id).
  """
  windows = rolling_windows(tokens, max_length, stride, prefix_token)
  total, count = 0.0, 0
  for i in range(0, len(windows), batch_size):
    inputs, targets, weights = windows_to_arrays(windows[i:i + batch_size], max_length,
                                                 pad_id)
    logp = np.asarray(logprob_fn(inputs, targets), np.float64)
    total += float((logp * weights).sum())
    count += int(weights.sum())
  return total, count


def perplexity(total_loglik: float, num_tokens: int) -> float:
  """exp(-(sum of natural-log likelihoods) / number of tokens)."""
  return math.exp(-total_loglik / num_tokens)


def bits_per_byte(total_loglik: float, num_bytes: int) -> float:
  """-(sum of natural-log likelihoods) / (UTF-8 bytes * ln 2): tokenizer-independent."""
  return -total_loglik / (num_bytes * math.log(2))


def loglikelihood_metrics(targets: Sequence, scores: Sequence[float]) -> dict:
  """seqio score metric fn: corpus perplexities from per-document log-likelihoods.

  ``targets`` are the documents' texts, or dicts with ``text`` and optionally
  ``num_tokens`` (then token perplexity is reported too); ``scores`` are the summed
  natural-log likelihoods of each document. Words are whitespace-separated pieces.
  """
  ll = float(np.sum(np.asarray(scores, np.float64)))
  texts = [t["text"] if isinstance(t, Mapping) else t for t in targets]
  n_bytes = sum(len(t.encode("utf-8")) for t in texts)
  n_words = sum(len(t.split()) for t in texts)
  out = {"bits_per_byte": bits_per_byte(ll, n_bytes),
         "byte_perplexity": perplexity(ll, n_bytes),
         "word_perplexity": perplexity(ll, n_words)}
  if targets and all(isinstance(t, Mapping) and "num_tokens" in t for t in targets):
    out["perplexity"] = perplexity(ll, sum(int(t["num_tokens"]) for t in targets))
  return out


def evaluate_perplexity(texts: Sequence[str], encode_fn: Callable[[str], Sequence[int]],
                        logprob_fn: Callable, max_length: int, stride: Optional[int] = None,
                        prefix_token: Optional[int] = None, batch_size: int = 8) -> dict:
  """Corpus perplexity / bits-per-byte of documents of any length (rolling windows).

  ``encode_fn(text) -> token ids``; ``logprob_fn`` as in ``rolling_loglikelihood``.
  Returns ``loglikelihood_metrics`` plus ``num_tokens`` (tokens scored).
  """
  targets, scores = [], []
  for text in texts:
    ll, n = rolling_loglikelihood(encode_fn(text), logprob_fn, max_length, stride,
                                  prefix_token, batch_size)
    targets.append({"text": text, "num_tokens": n})
    scores.append(ll)
  out = loglikelihood_metrics(targets, scores)
  out["num_tokens"] = sum(t["num_tokens"] for t in targets)
  return out


# ----------------------------------------------------------------------------------------
# Generation: BLEU, ROUGE, SQuAD exact match and F1.


def _references(targets: Sequence) -> list[list[str]]:
  return [[t] if isinstance(t, str) else list(t) for t in targets]


def bleu(targets: Sequence, predictions: Sequence[str]) -> dict:
  """Corpus BLEU (sacrebleu defaults: 13a tokenization, exp smoothing), 0-100.

  Each target is a reference string or a list of references (same count for all).
  """
  import sacrebleu

  refs = _references(targets)
  n_refs = {len(r) for r in refs}
  if len(n_refs) != 1:
    raise ValueError("bleu: every example needs the same number of references")
  streams = [[r[i] for r in refs] for i in range(n_refs.pop())]
  return {"bleu": sacrebleu.corpus_bleu(list(predictions), streams).score}


def rouge(targets: Sequence[str], predictions: Sequence[str],
          rouge_types: Sequence[str] = ("rouge1", "rouge2", "rougeLsum")) -> dict:
  """Mean ROUGE F-measure (rouge-score, Porter stemming), 0-100.

  rougeLsum treats newlines as sentence boundaries.
  """
  from rouge_score import rouge_scorer

  scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=True)
  sums = collections.Counter()
  for t, p in zip(targets, predictions, strict=True):
    for k, s in scorer.score(t, p).items():
      sums[k] += s.fmeasure
  n = max(1, len(targets))
  return {k: 100.0 * sums[k] / n for k in rouge_types}


def normalize_answer(s: str) -> str:
  """SQuAD v1.1: lower case, drop punctuation and articles, collapse whitespace."""
  s = s.lower()
  s = "".join(ch for ch in s if ch not in set(string.punctuation))
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
  """SQuAD v1.1 token F1 between normalized bags of words."""
  pred, gold = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
  common = collections.Counter(pred) & collections.Counter(gold)
  num_same = sum(common.values())
  if num_same == 0:
    return 0.0
  precision, recall = num_same / len(pred), num_same / len(gold)
  return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence, predictions: Sequence[str]) -> dict:
  """SQuAD v1.1 ``em`` and ``f1`` (0-100), max over each example's reference answers."""
  refs = _references(targets)
  em = [max(exact_match_score(p, g) for g in r) for p, r in zip(predictions, refs, strict=True)]
  f1 = [max(f1_score(p, g) for g in r) for p, r in zip(predictions, refs, strict=True)]
  return {"em": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f1))}


# ----------------------------------------------------------------------------------------
# Multiple choice and calibration.


def multiple_choice_metrics(loglikelihoods: Sequence[Sequence[float]], golds: Sequence[int],
                            choices: Optional[Sequence[Sequence[str]]] = None,
                            num_bins: int = 10) -> dict:
  """lm-evaluation-harness multiple-choice metrics.

  ``acc``: argmax of the choices' log-likelihoods is the gold index. ``acc_norm``
  (needs ``choices``): argmax of log-likelihood / character length of the choice
  string as scored (including any leading space). ``ece``: calibration of the
  softmax over choices (confidence of the argmax choice). Ties go to the first.
  """
  acc, acc_norm, conf = [], [], []
  for i, (lls, gold) in enumerate(zip(loglikelihoods, golds, strict=True)):
    lls = np.asarray(lls, np.float64)
    pred = int(np.argmax(lls))
    acc.append(pred == gold)
    probs = np.exp(lls - lls.max())
    conf.append(probs[pred] / probs.sum())
    if choices is not None:
      lengths = np.array([max(1, len(c)) for c in choices[i]], np.float64)
      acc_norm.append(int(np.argmax(lls / lengths)) == gold)
  out = {"acc": float(np.mean(acc)),
         "ece": expected_calibration_error(conf, acc, num_bins)}
  if choices is not None:
    out["acc_norm"] = float(np.mean(acc_norm))
  return out


def multiple_choice_score_metric(targets: Sequence, scores: Sequence[float]) -> dict:
  """seqio score metric fn for rank classification (one row per (example, choice)).

  Each target is a mapping or tuple ``(example_index, choice_index, gold_index,
  choice_text)``; ``scores`` are the choices' summed log-likelihoods.
  """
  by_example: dict = collections.defaultdict(dict)
  gold_of, text_of = {}, collections.defaultdict(dict)
  for t, s in zip(targets, scores, strict=True):
    if isinstance(t, Mapping):
      t = (t["example_index"], t["choice_index"], t["gold"], t["choice"])
    ex, ch, gold, text = int(t[0]), int(t[1]), int(t[2]), t[3]
    by_example[ex][ch] = float(s)
    gold_of[ex] = gold
    text_of[ex][ch] = text.decode() if isinstance(text, bytes) else str(text)
  exs = sorted(by_example)
  lls = [[by_example[e][c] for c in sorted(by_example[e])] for e in exs]
  texts = [[text_of[e][c] for c in sorted(text_of[e])] for e in exs]
  return multiple_choice_metrics(lls, [gold_of[e] for e in exs], texts)


def calibration_bins(confidences: Sequence[float], correct: Sequence, num_bins: int = 10) -> List[dict]:
  """The non-empty equal-width confidence bins ((lo, hi]; 0 goes to the first bin) of a
  reliability diagram: {'bin', 'count', 'confidence' (mean), 'accuracy' (mean)} each."""
  conf = np.asarray(confidences, np.float64)
  corr = np.asarray(correct, np.float64)
  bins = np.clip(np.ceil(conf * num_bins).astype(int) - 1, 0, num_bins - 1)
  return [{"bin": b, "count": int((bins == b).sum()), "confidence": float(conf[bins == b].mean()),
           "accuracy": float(corr[bins == b].mean())} for b in range(num_bins) if (bins == b).any()]


def expected_calibration_error(confidences: Sequence[float], correct: Sequence,
                               num_bins: int = 10) -> float:
  """ECE (Guo et al. 2017): sum over equal-width confidence bins (calibration_bins) of
  |bin| / n * |accuracy(bin) - mean confidence(bin)|."""
  n = len(confidences)
  return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"])
                   for b in calibration_bins(confidences, correct, num_bins))) if n else 0.0


# ----------------------------------------------------------------------------------------
# Reasoning: final-answer extraction.

_NUMBER = r"-?[$]?\d[\d,]*(?:\.\d+)?"
_ANSWER_IS = re.compile(r"answer is[:\s]*(?:\$?\\boxed\{)?\s*(" + _NUMBER + r"|[^\s.,;]+)",
                        re.IGNORECASE)


def normalize_number(s: str) -> str:
  """'$1,234.50' -> '1234.5'; '3.0' -> '3'; non-numbers are stripped and lower-cased."""
  s = s.strip().strip("*()[]{}\"'` ").rstrip(".")
  t = s.replace(",", "").replace("$", "")
  try:
    v = float(t)
  except ValueError:
    return s.lower()
  if not math.isfinite(v):
    return s.lower()
  return str(int(v)) if v == int(v) else repr(v)


def extract_answer(text: str) -> str:
  """The final answer of a chain of thought, normalized.

  In order: the last "#### X" (GSM8K references); the last "The answer is X";
  otherwise the last number in the text; otherwise the stripped text.
  """
  if "####" in text:
    return normalize_number(text.rsplit("####", 1)[1].strip().split("\n")[0])
  found = _ANSWER_IS.findall(text)
  if found:
    return normalize_number(found[-1])
  numbers = re.findall(_NUMBER, text)
  if numbers:
    return normalize_number(numbers[-1])
  return normalize_number(text)


def reasoning_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict:
  """Accuracy of extracted final answers (targets may be full GSM8K solutions)."""
  hits = [extract_answer(p) == extract_answer(t) for t, p in zip(targets, predictions,
                                                                   strict=True)]
  return {"accuracy": float(np.mean(hits)) if hits else 0.0}


def last_word_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict:
  """LAMBADA-style: the first word of the continuation equals the target word."""
  def word(s):
    parts = s.strip().split()
    return parts[0].strip(string.punctuation) if parts else ""
  hits = [word(p) == word(t) for t, p in zip(targets, predictions, strict=True)]
  return {"accuracy": float(np.mean(hits)) if hits else 0.0}


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict:
  """Strict string equality after stripping surrounding whitespace."""
  hits = [t.strip() == p.strip() for t, p in zip(targets, predictions, strict=True)]
  return {"exact_match": float(np.mean(hits)) if hits else 0.0}


# ----------------------------------------------------------------------------------------
# Code: pass@k.


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k = 1 - C(n - c, k) / C(n, k) (Chen et al. 2021), stably."""
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_table(results: Union[Mapping[str, Sequence[bool]], Iterable[Sequence[bool]]],
                    ks: Sequence[int] = (1, 10, 100)) -> dict:
  """Mean pass@k over problems for each k that every problem has >= k samples for."""
  per_problem = list(results.values()) if isinstance(results, Mapping) else list(results)
  n = np.array([len(r) for r in per_problem])
  c = np.array([sum(bool(x) for x in r) for r in per_problem])
  return {f"pass@{k}": float(np.mean([pass_at_k(int(a), int(b), k) for a, b in zip(n, c)]))
          for k in ks if len(n) and (n >= k).all()}


def edit_distance(a: Sequence, b: Sequence) -> int:
  """Levenshtein distance (insertions, deletions, substitutions) between two sequences:
  strings by character, lists by item."""
  row = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    prev, row[0] = row[0], i
    for j, y in enumerate(b, 1):
      prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
  return row[-1]
