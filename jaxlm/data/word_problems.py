"""Generated reasoning tasks: short arithmetic word problems with worked answers.

Each problem is a question and a one-step chain of thought ending in "The answer is N.",
the format `jaxlm.evaluation.metrics.extract_answer` reads:

    Q: Ann has 3 apples. She gets 4 more. How many apples does she have now?
    A: 3 + 4 = 7. The answer is 7.

Kinds: 'add' and 'sub' (one-digit operands, a story around them) and 'next' (the number
after n < 100). A fixed share of the arithmetic facts, chosen by a hash of
(kind, a, b), is held out: `problems(split='validation')` draws only from it and
`problems(split='train')` never does, so a model evaluated on the validation split
has not seen those facts in pretraining. Pure Python, no TensorFlow.
"""
from __future__ import annotations

import hashlib
import random
from typing import Dict, List, Sequence

KINDS = ("add", "sub", "next")
SPLITS = ("train", "validation")
HELD_OUT_PERCENT = 20
NAMES = ("Ann", "Ben", "Cleo", "Dev", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jun")
THINGS = ("apples", "marbles", "books", "coins", "stamps", "shells", "pencils", "cards")


def split_of(kind: str, a: int, b: int) -> str:
  """'validation' for the held-out facts, else 'train' (stable across runs and machines)."""
  digest = hashlib.sha1(f"{kind}:{a}:{b}".encode()).digest()
  return "validation" if digest[0] * 100 // 256 < HELD_OUT_PERCENT else "train"


def _facts(kind: str) -> List[tuple]:
  if kind == "add":
    return [(a, b) for a in range(10) for b in range(10)]
  if kind == "sub":
    return [(a, b) for a in range(10) for b in range(a + 1)]
  if kind == "next":
    return [(a, 1) for a in range(100)]
  raise ValueError(f"unknown problem kind {kind!r}; expected one of {KINDS}")


def make_problem(kind: str, a: int, b: int, rng: random.Random) -> Dict[str, str]:
  """{'question', 'solution', 'answer'} of one problem."""
  name, things = rng.choice(NAMES), rng.choice(THINGS)
  she = "She" if name in ("Ann", "Cleo", "Eva", "Hana", "Jun") else "He"
  if kind == "add":
    question = f"{name} has {a} {things}. {she} gets {b} more. How many {things} does {she.lower()} have now?"
    answer, work = a + b, f"{a} + {b} = {a + b}"
  elif kind == "sub":
    question = f"{name} has {a} {things}. {she} gives away {b}. How many {things} are left?"
    answer, work = a - b, f"{a} - {b} = {a - b}"
  else:
    question = f"What number comes after {a}?"
    answer, work = a + 1, f"{a} + 1 = {a + 1}"
  return {"question": question, "solution": f"{work}. The answer is {answer}.", "answer": str(answer)}


def problems(n: int, split: str = "train", seed: int = 0, kinds: Sequence[str] = KINDS) -> List[Dict[str, str]]:
  """n problems of the split, drawn with replacement from its facts (seeded)."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  rng = random.Random(f"{seed}:{split}")
  pool = [(k, a, b) for k in kinds for a, b in _facts(k) if split_of(k, a, b) == split]
  if not pool:
    raise ValueError(f"no {split} facts for kinds {list(kinds)}")
  return [make_problem(*rng.choice(pool), rng) for _ in range(n)]


def format_problem(problem: Dict[str, str], with_solution: bool = True) -> str:
  text = f"Q: {problem['question']}\nA:"
  return f"{text} {problem['solution']}" if with_solution else text


def few_shot_prompt(demonstrations: Sequence[Dict[str, str]], problem: Dict[str, str]) -> str:
  """Worked demonstrations, then the question and an open 'A:' for the model to answer."""
  shots = [format_problem(d) for d in demonstrations]
  return "\n\n".join(shots + [format_problem(problem, with_solution=False)])


def documents(n: int, split: str = "train", per_document: int = 8, seed: int = 0) -> List[Dict[str, str]]:
  """n pretraining documents {'id', 'text'}, each a run of worked problems."""
  items = problems(n * per_document, split, seed)
  return [{"id": f"reasoning-{split}-{i}",
           "text": "\n\n".join(format_problem(p) for p in items[i * per_document:(i + 1) * per_document])}
          for i in range(n)]
