"""From a SeqIO task or mixture to per-host numpy batches for the trainer.

    pipe = DataPipeline("embedded_mix", {"targets": 512}, batch_size=64)
    for batch in pipe: ...                 # {feature name: np.ndarray [64 // hosts, 512]}
    saved = pipe.state()                   # small JSON-able dict: the position
    pipe = DataPipeline(...same args...); pipe.restore(saved)  # continues with the same batches

Feature converters (SeqIO), chosen by name:

* ``decoder`` -- causal decoder: ``decoder_{input,target}_tokens``, ``decoder_loss_weights``,
  ``decoder_segment_ids``, ``decoder_positions``. A task with ``inputs`` and ``targets``
  (instruction tuning) is concatenated as SeqIO's prefix-LM converter does, with the loss
  on the targets only; the causal model ignores the ``decoder_causal_attention`` it adds.
* ``prefix_decoder`` -- ``inputs`` and ``targets`` in one sequence, plus
  ``decoder_causal_attention`` (1 over the prefix and the first target position);
  the loss covers the targets only.
* ``encoder_decoder`` -- ``encoder_{input_tokens,segment_ids,positions}`` and the decoder
  features above.

``decoder_input_tokens`` are the targets shifted right with 0 as BOS (restarting at
every packed segment). Segment ids and positions are always present: without packing
they are 1 over the tokens and 0 over padding.

Determinism: the dataset is a function of (task, split, seed, shard, lengths, batch size,
converter, packing); :meth:`restore` rebuilds it and skips the batches already served.
Skipping recomputes them, so resuming costs about as much input time as the steps
skipped (no accelerator time). Going back at most ``REPLAY_BATCHES`` batches (the
trainer peeks at one batch for shapes, then restores) replays them from memory instead.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import gin
import numpy as np
import seqio

from jaxlm.data import tasks

FEATURE_CONVERTERS = {
    "decoder": seqio.LMFeatureConverter,
    "prefix_decoder": seqio.PrefixLMFeatureConverter,
    "encoder_decoder": seqio.EncDecFeatureConverter,
}
_STATE_VERSION = 1
REPLAY_BATCHES = 2
_CONFIG_KEYS = ("mixture_or_task_name", "split", "seed", "batch_size", "feature_lengths",
                "feature_converter", "pack", "shard_index", "num_shards", "shuffle", "num_epochs")


def _default_lengths(kind: str) -> Dict[str, int]:
  return {"targets": 512} if kind == "decoder" else {"inputs": 512, "targets": 512}


def _process_shard() -> Tuple[int, int]:
  import jax  # pylint: disable=import-outside-toplevel

  return jax.process_index(), jax.process_count()


def _add_segments(batch: Dict[str, np.ndarray], prefix: str, tokens_key: str) -> None:
  """Unpacked batches: segment ids 1 over tokens, positions 0..n-1, both 0 on padding."""
  if f"{prefix}_segment_ids" in batch or tokens_key not in batch:
    return
  present = (batch[tokens_key] != 0).astype(np.int32)
  if prefix == "decoder" and "decoder_loss_weights" in batch:  # a 0 target inside an example
    present = np.maximum(present, (batch["decoder_loss_weights"] != 0).astype(np.int32))
  length = batch[tokens_key].shape[-1]
  batch[f"{prefix}_segment_ids"] = present
  batch[f"{prefix}_positions"] = (np.arange(length, dtype=np.int32)[None, :] * present).astype(np.int32)


@gin.configurable
class DataPipeline:
  """Per-host batches of a SeqIO task/mixture with a saveable position."""

  def __init__(
      self,
      mixture_or_task_name: str = "embedded_mix",
      feature_lengths: Optional[Mapping[str, int]] = None,
      batch_size: int = 8,
      feature_converter: str = "decoder",
      pack: bool = True,
      seed: int = 0,
      split: str = "train",
      shuffle: bool = True,
      num_epochs: Optional[int] = None,
      shard_index: Optional[int] = None,
      num_shards: Optional[int] = None,
      use_cached: bool = False,
  ):
    """
    mixture_or_task_name: a name from :func:`tasks.list_tasks_and_mixtures`.
    feature_lengths: task feature lengths, e.g. ``{"targets": 1024}`` or
      ``{"inputs": 512, "targets": 114}``; default 512 for each feature.
    batch_size: the global batch size; each host gets ``batch_size // num_shards``.
    feature_converter: 'decoder', 'prefix_decoder' or 'encoder_decoder'.
    pack: pack several examples into each row (with segment ids).
    seed: seeds shuffling, objectives' randomness and mixture sampling.
    split: 'train' or 'validation'.
    shuffle: shuffle examples (SeqIO's buffer).
    num_epochs: None repeats forever.
    shard_index, num_shards: this host's shard; default ``jax.process_index()`` and
      ``jax.process_count()``.
    use_cached: read a SeqIO cache made offline by ``seqio.scripts.cache_tasks_main``.
    """
    if feature_converter not in FEATURE_CONVERTERS:
      raise ValueError(f"feature_converter must be one of {sorted(FEATURE_CONVERTERS)}, got {feature_converter!r}")
    if shard_index is None or num_shards is None:
      shard_index, num_shards = _process_shard()
    if batch_size % num_shards:
      raise ValueError(f"batch_size={batch_size} is not divisible by the {num_shards} hosts")
    self.mixture_or_task_name = mixture_or_task_name
    self.feature_lengths = dict(feature_lengths or _default_lengths(feature_converter))
    self.batch_size = int(batch_size)
    self.per_host_batch_size = self.batch_size // num_shards
    self.feature_converter = feature_converter
    self.pack = bool(pack)
    self.seed = int(seed)
    self.split = split
    self.shuffle = bool(shuffle)
    self.num_epochs = num_epochs
    self.shard_index, self.num_shards = int(shard_index), int(num_shards)
    self.use_cached = use_cached
    self.provider = tasks.get_task_or_mixture(mixture_or_task_name)
    self._check_features()
    self.step = 0
    self._iterator: Optional[Iterator[Dict[str, np.ndarray]]] = None
    self._frontier = 0  # batches the underlying iterator has produced
    self._recent: List[Dict[str, np.ndarray]] = []  # its last REPLAY_BATCHES batches, oldest first

  # ------------------------------------------------------------- properties
  @property
  def vocabulary(self):
    return self.provider.output_features["targets"].vocabulary

  @property
  def vocab_size(self) -> int:
    return int(self.vocabulary.vocab_size)

  def _check_features(self) -> None:
    names = set(self.provider.output_features)
    has_inputs = "inputs" in names
    if self.feature_converter != "decoder" and not has_inputs:
      raise ValueError(f"{self.mixture_or_task_name!r} has only 'targets'; feature_converter="
                       f"{self.feature_converter!r} needs 'inputs' too (use 'decoder')")
    missing = sorted(names - set(self.feature_lengths))
    if missing:
      raise ValueError(f"feature_lengths {self.feature_lengths} lacks {missing} for {self.mixture_or_task_name!r}")

  # -------------------------------------------------------------- datasets
  def dataset(self):
    """The batched ``tf.data.Dataset`` for this host, from the start."""
    kind = self.feature_converter
    if kind == "decoder" and "inputs" in self.provider.output_features:
      kind = "prefix_decoder"  # inputs + targets in one causal sequence, loss on the targets
    converter = FEATURE_CONVERTERS[kind](pack=self.pack)
    shard = seqio.ShardInfo(self.shard_index, self.num_shards) if self.num_shards > 1 else None
    return seqio.get_dataset(
        self.provider, task_feature_lengths=self.feature_lengths, feature_converter=converter,
        dataset_split=self.split, use_cached=self.use_cached, shuffle=self.shuffle,
        num_epochs=self.num_epochs, shard_info=shard, verbose=False, seed=self.seed,
        batch_size=self.per_host_batch_size)

  def _numpy_batches(self, skip: int) -> Iterator[Dict[str, np.ndarray]]:
    ds = self.dataset()
    if skip:
      ds = ds.skip(skip)
    for batch in ds.as_numpy_iterator():
      batch = {k: np.asarray(v) for k, v in batch.items()}
      _add_segments(batch, "decoder", "decoder_target_tokens")
      _add_segments(batch, "encoder", "encoder_input_tokens")
      yield batch

  def __iter__(self) -> "DataPipeline":
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    if self.step < self._frontier:  # going over batches again after a short restore
      batch = self._recent[self.step - self._frontier]
    else:
      if self._iterator is None:
        self._iterator, self._frontier, self._recent = self._numpy_batches(self.step), self.step, []
      batch = next(self._iterator)
      self._frontier += 1
      self._recent = (self._recent + [batch])[-REPLAY_BATCHES:]
    self.step += 1
    return batch

  # ----------------------------------------------------------------- state
  def _config(self) -> Dict[str, Any]:
    return {"mixture_or_task_name": self.mixture_or_task_name, "split": self.split, "seed": self.seed,
            "batch_size": self.batch_size, "feature_lengths": dict(sorted(self.feature_lengths.items())),
            "feature_converter": self.feature_converter, "pack": self.pack, "shard_index": self.shard_index,
            "num_shards": self.num_shards, "shuffle": self.shuffle, "num_epochs": self.num_epochs}

  def state(self) -> Dict[str, Any]:
    """The position: a small JSON-able dict (batches served + what defines the stream)."""
    return {"version": _STATE_VERSION, "step": self.step, **self._config()}

  def restore(self, state: Mapping[str, Any]) -> None:
    """Continue after ``state['step']`` batches; the stream's definition must match."""
    if state.get("version") != _STATE_VERSION:
      raise ValueError(f"data pipeline state version {state.get('version')!r}, expected {_STATE_VERSION}")
    mine = self._config()
    theirs = {k: state.get(k) for k in _CONFIG_KEYS}
    if isinstance(theirs["feature_lengths"], Mapping):
      theirs["feature_lengths"] = dict(sorted(theirs["feature_lengths"].items()))
    diff = {k: (theirs[k], mine[k]) for k in _CONFIG_KEYS if theirs[k] != mine[k]}
    if diff:
      raise ValueError("cannot restore a data pipeline state made with different settings "
                       + "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items()))
    step = int(state["step"])
    if self._iterator is None or not self._frontier - len(self._recent) <= step <= self._frontier:
      self._iterator, self._recent, self._frontier = None, [], step  # rebuild, skip `step` batches
    self.step = step
