"""SFTObjective on hand-made instruction batches in SeqIO's layouts, for the causal, prefix
and encoder-decoder models: the loss falls on the outputs only (weight-0 targets change
neither loss nor gradient), token and sequence normalization against an independent
log-softmax, microbatch additivity, the option's error, a core import without TensorFlow,
and a few steps of train()."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_core_without_tensorflow import BLOCKER
from train_helpers import ROOT, run_tiny, tiny_config
from jaxlm.adaptation import SFTObjective
from jaxlm.adaptation.sft import per_example_means
from jaxlm.models import build_model
from jaxlm.training import NextTokenObjective

ARCHS = ("decoder", "prefix_decoder", "encoder_decoder")
LENGTH = 16
# (prompt length, output length) per packed example, two rows of two examples each; the
# output lengths differ, so per-example and per-token means differ.
ROWS = (((4, 3), (3, 5)), ((5, 2), (2, 4)))
PROMPT_VOCAB, OUTPUT_VOCAB = (2, 64), (64, 128)  # disjoint, to tell the two apart


def _examples(seed):
  rng = np.random.RandomState(seed)
  tokens = lambda n, vocab: list(rng.randint(*vocab, size=n))
  return [[(tokens(p, PROMPT_VOCAB), tokens(o, OUTPUT_VOCAB)) for p, o in row] for row in ROWS]


def _pack(sequences, length):
  """One packed row of token lists: targets, inputs (shifted, 0 at each segment start),
  segment ids from 1, positions from 0 in each segment."""
  row = {k: np.zeros(length, np.int32) for k in ("targets", "inputs", "segments", "positions")}
  i = 0
  for s, seq in enumerate(sequences, 1):
    n = len(seq)
    row["targets"][i:i + n], row["inputs"][i:i + n] = seq, [0] + seq[:-1]
    row["segments"][i:i + n], row["positions"][i:i + n] = s, np.arange(n)
    i += n
  return row


def decoder_row(examples, prefix):
  """seqio.PrefixLMFeatureConverter's packed layout: prompt + output as one sequence, loss
  weights 1 on the outputs, causal attention 1 over the prompt and the first target."""
  row = _pack([p + o for p, o in examples], LENGTH)
  weights, causal, i = np.zeros(LENGTH, np.int32), np.zeros(LENGTH, np.int32), 0
  for p, o in examples:
    weights[i + len(p):i + len(p) + len(o)] = 1
    causal[i:i + len(p) + 1] = 1
    i += len(p) + len(o)
  out = {"decoder_target_tokens": row["targets"], "decoder_input_tokens": row["inputs"],
         "decoder_loss_weights": weights, "decoder_segment_ids": row["segments"],
         "decoder_positions": row["positions"]}
  return {**out, "decoder_causal_attention": causal} if prefix else out


def encdec_row(examples):
  """seqio.EncDecFeatureConverter's packed layout: prompts in the encoder, outputs (all
  weighted) in the decoder."""
  enc, dec = _pack([p for p, _ in examples], LENGTH), _pack([o for _, o in examples], LENGTH)
  return {"encoder_input_tokens": enc["targets"], "encoder_segment_ids": enc["segments"],
          "encoder_positions": enc["positions"], "decoder_target_tokens": dec["targets"],
          "decoder_input_tokens": dec["inputs"],
          "decoder_loss_weights": (dec["targets"] > 0).astype(np.int32),
          "decoder_segment_ids": dec["segments"], "decoder_positions": dec["positions"]}


def make_batch(arch, seed=0):
  rows = [encdec_row(ex) if arch == "encoder_decoder" else decoder_row(ex, arch == "prefix_decoder")
          for ex in _examples(seed)]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def setup(arch, **config):
  model = build_model(tiny_config(arch=arch, **{"init_std": 0.5, **config}))  # peaked logits
  batch = make_batch(arch)
  return model, model.init(jax.random.key(0), batch), batch


def mean_loss_and_grad(model, objective):
  def mean(params, batch):
    loss, normalizer, _ = objective(model, params, {}, batch)
    return loss / normalizer
  return jax.jit(jax.value_and_grad(mean))


def with_target(batch, index, token):
  changed = {k: v.copy() for k, v in batch.items()}
  changed["decoder_target_tokens"][index] = token
  return changed


@pytest.mark.parametrize("arch", ARCHS)
def test_only_output_targets_carry_the_loss(arch):
  model, params, batch = setup(arch)
  f = mean_loss_and_grad(model, SFTObjective())
  loss, grad = f(params, batch)
  weights = batch["decoder_loss_weights"]
  unweighted = list(zip(*np.nonzero(weights == 0)))
  assert len(unweighted) == 2 * LENGTH - 14  # 14 output tokens; the rest prompts or padding
  for index in unweighted + [np.nonzero(weights == 0)]:  # each one, then all at once
    other_loss, other_grad = f(params, with_target(batch, index, 7))
    assert float(other_loss) == float(loss), index
    jax.tree.map(np.testing.assert_array_equal, other_grad, grad)
  for index in zip(*np.nonzero(weights)):
    token = batch["decoder_target_tokens"][index]
    assert abs(float(f(params, with_target(batch, index, token % 127 + 1))[0]) - float(loss)) > 1e-4, index

  targets = batch["decoder_target_tokens"][weights > 0]
  assert np.all(targets >= OUTPUT_VOCAB[0])  # no instruction token is ever a weighted target
  if arch == "encoder_decoder":
    outputs = [t for row in _examples(0) for _, o in row for t in o]
    np.testing.assert_array_equal(targets, outputs)
    changed = {k: v.copy() for k, v in batch.items()}
    changed["encoder_input_tokens"][0, 1] += 1  # the instruction is context: it matters
    assert abs(float(f(params, changed)[0]) - float(loss)) > 1e-4
  else:
    changed = {k: v.copy() for k, v in batch.items()}
    changed["decoder_input_tokens"][0, 2] += 1  # so is the prompt in the decoder's inputs
    assert abs(float(f(params, changed)[0]) - float(loss)) > 1e-4


def independent_nll(model, params, batch):
  logits, _ = model.apply(params, batch)
  log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float64)
  lse = np.asarray(jax.nn.logsumexp(logits, axis=-1), np.float64)
  return -np.take_along_axis(log_probs, batch["decoder_target_tokens"][..., None], -1)[..., 0], lse


@pytest.mark.parametrize("arch", ARCHS)
def test_token_and_sequence_normalization(arch):
  z = 1e-3
  model, params, batch = setup(arch, z_loss=z)
  nll, lse = independent_nll(model, params, batch)
  w, segments = batch["decoder_loss_weights"] > 0, batch["decoder_segment_ids"]
  token_mean = nll[w].mean()
  examples = [(r, s) for r in range(w.shape[0]) for s in np.unique(segments[r][w[r]])]
  assert len(examples) == 4
  in_example = lambda r, s: w[r] & (segments[r] == s)
  sequence_mean = np.mean([nll[r][in_example(r, s)].mean() for r, s in examples])
  z_tokens = np.mean(z * lse[w] ** 2)
  z_sequences = np.mean([np.mean(z * lse[r][in_example(r, s)] ** 2) for r, s in examples])

  for normalize, ce, zl, count in (("tokens", token_mean, z_tokens, w.sum()),
                                   ("sequences", sequence_mean, z_sequences, len(examples))):
    loss, normalizer, sums = SFTObjective(normalize)(model, params, {}, batch)
    assert float(normalizer) == count, normalize
    np.testing.assert_allclose(float(sums["cross_entropy"] / normalizer), ce, rtol=1e-6, err_msg=normalize)
    np.testing.assert_allclose(float(sums["z_loss"] / normalizer), zl, rtol=1e-5, err_msg=normalize)
    np.testing.assert_allclose(float(loss / normalizer), ce + zl, rtol=1e-6, err_msg=normalize)
    assert float(sums["output_tokens"]) == w.sum() and float(sums["aux_loss"]) == 0.0
    assert 0.0 <= float(sums["accuracy"] / normalizer) <= 1.0
  assert abs(token_mean - sequence_mean) > 1e-3


def test_tokens_is_the_next_token_loss_with_moe_aux():
  model, params, batch = setup("decoder", num_experts=4, z_loss=1e-3)
  loss, normalizer, sums = SFTObjective()(model, params, {}, batch)
  ref_loss, ref_normalizer, ref_sums = NextTokenObjective()(model, params, {}, batch)
  assert float(ref_sums["aux_loss"]) > 0
  assert float(loss) == float(ref_loss) and float(normalizer) == float(ref_normalizer)
  for key, value in ref_sums.items():
    assert float(sums[key]) == float(value), key
  _, examples, seq_sums = SFTObjective("sequences")(model, params, {}, batch)
  np.testing.assert_allclose(float(seq_sums["aux_loss"] / examples), float(ref_sums["aux_loss"] / normalizer),
                             rtol=1e-6)  # aux reads as the same loss term under both


@pytest.mark.parametrize("arch", ARCHS)
def test_microbatch_sums_add_up(arch):
  model, params, first = setup(arch)
  second = make_batch(arch, seed=1)
  whole = {k: np.concatenate([first[k], second[k]]) for k in first}
  objective = jax.jit(lambda p, b: {n: SFTObjective(n)(model, p, {}, b) for n in ("tokens", "sequences")})
  halves = [objective(params, b) for b in (first, second)]
  added = jax.tree.map(lambda a, b: a + b, *halves)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), added, objective(params, whole))


def test_without_segment_ids_each_row_is_one_example():
  weights = jnp.asarray([[0, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], jnp.float32)
  nll = jnp.asarray([[9, 1, 2, 3], [4, 9, 9, 9], [9, 9, 9, 9]], jnp.float32) * weights
  sums, examples = per_example_means({"nll": nll}, weights)
  assert float(examples) == 2 and float(sums["nll"]) == 2.0 + 4.0
  sums, examples = per_example_means({"nll": nll}, weights, jnp.asarray([[1, 1, 2, 2]] * 3))
  assert float(examples) == 3 and float(sums["nll"]) == 1.0 + 2.5 + 4.0


def test_invalid_normalize_names_the_field():
  with pytest.raises(ValueError, match="SFTObjective.normalize='bogus'"):
    SFTObjective(normalize="bogus")


def test_adaptation_imports_without_tensorflow():
  code = BLOCKER + ("import jaxlm.adaptation\n"
                    "assert not {'tensorflow', 'seqio'} & set(sys.modules)\nprint('ok')\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_train_runs_the_sft_objective(tmp_path):
  # SyntheticData's prefix-LM batches: 6 unweighted prompt tokens, then 10 weighted targets.
  result = run_tiny(str(tmp_path), steps=3, objective=SFTObjective(),
                    data={"feature_lengths": {"inputs": 6, "targets": 10}})
  assert len(result.history) == 3 and all(np.isfinite(h["loss"]) for h in result.history)
  with open(os.path.join(tmp_path, "metrics.jsonl"), encoding="utf-8") as f:
    logged = [json.loads(line) for line in f if '"output_tokens"' in line][-1]
  assert logged["output_tokens"] == 1.0 and np.isfinite(logged["cross_entropy"]), logged
