"""Starting a run from existing weights (t5x's init_checkpoint role): `train.init_from`.

The path is a jaxlm checkpoint (any layout `checkpointing.restore_params` reads) or a
Hugging Face directory (config.json with a model_type, read by `convert.load_hf`). The
loaded tree must match the run's model exactly; otherwise one error names every path that
is missing, unexpected or of the wrong shape. Paths matching `allow_missing` (regular
expressions) and the parameters an option adds (ADDED_PARAMETERS: PEFT, a value head) may be absent: they keep
their fresh initialisation. A model with quantized kernels (TransformerConfig.quantization, e.g. QLoRA)
takes a float checkpoint: its kernels are quantized as they are loaded. A soft prompt
(prompt tuning) that the checkpoint lacks starts as copies of sampled rows of the loaded
token embedding (Lester et al. 2021). The run starts at step 0 with a fresh optimizer state.
"""
from __future__ import annotations

import json
import os
import re
from typing import Sequence, Tuple

import numpy as np
from flax import traverse_util

from jaxlm.training.checkpointing import restore_params
from jaxlm.training.trainable import path_name


# Parameters a PEFT option of TransformerConfig adds (LoRA A/B, adapters, prefixes, soft
# prompts), and the scalar head (value_head) a reward or value model adds to an LM: a base
# checkpoint never has them, so they may be missing and keep their init.
ADDED_PARAMETERS = (r"_lora_[ab]$", r"_adapter(/|$)", r"(^|/)prefix", r"(^|/)soft_prompt", r"^value_head/")


def is_hf_directory(path: str) -> bool:
  config = os.path.join(path, "config.json")
  if not os.path.isfile(config):
    return False
  with open(config, encoding="utf-8") as f:
    return "model_type" in json.load(f)


def read_params(path: str, config) -> dict:
  """The parameter tree stored at `path` (host arrays), as saved."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"train.init_from={path!r}: no such directory")
  if is_hf_directory(path):
    from jaxlm.models.convert import load_hf  # pylint: disable=import-outside-toplevel
    _, params = load_hf(path, scan_layers=config.scan_layers)
    return params
  return restore_params(path)


def load_matching(path: str, abstract_params, config, allow_missing: Sequence[str] = ()) -> Tuple[dict, list]:
  """(loaded leaves as a nested dict of numpy arrays in the model's dtypes, their paths)."""
  params = read_params(path, config)
  if getattr(config, "quantization", "none") != "none":  # a float base for a quantized model (QLoRA)
    from jaxlm.adaptation.quantization import quantize_like  # pylint: disable=import-outside-toplevel
    params = quantize_like(params, abstract_params, strict=False)
  got = {path_name(k): v for k, v in traverse_util.flatten_dict(params).items()}
  want = {path_name(k): v for k, v in traverse_util.flatten_dict(abstract_params).items()}
  allowed = [re.compile(p) for p in (*allow_missing, *ADDED_PARAMETERS)]
  missing = [n for n in want if n not in got and not any(p.search(n) for p in allowed)]
  unexpected = [n for n in got if n not in want]
  wrong = [f"{n} {tuple(np.shape(got[n]))} (the model has {tuple(want[n].shape)})"
           for n in want if n in got and tuple(np.shape(got[n])) != tuple(want[n].shape)]
  if missing or unexpected or wrong:
    parts = [f"{label} {len(names)}: {', '.join(names)}" for label, names in
             (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if names]
    raise ValueError(f"train.init_from={path!r} does not match the model: " + "; ".join(parts)
                     + " (is the gin model config the one trained? train.init_from_allow_missing "
                     "lets added parameters keep their fresh init)")
  loaded = {tuple(n.split("/")): np.asarray(got[n], want[n].dtype) for n in want if n in got}
  return traverse_util.unflatten_dict(loaded), sorted("/".join(k) for k in loaded)


def init_added(params, loaded: Sequence[str], config, seed: int = 0):
  """`params` (loaded leaves merged with fresh ones) with the added parameters whose
  initialisation depends on the loaded ones set: prompt tuning's soft prompt, when not
  loaded, from sampled token-embedding rows (jaxlm.adaptation.prompts.init_prompt_from_vocab)."""
  if getattr(config, "prompt_length", 0) and "soft_prompt/embedding" not in set(loaded):
    import jax  # pylint: disable=import-outside-toplevel
    from jaxlm.adaptation.prompts import init_prompt_from_vocab  # pylint: disable=import-outside-toplevel
    params = init_prompt_from_vocab(params, config, jax.random.key(seed))
  return params
