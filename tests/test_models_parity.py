"""jaxlm's forward pass against Hugging Face transformers (PyTorch, CPU) on the same weights."""
import numpy as np
import pytest

import torch
import transformers

from jaxlm.models import build_model  # noqa: E402
from jaxlm.models.convert import load_hf  # noqa: E402

TOL = 1e-4


def _tokens(vocab, shape, seed=0):
  return np.random.RandomState(seed).randint(2, vocab, size=shape).astype(np.int64)


def _save(model, tmp_path, safe=True):
  model.save_pretrained(tmp_path, safe_serialization=safe)
  return str(tmp_path)


def _jax_logits(path, batch, **overrides):
  config, params = load_hf(path, **overrides)
  model = build_model(config)
  logits, _ = model.apply(params, batch)
  return config, np.asarray(logits)


@pytest.mark.parametrize("scan", [False, True])
def test_gpt2_matches_transformers(tmp_path, scan):
  torch.manual_seed(0)
  hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=97, n_positions=64, n_embd=48, n_layer=3, n_head=4)).eval()
  tokens = _tokens(97, (2, 17))
  with torch.no_grad():
    ref = hf(torch.tensor(tokens)).logits.numpy()
  config, ours = _jax_logits(_save(hf, tmp_path), {"decoder_input_tokens": tokens.astype(np.int32)},
                             scan_layers=scan)
  assert config.position == "learned" and config.tie_embeddings
  np.testing.assert_allclose(ours, ref, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("rope", [None, {"rope_type": "linear", "factor": 4.0},
                                  {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 16}])
def test_llama_gqa_matches_transformers(tmp_path, rope):
  torch.manual_seed(1)
  cfg = transformers.LlamaConfig(
      vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
      num_key_value_heads=2, max_position_embeddings=128, rope_theta=500.0, rope_scaling=rope)
  hf = transformers.LlamaForCausalLM(cfg).eval()
  tokens = _tokens(101, (2, 40), seed=1)
  with torch.no_grad():
    ref = hf(torch.tensor(tokens)).logits.numpy()
  config, ours = _jax_logits(_save(hf, tmp_path, safe=rope is not None),
                             {"decoder_input_tokens": tokens.astype(np.int32)})
  assert config.kv_heads == 2 and config.rope_scaling == (rope or {}).get("rope_type", "none")
  np.testing.assert_allclose(ours, ref, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("proj", ["gated-gelu", "relu"])
def test_t5_matches_transformers(tmp_path, proj):
  torch.manual_seed(2)
  cfg = transformers.T5Config(
      vocab_size=90, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3, num_heads=4,
      relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj=proj,
      tie_word_embeddings=proj == "relu", decoder_start_token_id=0)
  hf = transformers.T5ForConditionalGeneration(cfg).eval()
  enc = _tokens(90, (2, 23), seed=2)
  dec = _tokens(90, (2, 11), seed=3)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(enc), decoder_input_ids=torch.tensor(dec)).logits.numpy()
  config, ours = _jax_logits(_save(hf, tmp_path), {"encoder_input_tokens": enc.astype(np.int32),
                                                    "decoder_input_tokens": dec.astype(np.int32)})
  assert config.arch == "encoder_decoder" and config.encoder_layers == 2 and config.num_layers == 3
  np.testing.assert_allclose(ours, ref, atol=TOL, rtol=TOL)
