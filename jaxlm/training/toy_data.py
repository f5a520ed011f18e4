"""A tiny deterministic data source, so training runs (and is tested) without TensorFlow.

It has the interface the trainer expects of every data source (jaxlm.data's pipelines too):
  data_fn(batch_size=GLOBAL_ROWS, shard_index=HOST, num_shards=HOSTS) -> iterator
  next(it)        -> {feature: np.int32 [GLOBAL_ROWS // HOSTS, length]}, this host's rows
  it.state()      -> JSON-able position;  it.restore(state) goes back to it
Batch i is a pure function of (seed, i): every host computes the same global batch and
keeps its own rows, so 1 host and N hosts see identical data.

kind='arithmetic': each row counts x_t = 2 + (a + d t) mod (vocab - 2) from a random start a
with a random stride d in [1, max_stride]; after two tokens the rest is predictable, so a
tiny model's loss falls fast. kind='random': uniform tokens (loss floor ln(vocab - 2)).
poison_batches: batch indices whose targets are replaced by uniform noise (stability tests).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import gin
import numpy as np


@gin.configurable
class SyntheticData:

  def __init__(self, batch_size: int, shard_index: int = 0, num_shards: int = 1,
               feature_lengths: Mapping[str, int] = None, vocab_size: int = 128,
               kind: str = "arithmetic", max_stride: int = 4, min_length: int = 0,
               encoder_decoder: bool = False, seed: int = 0, poison_batches: Sequence[int] = ()):
    if batch_size % num_shards:
      raise ValueError(f"SyntheticData: batch_size={batch_size} not divisible by num_shards={num_shards}")
    if kind not in ("arithmetic", "random"):
      raise ValueError(f"SyntheticData.kind={kind!r}: 'arithmetic' or 'random'")
    self.batch_size, self.shard_index, self.num_shards = batch_size, shard_index, num_shards
    self.lengths = dict(feature_lengths or {"targets": 32})
    self.vocab_size, self.kind, self.max_stride, self.seed = vocab_size, kind, max_stride, seed
    self.min_length, self.encoder_decoder = min_length, encoder_decoder
    self.poison = set(int(i) for i in poison_batches)
    self.index = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = self.global_batch(self.index)
    self.index += 1
    rows = self.batch_size // self.num_shards
    return {k: v[self.shard_index * rows:(self.shard_index + 1) * rows] for k, v in batch.items()}

  def state(self) -> dict:
    return {"index": self.index}

  def restore(self, state: Mapping) -> None:
    self.index = int(state["index"])

  # ---- generation ----
  def _sequences(self, rng, n: int, length: int) -> np.ndarray:
    v = self.vocab_size - 2
    if self.kind == "random":
      return rng.integers(2, self.vocab_size, (n, length), dtype=np.int64).astype(np.int32)
    start = rng.integers(0, v, (n, 1))
    stride = rng.integers(1, self.max_stride + 1, (n, 1))
    return (2 + (start + stride * np.arange(length)[None]) % v).astype(np.int32)

  def global_batch(self, index: int) -> dict:
    rng = np.random.default_rng((self.seed, index))
    n, t, s = self.batch_size, self.lengths["targets"], self.lengths.get("inputs", 0)
    seq = self._sequences(rng, n, s + t)
    if index in self.poison:
      seq[:, s:] = rng.integers(2, self.vocab_size, (n, t))
    keep = rng.integers(max(self.min_length, 1), s + t + 1, (n, 1)) if self.min_length else s + t
    seq = np.where(np.arange(s + t)[None] < keep, seq, 0).astype(np.int32)
    if s and self.encoder_decoder:
      inputs, targets = seq[:, :s], seq[:, s:]
      batch = {"encoder_input_tokens": inputs}
    else:
      targets, batch = seq, {}
    dec_in = np.concatenate([np.zeros((n, 1), np.int32), targets[:, :-1]], axis=1)
    weights = (targets > 0).astype(np.int32)
    if s and not self.encoder_decoder:  # prefix LM: bidirectional, unscored prefix
      prefix = (np.arange(s + t)[None] < s).astype(np.int32).repeat(n, 0)
      weights = weights * (1 - prefix)
      batch["decoder_causal_attention"] = prefix
    batch.update(decoder_input_tokens=dec_in, decoder_target_tokens=targets, decoder_loss_weights=weights)
    return batch
