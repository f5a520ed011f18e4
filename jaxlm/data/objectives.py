"""Pretraining objectives as SeqIO preprocessors.

Every objective takes tokenized documents ``{"targets": int32[n]}`` (see
``tasks.py``), cuts them into pieces that fit the feature lengths, and appends EOS
itself, so the budgets below are exact and testable without a Task:

* :func:`causal_lm` -- ``targets`` = the document + EOS, in pieces of
  ``sequence_length["targets"]`` (GPT-style; the feature converter packs them).
* :func:`lm_as_targets` -- the causal LM pieces as ``targets`` with an empty ``inputs``
  (pretraining data mixed into instruction tuning).
* :func:`prefix_lm` -- a random split point (T5's ``random_prefix_noise_mask``): the
  prefix is ``inputs``, the rest ``targets``. With ``noise_density`` d the split point is
  uniform in ``[max(1, round((1-2d)(n-1))), n-1]``, so on average a fraction d of the
  tokens are targets (d = 0.5: uniform over all splits).
* :func:`span_corruption` -- T5 (Raffel et al. 2020): 15% of the tokens in spans of mean
  length 3; each noise span becomes one sentinel in ``inputs`` (``<extra_id_0>`` =
  ``vocab_size - 1``, then ``vocab_size - 2``, ...), and ``targets`` holds each sentinel
  followed by the tokens it replaced. :func:`random_spans_helper` picks the raw piece
  length so that ``inputs`` is exactly the inputs length: 568 tokens -> 512 inputs and
  114 targets for the published T5 setting.
* :func:`ul2_objective` -- UL2's mixture of denoisers (Tay et al. 2022): R-denoisers
  (mean span 3 and 8, 15% noise), X-denoisers (spans 3/8 with 50% noise, span 64 with
  15% and 50%) and the S-denoiser (prefix LM, 25% targets), each input prefixed by its
  mode token ``[NLU]``, ``[NLG]`` or ``[S2S]`` (counted within the inputs budget).

Randomness comes from SeqIO's per-example seeds (``seqio.map_over_dataset``), so a
Task built with a seed produces the same examples every time.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence, Tuple, Union

import seqio
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


# ------------------------------------------------------------------ helpers
def _vocabulary(output_features, key: str = "targets"):
  return output_features[key].vocabulary


def _with_eos(tokens: tf.Tensor, eos_id: int) -> tf.Tensor:
  return tf.concat([tokens, tf.constant([eos_id], tokens.dtype)], axis=0)


def split_tokens(dataset: tf.data.Dataset, max_tokens: Union[int, str], key: str = "targets",
                 keep: Sequence[str] = (), min_tokens: int = 1) -> tf.data.Dataset:
  """Cut ``example[key]`` into consecutive pieces of at most ``max_tokens`` tokens.

  ``max_tokens`` is an int or the name of an int feature holding a per-example limit.
  Features named in ``keep`` are copied to every piece, all others are dropped; pieces
  shorter than ``min_tokens`` are dropped.
  """
  def _split(ex):
    tokens = ex[key]
    limit = tf.cast(ex[max_tokens] if isinstance(max_tokens, str) else max_tokens, tf.int32)
    n = tf.size(tokens)
    num = tf.maximum(1, (n + limit - 1) // limit)
    pad = num * limit - n
    chunks = tf.reshape(tf.pad(tokens, [[0, pad]]), [num, limit])
    lengths = tf.concat([tf.fill([num - 1], limit), [limit - pad]], axis=0)
    out = {name: tf.repeat(tf.expand_dims(ex[name], 0), num, axis=0) for name in keep}
    out[key] = tf.RaggedTensor.from_tensor(chunks, lengths=lengths)
    return out

  ds = dataset.map(_split, num_parallel_calls=AUTOTUNE).unbatch()
  return ds.filter(lambda ex: tf.size(ex[key]) >= min_tokens)


# --------------------------------------------------------------- causal LM
def causal_lm(dataset: tf.data.Dataset, sequence_length: Optional[Mapping[str, int]],
              output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  """Each document + EOS, cut into pieces of ``sequence_length['targets']`` tokens."""
  eos = _vocabulary(output_features).eos_id
  ds = dataset.map(lambda ex: {"targets": _with_eos(ex["targets"], eos)}, num_parallel_calls=AUTOTUNE)
  if sequence_length and sequence_length.get("targets"):
    ds = split_tokens(ds, sequence_length["targets"])
  return ds


def lm_as_targets(dataset: tf.data.Dataset, sequence_length: Optional[Mapping[str, int]],
                  output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  """:func:`causal_lm`'s pieces as ``targets`` with an empty ``inputs``: the causal LM in the
  inputs/targets layout of instruction tasks, so pretraining text mixes into instruction
  tuning (OPT-IML); through the prefix-LM feature converter the loss covers every token."""
  ds = causal_lm(dataset, sequence_length, output_features)
  return ds.map(lambda ex: {"inputs": tf.zeros([0], tf.int32), "targets": ex["targets"]},
                num_parallel_calls=AUTOTUNE)


# ---------------------------------------------------------------- prefix LM
def _min_prefix(n: int, noise_density: float) -> int:
  return min(n - 1, max(1, int(round((1 - 2 * noise_density) * (n - 1)))))


def prefix_lm_piece_length(inputs_length: int, targets_length: int, noise_density: float = 0.5) -> int:
  """The longest piece whose every random split fits ``inputs``/``targets`` (+EOS each)."""
  if not 0.0 < noise_density <= 0.5:
    raise ValueError(f"prefix LM noise_density must be in (0, 0.5], got {noise_density}")
  for n in range(inputs_length, 1, -1):  # longest prefix is n - 1 tokens + EOS
    if n - _min_prefix(n, noise_density) + 1 <= targets_length:
      return n
  raise ValueError(f"inputs_length={inputs_length}, targets_length={targets_length} leave no room for a prefix LM example")


def _random_prefix_length(n: tf.Tensor, noise_density: float, seed: tf.Tensor) -> tf.Tensor:
  max_prefix = n - 1
  min_prefix = tf.minimum(max_prefix, tf.maximum(1, tf.cast(
      tf.round((1.0 - 2.0 * noise_density) * tf.cast(max_prefix, tf.float32)), tf.int32)))
  return tf.random.stateless_uniform([], seed=seed, minval=min_prefix, maxval=max_prefix + 1, dtype=tf.int32)


def _prefix_split(tokens, noise_density, seed, eos, mode_ids=()):
  k = _random_prefix_length(tf.size(tokens), noise_density, seed)
  inputs = tf.concat([tf.constant(list(mode_ids), tokens.dtype), tokens[:k]], axis=0)
  return _with_eos(inputs, eos), _with_eos(tokens[k:], eos)


def prefix_lm(dataset: tf.data.Dataset, sequence_length: Optional[Mapping[str, int]],
              output_features: Mapping[str, seqio.Feature], noise_density: float = 0.5) -> tf.data.Dataset:
  """Random-split prefix LM: ``inputs`` = prefix + EOS, ``targets`` = the rest + EOS."""
  eos = _vocabulary(output_features).eos_id
  if sequence_length and sequence_length.get("inputs") and sequence_length.get("targets"):
    piece = prefix_lm_piece_length(sequence_length["inputs"], sequence_length["targets"], noise_density)
    dataset = split_tokens(dataset, piece, min_tokens=2)
  else:
    dataset = dataset.filter(lambda ex: tf.size(ex["targets"]) >= 2)

  @seqio.map_over_dataset(num_seeds=1)
  def _split(ex, seed):
    inputs, targets = _prefix_split(ex["targets"], noise_density, seed, eos)
    return {"inputs": inputs, "targets": targets}

  return _split(dataset)


# ----------------------------------------------------------- span corruption
def _span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> Tuple[int, int]:
  """(noise tokens, noise spans) for a piece of ``length`` tokens, as T5 computes them."""
  num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
  num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
  return num_noise, min(num_spans, num_noise, length - num_noise)


def random_spans_helper(inputs_length: int = 512, noise_density: float = 0.15,
                        mean_noise_span_length: float = 3.0) -> Tuple[int, int]:
  """(raw piece length, targets length) so span corruption makes ``inputs_length`` inputs.

  Inputs are the non-noise tokens, one sentinel per span and EOS; targets the noise
  tokens, one sentinel per span and EOS. T5's numbers: (512, 0.15, 3.0) -> (568, 114).
  """
  def lengths(tokens_length):
    num_noise, num_spans = _span_counts(tokens_length, noise_density, mean_noise_span_length)
    return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

  if inputs_length < 3:
    raise ValueError(f"inputs_length={inputs_length} is too short for span corruption")
  tokens_length = 2
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  targets_length = lengths(tokens_length)[1]
  # T5: with 50% noise, keep targets no longer than inputs (a round number).
  if noise_density == 0.5 and targets_length > inputs_length:
    tokens_length -= 1
    targets_length = lengths(tokens_length)[1]
  return tokens_length, targets_length


def _random_segmentation(num_items, num_segments, seed):
  """Lengths of ``num_segments`` non-empty segments that partition ``num_items``."""
  first_in_segment = tf.pad(seqio.utils.stateless_shuffle(
      tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32), seed), [[1, 0]])
  segment_id = tf.cumsum(first_in_segment)
  return tf.math.segment_sum(tf.ones_like(segment_id), segment_id)


def random_spans_noise_mask(length: tf.Tensor, noise_density: float, mean_noise_span_length: float,
                            seeds: Sequence[tf.Tensor]) -> tf.Tensor:
  """Boolean noise mask of ``length`` (>= 2): round(length*density) noise tokens in
  round(noise/mean) spans, alternating non-noise/noise and ending with noise (T5)."""
  length = tf.cast(length, tf.int32)
  lf = tf.cast(length, tf.float32)
  num_noise = tf.clip_by_value(tf.cast(tf.round(lf * noise_density), tf.int32), 1, length - 1)
  num_spans = tf.maximum(tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length), tf.int32), 1)
  num_spans = tf.minimum(num_spans, tf.minimum(num_noise, length - num_noise))
  noise_lengths = _random_segmentation(num_noise, num_spans, seeds[0])
  nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, seeds[1])
  interleaved = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [num_spans * 2])
  span_starts = tf.cumsum(interleaved)[:-1]
  span_start_indicator = tf.math.unsorted_segment_sum(tf.ones_like(span_starts), span_starts, length)
  return tf.equal(tf.cumsum(span_start_indicator) % 2, 1)


def spans_to_sentinels(tokens: tf.Tensor, mask: tf.Tensor, first_sentinel: int) -> tf.Tensor:
  """Replace each run of masked tokens by one sentinel: first_sentinel, first_sentinel-1, ..."""
  previous = tf.pad(mask[:-1], [[1, 0]])
  first = tf.logical_and(mask, tf.logical_not(previous))
  sentinels = first_sentinel + 1 - tf.cumsum(tf.cast(first, tokens.dtype))
  tokens = tf.where(first, sentinels, tokens)
  return tf.boolean_mask(tokens, tf.logical_not(tf.logical_and(mask, previous)))


def _span_corrupt(tokens, noise_density, mean_noise_span_length, seeds, first_sentinel, eos, mode_ids=()):
  mask = random_spans_noise_mask(tf.size(tokens), noise_density, mean_noise_span_length, seeds)
  inputs = spans_to_sentinels(tokens, mask, first_sentinel)
  inputs = tf.concat([tf.constant(list(mode_ids), tokens.dtype), inputs], axis=0)
  targets = spans_to_sentinels(tokens, tf.logical_not(mask), first_sentinel)
  return _with_eos(inputs, eos), _with_eos(targets, eos)


def _check_sentinels(vocabulary, num_spans: int, what: str) -> None:
  available = getattr(vocabulary, "extra_ids", None)
  if available is not None and num_spans > available:
    raise ValueError(f"{what} needs up to {num_spans} sentinels but the vocabulary has "
                     f"{available}; train it with num_sentinels >= {num_spans} or use shorter inputs")


def span_corruption(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature], noise_density: float = 0.15,
                    mean_noise_span_length: float = 3.0) -> tf.data.Dataset:
  """T5 span corruption with exact token budgets (see module docstring)."""
  vocab = _vocabulary(output_features, "inputs")
  tokens_length, targets_length = random_spans_helper(sequence_length["inputs"], noise_density, mean_noise_span_length)
  if sequence_length["targets"] < targets_length:
    raise ValueError(f"span corruption with inputs length {sequence_length['inputs']} makes targets of "
                     f"{targets_length} tokens; targets length is {sequence_length['targets']}")
  _check_sentinels(vocab, _span_counts(tokens_length, noise_density, mean_noise_span_length)[1], "span corruption")
  first_sentinel, eos = vocab.vocab_size - 1, vocab.eos_id

  @seqio.map_over_dataset(num_seeds=2)
  def _corrupt(ex, seeds):
    inputs, targets = _span_corrupt(ex["targets"], noise_density, mean_noise_span_length, seeds, first_sentinel, eos)
    return {"inputs": inputs, "targets": targets}

  return _corrupt(split_tokens(dataset, tokens_length, min_tokens=2))


# ---------------------------------------------------------------------- UL2
@dataclasses.dataclass(frozen=True)
class Denoiser:
  """One UL2 denoiser. ``mean_noise_span_length=None`` is the sequential (S) denoiser."""
  name: str
  noise_density: float
  mean_noise_span_length: Optional[float]
  mode_token: str
  rate: float


UL2_DENOISERS: Tuple[Denoiser, ...] = (
    Denoiser("R", 0.15, 3.0, "[NLU]", 0.8 / 6),
    Denoiser("R", 0.15, 8.0, "[NLU]", 0.8 / 6),
    Denoiser("X", 0.5, 3.0, "[NLG]", 0.8 / 6),
    Denoiser("X", 0.5, 8.0, "[NLG]", 0.8 / 6),
    Denoiser("X", 0.15, 64.0, "[NLG]", 0.8 / 6),
    Denoiser("X", 0.5, 64.0, "[NLG]", 0.8 / 6),
    Denoiser("S", 0.25, None, "[S2S]", 0.2),
)


def _mode_ids(vocabulary, token: str) -> Tuple[int, ...]:
  idx = vocabulary.tokenizer.piece_to_id(token) if hasattr(vocabulary, "tokenizer") else vocabulary.unk_id
  if idx != vocabulary.unk_id:
    return (int(idx),)
  return tuple(int(i) for i in vocabulary.encode(token))  # not a single piece: spell it out


def ul2_budgets(inputs_length: int, targets_length: int, denoisers: Sequence[Denoiser] = UL2_DENOISERS,
                mode_lengths: Optional[Sequence[int]] = None):
  """Per denoiser: (raw piece length, max targets length, max spans), validated."""
  budgets = []
  for i, d in enumerate(denoisers):
    room = inputs_length - (mode_lengths[i] if mode_lengths else 0)
    if d.mean_noise_span_length is None:
      piece = prefix_lm_piece_length(room, targets_length, d.noise_density)
      budgets.append((piece, piece - _min_prefix(piece, d.noise_density) + 1, 0))
    else:
      piece, needed = random_spans_helper(room, d.noise_density, d.mean_noise_span_length)
      if needed > targets_length:
        raise ValueError(f"UL2 denoiser {d} makes targets of {needed} tokens with inputs length "
                         f"{inputs_length}; targets length is {targets_length}")
      budgets.append((piece, needed, _span_counts(piece, d.noise_density, d.mean_noise_span_length)[1]))
  return budgets


def ul2_objective(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                  output_features: Mapping[str, seqio.Feature],
                  denoisers: Sequence[Denoiser] = UL2_DENOISERS, use_mode_tokens: bool = True) -> tf.data.Dataset:
  """UL2 mixture of denoisers.

  Each document draws one denoiser with probability proportional to its ``rate``; it
  is cut into that denoiser's piece length (so the inputs budget is met exactly) and
  every piece is corrupted by it, its mode token first in ``inputs``.
  """
  vocab = _vocabulary(output_features, "inputs")
  modes = [(_mode_ids(vocab, d.mode_token) if use_mode_tokens else ()) for d in denoisers]
  budgets = ul2_budgets(sequence_length["inputs"], sequence_length["targets"], denoisers, [len(m) for m in modes])
  _check_sentinels(vocab, max(b[2] for b in budgets), "UL2")
  first_sentinel, eos = vocab.vocab_size - 1, vocab.eos_id
  pieces = tf.constant([b[0] for b in budgets], tf.int32)
  logits = tf.math.log(tf.constant([[d.rate for d in denoisers]], tf.float32))

  @seqio.map_over_dataset(num_seeds=1)
  def _choose(ex, seed):
    index = tf.cast(tf.random.stateless_categorical(logits, 1, seed=seed)[0, 0], tf.int32)
    return {"targets": ex["targets"], "denoiser": index, "piece": pieces[index]}

  def branch(d, mode_ids, tokens, seeds):
    if d.mean_noise_span_length is None:
      return lambda: _prefix_split(tokens, d.noise_density, seeds[0], eos, mode_ids)
    return lambda: _span_corrupt(tokens, d.noise_density, d.mean_noise_span_length, seeds,
                                 first_sentinel, eos, mode_ids)

  @seqio.map_over_dataset(num_seeds=2)
  def _denoise(ex, seeds):
    tokens = ex["targets"]
    branches = [branch(d, m, tokens, seeds) for d, m in zip(denoisers, modes)]
    inputs, targets = tf.switch_case(ex["denoiser"], branches)
    return {"inputs": inputs, "targets": targets}

  ds = split_tokens(_choose(dataset), "piece", keep=("denoiser",), min_tokens=2)
  return _denoise(ds)


def expected_noise_tokens(length: int, noise_density: float) -> int:
  """round(length * density) clipped to [1, length-1]: what span corruption masks."""
  return min(max(int(round(length * noise_density)), 1), length - 1)


def expected_spans(length: int, noise_density: float, mean_noise_span_length: float) -> int:
  """The number of noise spans (= sentinels) span corruption makes for a piece."""
  return _span_counts(length, noise_density, mean_noise_span_length)[1]


__all__ = ["split_tokens", "causal_lm", "prefix_lm", "prefix_lm_piece_length", "span_corruption",
           "random_spans_helper", "random_spans_noise_mask", "spans_to_sentinels", "Denoiser",
           "UL2_DENOISERS", "ul2_budgets", "ul2_objective", "expected_noise_tokens", "expected_spans"]
