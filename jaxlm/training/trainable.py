"""Which parameters a run trains, and the split of a parameter tree into trained and frozen.

Paths are '/'-joined keys, e.g. 'decoder/layers_0/self_attention/query/kernel'.
`Trainable` (gin) selects by regular expressions searched in the path:

    train.trainable = @Trainable()
    Trainable.include = ('decoder/layers_1/',)     # only the second layer
    Trainable.exclude = ('token_embedding',)      # ... and never the embeddings
    Trainable.added_only = True                   # only what train.init_from did not load
                                                  # (the parameters a PEFT method adds)

Frozen parameters get no gradient and no optimizer state; they stay in TrainState.params
(sharded by the same logical-axis rules, saved and restored with the checkpoint), so a
checkpoint always holds the whole model.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Optional, Sequence

import gin
from flax import traverse_util


def path_name(path: tuple) -> str:
  return "/".join(str(k) for k in path)


@gin.configurable
class Trainable:

  def __init__(self, include: Sequence[str] = (".*",), exclude: Sequence[str] = (),
               added_only: bool = False):
    self.include = [re.compile(p) for p in include]
    self.exclude = [re.compile(p) for p in exclude]
    self.added_only = added_only

  def mask(self, params, loaded: Optional[Iterable[str]] = None) -> dict:
    """{path: trained?} over every leaf of `params`. loaded: the paths train.init_from
    filled (needed for added_only)."""
    if self.added_only and loaded is None:
      raise ValueError("Trainable.added_only=True trains the parameters train.init_from did not "
                       "load, but train.init_from is not set")
    loaded = set(loaded or ())
    mask = {}
    for path in traverse_util.flatten_dict(params):
      name = path_name(path)
      chosen = any(p.search(name) for p in self.include) and not any(p.search(name) for p in self.exclude)
      mask[name] = chosen and not (self.added_only and name in loaded)
    if not any(mask.values()):
      raise ValueError(f"Trainable(include={[p.pattern for p in self.include]}, exclude="
                       f"{[p.pattern for p in self.exclude]}, added_only={self.added_only}) selects "
                       f"no parameter; paths look like {next(iter(mask), '?')!r}")
    return mask


def partition(params, mask: Mapping[str, bool]):
  """(trained, frozen): two nested dicts holding the leaves `mask` marks True / False."""
  flat = traverse_util.flatten_dict(params)
  trained = {k: v for k, v in flat.items() if mask[path_name(k)]}
  frozen = {k: v for k, v in flat.items() if not mask[path_name(k)]}
  return traverse_util.unflatten_dict(trained), traverse_util.unflatten_dict(frozen)


def merge(*trees):
  """The union of disjoint nested dicts (the inverse of `partition`)."""
  flat = {}
  for tree in trees:
    flat.update(traverse_util.flatten_dict(tree))
  return traverse_util.unflatten_dict(flat)
