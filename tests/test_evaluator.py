"""SeqIO evaluator glue on an in-memory seqio Task (byte vocabulary, no downloads)."""
import json
import os

import jax
import numpy as np
import pytest

import seqio
import tensorflow as tf

from jaxlm.evaluation import evaluator as ev_lib, metrics  # noqa: E402
from jaxlm.inference import ByteVocab, DecodeConfig, generate  # noqa: E402
from jaxlm.models import TransformerConfig, build_model  # noqa: E402

VOCAB = ByteVocab()
INPUTS = ["ab", "hello", "xyz!", "q", "four", "seven", "abc"]  # 7 rows: batch 4 pads the last batch
N_NEW = 5


def mean_loglik(targets, scores):
  """A seqio score metric fn."""
  del targets
  return {"mean_loglik": float(np.mean(scores))}


def make(arch):
  extra = dict(position="t5_relative", scale_attention=False) if arch == "encoder_decoder" else {}
  model = build_model(TransformerConfig(arch=arch, vocab_size=VOCAB.vocab_size, d_model=32, num_layers=2,
                                        num_heads=4, d_ff=64, max_len=64, init_std=0.3, **extra))
  return model, model.init(jax.random.key(0), model.dummy_batch(1, 8, 8))


def direct_greedy(model, params, add_eos_inputs):
  """The model's own greedy continuations, decoded without seqio or the evaluator."""
  rows = [VOCAB.encode(s) + ([1] if add_eos_inputs else []) for s in INPUTS]
  width = max(map(len, rows)) + 1
  toks = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    toks[i, :len(r) + 1] = [0] + r
  config = DecodeConfig(max_new_tokens=N_NEW)
  if model.config.arch == "encoder_decoder":
    out = generate(model, params, encoder_input_tokens=toks[:, 1:], config=config)
  else:
    mask = (toks > 0) | (np.arange(width)[None] == 0)
    out = generate(model, params, toks, mask, config=config)
  return [VOCAB.decode(t) for t in np.asarray(out.tokens)]


def direct_scores(model, params, targets, add_eos_inputs):
  """log p(targets + EOS | inputs) from hand-built batches and model.score_batch."""
  rows = []
  for inp, tgt in zip(INPUTS, targets):
    x = VOCAB.encode(inp) + ([1] if add_eos_inputs else [])
    y = VOCAB.encode(tgt) + [1]
    if model.config.arch == "encoder_decoder":
      rows.append({"encoder_input_tokens": x, "decoder_target_tokens": y, "decoder_input_tokens": [0] + y[:-1],
                   "decoder_loss_weights": [1] * len(y)})
    else:
      seq = x + y
      rows.append({"decoder_target_tokens": seq, "decoder_input_tokens": [0] + seq[:-1],
                   "decoder_loss_weights": [0] * len(x) + [1] * len(y),
                   "decoder_causal_attention": [1] * (len(x) + 1)})
  batch = {}
  for key in rows[0]:
    width = max(len(r[key]) for r in rows)
    batch[key] = np.array([r[key] + [0] * (width - len(r[key])) for r in rows], np.int32)
  if "decoder_causal_attention" in batch:
    width = batch["decoder_input_tokens"].shape[1]
    batch["decoder_causal_attention"] = np.pad(batch["decoder_causal_attention"],
                                               ((0, 0), (0, width - batch["decoder_causal_attention"].shape[1])))
  return np.asarray(jax.jit(model.score_batch)(params, batch)).tolist()


def register(name, targets, add_eos_inputs):
  def dataset_fn(split, shuffle_files=False, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"inputs": INPUTS, "targets": targets})
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  vocab = seqio.ByteVocabulary()
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=["validation"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features={"inputs": seqio.Feature(vocab, add_eos=add_eos_inputs),
                       "targets": seqio.Feature(vocab, add_eos=True)},
      metric_fns=[metrics.exact_match, mean_loglik])


@pytest.mark.parametrize("arch", ["prefix_decoder", "encoder_decoder"])
def test_eval_fn_runs_seqio_metrics_on_predictions_and_scores(arch, tmp_path):
  model, params = make(arch)
  enc_dec = arch == "encoder_decoder"
  own = direct_greedy(model, params, add_eos_inputs=enc_dec)
  # Targets: the model's own greedy output for 4 of 7 examples, something else for the rest.
  targets = [o if i % 2 == 0 else "zz" for i, o in enumerate(own)]
  assert all(o != "zz" for o in own)
  name = f"jaxlm_test_eval_{arch}"
  register(name, targets, add_eos_inputs=enc_dec)
  eval_fn = ev_lib.make_eval_fn(model, name, batch_size=4,
                                decoding=DecodeConfig(max_new_tokens=N_NEW), log_dir=str(tmp_path))
  assert eval_fn.evaluator.task_names == [name]
  got = eval_fn(params, step=7)
  assert got[f"{name}/exact_match"] == pytest.approx(4 / 7)
  want = np.mean(direct_scores(model, params, targets, add_eos_inputs=enc_dec))
  assert got[f"{name}/mean_loglik"] == pytest.approx(want, rel=1e-4)
  assert os.path.exists(tmp_path / f"{name}-metrics.jsonl")  # seqio's JSON logger: predictions too


def test_evaluate_job_restores_a_checkpoint_and_writes_metrics(tmp_path):
  import orbax.checkpoint as ocp
  arch = "prefix_decoder"
  model, params = make(arch)
  ckpt = str(tmp_path / "ckpt")
  with ocp.StandardCheckpointer() as c:
    c.save(ckpt, params)
  name = "jaxlm_test_eval_job"
  register(name, ["zz"] * len(INPUTS), add_eos_inputs=False)
  out_dir = str(tmp_path / "eval")
  got = ev_lib.evaluate(name, ckpt, config=model.config, batch_size=8,
                        decoding=DecodeConfig(max_new_tokens=3), output_dir=out_dir)
  assert got[f"{name}/exact_match"] == 0.0
  want = np.mean(direct_scores(model, params, ["zz"] * len(INPUTS), add_eos_inputs=False))
  assert got[f"{name}/mean_loglik"] == pytest.approx(want, rel=1e-4)
  with open(os.path.join(out_dir, "metrics.json")) as f:
    assert json.load(f)["metrics"] == pytest.approx(got)


def test_evaluator_seed_is_gin_configurable(monkeypatch):
  import gin
  seeds = []

  class RecordingEvaluator:  # stands in for seqio.Evaluator: records the dataset seed
    def __init__(self, **kwargs):
      seeds.append(kwargs["seed"])
      self.eval_tasks = []
  monkeypatch.setattr(seqio, "Evaluator", RecordingEvaluator)
  model, _ = make("prefix_decoder")
  name = "jaxlm_test_eval_seed"
  register(name, ["zz"] * len(INPUTS), add_eos_inputs=False)
  try:
    ev_lib.Evaluator(model, name)
    gin.bind_parameter("Evaluator.seed", 7)
    ev_lib.Evaluator(model, name)
    with pytest.raises(ValueError, match="split"):  # only the seed is Evaluator's gin knob
      gin.parse_config("Evaluator.split = 'test'")
  finally:
    gin.clear_config()
  assert seeds == [42, 7]
