"""The compiled decoder: cached decoding equals the full forward pass, sampling and beam search."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.inference import decoding
from jaxlm.inference.decoding import (DecodeConfig, filter_logits, generate, predict_batch,
                                      predict_batch_with_aux)
from jaxlm.models import TransformerConfig, build_model

V, N = 64, 6
ARCHS = ("decoder", "prefix_decoder", "encoder_decoder")
# Prompts of different lengths, BOS (0) first; right-padded.
PROMPTS = [[0, 5, 17, 33, 8, 21], [0, 40], [0, 12, 9, 3]]
ENCODER = [[7, 8, 9, 10, 11, 1], [30, 31, 1, 0, 0, 0], [44, 45, 46, 1, 0, 0]]


@functools.lru_cache(maxsize=None)
def setup(arch):
  extra = dict(position="t5_relative", scale_attention=False) if arch == "encoder_decoder" else {}
  # A large init_std makes the random model's distributions peaked and varied.
  model = build_model(TransformerConfig(arch=arch, vocab_size=V, d_model=32, num_layers=2, num_heads=4,
                                        num_kv_heads=2, d_ff=64, max_len=64, init_std=0.3, **extra))
  params = model.init(jax.random.key(1), model.dummy_batch(1, 8, 8))
  return model, params


def prompts():
  width = max(map(len, PROMPTS))
  tokens = np.zeros((len(PROMPTS), width), np.int32)
  for i, p in enumerate(PROMPTS):
    tokens[i, :len(p)] = p
  lengths = np.array([len(p) for p in PROMPTS])
  return tokens, (np.arange(width)[None] < lengths[:, None]).astype(np.int32), lengths


def run(arch, rng=None, **kw):
  """generate on the test prompts with DecodeConfig(**kw)."""
  model, params = setup(arch)
  tokens, mask, _ = prompts()
  config = DecodeConfig(**kw)
  if arch == "encoder_decoder":
    return generate(model, params, encoder_input_tokens=np.array(ENCODER), config=config, rng=rng)
  return generate(model, params, tokens, mask, config=config, rng=rng)


@functools.lru_cache(maxsize=None)
def greedy(arch):
  return run(arch, max_new_tokens=N, eos_id=None)


@functools.lru_cache(maxsize=None)
def full_forward_greedy(arch):
  """Greedy decoding by running the whole (right-padded, unpadded-left) sequence through
  model.apply at every step: no cache, no left padding. Returns (tokens, first-step logits)."""
  model, params = setup(arch)
  apply = jax.jit(model.apply)
  tokens, _, lengths = prompts()
  b = len(PROMPTS)
  if arch == "encoder_decoder":
    lengths = np.ones(b, np.int32)
    buf = np.zeros((b, 1 + N), np.int32)
  else:
    buf = np.zeros((b, tokens.shape[1] + N), np.int32)
    buf[:, :tokens.shape[1]] = tokens
  prefix = (np.arange(buf.shape[1])[None] < lengths[:, None]).astype(np.int32)
  out, first_logits = np.zeros((b, N), np.int32), None
  for i in range(N):
    batch = {"decoder_input_tokens": buf, "decoder_causal_attention": prefix,
             "encoder_input_tokens": np.array(ENCODER)}
    logits = np.asarray(apply(params, batch)[0])
    last = logits[np.arange(b), lengths - 1 + i]
    if i == 0:
      first_logits = last
    out[:, i] = last.argmax(-1)
    buf[np.arange(b), lengths + i] = out[:, i]
  return out, first_logits


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_greedy_matches_full_forward(arch):
  got = np.asarray(greedy(arch).tokens)
  want, first_logits = full_forward_greedy(arch)
  assert len(np.unique(want)) > 4, "degenerate test: the model repeats one token"
  np.testing.assert_array_equal(got, want)
  # Prefill logits at each prompt's last position == the full forward pass's.
  model, params = setup(arch)
  tokens, mask, _ = prompts()
  if arch == "encoder_decoder":
    tokens, mask, enc = np.zeros((3, 1), np.int32), np.ones((3, 1), np.int32), jnp.array(ENCODER)
  else:
    enc = None
  prefill = jax.jit(decoding.prefill, static_argnums=(0, 5))
  logits, _, _ = prefill(model, params, jnp.asarray(tokens), jnp.asarray(mask), enc, N)
  np.testing.assert_allclose(np.asarray(logits), first_logits, atol=1e-4, rtol=1e-4)


def test_sampling_is_reproducible_and_top_k_1_is_greedy():
  kw = dict(max_new_tokens=N, eos_id=None, method="sample", temperature=1.0)
  a = run("decoder", seed=3, **kw).tokens
  b = run("decoder", seed=3, **kw).tokens
  c = run("decoder", rng=jax.random.key(4), **kw).tokens
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert not np.array_equal(a, greedy("decoder").tokens)
  top1 = run("decoder", seed=5, max_new_tokens=N, eos_id=None, method="sample", temperature=2.0, top_k=1)
  np.testing.assert_array_equal(top1.tokens, greedy("decoder").tokens)


def test_filter_logits_top_k_and_top_p():
  logits = jnp.log(jnp.array([[0.05, 0.4, 0.1, 0.3, 0.15]]))
  keep = lambda x: np.isfinite(np.asarray(x))[0].tolist()
  assert keep(filter_logits(logits, top_k=2)) == [False, True, False, True, False]
  # Nucleus: 0.4 + 0.3 = 0.7 < 0.75, so the 0.15 token is needed too.
  assert keep(filter_logits(logits, top_p=0.75)) == [False, True, False, True, True]
  assert keep(filter_logits(logits, top_p=0.7)) == [False, True, False, True, False]
  assert keep(filter_logits(logits, top_p=0.01)) == [False, True, False, False, False]
  assert keep(filter_logits(logits, top_k=3, top_p=0.5)) == [False, True, False, True, False]
  # Sampling at high temperature with top_p=0.01 can only produce the argmax.
  toks = decoding.select_tokens(jax.random.key(0), jnp.tile(logits, (64, 1)), greedy=False,
                                temperature=5.0, top_p=0.01)
  assert set(np.asarray(toks).tolist()) == {1}


def test_greedy_stops_at_eos():
  free = np.asarray(greedy("decoder").tokens)
  eos = int(free[0, 2])  # pretend the token decoded third in row 0 is EOS
  out = run("decoder", max_new_tokens=N, eos_id=eos)
  toks, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  for row, ref in zip(toks, free):
    stop = list(ref).index(eos) + 1 if eos in ref else N
    np.testing.assert_array_equal(row[:stop], ref[:stop])
    assert (row[stop:] == 0).all()
  assert lengths[0] == 3 and (toks[0, 3:] == 0).all()


def _sequence_logprob(arch, new_tokens):
  """log p(new_tokens | prompt) by model.score_batch (up to and including EOS=1)."""
  model, params = setup(arch)
  tokens, _, lengths = prompts()
  b = len(PROMPTS)
  if arch == "encoder_decoder":
    targets = np.asarray(new_tokens)
    inputs = np.concatenate([np.zeros((b, 1), np.int32), targets[:, :-1]], 1)
    weights = np.ones_like(targets)
    batch = {"encoder_input_tokens": np.array(ENCODER)}
  else:
    width = tokens.shape[1] + N
    inputs, targets = np.zeros((b, width), np.int32), np.zeros((b, width), np.int32)
    weights, dca = np.zeros((b, width), np.int32), np.zeros((b, width), np.int32)
    for i, (p, n) in enumerate(zip(PROMPTS, lengths)):
      seq = list(p) + list(np.asarray(new_tokens[i]))
      inputs[i, :len(seq) - 1] = seq[:-1]
      targets[i, :len(seq) - 1] = seq[1:]
      weights[i, n - 1:len(seq) - 1] = 1
      dca[i, :n] = 1
    batch = {"decoder_causal_attention": dca}
  for i, row in enumerate(np.asarray(new_tokens)):  # nothing after EOS counts
    if 1 in row:
      cut = list(row).index(1) + 1
      start = 0 if arch == "encoder_decoder" else lengths[i] - 1
      weights[i, start + cut:] = 0
  batch.update(decoder_input_tokens=inputs, decoder_target_tokens=targets, decoder_loss_weights=weights)
  return np.asarray(jax.jit(model.score_batch)(params, batch))


@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
def test_beam_search(arch):
  ref = greedy_eos(arch)
  beam1 = run(arch, max_new_tokens=N, eos_id=1, method="beam", num_beams=1, length_penalty=0.0)
  np.testing.assert_array_equal(beam1.tokens[:, 0], ref.tokens)
  beam = run(arch, max_new_tokens=N, eos_id=1, method="beam", num_beams=4, length_penalty=0.0)
  assert beam.tokens.shape == (3, 4, N)
  scores = np.asarray(beam.scores)
  assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
  best_lp = _sequence_logprob(arch, beam.tokens[:, 0])
  greedy_lp = _sequence_logprob(arch, ref.tokens)
  np.testing.assert_allclose(best_lp, beam.logprobs[:, 0], atol=1e-3)
  np.testing.assert_allclose(greedy_lp, ref.logprobs, atol=1e-3)
  assert (best_lp >= greedy_lp - 1e-4).all()
  assert (best_lp > greedy_lp + 1e-3).any(), "beam search found nothing better than greedy"


@functools.lru_cache(maxsize=None)
def greedy_eos(arch):
  return run(arch, max_new_tokens=N, eos_id=1)


def test_length_penalty_prefers_longer_hypotheses():
  assert decoding.brevity_penalty(0.6, 1) == pytest.approx((6 / 6) ** 0.6)
  assert decoding.brevity_penalty(0.6, 10) == pytest.approx((15 / 6) ** 0.6)
  out = run("decoder", max_new_tokens=N, eos_id=1, method="beam", num_beams=4, length_penalty=1.0)
  lengths, logprobs, scores = map(np.asarray, (out.lengths, out.logprobs, out.scores))
  np.testing.assert_allclose(scores, logprobs / ((5.0 + lengths) / 6.0), rtol=1e-5)


def test_predict_batch_reads_seqio_prefix_lm_batches():
  """A PrefixLMFeatureConverter batch: the prompt is decoder_input_tokens where
  decoder_causal_attention is 1 (BOS + inputs); targets follow in the same row."""
  model, params = setup("prefix_decoder")
  _, _, lengths = prompts()
  width = 12
  dec = np.zeros((3, width), np.int32)
  for i, p in enumerate(PROMPTS):
    dec[i, :len(p)] = p
    dec[i, len(p):len(p) + 3] = [50, 51, 52]  # targets (ignored by prediction)
  dca = (np.arange(width)[None] < lengths[:, None]).astype(np.int32)
  batch = {"decoder_input_tokens": dec, "decoder_causal_attention": dca,
           "decoder_target_tokens": np.roll(dec, -1, 1)}
  toks, aux = predict_batch_with_aux(model, params, batch,
                                     DecodeConfig(max_new_tokens=N, eos_id=None, prompt_bucket=1))
  np.testing.assert_array_equal(toks, greedy("prefix_decoder").tokens)
  assert set(aux) == {"scores", "logprobs", "lengths"}
  # Default length: the room the shortest prompt leaves in the row.
  assert predict_batch(model, params, batch, DecodeConfig(eos_id=None)).shape == (3, width - 2)


def test_predict_batch_returns_the_best_beam_first():
  model, params = setup("prefix_decoder")
  tokens, mask, lengths = prompts()
  batch = {"decoder_input_tokens": np.pad(tokens, ((0, 0), (0, N))),
           "decoder_causal_attention": np.pad(mask, ((0, 0), (0, N)))}
  config = DecodeConfig(method="beam", max_new_tokens=N, eos_id=1, num_beams=3, prompt_bucket=1)
  toks, aux = predict_batch_with_aux(model, params, batch, config, return_all_beams=True)
  beams = run("prefix_decoder", method="beam", max_new_tokens=N, eos_id=1, num_beams=3)
  np.testing.assert_array_equal(aux["beams"], beams.tokens)
  np.testing.assert_array_equal(toks, np.asarray(beams.tokens)[:, 0])
  np.testing.assert_allclose(aux["scores"], np.asarray(beams.scores)[:, 0], rtol=1e-6)
  assert aux["beam_scores"].shape == (3, 3)


@pytest.mark.parametrize("field, value", [("method", "nucleus"), ("max_new_tokens", 0), ("top_p", 0.0),
                                          ("temperature", -1.0), ("top_k", -1), ("num_beams", 0),
                                          ("prompt_bucket", 0)])
def test_decode_config_names_the_setting_at_fault(field, value):
  with pytest.raises(ValueError, match=f"DecodeConfig.{field}="):
    DecodeConfig(**{field: value})


def test_generate_needs_a_length():
  with pytest.raises(ValueError, match="DecodeConfig.max_new_tokens"):
    run("decoder")
