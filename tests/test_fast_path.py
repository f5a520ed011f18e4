"""The fast path (scan over layers + remat) trains like the plain path: the loss curves agree
over 60 steps on CPU in float32.

Both runs start from the same parameters (the plain init, stacked for the scan by
convert.stack_layers), see the same batches (SyntheticData 'arithmetic', 8 x 32 tokens) and
use the trainer's own step (build_train_step) with adamw (lr 3e-3, constant). The curves
fall from 4.85 to 1.19 in 60 steps, so they are compared where the model is learning, not
at a plateau.

Measured (jax 0.10.2, 2-core x86 CPU): remat alone is bit-identical to the plain path; the
scan over layers reassociates a few float32 sums, giving max |loss difference| 4.8e-7 over
the 60 steps, 1.2e-7 at the last step, and at most 2.4e-7 on any parameter (an earlier
200-step run: 1.8e-6 and 2.2e-6). The bounds below are ~20-400x those: room for another
CPU or XLA version, still far below what a real mismatch gives: the scanned layers stacked
in reverse order differ by 2e-3 at the first step, 3e-2 by the fourth.

bfloat16 compute on the same fast path is not exact but follows the float32 curve: 0.34%
largest relative difference over the first 50 steps, last-20-step mean 1.512 vs 1.512.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models import TransformerConfig, build_model
from jaxlm.models.convert import stack_layers
from jaxlm.training import SyntheticData, adamw, build_train_step

STEPS, LR = 60, 3e-3
PLAIN = TransformerConfig(arch="decoder", vocab_size=128, d_model=64, num_layers=3, num_heads=4,
                          num_kv_heads=2, d_ff=128, max_len=64, position="rope", norm_type="rmsnorm",
                          mlp_activation="swiglu", scan_layers=False, remat_policy="none")
FAST = PLAIN.replace(scan_layers=True, remat_policy="dots_no_batch")


def _batches():
  data = SyntheticData(batch_size=8, feature_lengths={"targets": 32}, vocab_size=128, kind="arithmetic")
  return [{k: v[None] for k, v in next(data).items()} for _ in range(STEPS)]  # [k=1, b, t]


def _train(config, params, batches):
  """Per-step losses and final parameters (numpy) of the trainer's step on these batches."""
  setup = build_train_step(config, adamw(learning_rate=LR), {k: v[0] for k, v in batches[0].items()},
                           learning_rate=LR)
  state = setup.init_state(params=params)
  losses = []
  for batch in batches:
    state, metrics = setup.step(state, batch)
    losses.append(metrics["loss"])
  return np.asarray(jax.device_get(losses)), jax.device_get(state.params)


@pytest.fixture(scope="module")
def plain_run():
  batches = _batches()
  init = jax.device_get(build_model(PLAIN).init(jax.random.key(0), {k: v[0] for k, v in batches[0].items()}))
  losses, params = _train(PLAIN, init, batches)
  return batches, init, losses, params


def test_fast_path_really_scans_and_remats():
  """Guards the comparison against a vacuous pass: the fast config stacks its layers and
  its gradient has a remat (checkpoint) region; the plain one has neither."""
  batch = build_model(PLAIN).dummy_batch(2, 16)
  for config, scanned in ((PLAIN, False), (FAST, True)):
    model = build_model(config)
    shapes = model.param_shapes(batch)
    assert ("layers" in shapes["decoder"]) == scanned
    assert ("layers_0" in shapes["decoder"]) != scanned
    if scanned:
      assert all(x.shape[0] == config.num_layers for x in jax.tree.leaves(shapes["decoder"]["layers"]))
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: model.loss_fn(p, batch)[0]))(params))
    assert ("checkpoint" in jaxpr or "remat" in jaxpr) == scanned


def test_fast_path_loss_curve_matches_plain_float32(plain_run):
  batches, init, plain_losses, plain_params = plain_run
  fast_losses, fast_params = _train(FAST, stack_layers(init, FAST), batches)
  assert plain_losses[-1] < 0.3 * plain_losses[0]  # both curves are learning curves (measured 0.24)
  diff = np.abs(fast_losses - plain_losses)
  assert diff[:50].max() < 1e-5, diff[:50].max()
  assert diff.max() < 1e-4, (diff.max(), int(diff.argmax()))
  assert diff[-1] < 1e-4, diff[-1]
  stacked = stack_layers(plain_params, FAST)
  assert jax.tree.structure(stacked) == jax.tree.structure(fast_params)
  worst = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(fast_params)))
  assert worst < 1e-4, worst


def test_bfloat16_fast_path_tracks_float32(plain_run):
  """Not exact (bf16 matmul inputs), but close early and learning as well at the end:
  measured 0.34% largest relative difference over 50 steps, last 20 steps 1.512 vs 1.512."""
  batches, init, plain_losses, _ = plain_run
  config = FAST.replace(dtype="bfloat16")
  losses, _ = _train(config, stack_layers(init, config), batches)
  rel = np.abs(losses - plain_losses) / plain_losses
  assert rel[:50].max() < 0.02, rel[:50].max()
  assert losses[-20:].mean() < 1.1 * plain_losses[-20:].mean(), (losses[-20:].mean(), plain_losses[-20:].mean())
