"""jaxlm.scaling: parameter counts and FLOPs, the scaling-law fits on synthetic losses of
known parameters, and the compute-optimal planner.

Tolerances (synthetic losses from Hoffmann et al.'s fitted law E=1.69, A=406.4, B=410.7,
alpha=0.34, beta=0.28 on a 6 x 6 grid, N in 1e7..1e10, D in 1e9..1e12):
  - exact losses: every parameter recovered to relative 1e-4;
  - losses x exp(0.2% Gaussian noise), seed 0: alpha and beta within 0.01, E within 1%,
    A and B within 15% (measured: alpha 0.3430, beta 0.2832, E 1.6996, A 426.8, B 437.3),
    and the bootstrap's 95% intervals (30 resamples) hold the true alpha, beta and the
    N_opt exponent a, and are wider at 1% noise than at 0.2%;
  - Kaplan power laws (1% noise; 0.1% with an offset E=1.5): the exponent within 0.01, the
    scale within 10%, the offset within 0.02.
"""
import numpy as np
import pytest

from jaxlm.models import TransformerConfig, build_model
from jaxlm.scaling import flops, laws, planner

TRUE = laws.ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def synthetic(noise, seed=0, law=TRUE):
  n, d = (g.reshape(-1) for g in np.meshgrid(np.logspace(7, 10, 6), np.logspace(9, 12, 6)))
  return n, d, law(n, d) * np.exp(np.random.default_rng(seed).normal(0.0, noise, n.shape))


def test_counts_and_flops_come_from_the_model():
  config = TransformerConfig(vocab_size=128, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_len=32,
                             position="learned", tie_embeddings=False)
  size = flops.model_size(config, seq_len=16)
  per_layer = 4 * 32 * 32 + 3 * 32 * 64 + 2 * 32  # q, k, v, o + SwiGLU + two RMSNorm scales
  assert size.non_embedding_params == 2 * per_layer + 32  # + the final norm
  assert size.params == size.non_embedding_params + 128 * 32 * 2 + 32 * 32  # embeddings, lm_head, positions
  assert size.flops_per_token == build_model(config).flops_per_token(16)
  assert flops.training_flops(config, 1000, seq_len=16) == 1000 * size.flops_per_token


def test_model_files_are_read_without_touching_gin():
  import gin
  config = flops.model_config("gin_configs/models/tiny_prefix_decoder.gin")  # includes tiny_decoder.gin
  assert (config.arch, config.d_model, config.num_kv_heads) == ("prefix_decoder", 64, 2)
  assert gin.config_str() == ""
  assert set(flops.model_files()) >= {"tiny_decoder", "gpt2_small", "llama_1b"}


def test_chinchilla_fit_recovers_exact_parameters():
  fit, objective = laws.fit_chinchilla(*synthetic(0.0))
  for name, value in TRUE.as_dict().items():
    assert getattr(fit, name) == pytest.approx(value, rel=1e-4), name
  assert objective < 1e-12


def test_chinchilla_fit_and_bootstrap_on_noisy_losses():
  boot = laws.bootstrap_chinchilla(*synthetic(0.002), samples=30)
  fit = boot.fit
  assert abs(fit.alpha - TRUE.alpha) < 0.01 and abs(fit.beta - TRUE.beta) < 0.01
  assert fit.E == pytest.approx(TRUE.E, rel=0.01)
  assert fit.A == pytest.approx(TRUE.A, rel=0.15) and fit.B == pytest.approx(TRUE.B, rel=0.15)
  truth = TRUE.as_dict() | laws.optimal_exponents(TRUE)
  for name in ("alpha", "beta", "a"):
    low, high = boot.intervals[name]
    assert low <= truth[name] <= high, (name, boot.intervals[name])
  for name, (low, high) in boot.intervals.items():
    value = (fit.as_dict() | laws.optimal_exponents(fit))[name]
    assert low < high and low <= value <= high * (1 + 1e-9), name
  noisy = laws.bootstrap_chinchilla(*synthetic(0.01), samples=30)
  width = lambda b, k: b.intervals[k][1] - b.intervals[k][0]
  assert all(width(noisy, k) > width(boot, k) for k in ("alpha", "beta", "E"))


@pytest.mark.parametrize("truth,noise", [(laws.PowerLaw(scale=8.8e13, exponent=0.076), 0.01),  # Kaplan's L(N)
                                         (laws.PowerLaw(scale=1e8, exponent=0.3, offset=1.5), 0.001)])
def test_power_law_recovers_exponent_and_scale(truth, noise):
  x = np.logspace(6, 10, 12)
  loss = truth(x) * np.exp(np.random.default_rng(1).normal(0, noise, x.shape))
  fit = laws.fit_power_law(x, loss, offset=bool(truth.offset))
  assert fit.exponent == pytest.approx(truth.exponent, abs=0.01)
  assert fit.scale == pytest.approx(truth.scale, rel=0.1)
  assert fit.offset == pytest.approx(truth.offset, abs=0.02)


def test_kaplan_fits_use_the_best_runs_and_the_frontier():
  c = np.array([1.0, 2.0, 2.0, 4.0, 8.0, 8.0])
  loss = np.array([5.0, 4.0, 4.5, 4.2, 3.0, 3.5])
  assert laws.frontier(c, loss).tolist() == [0, 1, 4]  # 4.2 at C=4 loses to 4.0 at C=2
  n = np.array([1, 1, 2, 2, 4, 4]) * 1e6
  d = np.array([1, 2, 1, 2, 1, 2]) * 1e8
  loss = 2.0 * (n / 1e6) ** -0.1 * (d / 1e8) ** -0.05
  fits = laws.kaplan_fits(n, d, 6 * n * d, loss)
  assert fits["L(N)"].exponent == pytest.approx(0.1, abs=1e-9)  # each N's best run: its larger D
  assert set(fits) == {"L(N)", "L(D)", "L(C)"}
  with pytest.raises(ValueError, match="finite and positive"):
    laws.fit_power_law([1, 2], [1.0, -1.0])


def test_compute_optimal_matches_numeric_minimisation_and_grows_with_budget():
  from scipy import optimize
  plans = [planner.compute_optimal(TRUE, c) for c in (1e18, 1e20, 1e22, 1e24)]
  for plan in plans:
    numeric = optimize.minimize_scalar(lambda log_n: TRUE(np.exp(log_n), plan.flops / (6 * np.exp(log_n))),
                                       bounds=(np.log(1e3), np.log(1e15)), method="bounded",
                                       options={"xatol": 1e-10})
    assert plan.params == pytest.approx(np.exp(numeric.x), rel=1e-3)
    assert plan.loss == pytest.approx(numeric.fun, rel=1e-9)
    assert 6 * plan.params * plan.tokens == pytest.approx(plan.flops)
  assert all(b.params > a.params and b.tokens > a.tokens and b.loss < a.loss for a, b in zip(plans, plans[1:]))
  # Chinchilla's exponents: N_opt and D_opt grow as C^0.45 and C^0.55.
  exponent = np.log(plans[-1].params / plans[0].params) / np.log(1e24 / 1e18)
  assert exponent == pytest.approx(laws.optimal_exponents(TRUE)["a"], rel=1e-9)
  with pytest.raises(ValueError, match="budget"):
    planner.compute_optimal(TRUE, 0.0)


def test_closest_model_file_moves_with_the_budget():
  picks = [planner.closest_model(planner.compute_optimal(TRUE, c).params, flops=c, arch="decoder")
           for c in (1e12, 1e19, 1e22)]
  assert [p.name for p in picks] == ["tiny_decoder", "gpt2_small", "llama_1b"]
  assert picks[1].tokens == pytest.approx(1e19 / picks[1].size.flops_per_token)
  assert planner.closest_model(3e8).name == "t5_1_1_base"  # any arch: the encoder-decoder is nearest
  with pytest.raises(ValueError, match="no model file of arch 'nope'"):
    planner.closest_model(1e6, arch="nope")
