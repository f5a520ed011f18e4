"""Hugging Face checkpoints on disk -> (TransformerConfig, params): GPT-2, LLaMA, T5.

`load_hf(path)` reads a directory written by `save_pretrained` (config.json plus
safetensors or PyTorch weights, sharded or not). Every tensor of the checkpoint must be
used and every parameter of the jaxlm model filled; otherwise the error names the file and
the tensor. Nothing is downloaded.

`load_hf(path, adapter_dir)` also reads a LoRA adapter that peft's `save_pretrained` wrote
for that checkpoint (adapter_config.json plus adapter_model.safetensors or .bin, GPT-2 and
LLaMA / Mistral): merged into the base kernels (`merge_adapter=True`, a plain config), or
kept as jaxlm's own LoRA leaves ``<kernel>_lora_a`` / ``<kernel>_lora_b`` with the config's
lora_rank, lora_alpha, lora_rslora, lora_dropout and lora_targets set from the adapter.
GPT-2's fused c_attn gives query, key and value the same A and each its slice of B, which
computes the same function. Per-module rank_pattern / alpha_pattern and layers_to_transform
merge exactly; unmerged, jaxlm has one rank, one scale and LoRA in every layer, so a module's
own alpha is folded into its B, and a higher rank (unless its extra components are zero) or
an adapter on only some layers is refused. So are settings that are not plain LoRA (DoRA,
trained biases, modules_to_save, ...): a ValueError names the adapter_config.json key.
jaxlm.adaptation.peft_format writes adapters the other way.
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Callable, Dict, List, Optional, Tuple

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


# ---------------------------------------------------------------- peft LoRA adapters
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
# adapter_config.json keys whose non-empty values change what the adapter computes in ways
# jaxlm's LoRA (y += scale * x A B on whole kernels) cannot: DoRA, LoRA bias, extra full
# modules, aLoRA's token-activated adapters, KaSA, Arrow routing, ...
UNSUPPORTED_ADAPTER_KEYS = ("use_dora", "lora_bias", "modules_to_save", "layer_replication", "use_qalora",
                            "trainable_token_indices", "target_parameters", "alora_invocation_tokens",
                            "use_bdlora", "arrow_config", "kasa_config", "monteclora_config")


def peft_modules(model_type: str, num_layers: int, d_model: int) -> Dict[str, List[tuple]]:
  """The Hugging Face modules a LoRA adapter can target, by name without the checkpoint
  prefix ('h.0.attn.c_attn', 'layers.0.self_attn.q_proj'), each -> the jaxlm kernels it
  feeds: (kernel path, projection name for lora_targets, number of kernel input axes,
  (start, stop) of the module's output features or None for all of them)."""
  out = {}
  for i in range(num_layers):
    ours = f"decoder/layers_{i}/"
    if model_type == "gpt2":
      pre, d = f"h.{i}.", d_model
      out[pre + "attn.c_attn"] = [(ours + f"self_attention/{name}", name, 1, (j * d, (j + 1) * d))
                                  for j, name in enumerate(("query", "key", "value"))]
      out[pre + "attn.c_proj"] = [(ours + "self_attention/out", "out", 2, None)]
      out[pre + "mlp.c_fc"] = [(ours + "mlp/wi/kernel", "wi", 1, None)]
      out[pre + "mlp.c_proj"] = [(ours + "mlp/wo/kernel", "wo", 1, None)]
    elif model_type in ("llama", "mistral"):
      pre = f"layers.{i}."
      for theirs, name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"), ("o_proj", "out")):
        num_in = 2 if name == "out" else 1
        out[pre + f"self_attn.{theirs}"] = [(ours + f"self_attention/{name}", name, num_in, None)]
      for theirs, name in (("gate_proj", "wi_0"), ("up_proj", "wi_1"), ("down_proj", "wo")):
        out[pre + f"mlp.{theirs}"] = [(ours + f"mlp/{name}/kernel", name, 1, None)]
    else:
      raise CheckpointError(f"model_type={model_type!r}: LoRA adapters are supported for gpt2, llama and "
                            "mistral checkpoints")
  return out


def _get(tree: dict, path: str):
  for p in path.split("/"):
    tree = tree[p]
  return tree


def _pattern_value(pattern: dict, module: str, default):
  """peft's rank_pattern / alpha_pattern lookup (peft.utils.other.get_pattern_key): the value
  of the first key that, as a regex, matches the module name or a tail of it after a dot."""
  for key, value in pattern.items():
    if re.match(rf"(.*\.)?({key})$", module):
      return value
  return default


def _read_adapter(adapter_dir: str):
  cfg_file = os.path.join(adapter_dir, ADAPTER_CONFIG)
  if not os.path.exists(cfg_file):
    raise CheckpointError(f"{cfg_file}: not found (a peft adapter directory needs {ADAPTER_CONFIG})")
  with open(cfg_file) as f:
    acfg = json.load(f)
  file = os.path.join(adapter_dir, "adapter_model.safetensors")
  if os.path.exists(file):
    from safetensors.numpy import load_file
    tensors = load_file(file)
  elif os.path.exists(os.path.join(adapter_dir, "adapter_model.bin")):
    import torch  # only PyTorch-format adapters need it
    file = os.path.join(adapter_dir, "adapter_model.bin")
    tensors = {k: v.float().numpy() for k, v in torch.load(file, map_location="cpu", weights_only=True).items()}
  else:
    raise CheckpointError(f"{adapter_dir}: no adapter_model.safetensors or adapter_model.bin")
  return cfg_file, acfg, file, tensors


def _check_adapter_config(acfg: dict, cfg_file: str):
  if acfg.get("peft_type", "LORA") != "LORA":
    raise CheckpointError(f"{cfg_file}: peft_type={acfg['peft_type']!r}; only LORA adapters can be read")
  for key in UNSUPPORTED_ADAPTER_KEYS:
    if acfg.get(key):
      raise CheckpointError(f"{cfg_file}: {key}={acfg[key]!r} is not supported (jaxlm reads plain LoRA)")
  if acfg.get("bias", "none") != "none":
    raise CheckpointError(f"{cfg_file}: bias={acfg['bias']!r} is not supported (only 'none': the adapter "
                          "must not train biases)")
  for key in ("r", "lora_alpha"):
    if not isinstance(acfg.get(key), (int, float)) or acfg[key] <= 0:
      raise CheckpointError(f"{cfg_file}: {key}={acfg.get(key)!r} must be a positive number")


def _check_targets(acfg: dict, cfg_file: str, modules: dict, prefix: str):
  """Every entry of target_modules must name a module jaxlm maps (peft's matching rules)."""
  targets = acfg.get("target_modules")
  names = [n for m in modules for n in (m, prefix + m)]
  short = sorted({re.sub(r"^(h|layers)\.\d+\.", "", m) for m in modules})
  if isinstance(targets, str):
    if targets != "all-linear" and not any(re.fullmatch(targets, n) for n in names):
      raise CheckpointError(f"{cfg_file}: target_modules={targets!r} matches no module jaxlm can map ({short})")
    return
  for t in targets or ():
    if not any(n == t or n.endswith("." + t) for n in names):
      raise CheckpointError(f"{cfg_file}: target_modules entry {t!r} names no module jaxlm can map "
                            f"(it maps {short})")


def _rows(b, r: int, part: int, parts: int, cfg_file: str, module: str):
  """Rank components [.., r_m] of one kernel's B^T slice [r_m, fan_out] to keep when the
  module's rank r_m exceeds the adapter's r: block `part` if the module is a block form of
  `parts` rank-r adapters (what peft_format writes for GPT-2's c_attn), else the components
  whose B is not zero (the others add exactly 0)."""
  r_m = b.shape[0]
  block = np.zeros(r_m, bool)
  if r_m == parts * r:
    block[part * r:(part + 1) * r] = True
    if not np.any(b[~block]):
      return block
  keep = np.any(b != 0, axis=1)
  if keep.sum() > r:
    raise CheckpointError(f"{cfg_file}: rank_pattern gives {module} rank {r_m} > r={r}; jaxlm has one LoRA "
                          "rank for all kernels, so load it with merge_adapter=True")
  return keep


def apply_peft_adapter(params: dict, model_type: str, num_layers: int, d_model: int, prefixes: tuple,
                       adapter_dir: str, merge_adapter: bool) -> dict:
  """Adds the peft LoRA adapter in `adapter_dir` to the unstacked jaxlm `params` (in place):
  merged into the kernels, or as ``_lora_a`` / ``_lora_b`` leaves. Returns the config fields
  the result needs ({} when merged)."""
  cfg_file, acfg, file, tensors = _read_adapter(adapter_dir)
  _check_adapter_config(acfg, cfg_file)
  modules = peft_modules(model_type, num_layers, d_model)
  _check_targets(acfg, cfg_file, modules, prefixes[0] if prefixes else "")
  r, alpha, rslora = int(acfg["r"]), float(acfg["lora_alpha"]), bool(acfg.get("use_rslora", False))
  ranks, alphas = acfg.get("rank_pattern") or {}, acfg.get("alpha_pattern") or {}
  found: Dict[str, dict] = {}
  for key, array in tensors.items():
    m = re.fullmatch(re.escape(PEFT_PREFIX) + r"(.+)\.lora_([AB])\.weight", key)
    if not m:
      raise CheckpointError(f"{file}: tensor {key!r} is not a LoRA A or B weight "
                            f"({PEFT_PREFIX}<module>.lora_A.weight / .lora_B.weight)")
    full, name = m.group(1), m.group(1)
    for p in prefixes:
      if name.startswith(p):
        name = name[len(p):]
    if name not in modules:
      raise CheckpointError(f"{cfg_file}: target_modules={acfg.get('target_modules')!r} put LoRA on {full!r} "
                            f"({file}: {key}), which jaxlm cannot map")
    found.setdefault(name, {"full": full})[m.group(2)] = np.asarray(array, np.float32)
  if not found:
    raise CheckpointError(f"{file}: no LoRA tensors")
  scale = alpha / (math.sqrt(r) if rslora else r)
  covered: Dict[str, int] = {}
  for name, ab in sorted(found.items()):
    full = ab["full"]
    for which in "AB":
      if which not in ab:
        raise CheckpointError(f"{file}: {PEFT_PREFIX}{full}.lora_{which}.weight is missing")
    # peft stores A [r, in] and B [out, r] for Linear and Conv1D alike (fan_in_fan_out only
    # says how the base weight is laid out), so the key needs no handling here.
    a, b = ab["A"].T, ab["B"].T  # [fan_in, r_m], [r_m, fan_out]
    r_m = _pattern_value(ranks, full, r)
    alpha_m = float(_pattern_value(alphas, full, alpha))
    kernels = modules[name]
    width = kernels[-1][3][1] if kernels[-1][3] else None
    if a.shape[1] != r_m or b.shape[0] != r_m:
      raise CheckpointError(f"{file}: LoRA tensors of {full} have rank {a.shape[1]} / {b.shape[0]}, but "
                            f"{cfg_file} gives it rank {r_m} (r / rank_pattern)")
    scale_m = alpha_m / (math.sqrt(r_m) if rslora else r_m)
    for part, (path, proj, num_in, cols) in enumerate(kernels):
      kernel = _get(params, path)
      fan_in = math.prod(kernel.shape[:num_in])
      fan_out = kernel.size // fan_in
      if a.shape[0] != fan_in or b.shape[1] != (width or fan_out):
        raise CheckpointError(f"{file}: LoRA tensors of {full} are A {ab['A'].shape} / B {ab['B'].shape}; the "
                              f"module needs A [{r_m}, {fan_in}] and B [{width or fan_out}, {r_m}]")
      b_k = b[:, cols[0]:cols[1]] if cols else b
      if merge_adapter:
        _set(params, path, (kernel + scale_m * (a @ b_k).reshape(kernel.shape)).astype(np.float32))
        continue
      a_k = a
      if r_m > r:
        keep = _rows(b_k, r, part, len(kernels), cfg_file, full)
        a_k, b_k = a_k[:, keep], b_k[keep]
      a_k = np.pad(a_k, ((0, 0), (0, r - a_k.shape[1])))
      b_k = np.pad(b_k, ((0, r - b_k.shape[0]), (0, 0)))
      if scale_m != scale:  # jaxlm has one scale: fold the module's into B
        b_k = b_k * (scale_m / scale)
      _set(params, path + "_lora_a", a_k.astype(np.float32))
      _set(params, path + "_lora_b", b_k.astype(np.float32))
      covered[proj] = covered.get(proj, 0) + 1
  if merge_adapter:
    return {}
  partial = sorted(p for p, n in covered.items() if n != num_layers)
  if partial:
    key = "layers_to_transform" if acfg.get("layers_to_transform") is not None else "target_modules"
    raise CheckpointError(f"{cfg_file}: {key}={acfg.get(key)!r} puts LoRA on {partial} in only some of the "
                          f"{num_layers} layers; jaxlm's LoRA covers every layer, so load it with "
                          "merge_adapter=True")
  return {"lora_rank": r, "lora_alpha": alpha, "lora_rslora": rslora,
          "lora_dropout": float(acfg.get("lora_dropout") or 0.0), "lora_targets": "|".join(sorted(covered))}


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


def load_hf(path: str, adapter_dir: Optional[str] = None, *, merge_adapter: bool = True, dtype: str = "float32",
            **overrides) -> Tuple[TransformerConfig, dict]:
  """Reads a Hugging Face GPT-2 / LLaMA / T5 directory, and the peft LoRA adapter in
  `adapter_dir` if given (GPT-2, LLaMA): merged into the kernels (`merge_adapter`, a config
  without LoRA) or as separate LoRA leaves (a config with lora_rank set). `overrides` set
  other config fields (e.g. dtype="bfloat16" compute, scan_layers=True); parameters are
  `dtype` (float32)."""
  hf = _read_config(path)
  kind = hf.get("model_type")
  if kind not in CONVERTERS:
    raise CheckpointError(f"{os.path.join(path, 'config.json')}: model_type={kind!r} is not one of "
                          f"{sorted(CONVERTERS)}")
  convert, prefixes = CONVERTERS[kind]
  tensors = _Tensors(_read_tensors(path), path, prefixes)
  config, params = convert(hf, tensors)
  tensors.check_all_used()
  if adapter_dir is not None:
    config = config.replace(**apply_peft_adapter(params, kind, config.num_layers, config.d_model, prefixes,
                                                 adapter_dir, merge_adapter))
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
