"""Adapters, prefix tuning and prompt tuning on the tiny models: a fresh adapter model is
exactly its base, prefixes and prompts change the outputs but not their shapes, the
reparametrised prefix exports to plain prefixes, the KV cache gives the full forward pass,
packing still isolates segments, and only the added parameters train."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxlm.adaptation import prompts
from jaxlm.inference import decoding
from jaxlm.models import TransformerConfig, build_model
from jaxlm.models.peft_layers import Adapter
from jaxlm.training import Trainable

from train_helpers import prefill_then_steps, run_tiny, tiny_config

V = 64
ADDED = ("_adapter/", "prefix_tuning/", "soft_prompt/")


def _config(arch="decoder", **overrides):
  base = dict(arch=arch, vocab_size=V, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64,
              max_len=32)
  return TransformerConfig(**{**base, **overrides})


def _batch(arch, length=8, seed=0):
  rng = np.random.RandomState(seed)
  batch = {"decoder_input_tokens": rng.randint(2, V, (2, length)).astype(np.int32),
           "encoder_input_tokens": rng.randint(2, V, (2, 6)).astype(np.int32)}
  if arch == "prefix_decoder":
    batch["decoder_causal_attention"] = (np.arange(length)[None] < 3).repeat(2, 0).astype(np.int32)
  return batch


def _names(params):
  return ["/".join(k) for k in traverse_util.flatten_dict(params)]


def _added(params):
  return [n for n in _names(params) if any(a in n for a in ADDED)]


def _is_added(path) -> bool:
  return any(a in "/".join(path) for a in ADDED)


def _base_of(params):
  """The base model's tree: `params` without the PEFT leaves."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: v for k, v in flat.items() if not _is_added(k)})


def _apply(model, params, batch):
  """Jitted logits (compiling is quicker than running op by op here)."""
  return jax.jit(model.apply)(params, batch)[0]


def _random_params(model, batch, seed=0, added_std=1.0):
  """Random parameters of the model's shapes without running its (slow to compile) init:
  norm scales near 1, other base leaves N(0, 0.1), PEFT leaves N(0, added_std) (large
  enough that prefixes and prompts matter)."""
  rng = np.random.RandomState(seed)
  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    std = added_std if any(a.strip("/") in name for a in ADDED) else 0.1
    x = rng.normal(0.0, std, leaf.shape) + (1.0 if name.endswith("['scale']") else 0.0)
    return jnp.asarray(x, leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, model.param_shapes(batch))


def _fresh_adapters(params, cfg):
  """`params` with every `*_adapter` subtree as peft_layers.Adapter initialises it (what the
  model's init runs for it; the whole model's init is slow to compile)."""
  init = jax.jit(lambda key: nn.unbox(Adapter(cfg).init(key, jnp.zeros((1, cfg.d_model)))["params"]))
  keys = iter(jax.random.split(jax.random.key(1), 64))
  def fresh(tree):
    return {k: init(next(keys)) if k.endswith("_adapter") else fresh(v) if isinstance(v, dict) else v
            for k, v in tree.items()}
  return fresh(params)


@pytest.mark.parametrize("arch", ["decoder", "prefix_decoder", "encoder_decoder"])
def test_a_fresh_adapter_model_equals_its_base_exactly(arch):
  """The base model's parameters with fresh adapters grafted in: serial and parallel adapter
  models (the same tree) compute exactly the base's logits."""
  batch = _batch(arch)
  base_model = build_model(_config(arch))
  cfg = _config(arch, adapter_size=4)
  params = _fresh_adapters(_random_params(build_model(cfg), batch), cfg)
  sublayers = 2 + (3 if arch == "encoder_decoder" else 0)  # + the encoder's 2, the cross-attention
  assert len(_added(params)) == 4 * 2 * sublayers  # down, down_bias, up, up_bias per sub-layer and layer
  assert "decoder/layers_1/mlp_adapter/up" in _names(params)
  want = _apply(base_model, _base_of(params), batch)
  for kind in ("serial", "parallel"):
    apply = jax.jit(build_model(_config(arch, adapter_size=4, adapter_kind=kind)).apply)
    got, _ = apply(params, batch)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    moved = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.1 if jax.tree_util.keystr(path).endswith("['up']") else x, params)
    assert np.abs(np.asarray(apply(moved, batch)[0] - want)).max() > 1e-3, kind  # on the path


@pytest.mark.parametrize("arch,scan", [("decoder", True), ("encoder_decoder", False)])
def test_prefix_tuning_changes_outputs_and_exports_to_plain_prefixes(arch, scan):
  cfg = _config(arch, scan_layers=scan)
  batch = _batch(arch)
  pcfg = cfg.replace(prefix_length=3, prefix_hidden=16)
  model = build_model(pcfg)
  params = _random_params(model, batch)
  want = _apply(build_model(cfg), _base_of(params), batch)
  stacks = ("decoder", "encoder") if arch == "encoder_decoder" else ("decoder",)
  assert sorted(_added(params)) == sorted(f"{s}/prefix_tuning/{k}" for s in stacks
                                          for k in prompts.REPARAMETRISED)
  got = _apply(model, params, batch)
  assert got.shape == want.shape
  assert np.abs(np.asarray(got - want)).max() > 1e-4
  plain, plain_cfg = prompts.export_prefix(params, pcfg)
  assert plain_cfg.prefix_hidden == 0 and plain_cfg.prefix_length == 3
  key = plain["decoder"]["prefix_tuning"]["key"]
  assert key.shape == (2, 3, cfg.kv_heads, cfg.dim_per_head)
  plain_model = build_model(plain_cfg)
  assert jax.tree.map(np.shape, plain) == jax.tree.map(np.shape, plain_model.param_shapes(batch))
  exported = _apply(plain_model, plain, batch)
  np.testing.assert_allclose(exported, got, atol=1e-5)
  with pytest.raises(ValueError, match="prefix_hidden"):
    prompts.export_prefix(plain, plain_cfg)


@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
def test_prompt_tuning_changes_outputs_and_inits_from_the_vocabulary(arch):
  batch = _batch(arch)
  base_model, model = build_model(_config(arch)), build_model(_config(arch, prompt_length=4))
  params = _random_params(model, batch)
  assert _added(params) == ["soft_prompt/embedding"]
  base = _base_of(params)
  want = _apply(base_model, base, batch)
  got = _apply(model, params, batch)
  assert got.shape == want.shape  # logits for the real tokens only
  assert np.abs(np.asarray(got - want)).max() > 1e-4
  params = prompts.init_prompt_from_vocab(params, model.config, jax.random.key(3))
  prompt = np.asarray(params["soft_prompt"]["embedding"])
  table = np.asarray(params["token_embedding"]["embedding"])
  rows = [np.flatnonzero((table == row).all(-1)) for row in prompt]
  assert all(len(r) == 1 and r[0] > 0 for r in rows)  # each a row of the table (not padding's)
  assert len({int(r[0]) for r in rows}) == 4          # drawn without replacement
  with pytest.raises(ValueError, match="prompt_length"):
    prompts.init_prompt_from_vocab(base, base_model.config, jax.random.key(3))


@pytest.mark.parametrize("peft", [dict(prompt_length=3), dict(prefix_length=2)])
def test_packed_segments_equal_examples_run_alone(peft):
  model = build_model(_config(position="rope", **peft))
  rng = np.random.RandomState(0)
  parts = [rng.randint(2, V, n).astype(np.int32) for n in (5, 4)]
  row = np.zeros((1, 12), np.int32)
  seg, pos = np.zeros_like(row), np.zeros_like(row)
  row[0, :5], row[0, 5:9] = parts
  seg[0, :5], seg[0, 5:9] = 1, 2
  pos[0, :5], pos[0, 5:9] = np.arange(5), np.arange(4)
  params = _random_params(model, {"decoder_input_tokens": row})
  packed = _apply(model, params, {"decoder_input_tokens": row, "decoder_segment_ids": seg,
                                   "decoder_positions": pos})
  alone = np.zeros((2, 5), np.int32)  # one example a row, right-padded
  alone[0], alone[1, :4] = parts
  alone = _apply(model, params, {"decoder_input_tokens": alone,
                                  "decoder_segment_ids": (alone > 0).astype(np.int32)})
  np.testing.assert_allclose(packed[0, :5], alone[0], atol=2e-5)
  np.testing.assert_allclose(packed[0, 5:9], alone[1, :4], atol=2e-5)
  unmasked = _apply(model, params, {"decoder_input_tokens": parts[0][None]})  # no segment ids
  np.testing.assert_allclose(unmasked[0], alone[0], atol=2e-5)


@pytest.mark.parametrize("arch,position,scan,peft", [
    ("decoder", "rope", False, dict(prefix_length=3, prefix_hidden=8)),
    ("decoder", "alibi", True, dict(prompt_length=3)),
    ("prefix_decoder", "t5_relative", True, dict(prompt_length=2, prefix_length=2)),
    ("encoder_decoder", "learned", False, dict(prompt_length=3, prefix_length=2)),
])
def test_cached_steps_match_full_forward(arch, position, scan, peft):
  """tests/test_models_cache.py's check with prefixes and soft prompts: two left-padded
  prompts, prefill, then 4 steps one token at a time."""
  model = build_model(_config(arch, position=position, scan_layers=scan, **peft))
  rng = np.random.RandomState(0)
  lengths = np.array([5, 3])
  seq = rng.randint(2, V, (2, 9)).astype(np.int32)
  enc = rng.randint(2, V, (2, 6)).astype(np.int32)
  params = _random_params(model, {"decoder_input_tokens": seq, "encoder_input_tokens": enc,
                                  "decoder_causal_attention": np.zeros_like(seq)})
  p = 5
  logits, steps = prefill_then_steps(model, params, seq, enc, lengths, width=p)
  real = np.arange(9)[None] < (lengths + 4)[:, None]  # the full pass: each row right-padded to 9
  full = {"decoder_input_tokens": seq * real, "decoder_segment_ids": real.astype(np.int32),
          "encoder_input_tokens": enc,
          "decoder_causal_attention": (np.arange(9)[None] < lengths[:, None]).astype(np.int32)}
  ref = _apply(model, params, full)
  for i, n in enumerate(lengths):
    np.testing.assert_allclose(logits[i, p - n:], ref[i, :n], atol=2e-5)
    np.testing.assert_allclose(steps[i], ref[i, n:n + 4], atol=2e-5)


@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
def test_greedy_generation_follows_the_full_forward_pass(arch):
  """jaxlm.inference.decoding.generate (prefill + cached steps) with a soft prompt and
  prefixes: each new token is the full pass's argmax after the tokens before it."""
  model = build_model(_config(arch, prompt_length=3, prefix_length=2))
  rng = np.random.RandomState(1)
  lengths = np.array([5, 3])
  prompt = rng.randint(2, V, (2, 5)).astype(np.int32) * (np.arange(5)[None] < lengths[:, None])
  enc = rng.randint(2, V, (2, 6)).astype(np.int32)
  params = _random_params(model, {"decoder_input_tokens": prompt, "encoder_input_tokens": enc})
  decoder_prompt = (prompt, (prompt > 0).astype(np.int32)) if arch == "decoder" else (None, None)
  out = decoding.generate(model, params, *decoder_prompt, enc,
                          config=decoding.DecodeConfig(method="greedy", max_new_tokens=4, eos_id=None))
  new = np.asarray(out.tokens)
  start = lengths if arch == "decoder" else np.ones(2, int)  # encoder-decoders start from BOS 0
  rows = np.zeros((2, 9), np.int32)
  for i, n in enumerate(start):
    rows[i, :n] = prompt[i, :n] if arch == "decoder" else 0
    rows[i, n:n + 4] = new[i]
  real = (np.arange(9)[None] < (start + 4)[:, None]).astype(np.int32)
  logits = _apply(model, params, {"decoder_input_tokens": rows, "decoder_segment_ids": real,
                                  "encoder_input_tokens": enc})
  for i, n in enumerate(start):
    np.testing.assert_array_equal(np.argmax(logits[i, n - 1:n + 3], -1), new[i])


def test_only_the_added_parameters_train(tmp_path):
  """All three methods at once, from a saved base: the base leaves stay bit-identical, every
  added leaf moves from where the run started (the same run for 0 steps)."""
  base = run_tiny(str(tmp_path / "base"), 3, total_steps=3)
  cfg = tiny_config(adapter_size=4, prefix_length=2, prefix_hidden=8, prompt_length=2)
  def tune(name, steps):
    return run_tiny(str(tmp_path / name), steps, config=cfg, init_from=str(tmp_path / "base"),
                    init_from_allow_missing=ADDED, trainable=Trainable(added_only=True))
  tuned, start = tune("peft", 3), tune("start", 0)
  assert all(np.isfinite(h["loss"]) for h in tuned.history)
  before = traverse_util.flatten_dict(jax.device_get(base.state.params))
  after = traverse_util.flatten_dict(jax.device_get(tuned.state.params))
  changed = [k for k in before if not np.array_equal(after[k], before[k])]
  assert not changed, changed[:3]
  fresh = traverse_util.flatten_dict(jax.device_get(start.state.params))
  assert all(np.array_equal(fresh[k], before[k]) for k in before)  # the base, loaded
  added = [k for k in after if k not in before]
  assert {k[-2] for k in added} == {"self_attention_adapter", "mlp_adapter", "prefix_tuning", "soft_prompt"}
  unchanged = [k for k in added if np.array_equal(after[k], fresh[k])]
  assert not unchanged, unchanged[:3]
  assert all(np.abs(after[k]).max() > 0 for k in added if k[-1] in ("up", "up_bias"))  # they started at 0
