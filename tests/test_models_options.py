"""Every allowed option combination runs forward and backward; the rest fail at config time.

The option space is covered pairwise: every pair of values of any two options appears in
at least one tested config (a greedy covering array with a fixed seed).
"""
import itertools
import random

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models import TransformerConfig, build_model

OPTIONS = {
    "arch": ["decoder", "prefix_decoder", "encoder_decoder"],
    "norm_type": ["layernorm", "rmsnorm"],
    "norm_position": ["pre", "post", "sandwich", "deepnorm"],
    "mlp_activation": ["relu", "gelu", "swiglu", "geglu"],
    "position": ["learned", "sinusoidal", "t5_relative", "alibi", "rope", "none"],
    "num_kv_heads": [None, 1, 2],
    "use_bias": [False, True],
    "tie_embeddings": [False, True],
    "num_experts": [0, 4],
    "scan_layers": [False, True],
    "remat_policy": ["none", "full", "dots"],
    "embed_norm": [False, True],
    "dtype": ["float32", "bfloat16"],
}


def pairwise_configs(seed=0):
  names = list(OPTIONS)
  uncovered = {(a, va, b, vb) for a, b in itertools.combinations(names, 2)
               for va in OPTIONS[a] for vb in OPTIONS[b]}
  rng = random.Random(seed)
  rows = []
  while uncovered:
    best, best_cover = None, -1
    for _ in range(60):
      row = {n: rng.choice(OPTIONS[n]) for n in names}
      a, va, b, vb = rng.choice(sorted(uncovered, key=str))
      row[a], row[b] = va, vb
      cover = sum((x, row[x], y, row[y]) in uncovered for x, y in itertools.combinations(names, 2))
      if cover > best_cover:
        best, best_cover = row, cover
    uncovered -= {(x, best[x], y, best[y]) for x, y in itertools.combinations(names, 2)}
    rows.append(best)
  return rows


CONFIGS = pairwise_configs()


def test_covering_array_covers_all_pairs():
  for a, b in itertools.combinations(OPTIONS, 2):
    seen = {(r[a], r[b]) for r in CONFIGS}
    assert seen == set(itertools.product(OPTIONS[a], OPTIONS[b])), (a, b)


@pytest.mark.parametrize("options", CONFIGS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_option_combination_runs_forward_and_backward(options):
  config = TransformerConfig(vocab_size=53, d_model=32, num_layers=2, num_heads=4, d_ff=48, max_len=32,
                             rope_scaling="linear" if options["position"] == "rope" else "none",
                             rope_scaling_factor=2.0, z_loss=1e-4, **options)
  model = build_model(config)
  batch = model.dummy_batch(2, 10, encoder_length=7)
  rng = np.random.RandomState(0)
  batch["decoder_input_tokens"] = rng.randint(1, 53, (2, 10)).astype(np.int32)
  batch["decoder_target_tokens"] = rng.randint(1, 53, (2, 10)).astype(np.int32)
  if "encoder_input_tokens" in batch:
    batch["encoder_input_tokens"] = rng.randint(1, 53, (2, 7)).astype(np.int32)
  if "decoder_causal_attention" in batch:
    batch["decoder_causal_attention"][:, :4] = 1

  @jax.jit  # one compilation for init + forward + backward keeps the suite fast
  def init_and_grad(rng, batch):
    params = model._init_variables(rng, batch)["params"]
    return jax.value_and_grad(model.loss_fn, has_aux=True)(flax.linen.unbox(params), batch)

  (loss, metrics), grads = init_and_grad(jax.random.key(0), batch)
  assert np.isfinite(float(loss)) and 2.0 < float(metrics["cross_entropy"]) < 8.0
  norms = [float(jnp.linalg.norm(g.astype(jnp.float32))) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and sum(norms) > 0
  if options["num_experts"]:
    assert float(metrics["aux_loss"]) > 0


@pytest.mark.parametrize("fields,message", [
    (dict(num_heads=6, num_kv_heads=4), "num_kv_heads"),
    (dict(d_model=30, num_heads=4), "d_model"),
    (dict(position="alibi", rope_scaling="linear", rope_scaling_factor=2.0), "rope_scaling"),
    (dict(num_experts=4, moe_every=2, scan_layers=True), "moe_every"),
    (dict(num_experts=4, experts_per_token=5), "experts_per_token"),
    (dict(arch="decoder", num_encoder_layers=2), "num_encoder_layers"),
    (dict(norm_position="middle"), "norm_position"),
    (dict(position="rope", head_dim=7), "head_dim"),
    (dict(num_experts=1), "num_experts"),
    (dict(attention_kernel="cudnn"), "attention_kernel"),
])
def test_conflicting_options_are_rejected_naming_the_fields(fields, message):
  with pytest.raises(ValueError, match=message):
    build_model(TransformerConfig(**fields))


@pytest.mark.parametrize("num_experts", [0, 4])
def test_scanned_layers_match_unrolled_layers_on_the_same_weights(num_experts):
  base = dict(vocab_size=53, d_model=32, num_layers=3, num_heads=4, d_ff=48, max_len=32,
              num_experts=num_experts, norm_position="deepnorm")
  unrolled = build_model(TransformerConfig(**base))
  scanned = build_model(TransformerConfig(**base, scan_layers=True))
  batch = unrolled.dummy_batch(2, 10)
  batch["decoder_input_tokens"] = np.random.RandomState(0).randint(1, 53, (2, 10)).astype(np.int32)
  params = unrolled.init(jax.random.key(0), batch)
  decoder = dict(params["decoder"])
  layers = [decoder.pop(f"layers_{i}") for i in range(3)]
  decoder["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  stacked = {**params, "decoder": decoder}
  assert jax.tree.structure(stacked) == jax.tree.structure(scanned.param_shapes(batch))

  logits, aux = unrolled.apply(params, batch)
  scan_logits, scan_aux = scanned.apply(stacked, batch)
  np.testing.assert_allclose(np.asarray(scan_logits), np.asarray(logits), atol=1e-5)
  np.testing.assert_allclose(float(scan_aux), float(aux), rtol=1e-6)
  assert (float(aux) > 0) == bool(num_experts)
