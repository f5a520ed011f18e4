"""Generated instruction data that teaches a small model to use its prompt: the lookup,
passage, calculator and rationale tasks behind in-context learning, retrieval, tool use and
chain of thought (the prompting learning tests and the quickstart train on them).

  lookup      "Give the number of the word." with 1-3 demonstrations (word -> a number
              drawn afresh for every prompt), the query's own word shown last: the answer
              is only in the demonstrations, so the model learns to read them;
  passages    "Which room does the <word> live in?" after 1-2 passages "The <word> lives
              in room <n>.", the answering one last (retrieval augmentation's layout);
  calculator  two-digit "a op b" problems written with calculator calls
              ("<calc>34 * 28</calc> = 952.", Toolformer-style): the answer is the last
              number, the tool's result when the tool runs;
  rationales  sums of three one-digit numbers worked in two steps, the addends paired in a
              random order ("7 + 2 = 9. 9 + 4 = 13."): several reasoning paths to one
              answer, what self-consistency's vote needs (chain of thought).

Each ``*_pairs`` function returns (prompt, target) text pairs for
``jaxlm.data.tasks.register_instruction_task``; the held-out problems come from the
'validation' split (generated_tasks' hash split), the facts from a seed no training prompt
uses (:func:`evaluation_facts`).
"""
from __future__ import annotations

import random
from typing import Dict, List, Sequence, Tuple

from jaxlm.data import generated_tasks
from jaxlm.data.instructions import Template
from jaxlm.prompting import tools

KEYS = generated_tasks.WORDS
LOOKUP = Template("Give the number of the word.", "{input}", "{output}")
QA = Template("Answer the question.", "Which room does the {input} live in?", "{output}")
CALC = Template("Compute it with the calculator.", "{input}", "{rationale}")  # the answer: its last number
COT = generated_tasks.FAMILIES["multi_step_arithmetic"].templates[2]  # "one step at a time", cot=True
Pairs = List[Tuple[str, str]]


def fact(rng: random.Random, key: str) -> Dict[str, str]:
  """A word and a two-digit number drawn for it."""
  return {"input": key, "output": str(rng.randint(10, 99))}


def passage(example: Dict[str, str]) -> str:
  return f"The {example['input']} lives in room {example['output']}."


def lookup_pairs(n: int, seed) -> Pairs:
  """Prompts with 1-2 other words' demonstrations, then the query word's own, and a fresh
  word -> number mapping for every prompt."""
  rng, out = random.Random(f"lookup:{seed}"), []
  for _ in range(n):
    examples = [fact(rng, k) for k in rng.sample(KEYS, rng.randint(2, 3))]
    query = examples[0]
    out.append((LOOKUP.instance(query, examples[1:] + [query]).prompt(), LOOKUP.instance(query).target()))
  return out


def passage_pairs(n: int, seed) -> Pairs:
  """0-1 distracting passages, then the answering one, then the question."""
  rng, out = random.Random(f"passages:{seed}"), []
  for _ in range(n):
    examples = [fact(rng, k) for k in rng.sample(KEYS, rng.randint(1, 2))]
    shown = "\n".join(f"Passage: {passage(e)}" for e in examples[1:] + examples[:1])
    out.append((f"{shown}\n\n{QA.instance(examples[0]).prompt()}", QA.instance(examples[0]).target()))
  return out


def template_pairs(template: Template, examples: Sequence[Dict[str, str]]) -> Pairs:
  return [(template.instance(e).prompt(), template.instance(e).target()) for e in examples]


def calculator_examples(n: int, split: str) -> List[Dict[str, str]]:
  """Two-digit 'a op b' problems (held out by generated_tasks' hash), with calculator calls."""
  return [tools.with_calculator_calls(e) for e in tools.arithmetic_examples(n, split, digits=(2, 2))]


def calculator_pairs(n: int, split: str) -> Pairs:
  return template_pairs(CALC, calculator_examples(n, split))


def rationale_examples(n: int, split: str, seed: int = 0) -> List[Dict[str, str]]:
  """n sums 'a + b + c' of one-digit numbers of the split (held out by generated_tasks'
  multi_step_arithmetic hash), each rationale pairing the addends in one of three orders."""
  rng, out = random.Random(f"{seed}:rationales:{split}"), []
  while len(out) < n:
    a, b, c = (rng.randint(1, 9) for _ in range(3))
    example = {"input": f"{a} + {b} + {c}", "output": str(a + b + c)}
    if generated_tasks.split_of("multi_step_arithmetic", example) == split:
      x, y, z = rng.choice([(a, b, c), (b, c, a), (a, c, b)])
      out.append({**example, "rationale": f"{x} + {y} = {x + y}. {x + y} + {z} = {x + y + z}."})
  return out


def rationale_pairs(n: int, split: str) -> Pairs:
  return template_pairs(COT, rationale_examples(n, split))


def evaluation_facts(seed: str = "evaluation facts") -> List[Dict[str, str]]:
  """One number per word, drawn with a seed no training prompt uses."""
  rng = random.Random(seed)
  return [fact(rng, k) for k in KEYS]
