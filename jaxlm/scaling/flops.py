"""What a model costs: its parameter counts and training FLOPs, for every architecture option.

The FLOPs are `Model.flops_per_token` (jaxlm/models/model.py: 6 x the matmul parameters a
token passes through, MoE experts counted as active, plus PaLM's attention term): this
module adds no formula of its own. Counts come from the parameter shapes
(`jax.eval_shape`), so sizing a 1B-parameter config costs no memory.

  N  non_embedding_params: every parameter except the token and position embeddings, the
     output layer (lm_head) and T5's relative-position bias tables; Kaplan et al. (2020)'s N.
  C  training_flops(config, tokens) = flops_per_token(seq_len) x tokens; for a dense
     decoder this is close to 6 N D (Kaplan, Chinchilla) plus the attention and output layer.

`model_config(gin_file)` reads a `gin_configs/models/*.gin` file into a TransformerConfig
without touching gin's global configuration (the planner sizes every model file this way).
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Dict, Optional

import jax
import numpy as np

from jaxlm.models import TransformerConfig, build_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS_DIR = os.path.join(REPO_ROOT, "gin_configs", "models")
# Parameter-tree names that are embeddings in Kaplan et al.'s sense (excluded from N).
EMBEDDING_NAMES = ("token_embedding", "position_embedding", "lm_head", "relpos_bias")


@dataclasses.dataclass(frozen=True)
class ModelSize:
  params: int                # every parameter
  non_embedding_params: int  # N of the scaling laws
  flops_per_token: float     # training FLOPs per token at seq_len (Model.flops_per_token)
  seq_len: int


def model_size(config: TransformerConfig, seq_len: Optional[int] = None) -> ModelSize:
  """The parameter counts and training FLOPs/token of `config` (at config.max_len unless
  seq_len is given), from shapes only."""
  model = build_model(config)
  seq_len = int(seq_len or config.max_len)
  total = embedding = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(model.param_shapes())[0]:
    size = int(np.prod(leaf.shape))
    total += size
    if any(getattr(p, "key", None) in EMBEDDING_NAMES for p in path):
      embedding += size
  return ModelSize(params=total, non_embedding_params=total - embedding,
                   flops_per_token=float(model.flops_per_token(seq_len)), seq_len=seq_len)


def training_flops(config: TransformerConfig, tokens: float, seq_len: Optional[int] = None) -> float:
  """C: the FLOPs of training `config` on `tokens` tokens of length seq_len."""
  return model_size(config, seq_len).flops_per_token * float(tokens)


class _Literals:
  """gin's parser delegate for model files: they bind literals only."""

  def __init__(self, path: str):
    self.path = path

  def configurable_reference(self, name, evaluate):
    raise ValueError(f"{self.path}: @{name} in a model file; model files bind literals only")

  def macro(self, name):
    raise ValueError(f"{self.path}: %{name} in a model file; model files bind literals only")


def model_bindings(gin_file: str) -> Dict[str, object]:
  """The TransformerConfig fields `gin_file` binds (its includes first), parsed with gin's
  own parser and without changing gin's global configuration."""
  from gin import config_parser
  path = gin_file if os.path.exists(gin_file) else os.path.join(REPO_ROOT, gin_file)
  with open(path, encoding="utf-8") as f:
    parser = config_parser.ConfigParser(f, _Literals(path))
    bindings = {}
    for statement in parser:
      if isinstance(statement, config_parser.IncludeStatement):
        bindings.update(model_bindings(statement.filename))
      elif isinstance(statement, config_parser.BindingStatement):
        if statement.scope or statement.selector != "TransformerConfig":
          raise ValueError(f"{path}: binds {statement.selector}.{statement.arg_name}; a model file "
                           f"binds TransformerConfig fields only")
        bindings[statement.arg_name] = statement.value
  return bindings


def model_config(gin_file: str, **overrides) -> TransformerConfig:
  """The TransformerConfig of a model file, with `overrides` on top."""
  return TransformerConfig(**{**model_bindings(gin_file), **overrides})


def model_files(models_dir: str = MODELS_DIR) -> Dict[str, str]:
  """{name: path} of the model files in `models_dir` (name: the file name without .gin)."""
  return {os.path.basename(p)[:-len(".gin")]: p for p in sorted(glob.glob(os.path.join(models_dir, "*.gin")))}
