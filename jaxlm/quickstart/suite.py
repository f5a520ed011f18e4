"""The quickstart's evaluation suite: the same measurements of every stage's model.

  perplexity        held-out text (rolling windows), as stage 2 trained on it
  instruction EM    exact match of the answers (instructions.answer_of) to held-out
                    generated instructions of the instruction-tuned families, greedy
  ECE               calibration of those answers: confidence = the probability of the
                    greedy output (its summed token log-probability), 10 bins
  preference acc    held-out generated preferences: the share the model gives the preferred
                    response the higher log-likelihood per token
  true reward       the preferences' known reward (jaxlm.data.preferences.true_reward) of
                    the model's greedy responses to their prompts (the same held-out prompts
                    as instruction EM)
  prompting         held-out problems (stage 5), one accuracy per strategy:
                      few-shot random / k-NN  "give the number of the word" lookups with
                                              2 demonstrations chosen at random or by TF-IDF
                                              nearest neighbours (the nearest shown last)
                      CoT greedy / self-consistency  multi-step arithmetic with a
                                              rationale; the majority of num_samples sampled
                                              rationales
                      no tool / calculator    two-digit arithmetic decoded plainly, and with
                                              the calculator's calls executed
Every accuracy comes with its binomial standard error sqrt(p (1 - p) / n) (the true
reward: the standard error of its mean).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from jaxlm.data import generated_tasks, prompting_tasks
from jaxlm.data.instructions import ChatTemplate, answer_of, instance_pairs
from jaxlm.evaluation import metrics as metrics_lib
from jaxlm.inference.decoding import DecodeConfig
from jaxlm.inference.infer import decode_texts
from jaxlm.prompting import cot, icl, tools
from jaxlm.prompting.lm import PromptLM
from jaxlm.quickstart.corpus import held_out_perplexity

ACCURACIES = ("instruction EM", "preference acc", "few-shot random", "few-shot k-NN", "CoT greedy",
              "CoT self-consistency", "no tool", "calculator")


@dataclasses.dataclass(frozen=True)
class SuiteSettings:
  """Sizes of the suite (quickstart's arguments)."""
  sequence_length: int
  batch_size: int
  problems: int              # per prompting strategy
  num_shots: int = 2
  consistency_samples: int = 5
  answer_tokens: int = 16
  reasoning_tokens: int = 40
  sample_tokens: int = 48
  full: bool = True          # False: perplexity only (models the later stages do not apply to)


def with_stderr(name: str, hits: Sequence[float]) -> Dict[str, float]:
  """{name: mean, name_stderr: its standard error} of 0/1 (or graded) outcomes."""
  x = np.asarray(hits, np.float64)
  if x.size == 0:
    return {}
  return {name: float(x.mean()), f"{name}_stderr": float(x.std(ddof=0) / np.sqrt(x.size))}


def within_noise(a: float, se_a: float, b: float, se_b: float, z: float = 2.0) -> bool:
  """Whether b - a is under z standard errors of the difference."""
  return abs(b - a) < z * float(np.hypot(se_a, se_b))


def _answers_match(prediction: str, answer: str) -> bool:
  return metrics_lib.normalize_answer(answer_of(prediction)) == metrics_lib.normalize_answer(answer)


def instruction_metrics(lm: PromptLM, preferences, settings: SuiteSettings) -> Tuple[Dict[str, float], List[str]]:
  """Instruction EM, ECE, preference accuracy and true reward on held-out preferences."""
  prompts = [p.prompt for p in preferences]
  rows = decode_texts(lm.model, lm.params, lm.vocab, prompts, DecodeConfig(max_new_tokens=settings.answer_tokens),
                      batch_size=settings.batch_size)
  outputs = [r["output"] for r in rows]
  correct = [float(_answers_match(o, p.truth["example"]["output"])) for o, p in zip(outputs, preferences)]
  out = with_stderr("instruction EM", correct)
  out["ECE"] = metrics_lib.expected_calibration_error([float(np.exp(r["logprob"])) for r in rows], correct)
  chosen, rejected = (mean_logprob(lm, prompts, [p.responses[i] for p in preferences]) for i in (0, 1))
  out.update(with_stderr("preference acc", chosen > rejected))
  out.update(with_stderr("true reward", [p.true_reward(o) for p, o in zip(preferences, outputs)]))
  return out, outputs


def mean_logprob(lm: PromptLM, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
  """log p(response | prompt) per response token: a preference judged by it does not
  simply favour the shorter response."""
  return lm.score(prompts, responses) / np.maximum(1, [len(lm.encode(r)) for r in responses])


def prompting_metrics(lm: PromptLM, settings: SuiteSettings) -> Dict[str, float]:
  """Accuracy per prompting strategy on held-out problems (the module docstring)."""
  n = settings.problems
  out = {}
  pool = prompting_tasks.evaluation_facts()[:n]
  answers = [q["output"] for q in pool]
  for name, config in (("few-shot random", icl.ICLConfig(num_shots=settings.num_shots, selection="random",
                                                         order="random")),
                       ("few-shot k-NN", icl.ICLConfig(num_shots=settings.num_shots, selection="knn",
                                                       order="similarity"))):
    prompts = icl.build_prompts(pool, pool, prompting_tasks.LOOKUP, config, lm)
    predictions = lm.generate(prompts, DecodeConfig(max_new_tokens=settings.answer_tokens))
    out.update(with_stderr(name, [_answers_match(p, a) for p, a in zip(predictions, answers)]))

  reasoning = DecodeConfig(max_new_tokens=settings.reasoning_tokens)
  problems = prompting_tasks.rationale_examples(n, "validation")
  prompts = [prompting_tasks.COT.instance(e).prompt() for e in problems]
  greedy = lm.generate(prompts, reasoning)
  out.update(with_stderr("CoT greedy", [metrics_lib.extract_answer(g) == e["output"] for g, e in zip(greedy, problems)]))
  voted = cot.self_consistency(lm, prompts, cot.SelfConsistency(num_samples=settings.consistency_samples), reasoning)
  out.update(with_stderr("CoT self-consistency", [v["answer"] == e["output"] for v, e in zip(voted, problems)]))

  sums = prompting_tasks.calculator_examples(n, "validation")
  prompts = [prompting_tasks.CALC.instance(e).prompt() for e in sums]
  plain = lm.generate(prompts, reasoning)
  out.update(with_stderr("no tool", [metrics_lib.extract_answer(t) == e["output"] for t, e in zip(plain, sums)]))
  called = tools.decode_with_tools(lm.model, lm.params, lm.vocab, prompts, reasoning, ["calc"],
                                   batch_size=settings.batch_size)
  out.update(with_stderr("calculator", [metrics_lib.extract_answer(r["output"]) == e["output"]
                                        for r, e in zip(called, sums)]))
  return out


def sample_prompts(prompts: Sequence[str], preferences) -> List[str]:
  """The report's sample prompts: `prompts`, plus (full suite) one held-out instruction,
  the same as a chat turn (the assistant's answer closes with the end-of-turn marker) and
  one calculator problem."""
  if not preferences:
    return list(prompts)
  first = preferences[0].truth
  instance = generated_tasks.FAMILIES[first["family"]].templates[0].instance(first["example"])
  chat = instance_pairs(instance, ChatTemplate())[0][0]
  calculator = prompting_tasks.CALC.instance(prompting_tasks.calculator_examples(1, "validation")[0]).prompt()
  return list(prompts) + [preferences[0].prompt, chat, calculator]


def evaluate(model, params, vocabulary, texts: Sequence[str], preferences, prompts: Sequence[str],
             settings: SuiteSettings) -> Tuple[Dict[str, Any], List[str]]:
  """(metrics, greedy continuations of `prompts`) of one model; metrics the module
  docstring lists (perplexity only unless settings.full)."""
  metrics = {"perplexity": held_out_perplexity(model, params, texts, vocabulary, settings.sequence_length,
                                               settings.batch_size)["perplexity"]}
  lm = PromptLM(model, params, vocabulary, batch_size=settings.batch_size)
  if settings.full:
    metrics.update(instruction_metrics(lm, preferences, settings)[0])
    metrics.update(prompting_metrics(lm, settings))
  samples = decode_texts(model, params, vocabulary, list(prompts), DecodeConfig(max_new_tokens=settings.sample_tokens),
                         batch_size=max(1, len(prompts)),
                         max_prompt_length=settings.sequence_length - settings.sample_tokens)
  return metrics, [s["output"] for s in samples]
