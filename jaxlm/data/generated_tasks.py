"""Generated instruction-tuning tasks with checkable answers.

Each family makes raw examples (dicts of string fields: ``input``, ``output``, a worked
``rationale`` without its "The answer is" sentence, and any fields its templates name)
from a seeded ``random.Random``, and words them with several
:class:`jaxlm.data.instructions.Template` s (Flan/PromptSource style: different
instructions, chain-of-thought templates, and inverted ones that ask the task backwards).
The families are the survey's symbolic-reasoning tasks (reversing, sorting and counting
words, last-letter concatenation, coin flip), plus unit conversion, multi-step arithmetic
and the arithmetic word problems of :mod:`jaxlm.data.word_problems`. Inputs are short
(a few words from a small fixed word list, one- or two-digit numbers) so that a tiny model
can learn them in a few hundred steps, and every answer can be recomputed from the input.

Held-out split: as in :mod:`jaxlm.data.word_problems`, a stable share
(:data:`HELD_OUT_PERCENT`) of distinct examples, chosen by a hash of (family, input), is
the 'validation' split and never appears in 'train'. The word problems use
``word_problems.split_of`` on the drawn fact instead, so they hold out exactly the facts
that module holds out of pretraining.

    FAMILIES['last_letters'].templates[0].instance(examples('last_letters', 1)[0])
    examples(family, n, split='train', seed=0)  # n raw examples of the split
    split_of(family, example)                   # 'train' or 'validation'

Pure Python: the standard library and ``jaxlm.data`` only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Callable, Dict, List, Mapping, Tuple

from jaxlm.data import word_problems
from jaxlm.data.instructions import Template

SPLITS = ("train", "validation")
HELD_OUT_PERCENT = 20
# Short lowercase words, one per first letter, with varied last letters.
WORDS = ("apple", "ball", "cat", "dog", "egg", "fish", "goat", "hat", "ink", "jam", "kite", "lamp",
         "moon", "nest", "owl", "pen", "queen", "rose", "sun", "tree", "van", "wolf", "box", "yarn", "zoo")
# (unit, its singular, converted unit, factor): decimal shifts only.
CONVERSIONS = (("kilometers", "kilometer", "meters", 1000), ("meters", "meter", "centimeters", 100),
               ("kilograms", "kilogram", "grams", 1000), ("centimeters", "centimeter", "millimeters", 10),
               ("liters", "liter", "milliliters", 1000))


@dataclasses.dataclass(frozen=True)
class Family:
  """A task family: how to make one raw example, and its templates (the first a plain,
  direct one, used for zero-shot evaluation)."""
  name: str
  make: Callable[[random.Random], Dict[str, str]]
  templates: Tuple[Template, ...]
  description: str


def _quoted(words) -> str:
  return ", ".join(f'"{w}"' for w in words)


def _words(rng: random.Random, low: int, high: int) -> List[str]:
  return rng.sample(WORDS, rng.randint(low, high))


# ------------------------------------------------------------------- makers
def make_reverse_words(rng: random.Random) -> Dict[str, str]:
  words = _words(rng, 2, 4)
  backwards = words[::-1]
  return {"input": " ".join(words), "output": " ".join(backwards),
          "rationale": f"From last to first, the words are {_quoted(backwards)}."}


def make_sort_words(rng: random.Random) -> Dict[str, str]:
  words = _words(rng, 2, 4)
  ordered = sorted(words)
  letters = ", ".join(f'"{w}" ({w[0]})' for w in ordered)
  return {"input": " ".join(words), "output": " ".join(ordered),
          "rationale": f"By their first letters, the words in order are {letters}."}


def make_count_words(rng: random.Random) -> Dict[str, str]:
  words = [rng.choice(WORDS) for _ in range(rng.randint(1, 6))]
  counted = ", ".join(f'"{w}" is {k}' for k, w in enumerate(words, 1))
  return {"input": " ".join(words), "output": str(len(words)),
          "rationale": f"Counting them: {counted}. There {'is' if len(words) == 1 else 'are'} {len(words)}."}


def make_last_letters(rng: random.Random) -> Dict[str, str]:
  words = _words(rng, 2, 3)
  letters = "".join(w[-1] for w in words)
  steps = " ".join(f'The last letter of "{w}" is "{w[-1]}".' for w in words)
  return {"input": " ".join(words), "output": letters, "rationale": f'{steps} Together: "{letters}".'}


def make_coin_flip(rng: random.Random) -> Dict[str, str]:
  people = rng.sample(word_problems.NAMES, rng.randint(1, 3))
  flips = [rng.random() < 0.5 for _ in people]
  story = " ".join(f"{p} flips the coin." if f else f"{p} does not flip the coin." for p, f in zip(people, flips))
  n = sum(flips)
  times = "1 time" if n == 1 else f"{n} times"
  parity = "even, so it is still heads up" if n % 2 == 0 else "odd, so it is tails up"
  return {"input": f"A coin is heads up. {story}", "output": "yes" if n % 2 == 0 else "no",
          "rationale": f"The coin was flipped {times}. {n} is {parity}."}


def make_unit_conversion(rng: random.Random) -> Dict[str, str]:
  unit, singular, to_unit, factor = rng.choice(CONVERSIONS)
  value = rng.randint(1, 99)
  amount = f"{value} {singular if value == 1 else unit}"
  converted = value * factor
  return {"input": f"How many {to_unit} are {amount}?", "output": str(converted), "value": str(value),
          "unit": unit, "to_unit": to_unit, "amount": amount, "converted_amount": f"{converted} {to_unit}",
          "rationale": f"1 {singular} is {factor} {to_unit}, so {amount} "
                       f"{'is' if value == 1 else 'are'} {value} * {factor} = {converted} {to_unit}."}


_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def make_multi_step_arithmetic(rng: random.Random) -> Dict[str, str]:
  """Two steps, evaluated left to right (parentheses where a product follows a sum), on
  one-digit numbers; redrawn until no step is negative."""
  while True:
    a, b, c = (rng.randint(1, 9) for _ in range(3))
    op1, op2 = rng.choice("+-*"), rng.choice("+-*")
    first = _OPS[op1](a, b)
    result = _OPS[op2](first, c)
    if first >= 0 and result >= 0:
      break
  left = f"({a} {op1} {b})" if op2 == "*" and op1 != "*" else f"{a} {op1} {b}"
  return {"input": f"{left} {op2} {c}", "output": str(result),
          "rationale": f"{a} {op1} {b} = {first}. {first} {op2} {c} = {result}."}


def _fact(rng: random.Random) -> Tuple[str, int, int]:
  kind = rng.choice(word_problems.KINDS)
  if kind == "add":
    return kind, rng.randint(0, 9), rng.randint(0, 9)
  if kind == "sub":
    a = rng.randint(0, 9)
    return kind, a, rng.randint(0, a)
  return kind, rng.randint(0, 99), 1


def make_word_problem(rng: random.Random) -> Dict[str, str]:
  """A word_problems problem; ``kind``, ``a`` and ``b`` record its fact (for the split)."""
  kind, a, b = _fact(rng)
  problem = word_problems.make_problem(kind, a, b, rng)
  rationale = problem["solution"].rsplit("The answer is", 1)[0].strip()
  return {"input": problem["question"], "output": problem["answer"], "rationale": rationale,
          "kind": kind, "a": str(a), "b": str(b)}


# ---------------------------------------------------------------- families
def _family(name, make, description, *templates) -> Family:
  return Family(name, make, tuple(templates), description)


FAMILIES: Dict[str, Family] = {f.name: f for f in (
    _family("reverse_words", make_reverse_words, "write 2-4 words in reverse order",
            Template("Write the words in reverse order.", "{input}"),
            Template("Reverse the order of these words.", "Words: {input}"),
            Template("Read the words from last to first. Think it through.", "{input}", cot=True),
            Template("These words were written in reverse order. Write them in their original order.",
                     "{output}", "{input}", inverted=True)),
    _family("sort_words", make_sort_words, "sort 2-4 distinct words alphabetically",
            Template("Sort the words in alphabetical order.", "{input}"),
            Template("Put these words in dictionary order.", "Words: {input}"),
            Template("Arrange the words from A to Z. Explain your steps.", "{input}", cot=True)),
    _family("count_words", make_count_words, "count 1-6 words",
            Template("How many words are there? Answer with a number.", "{input}"),
            Template("Count the words in the text.", "Text: {input}"),
            Template("Count the words one by one.", "{input}", cot=True)),
    _family("last_letters", make_last_letters, "concatenate the last letters of 2-3 words",
            Template("Take the last letter of each word and join them.", "{input}"),
            Template("Concatenate the last letters of the words.", "Words: {input}"),
            Template("Join the final letters of the words. Think step by step.", "{input}", cot=True)),
    _family("coin_flip", make_coin_flip, "is a coin still heads up after 1-3 people flip it or not (yes/no)",
            Template("Is the coin still heads up? Answer yes or no.", "{input}"),
            Template("Read the story and say whether the coin is still heads up (yes or no).", "Story: {input}"),
            Template("Answer yes or no, thinking step by step.", "{input} Is the coin still heads up?",
                     cot=True)),
    _family("unit_conversion", make_unit_conversion, "convert an amount of 1-99 units by a power of ten",
            Template("Convert the amount. Answer with a number.", "{input}"),
            Template("Answer with a number.", "{amount} = how many {to_unit}?"),
            Template("Convert the units step by step.", "{input}", cot=True),
            Template("Convert the amount back. Answer with a number.", "How many {unit} are {converted_amount}?",
                     "{value}", inverted=True)),
    _family("multi_step_arithmetic", make_multi_step_arithmetic, "two arithmetic steps on one-digit numbers",
            Template("Compute the value of the expression.", "{input}"),
            Template("What is the result? Answer with a number.", "{input} ="),
            Template("Evaluate the expression one step at a time.", "{input}", cot=True)),
    _family("word_problems", make_word_problem, "one-step arithmetic word problems (add, sub, next)",
            Template("Answer the question with a number.", "{input}"),
            Template("Solve the math word problem.", "Q: {input}"),
            Template("Solve the problem. Show your work.", "{input}", cot=True)),
)}


# ------------------------------------------------------------------ splits
def _check_family(family: str) -> Family:
  if family not in FAMILIES:
    raise ValueError(f"unknown task family {family!r}; expected one of {sorted(FAMILIES)}")
  return FAMILIES[family]


def split_of(family: str, example: Mapping[str, str]) -> str:
  """'validation' for a stable share of distinct examples (by a hash of the family and the
  input; word problems by their fact, as ``word_problems.split_of``), else 'train'."""
  _check_family(family)
  if family == "word_problems" and all(k in example for k in ("kind", "a", "b")):
    return word_problems.split_of(example["kind"], int(example["a"]), int(example["b"]))
  digest = hashlib.sha1(f"{family}:{example['input']}".encode()).digest()
  return "validation" if digest[0] * 100 // 256 < HELD_OUT_PERCENT else "train"


def examples(family: str, n: int, split: str = "train", seed: int = 0) -> List[Dict[str, str]]:
  """n raw examples of the split (seeded; duplicates possible): drawn from the family's
  maker, keeping those of the split."""
  make = _check_family(family).make
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  rng = random.Random(f"{seed}:{family}:{split}")
  out, attempts = [], 0
  while len(out) < n:
    if attempts >= 100 * n + 1000:
      raise ValueError(f"could not draw {n} {split} examples of {family!r}: {len(out)} in {attempts} draws")
    attempts += 1
    example = make(rng)
    if split_of(family, example) == split:
      out.append(example)
  return out
