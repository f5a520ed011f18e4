"""Hugging Face checkpoints on disk -> (TransformerConfig, params): GPT-2, LLaMA, T5.

`load_hf(path)` reads a directory written by `save_pretrained` (config.json plus
safetensors or PyTorch weights, sharded or not). Every tensor of the checkpoint must be
used and every parameter of the jaxlm model filled; otherwise the error names the file and
the tensor. Nothing is downloaded.
"""
from __future__ import annotations

import json
import os
import re
from typing import Callable, Dict, Tuple

import jax
import numpy as np

from jaxlm.models.config import TransformerConfig
from jaxlm.models.model import build_model

IGNORED = re.compile(r"(\.attn\.(masked_)?bias$|rotary_emb\.inv_freq$|^(encoder|decoder)\.embed_tokens\.weight$)")


class CheckpointError(ValueError):
  pass


# ---------------------------------------------------------------- reading files
def _read_config(path: str) -> dict:
  file = os.path.join(path, "config.json")
  if not os.path.exists(file):
    raise CheckpointError(f"{file}: not found (a Hugging Face directory needs config.json)")
  with open(file) as f:
    return json.load(f)


def _weight_files(path: str):
  for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                             ("pytorch_model.bin.index.json", "pytorch_model.bin")):
    index = os.path.join(path, index_name)
    if os.path.exists(index):
      with open(index) as f:
        return sorted({os.path.join(path, v) for v in json.load(f)["weight_map"].values()})
    if os.path.exists(os.path.join(path, single)):
      return [os.path.join(path, single)]
  raise CheckpointError(f"{path}: no model.safetensors, pytorch_model.bin or their .index.json")


def _read_tensors(path: str) -> Dict[str, Tuple[np.ndarray, str]]:
  """name -> (float32 numpy array, file it came from)."""
  tensors = {}
  for file in _weight_files(path):
    if file.endswith(".safetensors"):
      from safetensors import safe_open
      with safe_open(file, framework="np") as f:
        for k in f.keys():
          tensors[k] = (f.get_tensor(k), file)
    else:
      import torch  # only PyTorch-format checkpoints need it
      for k, v in torch.load(file, map_location="cpu", weights_only=True).items():
        tensors[k] = (v.float().numpy(), file)
  return tensors


class _Tensors:
  """Pops checkpoint tensors by name, so unused ones can be reported at the end."""

  def __init__(self, tensors, path, strip_prefixes=()):
    self.path = path
    self.tensors = {}
    for k, v in tensors.items():
      for p in strip_prefixes:
        if k.startswith(p):
          k = k[len(p):]
      self.tensors[k] = v

  def pop(self, name: str) -> np.ndarray:
    if name not in self.tensors:
      raise CheckpointError(f"{self.path}: missing tensor {name!r}")
    array, _ = self.tensors.pop(name)
    return np.asarray(array, np.float32)

  def has(self, name: str) -> bool:
    return name in self.tensors

  def check_all_used(self, ignore=IGNORED):
    left = {k: f for k, (_, f) in self.tensors.items() if not ignore.search(k)}
    if left:
      name, file = sorted(left.items())[0]
      raise CheckpointError(f"{file}: unexpected tensor {name!r} ({len(left)} unused in all: "
                            f"{sorted(left)[:5]}...)")


def _set(tree: dict, path: str, value):
  *parents, leaf = path.split("/")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


# ---------------------------------------------------------------- architectures
def _gpt2(hf: dict, t: _Tensors):
  d, n = hf["n_embd"], hf["n_head"]
  h = d // n
  act = hf.get("activation_function", "gelu_new")
  cfg = TransformerConfig(
      arch="decoder", vocab_size=hf["vocab_size"], d_model=d, num_layers=hf["n_layer"], num_heads=n,
      d_ff=hf.get("n_inner") or 4 * d, norm_type="layernorm", norm_position="pre",
      norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp_activation="relu" if act == "relu" else "gelu",
      gelu_approximate=act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"), position="learned",
      max_len=hf["n_positions"], use_bias=True, tie_embeddings=True,
      init_std=hf.get("initializer_range", 0.02))
  p = {}
  _set(p, "token_embedding/embedding", t.pop("wte.weight"))
  _set(p, "decoder/position_embedding/embedding", t.pop("wpe.weight"))
  for i in range(cfg.num_layers):
    pre, out = f"h.{i}.", f"decoder/layers_{i}/"
    for ours, theirs in (("self_attention_norm", "ln_1"), ("mlp_norm", "ln_2")):
      _set(p, out + ours + "/scale", t.pop(pre + theirs + ".weight"))
      _set(p, out + ours + "/bias", t.pop(pre + theirs + ".bias"))
    qkv, qkv_b = t.pop(pre + "attn.c_attn.weight"), t.pop(pre + "attn.c_attn.bias")
    for j, name in enumerate(("query", "key", "value")):
      _set(p, out + f"self_attention/{name}", qkv[:, j * d:(j + 1) * d].reshape(d, n, h))
      _set(p, out + f"self_attention/{name}_bias", qkv_b[j * d:(j + 1) * d].reshape(n, h))
    _set(p, out + "self_attention/out", t.pop(pre + "attn.c_proj.weight").reshape(n, h, d))
    _set(p, out + "self_attention/out_bias", t.pop(pre + "attn.c_proj.bias"))
    for ours, theirs in (("wi", "c_fc"), ("wo", "c_proj")):
      _set(p, out + f"mlp/{ours}/kernel", t.pop(pre + f"mlp.{theirs}.weight"))
      _set(p, out + f"mlp/{ours}/bias", t.pop(pre + f"mlp.{theirs}.bias"))
  _set(p, "decoder/final_norm/scale", t.pop("ln_f.weight"))
  _set(p, "decoder/final_norm/bias", t.pop("ln_f.bias"))
  if t.has("lm_head.weight"):
    t.pop("lm_head.weight")  # tied to wte
  return cfg, p


def _rope_fields(hf: dict) -> dict:
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  base = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
  kind = rope.get("rope_type", rope.get("type", "default"))
  fields = {"rope_base": float(base)}
  if kind == "linear":
    fields.update(rope_scaling="linear", rope_scaling_factor=float(rope["factor"]))
  elif kind == "llama3":
    fields.update(rope_scaling="llama3", rope_scaling_factor=float(rope["factor"]),
                  rope_low_freq_factor=float(rope["low_freq_factor"]),
                  rope_high_freq_factor=float(rope["high_freq_factor"]),
                  rope_original_max_len=int(rope["original_max_position_embeddings"]))
  elif kind != "default":
    raise CheckpointError(f"config.json: rope type {kind!r} is not supported (default, linear, llama3)")
  return fields


def _llama(hf: dict, t: _Tensors):
  d, n = hf["hidden_size"], hf["num_attention_heads"]
  kv = hf.get("num_key_value_heads") or n
  h = hf.get("head_dim") or d // n
  bias = bool(hf.get("attention_bias", False))
  if bias != bool(hf.get("mlp_bias", False)):
    raise CheckpointError("config.json: attention_bias != mlp_bias is not supported (jaxlm has one use_bias)")
  if hf.get("hidden_act", "silu") != "silu":
    raise CheckpointError(f"config.json: hidden_act={hf['hidden_act']!r}; LLaMA conversion expects 'silu'")
  tied = bool(hf.get("tie_word_embeddings", False))
  cfg = TransformerConfig(
      arch="decoder", vocab_size=hf["vocab_size"], d_model=d, num_layers=hf["num_hidden_layers"],
      num_heads=n, num_kv_heads=kv, head_dim=h, d_ff=hf["intermediate_size"], norm_type="rmsnorm",
      norm_position="pre", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp_activation="swiglu",
      position="rope", max_len=hf.get("max_position_embeddings", 2048), use_bias=bias,
      tie_embeddings=tied, init_std=hf.get("initializer_range", 0.02), **_rope_fields(hf))
  p = {}
  _set(p, "token_embedding/embedding", t.pop("embed_tokens.weight"))
  for i in range(cfg.num_layers):
    pre, out = f"layers.{i}.", f"decoder/layers_{i}/"
    _set(p, out + "self_attention_norm/scale", t.pop(pre + "input_layernorm.weight"))
    _set(p, out + "mlp_norm/scale", t.pop(pre + "post_attention_layernorm.weight"))
    for name, theirs, heads in (("query", "q_proj", n), ("key", "k_proj", kv), ("value", "v_proj", kv)):
      _set(p, out + f"self_attention/{name}", t.pop(pre + f"self_attn.{theirs}.weight").T.reshape(d, heads, h))
      if bias:
        _set(p, out + f"self_attention/{name}_bias", t.pop(pre + f"self_attn.{theirs}.bias").reshape(heads, h))
    _set(p, out + "self_attention/out", t.pop(pre + "self_attn.o_proj.weight").T.reshape(n, h, d))
    if bias:
      _set(p, out + "self_attention/out_bias", t.pop(pre + "self_attn.o_proj.bias"))
    for ours, theirs in (("wi_0", "gate_proj"), ("wi_1", "up_proj"), ("wo", "down_proj")):
      _set(p, out + f"mlp/{ours}/kernel", t.pop(pre + f"mlp.{theirs}.weight").T)
      if bias:
        _set(p, out + f"mlp/{ours}/bias", t.pop(pre + f"mlp.{theirs}.bias"))
  _set(p, "decoder/final_norm/scale", t.pop("norm.weight"))
  if not tied:
    _set(p, "lm_head", t.pop("lm_head.weight").T)
  elif t.has("lm_head.weight"):
    t.pop("lm_head.weight")
  return cfg, p


def _t5_attention(t: _Tensors, theirs: str, ours: str, p: dict, d: int, n: int, h: int):
  for name, key in (("query", "q"), ("key", "k"), ("value", "v")):
    _set(p, f"{ours}/{name}", t.pop(f"{theirs}.{key}.weight").T.reshape(d, n, h))
  _set(p, f"{ours}/out", t.pop(f"{theirs}.o.weight").T.reshape(n, h, d))


def _t5(hf: dict, t: _Tensors):
  d, n, h = hf["d_model"], hf["num_heads"], hf["d_kv"]
  proj = hf.get("feed_forward_proj", "relu")
  acts = {"relu": "relu", "gated-gelu": "geglu", "gated-silu": "swiglu", "gelu": "gelu", "gated-relu": None}
  if acts.get(proj) is None:
    raise CheckpointError(f"config.json: feed_forward_proj={proj!r} is not supported")
  tied = bool(hf.get("tie_word_embeddings", True))
  cfg = TransformerConfig(
      arch="encoder_decoder", vocab_size=hf["vocab_size"], d_model=d,
      num_layers=hf.get("num_decoder_layers") or hf["num_layers"], num_encoder_layers=hf["num_layers"],
      num_heads=n, head_dim=h, d_ff=hf["d_ff"], norm_type="rmsnorm", norm_position="pre",
      norm_eps=hf.get("layer_norm_epsilon", 1e-6), mlp_activation=acts[proj], gelu_approximate=True,
      position="t5_relative", relative_num_buckets=hf.get("relative_attention_num_buckets", 32),
      relative_max_distance=hf.get("relative_attention_max_distance", 128), scale_attention=False,
      tie_embeddings=tied, scale_decoder_outputs=bool(hf.get("scale_decoder_outputs", tied)))
  p = {}
  _set(p, "token_embedding/embedding", t.pop("shared.weight"))
  gated = cfg.gated_mlp
  for stack, layers in (("encoder", cfg.encoder_layers), ("decoder", cfg.num_layers)):
    _set(p, f"{stack}/relpos_bias/embedding",
         t.pop(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"))
    for i in range(layers):
      pre, out = f"{stack}.block.{i}.layer.", f"{stack}/layers_{i}/"
      _t5_attention(t, pre + "0.SelfAttention", out + "self_attention", p, d, n, h)
      _set(p, out + "self_attention_norm/scale", t.pop(pre + "0.layer_norm.weight"))
      ff = 1
      if stack == "decoder":
        _t5_attention(t, pre + "1.EncDecAttention", out + "cross_attention", p, d, n, h)
        _set(p, out + "cross_attention_norm/scale", t.pop(pre + "1.layer_norm.weight"))
        ff = 2
      names = (("wi_0", "wi_0"), ("wi_1", "wi_1"), ("wo", "wo")) if gated else (("wi", "wi"), ("wo", "wo"))
      for ours, theirs in names:
        _set(p, out + f"mlp/{ours}/kernel", t.pop(pre + f"{ff}.DenseReluDense.{theirs}.weight").T)
      _set(p, out + "mlp_norm/scale", t.pop(pre + f"{ff}.layer_norm.weight"))
    _set(p, f"{stack}/final_norm/scale", t.pop(f"{stack}.final_layer_norm.weight"))
  if not tied:
    _set(p, "lm_head", t.pop("lm_head.weight").T)
  elif t.has("lm_head.weight"):
    t.pop("lm_head.weight")
  return cfg, p


CONVERTERS: Dict[str, Tuple[Callable, tuple]] = {
    "gpt2": (_gpt2, ("transformer.",)),
    "llama": (_llama, ("model.",)),
    "mistral": (_llama, ("model.",)),
    "t5": (_t5, ()),
}


# ---------------------------------------------------------------- entry point
def stack_layers(params: dict, config: TransformerConfig) -> dict:
  """layers_0..layers_{L-1} -> one 'layers' subtree with a leading axis (scan_layers)."""
  out = dict(params)
  for stack in ("encoder", "decoder"):
    if stack not in params:
      continue
    tree = dict(params[stack])
    names = sorted((k for k in tree if k.startswith("layers_")), key=lambda k: int(k.split("_")[1]))
    tree["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *[tree.pop(k) for k in names])
    out[stack] = tree
  return out


def load_hf(path: str, dtype: str = "float32", **overrides) -> Tuple[TransformerConfig, dict]:
  """Reads a Hugging Face GPT-2 / LLaMA / T5 directory. `overrides` set other config fields
  (e.g. dtype="bfloat16" compute, scan_layers=True); parameters are `dtype` (float32)."""
  hf = _read_config(path)
  kind = hf.get("model_type")
  if kind not in CONVERTERS:
    raise CheckpointError(f"{os.path.join(path, 'config.json')}: model_type={kind!r} is not one of "
                          f"{sorted(CONVERTERS)}")
  convert, prefixes = CONVERTERS[kind]
  tensors = _Tensors(_read_tensors(path), path, prefixes)
  config, params = convert(hf, tensors)
  tensors.check_all_used()
  config = config.replace(param_dtype=dtype, **overrides).validate()
  if config.scan_layers:
    params = stack_layers(params, config)
  expected = build_model(config).param_shapes()
  flat_expected = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
  flat_params = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for key in set(flat_expected) | set(flat_params):
    name = jax.tree_util.keystr(key)
    if key not in flat_params:
      raise CheckpointError(f"{path}: no tensor provides parameter {name}")
    if key not in flat_expected:
      raise CheckpointError(f"{path}: converted tensor {name} has no place in the jaxlm model")
    if tuple(flat_params[key].shape) != tuple(flat_expected[key].shape):
      raise CheckpointError(f"{path}: parameter {name} has shape {flat_params[key].shape}, the "
                            f"config needs {flat_expected[key].shape}")
  return config, jax.tree.map(lambda x: np.asarray(x, dtype), params)
