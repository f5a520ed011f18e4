"""The holistic report on two tiny models and a local multiple-choice file: its table rows,
accuracy and ECE (10 bins) against a hand calculation, robustness and efficiency columns,
the plots, and the command line."""
import json

import jax
import numpy as np
import pytest

from jaxlm.evaluation import holistic
from jaxlm.evaluation.lm_eval import JaxlmLM
from jaxlm.models import TransformerConfig, build_model
from jaxlm.vocabularies import ByteVocab

QUESTIONS = [("2 + 2 =", ["3", "4", "5"], 1), ("The sky is", ["blue", "green"], 0),
             ("Capital of France?", ["Rome", "Paris", "Oslo", "Bern"], 1), ("abc", ["d", "e", "f"], 0),
             ("Next: 1 2 3", ["4", "9"], 0), ("Grass is", ["red", "green"], 1)]


MODEL = build_model(TransformerConfig(vocab_size=259, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_len=64,
                                      init_std=0.3))  # peaked: varied confidences; one model, one set of compilations


def tiny_lm(seed: int, batch_size: int = 4) -> JaxlmLM:
  params = MODEL.init(jax.random.key(seed), MODEL.dummy_batch(1, 8))
  return JaxlmLM(model=MODEL, params=params, tokenizer=ByteVocab(), batch_size=batch_size)


def hand_ece(conf, correct, bins=10):
  """ECE written out: bin (lo, hi] of width 0.1 (0 in the first), |acc - conf| weighted by size."""
  total = 0.0
  for b in range(bins):
    lo, hi = b / bins, (b + 1) / bins
    members = [i for i, c in enumerate(conf) if (lo < c <= hi) or (b == 0 and c == 0.0)]
    if members:
      total += len(members) / len(conf) * abs(np.mean([correct[i] for i in members]) -
                                              np.mean([conf[i] for i in members]))
  return total


def test_report_on_two_models(tmp_path):
  path = tmp_path / "mc.jsonl"
  path.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
  lms = {"seed0": tiny_lm(0), "seed1": tiny_lm(1)}
  results = holistic.holistic_report(lms, {"toy": str(path)}, str(tmp_path / "report"))
  table = [line for line in (tmp_path / "report" / "report.md").read_text().splitlines()
           if line.startswith("| seed")]
  assert [line.split(" | ")[:2] for line in table] == [["| seed0", "toy"], ["| seed1", "toy"]]
  assert (tmp_path / "report" / "report.png").stat().st_size > 10_000
  for name, lm in lms.items():
    row = results[name]["toy"]
    # By hand: the choices' log-likelihoods, the softmax confidence of the argmax, 10 bins.
    conf, correct, requests = [], [], []
    for q, choices, _ in QUESTIONS:
      context = q + "\n" + "\n".join(f"{'ABCD'[i]}. {c}" for i, c in enumerate(choices)) + "\nAnswer:"
      requests += [holistic_instance(context, " " + "ABCD"[i]) for i in range(len(choices))]
    scores = iter([ll for ll, _ in lm.loglikelihood(requests)])
    for _, choices, answer in QUESTIONS:
      lls = np.array([next(scores) for _ in choices])
      p = np.exp(lls - lls.max()) / np.exp(lls - lls.max()).sum()
      conf.append(p.max())
      correct.append(float(np.argmax(lls) == answer))
    assert row["accuracy"] == pytest.approx(np.mean(correct))
    assert row["ece"] == pytest.approx(hand_ece(conf, correct), abs=1e-6) and row["ece"] > 0
    assert sum(b["count"] for b in row["reliability"]) == len(QUESTIONS)
    assert 0.0 <= row["worst_case"] <= row["clean"] == row["accuracy"]
    assert row["parameters"] == lm.model.num_params(lm.params) and row["tokens_per_second"] > 0
  assert results["seed0"]["toy"]["confidences"] != results["seed1"]["toy"]["confidences"]


def holistic_instance(context, continuation):
  from lm_eval.api.instance import Instance
  return Instance("loglikelihood", {}, (context, continuation), 0)


def test_command_line(tmp_path):
  """`python -m jaxlm.evaluation.holistic` arguments: a malformed --model names itself."""
  with pytest.raises(SystemExit, match="--model='nonsense'"):
    holistic.main(["--model", "nonsense", "--task", "t=x.jsonl", "--output_dir", str(tmp_path)])
