"""The KV-cache hooks: prefill + one token at a time gives the full forward pass's logits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models import TransformerConfig, build_model

from train_helpers import prefill_then_steps

V = 50


@pytest.mark.parametrize("arch,position,scan", [("decoder", "rope", False), ("decoder", "alibi", True),
                                                ("prefix_decoder", "t5_relative", False),
                                                ("encoder_decoder", "learned", True)])
def test_cached_steps_match_full_forward(arch, position, scan):
  model = build_model(TransformerConfig(arch=arch, vocab_size=V, d_model=32, num_layers=2, num_heads=4,
                                        num_kv_heads=2, d_ff=64, max_len=32, position=position,
                                        scan_layers=scan))
  rng = np.random.RandomState(0)
  lengths = np.array([5, 3])       # two prompts of different lengths, left-padded to 5
  seq = rng.randint(2, V, (2, 9)).astype(np.int32)
  enc = rng.randint(2, V, (2, 6)).astype(np.int32)
  params = model.init(jax.random.key(0), {"decoder_input_tokens": seq, "encoder_input_tokens": enc,
                                          "decoder_causal_attention": np.zeros_like(seq)})
  p = 5
  logits, steps = prefill_then_steps(model, params, seq, enc, lengths, width=p)
  for i, n in enumerate(lengths):
    full = {"decoder_input_tokens": seq[i:i + 1, :n + 4], "encoder_input_tokens": enc[i:i + 1],
            "decoder_causal_attention": (np.arange(n + 4) < n).astype(np.int32)[None]}
    ref, _ = model.apply(params, full)
    np.testing.assert_allclose(logits[i, p - n:], ref[0, :n], atol=2e-5)
    np.testing.assert_allclose(steps[i], ref[0, n:n + 4], atol=2e-5)


def test_reorder_cache_selects_rows():
  model = build_model(TransformerConfig(vocab_size=V, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                                        scan_layers=True))
  cache = model.init_cache(3, 8)
  cache = jax.tree.map(lambda x: x + jnp.arange(3).reshape((1, 3) + (1,) * (x.ndim - 2)).astype(x.dtype)
                       if x.ndim >= 2 and x.shape[1] == 3 else x, cache)
  out = model.reorder_cache(cache, jnp.array([2, 2, 0]))
  layer_key = out["decoder"]["layers"]["self_attention"]["key"]
  assert layer_key.shape[1] == 3 and float(layer_key[0, 0].max()) == 2.0 and float(layer_key[0, 2].max()) == 0.0
