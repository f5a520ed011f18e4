"""Generated instruction tasks: answers recomputed from the inputs, held-out split, templates."""
import ast
import operator
import random
import re

import pytest

from jaxlm.data import generated_tasks as gt
from jaxlm.data import word_problems
from jaxlm.data.instructions import answer_of

FAMILY_NAMES = ("reverse_words", "sort_words", "count_words", "last_letters", "coin_flip",
                "unit_conversion", "multi_step_arithmetic", "word_problems")
FACTORS = {("kilometers", "meters"): 1000, ("meters", "centimeters"): 100, ("kilograms", "grams"): 1000,
           ("centimeters", "millimeters"): 10, ("liters", "milliliters"): 1000}
BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _evaluate(expression):
  """Integer arithmetic (+, -, *, parentheses) without eval."""
  def walk(node):
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
      return BINARY[type(node.op)](walk(node.left), walk(node.right))
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
      return node.value
    raise ValueError(f"unexpected {ast.dump(node)} in {expression!r}")
  return walk(ast.parse(expression, mode="eval").body)


def _unit_answer(example):
  m = re.fullmatch(r"How many (\w+) are (\d+) (\w+)\?", example["input"])
  to_unit, value, unit = m.group(1), int(m.group(2)), m.group(3)
  unit = unit if unit.endswith("s") else unit + "s"
  assert example["value"] == str(value)
  return str(value * FACTORS[(unit, to_unit)])


def _word_problem_answer(example):
  text = example["input"]
  if m := re.search(r"has (\d+) \w+\. \w+ gets (\d+) more", text):
    return str(int(m.group(1)) + int(m.group(2)))
  if m := re.search(r"has (\d+) \w+\. \w+ gives away (\d+)\.", text):
    return str(int(m.group(1)) - int(m.group(2)))
  return str(int(re.fullmatch(r"What number comes after (\d+)\?", text).group(1)) + 1)


ANSWERS = {
    "reverse_words": lambda e: " ".join(e["input"].split()[::-1]),
    "sort_words": lambda e: " ".join(sorted(e["input"].split())),
    "count_words": lambda e: str(len(e["input"].split())),
    "last_letters": lambda e: "".join(w[-1] for w in e["input"].split()),
    "coin_flip": lambda e: "yes" if e["input"].count(" flips the coin.") % 2 == 0 else "no",
    "unit_conversion": _unit_answer,
    "multi_step_arithmetic": lambda e: str(_evaluate(e["input"])),
    "word_problems": _word_problem_answer,
}


def test_families_are_all_there():
  assert set(FAMILY_NAMES) <= set(gt.FAMILIES)
  for name, family in gt.FAMILIES.items():
    assert family.name == name and family.description and "\n" not in family.description


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_examples_are_seeded_and_correct(name):
  draw = gt.examples(name, 100, seed=3)
  assert draw == gt.examples(name, 100, seed=3)
  assert draw != gt.examples(name, 100, seed=4)
  assert len(draw) == 100
  for split in gt.SPLITS:
    for example in gt.examples(name, 100, split=split):
      assert all(isinstance(v, str) for v in example.values())
      assert example["output"] == ANSWERS[name](example), example
      assert example["rationale"] and "The answer is" not in example["rationale"]
      assert gt.split_of(name, example) == split


def test_inputs_are_short_and_from_the_word_list():
  for name in ("reverse_words", "sort_words", "count_words", "last_letters"):
    for example in gt.examples(name, 200):
      words = example["input"].split()
      assert 1 <= len(words) <= 6 and set(words) <= set(gt.WORDS)
      if name != "count_words":
        assert len(set(words)) == len(words)


def test_coin_flip_rationale_counts_flips():
  for example in gt.examples("coin_flip", 100):
    flips = example["input"].count(" flips the coin.")
    assert example["rationale"].startswith(f"The coin was flipped {flips} time")
    assert ("even" if flips % 2 == 0 else "odd") in example["rationale"]


def test_multi_step_arithmetic_shows_both_steps():
  for example in gt.examples("multi_step_arithmetic", 100):
    steps = re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)\.", example["rationale"])
    assert len(steps) == 2 and steps[1][0] == steps[0][3] and steps[1][3] == example["output"]
    assert all(_evaluate(f"{a} {op} {b}") == int(r) for a, op, b, r in steps)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_held_out_split(name):
  train = {e["input"] for e in gt.examples(name, 300, "train")}
  validation = {e["input"] for e in gt.examples(name, 300, "validation")}
  assert train and validation and not train & validation
  # Over a large draw of distinct inputs the validation share is HELD_OUT_PERCENT +- 6
  # points (unit conversion has only 495 inputs; word problems hold out whole facts).
  rng, splits = random.Random(7), {}
  for _ in range(3000):
    example = gt.FAMILIES[name].make(rng)
    splits[example["input"]] = gt.split_of(name, example)
  share = 100 * sum(s == "validation" for s in splits.values()) / len(splits)
  assert abs(share - gt.HELD_OUT_PERCENT) <= 6, share


def test_split_is_a_stable_hash():
  example = {"input": "cat dog", "output": "dog cat", "rationale": ""}
  assert gt.split_of("reverse_words", example) == gt.split_of("reverse_words", dict(example))
  assert {gt.split_of("reverse_words", {"input": f"word {k}"}) for k in range(50)} == set(gt.SPLITS)


def test_word_problems_follow_the_word_problem_facts():
  for split in gt.SPLITS:
    for example in gt.examples("word_problems", 100, split):
      assert word_problems.split_of(example["kind"], int(example["a"]), int(example["b"])) == split


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_templates_word_every_example(name):
  family = gt.FAMILIES[name]
  assert len(family.templates) >= 3
  assert len({t.instruction for t in family.templates}) == len(family.templates)
  first = family.templates[0]
  assert not first.inverted and not first.cot
  draw = gt.examples(name, 40) + gt.examples(name, 20, "validation")
  for template in family.templates:
    for example in draw:
      assert set(template.fields_used()) <= set(example)
      instance = template.instance(example, demonstrations=draw[:2])
      assert instance.prompt().endswith("\n") and instance.target()
      if not template.inverted:
        assert answer_of(instance.target()) == example["output"].lower()
      if template.cot:
        assert instance.target() == f"{example['rationale']} The answer is {example['output']}."
      else:
        assert instance.target() == (example["output"] if not template.inverted else instance.output)


def test_cot_and_inverted_templates():
  with_cot = [n for n in FAMILY_NAMES if any(t.cot for t in gt.FAMILIES[n].templates)]
  assert len(with_cot) >= 5
  reverse = next(t for t in gt.FAMILIES["reverse_words"].templates if t.inverted)
  for example in gt.examples("reverse_words", 20):
    instance = reverse.instance(example)
    assert example["output"] in instance.prompt() and instance.target() == example["input"]
  back = next(t for t in gt.FAMILIES["unit_conversion"].templates if t.inverted)
  for example in gt.examples("unit_conversion", 20):
    instance = back.instance(example)
    assert f"{example['output']} {example['to_unit']}" in instance.prompt()
    assert instance.target() == example["value"]


def test_bad_names_are_rejected():
  with pytest.raises(ValueError, match="unknown task family 'nope'.*reverse_words"):
    gt.examples("nope", 3)
  with pytest.raises(ValueError, match="unknown split 'test'.*validation"):
    gt.examples("coin_flip", 3, split="test")
  with pytest.raises(ValueError, match="unknown task family"):
    gt.split_of("nope", {"input": "x"})
  assert gt.examples("coin_flip", 0) == []


def test_an_unfillable_split_is_named(monkeypatch):
  fixed = {"input": "cat dog", "output": "dog cat", "rationale": "r"}
  family = gt.Family("reverse_words", lambda rng: dict(fixed), gt.FAMILIES["reverse_words"].templates, "fixed")
  monkeypatch.setitem(gt.FAMILIES, "reverse_words", family)
  other = "train" if gt.split_of("reverse_words", fixed) == "validation" else "validation"
  with pytest.raises(ValueError, match=f"could not draw 2 {other} examples of 'reverse_words'"):
    gt.examples("reverse_words", 2, other)
