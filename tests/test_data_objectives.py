"""Causal LM, prefix LM, T5 span corruption and UL2 against their published parameters."""
import collections

import numpy as np
import pytest
import seqio
import tensorflow as tf

from jaxlm.data import objectives as obj
from jaxlm.data import vocab
from jaxlm.vocabularies import piece_id

VOCAB_SIZE, SENTINELS = 1024, 128


@pytest.fixture(scope="module")
def features():
  v = vocab.seqio_vocabulary(vocab_size=VOCAB_SIZE, num_sentinels=SENTINELS)
  return {"inputs": seqio.Feature(v), "targets": seqio.Feature(v)}


def _docs(lengths, seed=0):
  """Documents of ordinary token ids (no EOS, no sentinels): 3 .. VOCAB_SIZE - SENTINELS - 1."""
  rng = np.random.RandomState(seed)
  return [rng.randint(10, VOCAB_SIZE - SENTINELS, size=n).astype(np.int32) for n in lengths]


def _run(fn, docs, lengths, features, seed=1, **kwargs):
  ds = tf.data.Dataset.from_tensor_slices({"targets": tf.ragged.constant(docs, dtype=tf.int32)})
  with seqio.utils.map_seed_manager(seed):
    out = fn(ds, sequence_length=lengths, output_features=features, **kwargs)
  return list(out.as_numpy_iterator())


def _is_sentinel(t):
  return t >= VOCAB_SIZE - SENTINELS


def _reconstruct(inputs, targets):
  """Put each sentinel's target span back in place of the sentinel in the inputs."""
  spans, current = {}, None
  for t in targets:
    if _is_sentinel(t):
      current = int(t)
      spans[current] = []
    elif current is not None:
      spans[current].append(int(t))
  out = []
  for t in inputs:
    out.extend(spans[int(t)] if _is_sentinel(t) else [int(t)])
  return out


# ------------------------------------------------------------------ causal LM
def test_causal_lm_cuts_documents_and_ends_with_eos(features):
  docs = _docs([10, 100])
  out = _run(obj.causal_lm, docs, {"targets": 32}, features)
  lengths = [len(e["targets"]) for e in out]
  assert lengths == [11, 32, 32, 32, 5]  # 10+EOS | 100+EOS = 32+32+32+5
  stream = np.concatenate([e["targets"] for e in out])
  assert stream.tolist() == docs[0].tolist() + [1] + docs[1].tolist() + [1]


# ----------------------------------------------------------------- prefix LM
def test_prefix_lm_random_split(features):
  docs = _docs([64] * 400, seed=3)
  out = _run(obj.prefix_lm, docs, {"inputs": 64, "targets": 64}, features)
  assert len(out) == 400
  fractions = []
  for e, d in zip(out, docs):
    assert e["inputs"][-1] == 1 and e["targets"][-1] == 1
    assert e["inputs"][:-1].tolist() + e["targets"][:-1].tolist() == d.tolist()  # nothing lost or added
    assert len(e["inputs"]) >= 2 and len(e["targets"]) >= 2  # prefix and suffix both non-empty
    fractions.append((len(e["targets"]) - 1) / 64)
  assert abs(np.mean(fractions) - 0.5) < 0.05  # split point uniform: half the tokens are targets
  assert np.min(fractions) < 0.1 and np.max(fractions) > 0.9


def test_prefix_lm_budget_fits_both_features():
  for inputs, targets, density in [(512, 512, 0.5), (512, 128, 0.5), (512, 200, 0.25)]:
    piece = obj.prefix_lm_piece_length(inputs, targets, density)
    worst_prefix = piece - 1
    worst_targets = piece - obj._min_prefix(piece, density)
    assert worst_prefix + 1 <= inputs and worst_targets + 1 <= targets


# ------------------------------------------------------------ span corruption
def test_random_spans_helper_matches_t5():
  assert obj.random_spans_helper(512, 0.15, 3.0) == (568, 114)  # Raffel et al. 2020
  assert obj.random_spans_helper(626, 0.15, 3.0)[1] == 140
  for length in (64, 128, 256, 1024):
    tokens, targets = obj.random_spans_helper(length, 0.15, 3.0)
    noise = obj.expected_noise_tokens(tokens, 0.15)
    spans = obj.expected_spans(tokens, 0.15, 3.0)
    assert tokens - noise + spans + 1 == length  # inputs exactly fill the budget
    assert noise + spans + 1 == targets


def test_span_corruption_t5_budgets_and_sentinel_order(features):
  docs = _docs([568 * 3, 568 * 2])  # whole pieces only
  out = _run(obj.span_corruption, docs, {"inputs": 512, "targets": 114}, features)
  assert len(out) == 5
  pieces = [d[i:i + 568].tolist() for d in docs for i in range(0, len(d), 568)]
  for e, piece in zip(out, pieces):
    inputs, targets = e["inputs"], e["targets"]
    assert len(inputs) == 512 and len(targets) == 114  # the published token budgets
    assert inputs[-1] == 1 and targets[-1] == 1
    in_sentinels = [int(t) for t in inputs if _is_sentinel(t)]
    out_sentinels = [int(t) for t in targets if _is_sentinel(t)]
    assert in_sentinels == out_sentinels == list(range(1023, 1023 - 28, -1))  # extra_id_0, 1, ... 27
    assert targets[0] == 1023  # targets start with the first sentinel
    assert len(targets) - 1 - 28 == 85  # 15% of 568 tokens are noise, in 28 spans (mean 85/28 ~ 3)
    assert _reconstruct(inputs[:-1], targets[:-1]) == piece
    assert not any(_is_sentinel(inputs[i]) and _is_sentinel(inputs[i + 1]) for i in range(len(inputs) - 2))


def test_span_corruption_is_seeded(features):
  docs = _docs([568])
  a = _run(obj.span_corruption, docs, {"inputs": 512, "targets": 114}, features, seed=5)
  b = _run(obj.span_corruption, docs, {"inputs": 512, "targets": 114}, features, seed=5)
  c = _run(obj.span_corruption, docs, {"inputs": 512, "targets": 114}, features, seed=6)
  assert a[0]["inputs"].tolist() == b[0]["inputs"].tolist() != c[0]["inputs"].tolist()


def test_span_corruption_checks_lengths(features):
  with pytest.raises(ValueError, match="targets of 114 tokens"):
    _run(obj.span_corruption, _docs([600]), {"inputs": 512, "targets": 100}, features)
  with pytest.raises(ValueError, match="sentinels"):
    _run(obj.span_corruption, _docs([600]), {"inputs": 4096, "targets": 4096}, features, noise_density=0.5)


# ----------------------------------------------------------------------- UL2
def test_ul2_denoisers_are_the_published_ones():
  table = [(d.name, d.mean_noise_span_length, d.noise_density, d.mode_token) for d in obj.UL2_DENOISERS]
  assert table == [("R", 3.0, 0.15, "[NLU]"), ("R", 8.0, 0.15, "[NLU]"),
                   ("X", 3.0, 0.5, "[NLG]"), ("X", 8.0, 0.5, "[NLG]"), ("X", 64.0, 0.15, "[NLG]"),
                   ("X", 64.0, 0.5, "[NLG]"), ("S", None, 0.25, "[S2S]")]
  assert abs(sum(d.rate for d in obj.UL2_DENOISERS) - 1.0) < 1e-9


def test_ul2_examples_follow_their_denoiser(features):
  lengths = {"inputs": 512, "targets": 512}
  v = features["inputs"].vocabulary
  modes = {t: piece_id(v, t) for t in vocab.UL2_MODE_TOKENS}
  budgets = obj.ul2_budgets(512, 512, obj.UL2_DENOISERS, [1] * 7)
  docs = _docs([max(b[0] for b in budgets)] * 300, seed=11)
  out = _run(obj.ul2_objective, docs, lengths, features)
  seen = collections.Counter()
  for e in out:
    inputs, targets = e["inputs"], e["targets"]
    assert inputs[-1] == 1 and targets[-1] == 1 and len(inputs) <= 512 and len(targets) <= 512
    mode = int(inputs[0])
    spans = sum(_is_sentinel(t) for t in inputs)
    noise = len(targets) - 1 - spans
    piece = len(inputs) - 2 - spans + noise
    if mode == modes["[S2S]"]:
      assert spans == 0 and not any(_is_sentinel(t) for t in targets)
      seen["S"] += 1
      continue
    matches = [d for d, b in zip(obj.UL2_DENOISERS, budgets) if d.mean_noise_span_length
               and piece == b[0] and noise == obj.expected_noise_tokens(b[0], d.noise_density)
               and spans == obj.expected_spans(b[0], d.noise_density, d.mean_noise_span_length)]
    if piece != max(b[0] for b in budgets) and not matches:
      continue  # the tail of a document: shorter than a full piece
    assert len(matches) == 1, (piece, noise, spans)
    d = matches[0]
    assert mode == modes[d.mode_token]
    assert len(inputs) == 512  # a full piece fills the inputs budget exactly (mode token included)
    sentinels = [int(t) for t in targets if _is_sentinel(t)]
    assert sentinels == list(range(VOCAB_SIZE - 1, VOCAB_SIZE - 1 - spans, -1))
    assert len(_reconstruct(inputs[1:-1], targets[:-1])) == piece
    seen[(d.mean_noise_span_length, d.noise_density)] += 1
  assert set(seen) == {"S", (3.0, 0.15), (8.0, 0.15), (3.0, 0.5), (8.0, 0.5), (64.0, 0.15), (64.0, 0.5)}


def test_ul2_rates_choose_denoisers_per_document(features):
  docs = _docs([100] * 1000, seed=2)  # one piece per document
  v = features["inputs"].vocabulary
  s2s = piece_id(v, "[S2S]")
  out = _run(obj.ul2_objective, docs, {"inputs": 128, "targets": 128}, features)
  assert len(out) == 1000
  s_share = np.mean([e["inputs"][0] == s2s for e in out])
  assert abs(s_share - 0.2) < 0.04  # S-denoiser rate 0.2, 3 sigma ~ 0.04
  only_r = [obj.Denoiser("R", 0.15, 3.0, "[NLU]", 1.0)]
  out = _run(obj.ul2_objective, docs[:20], {"inputs": 128, "targets": 128}, features, denoisers=only_r)
  assert all(e["inputs"][0] == piece_id(v, "[NLU]") for e in out)


def test_ul2_checks_targets_length(features):
  with pytest.raises(ValueError, match="UL2 denoiser"):
    _run(obj.ul2_objective, _docs([600]), {"inputs": 512, "targets": 114}, features)
