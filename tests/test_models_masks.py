"""Masks that could fail: causality, the prefix-LM mask, and packing independence."""
import jax
import numpy as np
import pytest

from jaxlm.models import TransformerConfig, build_model

V = 61


def tiny(arch="decoder", **kw):
  base = dict(arch=arch, vocab_size=V, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
              d_ff=64, max_len=64)
  base.update(kw)
  return build_model(TransformerConfig(**base))


def tokens(shape, seed=0):
  return np.random.RandomState(seed).randint(2, V, size=shape).astype(np.int32)


@pytest.mark.parametrize("position", ["rope", "learned", "alibi", "t5_relative", "sinusoidal"])
def test_future_tokens_never_change_earlier_logits(position):
  model = tiny(position=position)
  x = tokens((2, 12))
  params = model.init(jax.random.key(0), {"decoder_input_tokens": x})
  y = x.copy()
  y[:, 7:] = tokens((2, 5), seed=1)
  a, _ = model.apply(params, {"decoder_input_tokens": x})
  b, _ = model.apply(params, {"decoder_input_tokens": y})
  np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-6)
  assert np.abs(np.asarray(a[:, 7:] - b[:, 7:])).max() > 1e-3  # the change is visible later


def test_prefix_attends_both_ways_and_suffix_is_causal():
  model = tiny("prefix_decoder")
  x = tokens((1, 12))
  prefix = np.zeros((1, 12), np.int32)
  prefix[:, :6] = 1
  batch = lambda t: {"decoder_input_tokens": t, "decoder_causal_attention": prefix}
  params = model.init(jax.random.key(0), batch(x))
  base, _ = model.apply(params, batch(x))
  y = x.copy()
  y[0, 4] = (x[0, 4] + 1) % V or 2  # a later prefix token changes earlier prefix positions
  changed, _ = model.apply(params, batch(y))
  assert np.abs(np.asarray(changed[0, :4] - base[0, :4])).max() > 1e-4
  z = x.copy()
  z[0, 9] = (x[0, 9] + 1) % V or 2  # a suffix token changes nothing before it
  later, _ = model.apply(params, batch(z))
  np.testing.assert_allclose(later[0, :9], base[0, :9], atol=1e-6)
  # With no prefix marked, the prefix decoder is exactly the causal decoder.
  causal = tiny("decoder")
  none = {"decoder_input_tokens": x, "decoder_causal_attention": np.zeros_like(prefix)}
  np.testing.assert_allclose(model.apply(params, none)[0], causal.apply(params, {"decoder_input_tokens": x})[0],
                             atol=1e-6)


def _packed(lengths, total, seed=0):
  parts = [tokens((1, n), seed + i)[0] for i, n in enumerate(lengths)]
  row = np.zeros((1, total), np.int32)
  seg = np.zeros((1, total), np.int32)
  pos = np.zeros((1, total), np.int32)
  start = 0
  for i, p in enumerate(parts):
    row[0, start:start + len(p)] = p
    seg[0, start:start + len(p)] = i + 1
    pos[0, start:start + len(p)] = np.arange(len(p))
    start += len(p)
  return parts, row, seg, pos


@pytest.mark.parametrize("arch,position", [("decoder", "rope"), ("decoder", "learned"),
                                           ("decoder", "alibi"), ("prefix_decoder", "t5_relative")])
def test_packed_segments_equal_examples_run_alone(arch, position):
  model = tiny(arch, position=position)
  parts, row, seg, pos = _packed([5, 7, 3], 16)
  batch = {"decoder_input_tokens": row, "decoder_segment_ids": seg, "decoder_positions": pos}
  prefix = None
  if arch == "prefix_decoder":
    prefix = (pos < 2).astype(np.int32) * (seg > 0)
    batch["decoder_causal_attention"] = prefix
  params = model.init(jax.random.key(0), batch)
  packed, _ = model.apply(params, batch)
  start = 0
  for i, p in enumerate(parts):
    alone = {"decoder_input_tokens": p[None]}
    if prefix is not None:
      alone["decoder_causal_attention"] = (np.arange(len(p)) < 2).astype(np.int32)[None]
    ref, _ = model.apply(params, alone)
    np.testing.assert_allclose(packed[0, start:start + len(p)], ref[0], atol=2e-5)
    start += len(p)


def test_packed_encoder_decoder_segments_are_independent():
  model = tiny("encoder_decoder", position="t5_relative")
  enc_parts, enc, enc_seg, enc_pos = _packed([6, 4], 12, seed=10)
  dec_parts, dec, dec_seg, dec_pos = _packed([3, 5], 9, seed=20)
  batch = {"encoder_input_tokens": enc, "encoder_segment_ids": enc_seg, "encoder_positions": enc_pos,
           "decoder_input_tokens": dec, "decoder_segment_ids": dec_seg, "decoder_positions": dec_pos}
  params = model.init(jax.random.key(0), batch)
  packed, _ = model.apply(params, batch)
  start = 0
  for e, d in zip(enc_parts, dec_parts):
    ref, _ = model.apply(params, {"encoder_input_tokens": e[None], "decoder_input_tokens": d[None]})
    np.testing.assert_allclose(packed[0, start:start + len(d)], ref[0], atol=2e-5)
    start += len(d)


def test_encoder_padding_is_ignored():
  model = tiny("encoder_decoder", position="rope")
  enc = tokens((1, 8))
  padded = np.concatenate([enc, np.zeros((1, 5), np.int32)], axis=1)
  dec = tokens((1, 4), seed=3)
  params = model.init(jax.random.key(0), {"encoder_input_tokens": enc, "decoder_input_tokens": dec})
  a, _ = model.apply(params, {"encoder_input_tokens": enc, "decoder_input_tokens": dec})
  b, _ = model.apply(params, {"encoder_input_tokens": padded, "decoder_input_tokens": dec})
  np.testing.assert_allclose(a, b, atol=1e-5)
