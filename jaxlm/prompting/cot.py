"""Chain of thought: few-shot and zero-shot CoT, least-to-most, Auto-CoT, self-consistency.

Few-shot CoT is in-context learning with demonstrations whose targets carry their
rationale (a ``Template(cot=True)``: "<rationale> The answer is <answer>."); the other
methods are here, over a :class:`jaxlm.prompting.PromptLM`:

  zero_shot_cot     Kojima et al. (2022), two stages: the prompt + "Let's think step by
                    step." is continued into a rationale, then prompt + trigger + rationale +
                    an answer-extraction trigger ("Therefore, the answer is") into the answer
  least_to_most     Zhou et al. (2023): the model decomposes the question into
                    sub-questions (one a line), then answers them in order, each answer
                    appended before the next sub-question; the last answer is the answer
  auto_cot          Zhang et al. (2023): the questions' TF-IDF vectors in k k-means
                    clusters, the question nearest each centroid, a zero-shot CoT rationale
                    for each: k demonstrations, no hand-written ones
  self_consistency  Wang et al. (2023): k sampled rationales per prompt, the majority vote of
                    their extracted answers (``jaxlm.evaluation.metrics.extract_answer``)

Each returns prediction texts ending "The answer is <answer>." so that instruction tasks'
answer extraction (``instructions.answer_of``) and ``metrics.extract_answer`` read them.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import gin

from jaxlm.data.instructions import ANSWER_PREFIX, Instance
from jaxlm.evaluation.metrics import extract_answer
from jaxlm.inference.decoding import DecodeConfig
from jaxlm.prompting.icl import select_by_cluster
from jaxlm.prompting.retrieval import TfidfIndex


def answer_text(answer: str, rationale: str = "") -> str:
  """'<rationale> The answer is <answer>.': the form the answer extractors read."""
  final = f"{ANSWER_PREFIX} {answer.strip().rstrip('.')}."
  return f"{rationale.strip()} {final}" if rationale.strip() else final


# ---------------------------------------------------------- self-consistency
def majority_vote(answers: Sequence[str]) -> Tuple[str, float]:
  """The most common answer and its share of the votes; a tie goes to the answer that
  reached the top count first in sample order. Empty answers do not vote."""
  votes = [a for a in answers if a]
  if not votes:
    return "", 0.0
  counts = collections.Counter(votes)
  top = max(counts.values())
  winner = next(a for a in votes if counts[a] == top)
  return winner, top / len(answers)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SelfConsistency:
  """num_samples rationales sampled at temperature (top_k / top_p as DecodeConfig's), the
  answers extracted by ``jaxlm.evaluation.metrics.extract_answer`` and majority-voted."""
  num_samples: int = 5
  temperature: float = 0.7
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0

  def __post_init__(self):
    if self.num_samples < 1:
      raise ValueError(f"SelfConsistency.num_samples={self.num_samples} must be >= 1")
    if self.temperature <= 0:
      raise ValueError(f"SelfConsistency.temperature={self.temperature} must be > 0 (it samples)")

  def decoding(self, base: DecodeConfig) -> DecodeConfig:
    return dataclasses.replace(base, method="sample", temperature=self.temperature, top_k=self.top_k,
                               top_p=self.top_p, seed=self.seed)


def self_consistency(lm, prompts: Sequence[str], config: SelfConsistency, decoding: DecodeConfig,
                     extract: Callable[[str], str] = extract_answer) -> List[Dict[str, Any]]:
  """Per prompt: the voted 'answer', its vote 'share', the 'samples' and the 'prediction'
  text (answer_text of the answer). decoding: the base DecodeConfig (max_new_tokens, eos_id)."""
  out = []
  for samples in lm.samples(prompts, config.num_samples, config.decoding(decoding)):
    answer, share = majority_vote([extract(s) for s in samples])
    out.append({"answer": answer, "share": share, "samples": samples, "prediction": answer_text(answer)})
  return out


# --------------------------------------------------------------- zero-shot
@gin.configurable
@dataclasses.dataclass(frozen=True)
class ZeroShotCoT:
  """Kojima et al.'s two prompts: ``trigger`` after the question, ``answer_trigger`` after
  the rationale; rationale_tokens / answer_tokens decoded for each."""
  trigger: str = "Let's think step by step."
  answer_trigger: str = "Therefore, the answer is"
  rationale_tokens: int = 64
  answer_tokens: int = 8


def zero_shot_cot(lm, prompts: Sequence[str], config: ZeroShotCoT,
                  decoding: Optional[DecodeConfig] = None) -> List[Dict[str, str]]:
  """Per prompt: the 'rationale', the 'answer' (the extraction stage's first line) and the
  'prediction' text. decoding: the base DecodeConfig (default greedy)."""
  base = decoding or DecodeConfig()
  first = [f"{p}{config.trigger}" for p in prompts]
  rationales = [r.strip() for r in lm.generate(first, dataclasses.replace(base, max_new_tokens=config.rationale_tokens))]
  second = [f"{f} {r}\n{config.answer_trigger}" for f, r in zip(first, rationales)]
  answers = lm.generate(second, dataclasses.replace(base, max_new_tokens=config.answer_tokens))
  out = []
  for rationale, answer in zip(rationales, answers):
    answer = (answer.strip().split("\n") or [""])[0].strip()
    out.append({"rationale": rationale, "answer": answer, "prediction": answer_text(answer, rationale)})
  return out


# ----------------------------------------------------------- least-to-most
@gin.configurable
@dataclasses.dataclass(frozen=True)
class LeastToMost:
  """The decomposition prompt ({question}; optionally after ``decompose_demos``, (question,
  sub-questions one a line) pairs), how a solved step reads (``step_format``: {question},
  {answer}), and the budget."""
  decompose_instruction: str = "Break the problem into simpler questions, one a line."
  decompose_demos: Tuple[Tuple[str, str], ...] = ()
  step_format: str = "Q: {question}\nA: {answer}"
  max_subquestions: int = 4
  decompose_tokens: int = 48
  answer_tokens: int = 16


def least_to_most(lm, questions: Sequence[str], config: LeastToMost,
                  decoding: Optional[DecodeConfig] = None) -> List[Dict[str, Any]]:
  """Per question: its 'subquestions' (the question itself last), their 'answers' in order
  and the 'prediction' text (the last answer)."""
  base = decoding or DecodeConfig()
  asks = [Instance(config.decompose_instruction, q, "", config.decompose_demos).prompt() for q in questions]
  plans = lm.generate(asks, dataclasses.replace(base, max_new_tokens=config.decompose_tokens))
  subs = []
  for question, plan in zip(questions, plans):
    lines = [l.strip() for l in plan.split("\n") if l.strip() and l.strip() != question.strip()]
    subs.append(lines[:max(0, config.max_subquestions - 1)] + [question])
  contexts, answers = list(questions), [[] for _ in questions]
  step = dataclasses.replace(base, max_new_tokens=config.answer_tokens)
  head = config.step_format.split("{answer}")[0]
  for depth in range(max(map(len, subs), default=0)):
    live = [i for i, s in enumerate(subs) if depth < len(s)]
    prompts = [f"{contexts[i]}\n\n{head.format(question=subs[i][depth])}".rstrip(" ") for i in live]
    for i, text in zip(live, lm.generate(prompts, step)):
      answer = (text.strip().split("\n") or [""])[0].strip()
      answers[i].append(answer)
      contexts[i] += "\n\n" + config.step_format.format(question=subs[i][depth], answer=answer)
  return [{"subquestions": s, "answers": a, "prediction": answer_text(a[-1] if a else "")}
          for s, a in zip(subs, answers)]


# ---------------------------------------------------------------- Auto-CoT
def auto_cot_demonstrations(lm, questions: Sequence[str], k: int, config: ZeroShotCoT, seed: int = 0,
                            decoding: Optional[DecodeConfig] = None) -> List[Tuple[str, str]]:
  """k (question, "<rationale> The answer is <answer>.") demonstrations: the question
  nearest each of k k-means clusters of the questions' TF-IDF vectors, with the model's
  own zero-shot CoT; use them as ``Instance.demonstrations``."""
  picks = select_by_cluster(TfidfIndex(questions).vectors(questions), min(k, len(questions)), seed)
  chosen = [questions[i] for i in picks]
  solved = zero_shot_cot(lm, [f"{q}\n" for q in chosen], config, decoding)
  return [(q, s["prediction"]) for q, s in zip(chosen, solved)]
