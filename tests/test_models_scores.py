"""score_batch: per-example and per-token target log-likelihoods, against the loss and an
independent log-softmax."""
import jax
import numpy as np
import pytest

from jaxlm.models import TransformerConfig, build_model
from jaxlm.models.model import cross_entropy

V = 47


def batch_for(model, seed=0):
  rng = np.random.RandomState(seed)
  batch = model.dummy_batch(3, 9, encoder_length=5)
  batch["decoder_input_tokens"] = rng.randint(1, V, (3, 9)).astype(np.int32)
  batch["decoder_target_tokens"] = rng.randint(1, V, (3, 9)).astype(np.int32)
  weights = np.ones((3, 9), np.float32)
  weights[0, 6:] = 0.0    # a padded row
  weights[1, :2] = 0.0    # an unscored prompt
  weights[2, 4] = 0.5     # a fractional weight
  batch["decoder_loss_weights"] = weights
  if "encoder_input_tokens" in batch:
    batch["encoder_input_tokens"] = rng.randint(1, V, (3, 5)).astype(np.int32)
  return batch


@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
def test_per_token_scores_are_weighted_log_softmax_and_sum_to_the_loss(arch):
  model = build_model(TransformerConfig(arch=arch, vocab_size=V, d_model=32, num_layers=2,
                                        num_heads=4, d_ff=64, max_len=16))
  batch = batch_for(model)
  params = model.init(jax.random.key(0), batch)
  weights = batch["decoder_loss_weights"]

  per_token = np.asarray(model.score_batch(params, batch, per_token=True))
  summed = np.asarray(model.score_batch(params, batch))
  assert per_token.shape == (3, 9) and summed.shape == (3,)
  assert np.all(per_token[weights == 0] == 0.0) and np.all(per_token[weights > 0] < 0)
  np.testing.assert_allclose(per_token.sum(-1), summed, rtol=1e-6)

  logits, _ = model.apply(params, batch)
  log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  expected = np.take_along_axis(log_probs, batch["decoder_target_tokens"][..., None], -1)[..., 0]
  np.testing.assert_allclose(per_token, expected * weights, rtol=1e-5, atol=1e-6)
  nll, _, _ = cross_entropy(logits, batch["decoder_target_tokens"], weights)
  np.testing.assert_allclose(per_token, -np.asarray(nll), rtol=1e-6)

  loss, metrics = model.loss_fn(params, batch)
  np.testing.assert_allclose(float(loss), -per_token.sum() / weights.sum(), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["weight_sum"]), weights.sum())


def test_default_weights_skip_padding_targets():
  model = build_model(TransformerConfig(vocab_size=V, d_model=32, num_layers=1, num_heads=4,
                                        d_ff=64, max_len=16))
  batch = batch_for(model)
  del batch["decoder_loss_weights"]
  batch["decoder_target_tokens"][:, 7:] = 0  # pad id
  params = model.init(jax.random.key(0), batch)
  per_token = np.asarray(model.score_batch(params, batch, per_token=True))
  assert np.all(per_token[:, 7:] == 0.0) and np.all(per_token[:, :7] < 0)
