"""Rewards for RL from samples (PPO, GRPO): rule-based, an LM judge, a reward model.

A reward is a callable `reward(samples) -> float32 [b]`, one score per sampled response.
`Samples` carries each row's prompt and response text, the example the prompt came from
(a generated task's known answer in `example['output']`), the rollout's token batch (the
prompt and response as one decoder row, decoder_loss_weights 1 on the response), and the
policy model with the parameters that sampled them. Rewards compose by weighted sums.

  RuleReward         named rules, weighted (the Sparrow / GPT-4 rule-based-reward idea):
                     'exact_answer'  1 if the answer equals the known answer (the answer
                                     instructions.answer_of reads, numbers normalised by
                                     metrics.normalize_number), else 0
                     'answer_f1'     SQuAD token F1 of that answer against the known one
                                     (metrics.f1_score): partial credit
                     'input_words'   the share of the answer's words that are words of the
                                     example's 'input' (stay with the given material)
                     'format'        1 if the whole response matches RuleReward.format_pattern
                                     (default: ends with "The answer is X.")
                     'length'        1 up to RuleReward.max_words words, then max_words / words
  LMJudgeReward      RLAIF (Bai et al. 2022, Lee et al. 2023): an LM's log-odds of the verdict
                     "yes" over "no" (or log p("yes")) after a constitution-style question
                     about the response; the judge is the policy itself (the parameters that
                     sampled) or a checkpoint
  RewardModelReward  a trained reward model (jaxlm.adaptation.reward.sequence_scores: the
                     scalar head at the response's last token), InstructGPT's step 3
  WeightedRewards    sum of (reward, weight) terms, e.g. a reward model plus a format rule
All are gin configurables (`RolloutData.reward = @RuleReward()`); an unknown rule or a
missing field raises ValueError naming the setting.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import gin
import jax
import numpy as np

from jaxlm.adaptation.reward import sequence_scores
from jaxlm.data.instructions import answer_of
from jaxlm.evaluation.metrics import f1_score, normalize_number
from jaxlm.models import TransformerConfig, build_model
from jaxlm.vocabularies import PAD_ID

FORMAT_PATTERN = r"(?s).*The answer is [^.\n]+\.\s*"


@dataclasses.dataclass
class Samples:
  """What a reward sees of one rollout batch (b rows)."""
  prompts: List[str]
  responses: List[str]
  examples: List[Mapping[str, Any]]   # each prompt's source fields ({} for a bare prompt)
  batch: Optional[Mapping[str, Any]] = None  # decoder features [b, L]; weights 1 on the response
  model: Any = None                   # the policy model ...
  params: Any = None                  # ... and the parameters that sampled the responses
  vocabulary: Any = None              # encode / decode of the policy's tokens


# ---- rule-based rewards ----
def known_answer(example: Mapping[str, Any], rule: str) -> str:
  """The example's known answer ('output', or 'answer' in a prompts file), as answer_of reads it."""
  for key in ("output", "answer"):
    if key in example:
      return answer_of(str(example[key]))
  raise ValueError(f"RuleReward.rules has {rule!r}, which needs each prompt's known answer "
                   f"('output' or 'answer'); this prompt has {sorted(example)}")


def _answer(text: str) -> str:
  return normalize_number(answer_of(text))


def exact_answer(response: str, example: Mapping[str, Any], reward: "RuleReward") -> float:
  return float(_answer(response) == normalize_number(known_answer(example, "exact_answer")))


def answer_f1(response: str, example: Mapping[str, Any], reward: "RuleReward") -> float:
  return f1_score(answer_of(response), known_answer(example, "answer_f1"))


def format_rule(response: str, example: Mapping[str, Any], reward: "RuleReward") -> float:
  return float(re.fullmatch(reward.format_pattern, response) is not None)


def input_words(response: str, example: Mapping[str, Any], reward: "RuleReward") -> float:
  if "input" not in example:
    raise ValueError(f"RuleReward.rules has 'input_words', which needs each prompt's 'input'; this prompt "
                     f"has {sorted(example)}")
  words, allowed = answer_of(response).split(), set(answer_of(str(example["input"])).split())
  return sum(w in allowed for w in words) / len(words) if words else 0.0


def length_rule(response: str, example: Mapping[str, Any], reward: "RuleReward") -> float:
  words = len(response.split())
  return 1.0 if words <= reward.max_words else reward.max_words / words


RULES = {"exact_answer": exact_answer, "answer_f1": answer_f1, "input_words": input_words, "format": format_rule,
         "length": length_rule}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RuleReward:
  """sum over `rules` {name: weight} of weight * rule(response, example); the rules are
  RULES (see the module docstring). format_pattern: the regular expression the 'format'
  rule matches the whole response against; max_words: the 'length' rule's budget."""
  rules: Mapping[str, float] = dataclasses.field(default_factory=lambda: {"exact_answer": 1.0})
  format_pattern: str = FORMAT_PATTERN
  max_words: int = 32

  def __post_init__(self):
    unknown = sorted(set(self.rules) - set(RULES))
    if unknown or not self.rules:
      raise ValueError(f"RuleReward.rules={dict(self.rules)!r}: {unknown or 'no rules'}; the rules are "
                       f"{sorted(RULES)}")
    if self.max_words < 1:
      raise ValueError(f"RuleReward.max_words={self.max_words} must be >= 1")

  def score(self, response: str, example: Mapping[str, Any]) -> float:
    return sum(w * RULES[name](response, example, self) for name, w in self.rules.items())

  def __call__(self, samples: Samples) -> np.ndarray:
    return np.array([self.score(r, e) for r, e in zip(samples.responses, samples.examples, strict=True)],
                    np.float32)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class WeightedRewards:
  """sum of weight * reward(samples) over `terms`, a sequence of (reward, weight)."""
  terms: Sequence[Tuple[Any, float]] = ()

  def __post_init__(self):
    if not self.terms:
      raise ValueError("WeightedRewards.terms is empty: give (reward, weight) pairs")

  def __call__(self, samples: Samples) -> np.ndarray:
    return sum(np.asarray(reward(samples), np.float32) * weight for reward, weight in self.terms)


# ---- model rewards ----
def _load(checkpoint: str, config: TransformerConfig):
  """(model, parameters) of a checkpoint of `config`'s model."""
  from jaxlm.training.checkpointing import restore_params  # pylint: disable=import-outside-toplevel
  model = build_model(config)
  return model, restore_params(checkpoint, model.param_shapes())


@gin.configurable
class RewardModelReward:
  """A trained reward model's score of each (prompt, response) row: the scalar head at the
  response's last token (reward.sequence_scores), read on the rollout's own token batch,
  so the reward model shares the policy's vocabulary. checkpoint: its MODEL_DIR (the
  reward.gin run); config: its model (default: the policy's, with value_head=True)."""

  def __init__(self, checkpoint: str = gin.REQUIRED, config: Optional[TransformerConfig] = None):
    self.checkpoint, self.config = checkpoint, config
    self._score = jax.jit(lambda params, batch: sequence_scores(self._model, params, batch))
    self._model = self._params = None

  def __call__(self, samples: Samples) -> np.ndarray:
    if self._params is None:
      config = self.config or dataclasses.replace(samples.model.config, value_head=True)
      if not config.value_head:
        raise ValueError("RewardModelReward.config has value_head=False: a reward model needs its scalar head")
      self._model, self._params = _load(self.checkpoint, config)
    return np.asarray(self._score(self._params, samples.batch), np.float32)


JUDGE_TEMPLATE = ("Here is a request and a response to it.\n\nRequest: {prompt}\n\nResponse: {response}\n\n"
                  "Is the response helpful, honest and harmless? Answer yes or no.\n")


@gin.configurable
class LMJudgeReward:
  """RLAIF: log p(verdicts[0] | template(prompt, response)) under a judge LM, or with
  contrast=True log p(yes) - log p(no), the log-odds of the verdicts (calibrated across
  prompts). template: a str.format pattern over {prompt} and {response} (a constitution
  principle phrased as a yes/no question). The judge is checkpoint's model (config:
  default the policy's), or with checkpoint=None the policy itself, at the parameters
  that sampled the responses. length: the judge row's token width (the question keeps its
  end when longer), one compiled program."""

  def __init__(self, checkpoint: Optional[str] = None, config: Optional[TransformerConfig] = None,
               template: str = JUDGE_TEMPLATE, verdicts: Tuple[str, str] = ("yes", "no"),
               contrast: bool = True, length: int = 256):
    if "{response}" not in template:
      raise ValueError(f"LMJudgeReward.template must name {{response}}: {template!r}")
    if len(verdicts) != 2:
      raise ValueError(f"LMJudgeReward.verdicts={verdicts!r}: give (yes, no)")
    self.checkpoint, self.config, self.template = checkpoint, config, template
    self.verdicts, self.contrast, self.length = tuple(verdicts), contrast, length
    self._judge = None

  def judge(self, samples: Samples):
    """(model, parameters) of the judge."""
    if self.checkpoint is None:
      return samples.model, samples.params
    if self._judge is None:
      self._judge = _load(self.checkpoint, self.config or samples.model.config)
    return self._judge

  def rows(self, vocabulary, questions: Sequence[str], verdict: str) -> dict:
    """Decoder rows BOS + question + verdict, right-padded to `length`, weights on the verdict."""
    answer = list(vocabulary.encode(verdict))
    room = self.length - len(answer) - 1
    if room < 1:
      raise ValueError(f"LMJudgeReward.length={self.length} leaves no room for a question")
    tokens = np.zeros((len(questions), self.length + 1), np.int32)
    weights = np.zeros((len(questions), self.length), np.float32)
    for i, question in enumerate(questions):
      ids = list(vocabulary.encode(question))[-room:]
      row = [PAD_ID, *ids, *answer]
      tokens[i, :len(row)] = row
      weights[i, len(ids):len(ids) + len(answer)] = 1.0
    return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
            "decoder_loss_weights": weights}

  def __call__(self, samples: Samples) -> np.ndarray:
    model, params = self.judge(samples)
    questions = [self.template.format(prompt=p.strip(), response=r.strip())
                 for p, r in zip(samples.prompts, samples.responses, strict=True)]
    yes, no = (_scorer(model)(params, self.rows(samples.vocabulary, questions, v)) for v in self.verdicts)
    return np.asarray(yes - no if self.contrast else yes, np.float32)


@functools.lru_cache(maxsize=8)
def _scorer(model):
  """model.score_batch (summed weighted log-likelihood [b]) jitted, once per judge model."""
  return jax.jit(model.score_batch)
