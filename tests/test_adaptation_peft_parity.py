"""peft LoRA adapters <-> jaxlm: load_hf(base, adapter_dir) merged and unmerged against peft's
own forward pass (PyTorch, CPU), save_peft_adapter back into peft, and the adapter settings
jaxlm refuses. Random weights, made here; nothing is downloaded."""
import json
import shutil

import numpy as np
import pytest
from flax import traverse_util

peft = pytest.importorskip("peft")
import torch  # noqa: E402
import transformers  # noqa: E402

from jaxlm.adaptation import lora  # noqa: E402
from jaxlm.adaptation.peft_format import save_peft_adapter  # noqa: E402
from jaxlm.models import build_model  # noqa: E402
from jaxlm.models.convert import load_hf  # noqa: E402

TOL = 1e-4
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _tokens(vocab, shape, seed=0):
  return np.random.RandomState(seed).randint(2, vocab, size=shape).astype(np.int64)


def _gpt2():
  return transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=97, n_positions=64, n_embd=48, n_layer=2, n_head=4)).eval()


def _llama():
  return transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
      num_key_value_heads=2, max_position_embeddings=128, rope_theta=500.0)).eval()


def _peft_dirs(tmp_path, make, tokens, seed, **lora_kwargs):
  """Saves a random base and a random LoRA adapter on it (B != 0); returns (base dir, adapter
  dir, peft logits)."""
  torch.manual_seed(seed)
  hf = make()
  base, adapter = str(tmp_path / "base"), str(tmp_path / "adapter")
  hf.save_pretrained(base)
  model = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, **lora_kwargs)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "lora_B" in name:
        p.normal_(std=0.3)
    ref = model(torch.tensor(tokens)).logits.numpy()
  model.save_pretrained(adapter)
  return base, adapter, ref


def _logits(config, params, tokens):
  logits, _ = build_model(config).apply(params, {"decoder_input_tokens": tokens.astype(np.int32)})
  return np.asarray(logits)


def _peft_logits(base, adapter, tokens):
  """A fresh HF base from disk with the adapter in `adapter` loaded by peft."""
  hf = transformers.AutoModelForCausalLM.from_pretrained(base)
  model = peft.PeftModel.from_pretrained(hf, adapter).eval()
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


def _max_diff(x, y):
  return float(np.max(np.abs(x - y)))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_adapter_parity_merged_unmerged_export(tmp_path, arch):
  make, targets, rslora = (_gpt2, GPT2_TARGETS, False) if arch == "gpt2" else (_llama, LLAMA_TARGETS, True)
  vocab = 97 if arch == "gpt2" else 101
  tokens = _tokens(vocab, (2, 19), seed=3)
  # LLaMA: rsLoRA, and v_proj's own alpha (jaxlm has one scale: load_hf folds the ratio into B).
  extra = {"fan_in_fan_out": True} if arch == "gpt2" else {"alpha_pattern": {"v_proj": 3}}
  base, adapter, ref = _peft_dirs(tmp_path, make, tokens, seed=4, target_modules=targets, use_rslora=rslora,
                                  **extra)

  merged_cfg, merged = load_hf(base, adapter, merge_adapter=True)
  assert merged_cfg.lora_rank == 0
  ours_merged = _logits(merged_cfg, merged, tokens)
  # Unmerged with scanned layers: the LoRA leaves are stacked like every other layer leaf.
  cfg, params = load_hf(base, adapter, merge_adapter=False, scan_layers=True)
  assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_rslora) == (4, 8.0, rslora)
  names = "query|key|value|out|wi|wo" if arch == "gpt2" else "query|key|value|out|wi_0|wi_1|wo"
  assert set(cfg.lora_targets.split("|")) == set(names.split("|"))
  ours = _logits(cfg, params, tokens)
  assert _max_diff(_logits(cfg.replace(lora_rank=0), lora.base(params), tokens), ref) > 1e-2  # LoRA matters
  np.testing.assert_allclose(ours_merged, ref, atol=TOL, rtol=0)
  np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)
  np.testing.assert_allclose(ours_merged, ours, atol=1e-5, rtol=0)
  np.testing.assert_allclose(_logits(cfg.replace(lora_rank=0), lora.merge(params, cfg), tokens), ours_merged,
                             atol=1e-5, rtol=0)

  # Export: peft loads jaxlm's adapter onto the HF base and computes jaxlm's logits.
  out = save_peft_adapter(params, cfg, str(tmp_path / "export"), arch)
  exported = _peft_logits(base, out, tokens)
  np.testing.assert_allclose(exported, ours, atol=TOL, rtol=0)
  # ... and load_hf reads it back at the same rank (GPT-2's c_attn block form included).
  cfg2, params2 = load_hf(base, out, merge_adapter=False, scan_layers=True)
  assert (cfg2.lora_rank, cfg2.lora_alpha, set(cfg2.lora_targets.split("|"))) == (4, 8.0, set(names.split("|")))
  again = traverse_util.flatten_dict(lora.adapter(params2))
  for key, value in traverse_util.flatten_dict(lora.adapter(params)).items():
    np.testing.assert_allclose(again[key], value, atol=1e-6, rtol=0)


def test_gpt2_partial_export_and_layer_subset(tmp_path):
  """Only query and value targeted (c_attn block of rank 2r); an adapter on some layers only
  merges exactly but has no unmerged jaxlm form."""
  tokens = _tokens(97, (2, 11), seed=5)
  base, adapter, ref = _peft_dirs(tmp_path, _gpt2, tokens, seed=6, target_modules=["c_attn"],
                                  fan_in_fan_out=True, layers_to_transform=[1])
  np.testing.assert_allclose(_logits(*load_hf(base, adapter), tokens), ref, atol=TOL, rtol=0)
  with pytest.raises(ValueError, match="layers_to_transform"):
    load_hf(base, adapter, merge_adapter=False)

  cfg, params = load_hf(base)
  cfg = cfg.replace(lora_rank=2, lora_alpha=6.0, lora_targets="query|value")
  rng, flat = np.random.RandomState(0), traverse_util.flatten_dict(params)
  for key, shape in traverse_util.flatten_dict(build_model(cfg).param_shapes()).items():
    if key[-1].endswith(lora.SUFFIXES):
      flat[key] = rng.normal(0, 0.3, shape.shape).astype(np.float32)
  params = traverse_util.unflatten_dict(flat)
  ours = _logits(cfg, params, tokens)
  out = save_peft_adapter(params, cfg, str(tmp_path / "export"), "gpt2")
  np.testing.assert_allclose(_peft_logits(base, out, tokens), ours, atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def llama_adapter(tmp_path_factory):
  root = tmp_path_factory.mktemp("llama_adapter")
  base, adapter, _ = _peft_dirs(root, _llama, _tokens(101, (1, 4)), seed=7, target_modules=["q_proj", "v_proj"])
  return base, adapter


@pytest.mark.parametrize("key,value,match", [
    ("use_dora", True, "use_dora"), ("bias", "all", "bias"), ("lora_bias", True, "lora_bias"),
    ("target_modules", ["q_proj", "lm_head"], "target_modules"), ("peft_type", "IA3", "peft_type"),
    ("rank_pattern", {"q_proj": 8}, "rank_pattern")])
def test_bad_adapter_config_names_the_key(tmp_path, llama_adapter, key, value, match):
  base, adapter = llama_adapter
  bad = shutil.copytree(adapter, tmp_path / "adapter")
  data = json.loads((bad / "adapter_config.json").read_text())
  data[key] = value
  (bad / "adapter_config.json").write_text(json.dumps(data))
  with pytest.raises(ValueError, match=match) as err:
    load_hf(base, str(bad))
  assert "adapter_config.json" in str(err.value)
