"""The decode and evaluate jobs end to end: jaxlm.main's 'infer' and 'eval' modes on
checkpoints, periodic evaluation inside train(), and a multiple-choice task that a tiny
trained model answers and an untrained one does not."""
import json
import os

import gin
import jax
import numpy as np
import pytest

from train_helpers import run_tiny, tiny_config
from jaxlm import main
from jaxlm.evaluation import metrics
from jaxlm.inference import ByteVocab, DecodeConfig, generate
from jaxlm.models import TransformerConfig, build_model

VOCAB = ByteVocab()
BYTE_MODEL = ["--gin.TransformerConfig.vocab_size=259", "--gin.TransformerConfig.dtype='float32'"]
MC_EXAMPLES = [  # suites' multiple-choice JSONL: the answer as an index, a letter or the text
    {"question": "2 + 2 =", "choices": ["3", "4", "5"], "answer": 1},
    {"question": "The sky is", "choices": ["blue", "green"], "answer": "A"},
    {"question": "Capital of France?", "choices": ["Rome", "Paris", "Oslo", "Bern"], "answer": "Paris"},
    {"question": "abc", "choices": ["d", "e", "f"], "answer": 0},
    {"question": "Next: 1 2 3", "choices": ["4", "9"], "answer": 0},
]


def train_flags(model_dir, steps, *extra):
  """jaxlm.main flags of a short pretrain_synthetic run of the tiny decoder (byte-sized vocab)."""
  return ["--gin_file=gin_configs/runs/pretrain_synthetic.gin", f"--gin.MODEL_DIR='{model_dir}'",
          f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=4", "--gin.TASK_FEATURE_LENGTHS={'targets': 16}",
          "--gin.train.progress_bar=False", "--gin.train.tensorboard=False", *BYTE_MODEL, *extra]


def write_mc_file(tmp_path):
  path = tmp_path / "toy_mc.jsonl"
  path.write_text("".join(json.dumps(ex) + "\n" for ex in MC_EXAMPLES))
  return str(path)


def test_infer_mode_decodes_the_trainers_checkpoint(tmp_path):
  model_dir = str(tmp_path / "lm")
  trained = main.main(train_flags(model_dir, 3))
  assert int(trained.state.step) == 3 and os.path.isdir(os.path.join(model_dir, "checkpoints", "3"))
  gin.clear_config()
  prompts = ["hello", "ab", "the quick brown fox jumps", "x", "12345"]
  (tmp_path / "prompts.txt").write_text("\n".join(prompts[:2]) + "\n\n" + "\n".join(prompts[2:]) + "\n")
  out = tmp_path / "out" / "infer.jsonl"
  rows = main.main(["--gin_file=gin_configs/models/tiny_decoder.gin", "--gin_file=gin_configs/runs/infer.gin",
                    f"--gin.CHECKPOINT_DIR='{model_dir}'", f"--gin.PROMPTS='{tmp_path / 'prompts.txt'}'",
                    f"--gin.OUTPUT='{out}'", "--gin.MAX_NEW_TOKENS=6", "--gin.BATCH_SIZE=2",
                    "--gin.DecodeConfig.eos_id=None", *BYTE_MODEL])
  written = [json.loads(line) for line in out.read_text().splitlines()]
  assert written == rows and [r["prompt"] for r in rows] == prompts  # blank line skipped, order kept

  # The same prompts decoded directly with the parameters the trainer returned.
  model = build_model(TransformerConfig())  # the gin-bound config infer used
  width = 1 + max(len(p) for p in prompts)
  tokens = np.zeros((len(prompts), width), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, 1:1 + len(p)] = VOCAB.encode(p)  # BOS (0) + bytes
  mask = (np.arange(width)[None] <= np.array([len(p) for p in prompts])[:, None]).astype(np.int32)
  want = np.asarray(generate(model, jax.device_get(trained.state.params), tokens, mask,
                             config=DecodeConfig(max_new_tokens=6, eos_id=None)).tokens)
  assert [r["tokens"] for r in rows] == want.tolist()
  assert [r["output"] for r in rows] == [VOCAB.decode(t) for t in want]


def mc_loglikelihood_fn(model, params):
  """suites' loglikelihood_fn: log p(continuation | BOS + context) by model.score_batch."""
  score = jax.jit(model.score_batch)

  def fn(requests):
    rows = [(VOCAB.encode(ctx), VOCAB.encode(cont)) for ctx, cont in requests]
    width = max(len(x) + len(y) for x, y in rows)
    batch = {k: np.zeros((len(rows), width), np.int32)
             for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")}
    for i, (x, y) in enumerate(rows):
      seq = x + y
      batch["decoder_target_tokens"][i, :len(seq)] = seq
      batch["decoder_input_tokens"][i, 1:len(seq)] = seq[:-1]
      batch["decoder_loss_weights"][i, len(x):len(seq)] = 1
    return np.asarray(score(params, batch)).tolist()
  return fn


def test_eval_mode_scores_a_local_multiple_choice_task(tmp_path):
  import orbax.checkpoint as ocp
  from jaxlm.evaluation import suites
  main.parse_gin(["gin_configs/models/tiny_decoder.gin"], ["TransformerConfig.vocab_size = 259"])
  model = build_model(TransformerConfig(init_std=0.3))  # peaked, varied choice scores
  gin.clear_config()
  params = model.init(jax.random.key(3), model.dummy_batch(1, 8))
  ckpt = tmp_path / "ckpt"  # the trainer's layout: MODEL_DIR/checkpoints/<step>/state
  with ocp.StandardCheckpointer() as c:
    c.save(ckpt / "checkpoints" / "7" / "state", {"step": 7, "params": params, "opt_state": {"count": 7}})
  out_dir = tmp_path / "eval"
  name = "jaxlm_test_job_mc"
  got = main.main(["--gin_file=gin_configs/models/tiny_decoder.gin", "--gin_file=gin_configs/runs/eval.gin",
                   f"--gin.CHECKPOINT_DIR='{ckpt}'", f"--gin.EVAL_OUTPUT_DIR='{out_dir}'",
                   f"--gin.SUITE_TASKS={{'{name}': ('multiple_choice', '{write_mc_file(tmp_path)}')}}",
                   "--gin.BATCH_SIZE=4", *BYTE_MODEL])
  assert set(got) == {f"{name}/acc", f"{name}/acc_norm", f"{name}/ece"}
  saved = json.loads((out_dir / "metrics.json").read_text())
  assert saved["metrics"] == pytest.approx(got) and saved["step"] == 7
  # The seqio path agrees with suites' plain-Python rank classification on the same scores.
  examples = suites.load_multiple_choice(str(tmp_path / "toy_mc.jsonl"))
  want = suites.evaluate_multiple_choice(examples, mc_loglikelihood_fn(model, params))
  assert got[f"{name}/acc"] == want["acc"] and got[f"{name}/acc_norm"] == want["acc_norm"]
  assert got[f"{name}/ece"] == pytest.approx(want["ece"], abs=1e-5)


def test_train_runs_periodic_evaluation(tmp_path):
  from jaxlm.evaluation.evaluator import make_eval_fn
  model_dir = tmp_path / "lm"
  name = "jaxlm_test_train_mc"
  result = main.main(train_flags(model_dir, 5, "--gin.train.eval_fn=@make_train_eval_fn",
                                 "--gin.train.eval_every=2", "--gin.make_train_eval_fn.batch_size=4",
                                 f"--gin.make_train_eval_fn.suite_tasks={{'{name}': "
                                 f"('multiple_choice', '{write_mc_file(tmp_path)}')}}"))
  records = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in records if any(k.startswith("eval/") for k in r)]
  assert [r["step"] for r in evals] == [2, 4, 5]  # every 2 steps and the last
  assert result.evals == evals
  assert set(evals[0]) == {"step", f"eval/{name}/acc", f"eval/{name}/acc_norm", f"eval/{name}/ece"}
  # The last record evaluated the final parameters.
  final = make_eval_fn(build_model(TransformerConfig()), name, batch_size=4)(result.state.params)
  assert {f"eval/{k}": v for k, v in final.items()} == pytest.approx({k: v for k, v in evals[-1].items()
                                                                      if k != "step"})


def counting_mc(num, context=6, vocab=128, seed=1):
  """Multiple choice on SyntheticData's 'arithmetic' sequences: after `context` tokens of
  x_t = 2 + (a + d t) mod (vocab - 2), which 3-token continuation follows? The choices
  continue the last token with strides 1..4; the gold one uses d. Chance: 1/4."""
  rng = np.random.default_rng(seed)
  v, rows, golds = vocab - 2, [], []
  for _ in range(num):
    a, d = int(rng.integers(0, v)), int(rng.integers(1, 5))
    ctx = [2 + (a + d * t) % v for t in range(context)]
    rows += [ctx + [2 + (a + d * (context - 1) + s * t) % v for t in range(1, 4)] for s in range(1, 5)]
    golds.append(d - 1)
  seqs = np.array(rows, np.int32)
  weights = np.zeros_like(seqs)
  weights[:, context:] = 1
  batch = {"decoder_target_tokens": seqs, "decoder_loss_weights": weights,
           "decoder_input_tokens": np.pad(seqs[:, :-1], ((0, 0), (1, 0)))}
  return batch, golds


def mc_accuracy(model, params, batch, golds):
  scores = np.asarray(jax.jit(model.score_batch)(params, batch)).reshape(len(golds), 4)
  return metrics.multiple_choice_metrics(scores, golds)["acc"]


def test_a_tiny_trained_model_answers_a_multiple_choice_task(tmp_path):
  """The trainer on SyntheticData's counting sequences, then rank classification of the
  right continuation by model.score_batch: acc == 1.0 after training (margin 0.75 over
  chance), <= 0.5 for the same model untrained (chance 0.25)."""
  batch, golds = counting_mc(64)
  model = build_model(tiny_config())
  untrained = model.init(jax.random.key(0), model.dummy_batch(1, 16))
  assert mc_accuracy(model, untrained, batch, golds) <= 0.5
  result = run_tiny(str(tmp_path / "lm"), 300, total_steps=300, checkpoint_every=1000, log_every=100)
  assert mc_accuracy(model, result.state.params, batch, golds) == 1.0
