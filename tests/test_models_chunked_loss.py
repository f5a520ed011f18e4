"""The loss over the vocabulary in chunks (TransformerConfig.loss_chunk_tokens): the same
loss and gradients as the plain loss, without the whole batch's float32 logits in memory."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxlm.models import TransformerConfig, build_model

BASE = TransformerConfig(vocab_size=500, d_model=32, num_layers=1, num_heads=4, d_ff=64, max_len=32, z_loss=1e-3)


def _batch(model, rows=3, length=20, vocab=500):
  rng = np.random.RandomState(0)
  batch = model.dummy_batch(rows, length)
  batch["decoder_input_tokens"] = rng.randint(1, vocab, (rows, length)).astype(np.int32)
  batch["decoder_target_tokens"] = rng.randint(0, vocab, (rows, length)).astype(np.int32)  # 0s: padding
  batch["decoder_loss_weights"] = (batch["decoder_target_tokens"] > 0).astype(np.float32)
  if "encoder_input_tokens" in batch:
    batch["encoder_input_tokens"] = rng.randint(1, vocab, (rows, length)).astype(np.int32)
  return batch


@pytest.mark.parametrize("overrides", [dict(), dict(tie_embeddings=True, scale_decoder_outputs=True)],
                         ids=["untied", "tied_scaled"])
def test_chunked_loss_has_the_plain_loss_and_gradients(overrides):
  cfg = BASE.replace(**overrides)
  plain, chunked = build_model(cfg), build_model(cfg.replace(loss_chunk_tokens=24))  # 60 tokens: 3 chunks, padded
  batch = _batch(plain)
  params = plain.init(jax.random.key(0), batch)

  @jax.jit
  def both(params):
    out = []
    for m in (plain, chunked):
      loss, grads = jax.value_and_grad(lambda p, m=m: m.loss_fn(p, batch)[0])(params)
      out.append((loss, grads, m.token_losses(params, batch).correct))
    return out

  (loss, grads, correct), (chunked_loss, chunked_grads, chunked_correct) = both(params)
  np.testing.assert_allclose(chunked_loss, loss, rtol=1e-6)
  for g, h in zip(jax.tree.leaves(grads), jax.tree.leaves(chunked_grads)):
    np.testing.assert_allclose(h, g, atol=1e-5)
  np.testing.assert_array_equal(chunked_correct, correct)


def test_chunked_loss_needs_less_memory_for_a_large_vocabulary():
  """The compiled gradient's temporaries: the plain loss holds [rows * length, vocab]
  float32 logits (and their gradient); the chunked one a chunk's."""
  cfg = BASE.replace(vocab_size=32000, num_layers=1)
  sizes = {}
  for chunk in (0, 256):
    model = build_model(cfg.replace(loss_chunk_tokens=chunk))
    batch = _batch(model, rows=8, length=128, vocab=32000)
    params = jax.eval_shape(model.init, jax.random.key(0), batch)
    step = jax.jit(jax.grad(lambda p, b, m=model: m.loss_fn(p, b)[0]))
    sizes[chunk] = step.lower(params, batch).compile().memory_analysis().temp_size_in_bytes
  logits_bytes = 8 * 128 * 32000 * 4
  assert sizes[0] >= logits_bytes, sizes
  assert sizes[256] < sizes[0] - logits_bytes // 2, sizes
