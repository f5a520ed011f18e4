"""Prefix and prompt tuning parameter trees (jaxlm.models.peft_layers computes with them).

A prefix-tuning model is its base config with ``prefix_length`` > 0: each stack
(``decoder``, ``encoder``) holds ``prefix_tuning/...``; trained reparametrised
(``prefix_hidden`` > 0, Li and Liang 2021), it is served plain (P-tuning v2 style):

    plain_params, plain_config = export_prefix(params, config)   # the same outputs

A prompt-tuning model (``prompt_length`` > 0) holds ``soft_prompt/embedding``; Lester et
al.'s initialisation copies sampled rows of the token embedding into it:

    params = init_prompt_from_vocab(params, config, jax.random.key(0))
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.models.config import TransformerConfig
from jaxlm.models.peft_layers import reparametrised_prefix

REPARAMETRISED = ("embedding", "wi", "wi_bias", "wo", "wo_bias")


def _stacks(params, config: TransformerConfig):
  """(name, number of layers) of the stacks in `params` that hold prefixes."""
  stacks = [("decoder", config.num_layers)]
  if config.arch == "encoder_decoder":
    stacks.append(("encoder", config.encoder_layers))
  return [(name, n) for name, n in stacks if "prefix_tuning" in params.get(name, {})]


def export_prefix(params, config: TransformerConfig) -> Tuple[dict, TransformerConfig]:
  """(params, config) of the plain-prefix model (prefix_hidden=0) computing what the
  reparametrised one does: every stack's prefix MLP is run once and replaced by the
  ``key`` / ``value`` [layers, prefix_length, kv_heads, head_dim] it gives."""
  if not config.prefix_length or not config.prefix_hidden:
    raise ValueError(f"export_prefix needs a reparametrised prefix (TransformerConfig.prefix_length="
                     f"{config.prefix_length}, prefix_hidden={config.prefix_hidden}: both must be > 0)")
  out = dict(params)
  for name, num_layers in _stacks(params, config):
    prefix = params[name]["prefix_tuning"]
    missing = [k for k in REPARAMETRISED if k not in prefix]
    if missing:
      raise ValueError(f"export_prefix: {name}/prefix_tuning lacks {missing}; is "
                       f"TransformerConfig.prefix_hidden={config.prefix_hidden} the one trained?")
    dtype = prefix["embedding"].dtype
    key, value = reparametrised_prefix(config, num_layers, *(prefix[k] for k in REPARAMETRISED))
    out[name] = {**params[name], "prefix_tuning": {"key": key.astype(dtype), "value": value.astype(dtype)}}
  return out, config.replace(prefix_hidden=0)


def init_prompt_from_vocab(params, config: TransformerConfig, rng,
                           candidates: Optional[Sequence[int]] = None) -> dict:
  """`params` with the soft prompt's rows copied from the token embedding at prompt_length
  token ids drawn without replacement (while the candidates last) from `candidates`:
  Lester et al. draw from the 5,000 most common tokens; by default every id but 0 (padding)."""
  if not config.prompt_length:
    raise ValueError("init_prompt_from_vocab needs prompt tuning: TransformerConfig.prompt_length=0")
  table = params["token_embedding"]["embedding"]
  ids = np.arange(1, config.vocab_size) if candidates is None else np.asarray(candidates)
  chosen = jax.random.choice(rng, jnp.asarray(ids), (config.prompt_length,),
                             replace=config.prompt_length > len(ids))
  prompt = jnp.take(table, chosen, axis=0)
  soft = params["soft_prompt"]["embedding"]
  return {**params, "soft_prompt": {**params["soft_prompt"], "embedding": prompt.astype(soft.dtype)}}
