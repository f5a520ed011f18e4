"""Rewards for RL (jaxlm/adaptation/rewards.py) on planted strings and tiny models: the rules,
their weighted sums, the LM judge's verdict log-probabilities against a forward pass done
by hand, the reward model's score against reward.sequence_scores, and the prompt sources
(jaxlm/adaptation/rollouts.py)."""
from __future__ import annotations

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxlm.adaptation import (LMJudgeReward, RewardModelReward, RuleReward, WeightedRewards, generated_prompts,
                              jsonl_prompts)
from jaxlm.adaptation.reward import sequence_scores
from jaxlm.adaptation.rewards import Samples
from jaxlm.adaptation.rollouts import rollout_rows
from jaxlm.jsonl import FormatError
from jaxlm.models import build_model
from jaxlm.vocabularies import ByteVocab

from train_helpers import tiny_config, use_compilation_cache

PROMPTS = ["Compute.\n\n3 * 4\n", "Reverse.\n\nsun hat\n", "Convert.\n\n12 kilometers\n", "Reverse.\n\nsun hat\n"]
RESPONSES = ["12", "hat moon", "So 12 * 1000. The answer is 12,000.", "hat sun apple zoo"]
EXAMPLES = [{"output": "12", "input": "3 * 4"}, {"output": "hat sun", "input": "sun hat"},
            {"output": "12000", "input": "12 kilometers"}, {"output": "hat sun", "input": "sun hat"}]


def samples(**kw):
  return Samples(PROMPTS, RESPONSES, EXAMPLES, **kw)


@pytest.mark.parametrize("rule, expected", [
    ("exact_answer", [1, 0, 1, 0]),               # "The answer is 12,000." reads as 12000
    ("answer_f1", [1, 0.5, 1, 2 * 1 * 0.5 / 1.5]),  # SQuAD token F1 (punctuation dropped)
    ("input_words", [0, 0.5, 0, 0.5]),
    ("format", [0, 0, 1, 0]),                     # ends with "The answer is X."
    ("length", [1, 1, 3 / 8, 3 / 4]),             # max_words=3: 3 / words beyond it
])
def test_rules_on_planted_strings(rule, expected):
  reward = RuleReward({rule: 1.0}, max_words=3)
  np.testing.assert_allclose(reward(samples()), expected, rtol=1e-6)


def test_rules_compose_as_weighted_sums():
  rules = RuleReward({"exact_answer": 2.0, "length": -0.5}, max_words=3)
  np.testing.assert_allclose(rules(samples()), [2 - 0.5, -0.5, 2 - 0.5 * 3 / 8, -0.5 * 3 / 4], rtol=1e-6)
  both = WeightedRewards([(RuleReward({"format": 1.0}), 3.0), (RuleReward({"exact_answer": 1.0}), 1.0)])
  np.testing.assert_allclose(both(samples()), [1, 0, 4, 0])


def test_rule_errors_name_the_setting():
  with pytest.raises(ValueError, match=r"RuleReward.rules.*'nonsense'.*answer_f1"):
    RuleReward({"nonsense": 1.0})
  with pytest.raises(ValueError, match=r"exact_answer.*known answer.*\['prompt_id'\]"):
    RuleReward()(Samples(["q"], ["a"], [{"prompt_id": 3}]))
  with pytest.raises(ValueError, match="WeightedRewards.terms"):
    WeightedRewards()


def _tiny(**overrides):
  use_compilation_cache()
  model = build_model(tiny_config(vocab_size=259, max_len=256, **overrides))
  return model, model.init(jax.random.key(0), model.dummy_batch(2, 16))


def test_lm_judge_is_the_verdicts_log_probability():
  """log p(' yes' ...) - log p(' no' ...) after the constitution question, checked against
  log_softmax of one full forward pass over BOS + question + verdict."""
  model, params = _tiny()
  vocab = ByteVocab()
  judge = LMJudgeReward(template="Q: {prompt}\nA: {response}\nGood? ", verdicts=("yes", "no"), length=96)
  got = judge(samples(model=model, params=params, vocabulary=vocab))

  questions = [f"Q: {p.strip()}\nA: {r.strip()}\nGood? " for p, r in zip(PROMPTS, RESPONSES)]

  def logps(verdict):  # one jitted forward over BOS + question + verdict rows, read by hand
    v = vocab.encode(verdict)
    rows = np.zeros((len(questions), 96), np.int32)
    for i, q in enumerate(questions):
      rows[i, 1:1 + len(vocab.encode(q)) + len(v)] = vocab.encode(q) + v
    logits, _ = jax.jit(model.apply)(params, {"decoder_input_tokens": rows})
    logprobs = jax.nn.log_softmax(np.asarray(logits, np.float64), -1)
    return [sum(float(logprobs[i, len(vocab.encode(q)) + k, t]) for k, t in enumerate(v))
            for i, q in enumerate(questions)]

  yes = logps("yes")
  np.testing.assert_allclose(got, np.subtract(yes, logps("no")), atol=2e-4)
  assert got[1] != got[3]  # the response is read, not only the prompt
  plain = LMJudgeReward(template="Q: {prompt}\nA: {response}\nGood? ", contrast=False, length=96)
  np.testing.assert_allclose(plain(samples(model=model, params=params, vocabulary=vocab)),
                             yes, atol=2e-4)
  with pytest.raises(ValueError, match="LMJudgeReward.template"):
    LMJudgeReward(template="no slot")


def test_reward_model_reward_reads_the_checkpoints_head(tmp_path):
  """The reward of a saved value-head model is reward.sequence_scores at the response's last
  token of the rollout's own rows (left-padded prompt + response)."""
  model, params = _tiny(value_head=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "rm", params)
  rng = np.random.default_rng(0)
  prompt = rng.integers(3, 259, (4, 6)).astype(np.int32)
  prompt[:, 0] = 0
  mask = (np.arange(6)[None] < np.array([[6], [3], [5], [2]])).astype(np.int32)
  responses = rng.integers(3, 259, (4, 5)).astype(np.int32)
  batch = rollout_rows(prompt * mask, mask, responses, np.array([5, 2, 1, 4]))
  reward = RewardModelReward(checkpoint=str(tmp_path / "rm"))
  got = reward(samples(batch=batch, model=build_model(tiny_config(vocab_size=259, max_len=256))))
  np.testing.assert_allclose(got, np.asarray(sequence_scores(model, params, batch)), atol=1e-5)
  assert np.ptp(got) > 0


def test_prompt_sources(tmp_path):
  prompts = generated_prompts(["reverse_words", "multi_step_arithmetic"], num_prompts=3)
  assert [e["family"] for _, e in prompts] == ["reverse_words", "multi_step_arithmetic"] * 3
  text, example = prompts[0]
  assert text.startswith("Write the words in reverse order.") and example["input"] in text
  assert example["output"] == " ".join(example["input"].split()[::-1])
  with pytest.raises(ValueError, match="generated_prompts.template=9"):
    generated_prompts(["reverse_words"], template=9)
  path = tmp_path / "prompts.jsonl"
  path.write_text(json.dumps({"prompt": "2 + 2 =", "answer": "4"}) + "\n" + json.dumps({"text": "x"}) + "\n")
  with pytest.raises(FormatError, match=r"prompts.jsonl:2.*'prompt'"):
    jsonl_prompts(str(path))
  path.write_text(json.dumps({"prompt": "2 + 2 =", "answer": "4"}) + "\n")
  (prompt_text, fields), = jsonl_prompts(str(path))
  assert prompt_text == "2 + 2 =" and RuleReward()(Samples([prompt_text], ["The answer is 4."], [fields])) == 1
