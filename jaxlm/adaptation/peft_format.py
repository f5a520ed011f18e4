"""jaxlm LoRA parameters -> a peft adapter directory that peft loads onto the Hugging Face
base model (``PeftModel.from_pretrained(model, out_dir)``), the inverse of
``convert.load_hf(base, adapter_dir, merge_adapter=False)``.

``save_peft_adapter(params, config, out_dir, "llama")`` writes adapter_config.json and
adapter_model.safetensors for a GPT-2 (``GPT2LMHeadModel``) or LLaMA / Mistral
(``*ForCausalLM``) base: the tree of a LoRA config (lora_rank > 0, layers scanned or not),
as ``load_hf(..., merge_adapter=False)`` returns it or training makes it. LLaMA's
projections map one to one. GPT-2 computes query, key and value in one Conv1D (c_attn),
so their k targeted adapters (rank r each) become one block adapter of rank k * r: A is
their A's side by side, B block-diagonal, and rank_pattern / alpha_pattern give c_attn
that rank and an alpha with the same scale (alpha' / r' = alpha / r, or over sqrt(r')
with rsLoRA); it computes exactly the same update, and load_hf reads it back at rank r.
"""
from __future__ import annotations

import json
import math
import os
import re

import numpy as np
from flax import traverse_util

from jaxlm.adaptation.lora import SUFFIXES
from jaxlm.models.convert import ADAPTER_CONFIG, CONVERTERS, PEFT_PREFIX, peft_modules
from jaxlm.models.projection import lora_applies


def _leaf(params, path: str, scanned: bool):
  parts = path.split("/")
  index = None
  if scanned:
    m = re.fullmatch(r"layers_(\d+)", parts[1])
    parts[1], index = "layers", int(m.group(1))
  tree = params
  for p in parts:
    if p not in tree:
      return None
    tree = tree[p]
  array = np.asarray(tree, np.float32)
  return array if index is None else array[index]


def save_peft_adapter(params, config, out_dir: str, model_type: str) -> str:
  """Writes the LoRA leaves of `params` (a tree of `config`, lora_rank > 0) as a peft
  adapter for a Hugging Face `model_type` ('gpt2', 'llama', 'mistral') base into `out_dir`;
  returns `out_dir`."""
  if config.lora_rank <= 0:
    raise ValueError(f"save_peft_adapter: TransformerConfig.lora_rank={config.lora_rank}; there is no "
                     "LoRA adapter to save")
  if model_type not in ("gpt2", "llama", "mistral"):
    raise ValueError(f"save_peft_adapter: model_type={model_type!r}; peft adapters are written for gpt2, "
                     "llama and mistral bases")
  r, alpha, rslora = config.lora_rank, float(config.lora_alpha), bool(config.lora_rslora)
  prefix = PEFT_PREFIX + CONVERTERS[model_type][1][0]
  tensors, targets, rank_pattern, alpha_pattern, written = {}, set(), {}, {}, 0
  for module, kernels in peft_modules(model_type, config.num_layers, config.d_model).items():
    chosen = []
    for part, (path, proj, _, cols) in enumerate(kernels):
      if not lora_applies(config, proj):
        continue
      a, b = (_leaf(params, path + s, config.scan_layers) for s in SUFFIXES)
      if a is None or b is None:
        raise ValueError(f"save_peft_adapter: TransformerConfig.lora_targets={config.lora_targets!r} "
                         f"covers {proj!r}, but params have no {path}_lora_a / _lora_b")
      chosen.append((part, a, b, cols))
    if not chosen:
      continue
    written += 2 * len(chosen)
    short = re.sub(r"^(h|layers)\.\d+\.", "", module)
    targets.add(short)
    if len(kernels) == 1:
      a_hf, b_hf = chosen[0][1].T, chosen[0][2].T
    else:  # fused module: block form of rank k * r
      k = len(chosen)
      a_hf = np.concatenate([a.T for _, a, _, _ in chosen], axis=0)
      b_hf = np.zeros((kernels[-1][3][1], k * r), np.float32)
      for j, (_, _, b, cols) in enumerate(chosen):
        b_hf[cols[0]:cols[1], j * r:(j + 1) * r] = b.T
      if k > 1:
        leaf_name = short.split(".")[-1]
        rank_pattern[leaf_name] = k * r
        alpha_pattern[leaf_name] = alpha * (math.sqrt(k) if rslora else k)
    tensors[f"{prefix}{module}.lora_A.weight"] = np.ascontiguousarray(a_hf, np.float32)
    tensors[f"{prefix}{module}.lora_B.weight"] = np.ascontiguousarray(b_hf, np.float32)
  present = sum(1 for k in traverse_util.flatten_dict(params) if k[-1].endswith(SUFFIXES))
  expected = written // config.num_layers if config.scan_layers else written  # scanned: one leaf per kernel
  if present != expected:
    raise ValueError(f"save_peft_adapter: params hold {present} LoRA leaves but only {expected} map to "
                     f"{model_type} modules (LoRA outside the decoder's attention and MLP has no peft form)")
  os.makedirs(out_dir, exist_ok=True)
  from safetensors.numpy import save_file
  save_file(tensors, os.path.join(out_dir, "adapter_model.safetensors"), metadata={"format": "pt"})
  adapter_config = {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": None, "inference_mode": True,
      "r": r, "lora_alpha": alpha, "use_rslora": rslora, "lora_dropout": float(config.lora_dropout),
      "target_modules": sorted(targets), "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
      "bias": "none", "fan_in_fan_out": model_type == "gpt2", "use_dora": False, "modules_to_save": None,
      "init_lora_weights": True}
  with open(os.path.join(out_dir, ADAPTER_CONFIG), "w") as f:
    json.dump(adapter_config, f, indent=2)
  return out_dir
