"""Perturbations are seeded and meaning-preserving; worst_case takes the worst variant."""
import re

import pytest

from jaxlm.evaluation import robustness as R
from jaxlm.evaluation.metrics import edit_distance

TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun."


@pytest.mark.parametrize("kind", sorted(R.PERTURBATIONS))
def test_perturbations_are_deterministic_per_seed(kind):
  a = R.perturb(TEXT, kind, seed=3)
  assert a == R.perturb(TEXT, kind, seed=3)
  variants = {R.perturb(TEXT, kind, seed=s) for s in range(12)}
  assert len(variants) > 2  # seeds matter
  assert TEXT not in variants or kind == "casing"


def test_typos_change_few_letters_and_keep_words():
  for seed in range(20):
    out = R.typos(TEXT, seed, rate=0.05)
    assert out != TEXT
    assert abs(len(out) - len(TEXT)) <= 4
    n_letters = sum(c.isalpha() for c in TEXT)
    assert 1 <= edit_distance(out, TEXT) <= 2 * round(0.05 * n_letters)  # swap = 2 edits
    assert len(out.split()) == len(TEXT.split())  # typos never merge or split words
  assert R.typos("1234 ...", 0) == "1234 ..."  # nothing to misspell


def test_casing_and_whitespace_preserve_content():
  for seed in range(20):
    assert R.casing(TEXT, seed).lower() == TEXT.lower()
    ws = R.whitespace(TEXT, seed)
    assert ws.split() == TEXT.split()
  assert any(R.whitespace(TEXT, s) != TEXT for s in range(5))
  assert any(re.search(r"\s\s|\t|\n", R.whitespace(TEXT, s)) for s in range(5))
  with pytest.raises(ValueError):
    R.perturb(TEXT, "emoji")


def test_perturb_example_only_touches_named_fields():
  ex = {"inputs": TEXT, "targets": "dog", "id": 7}
  out = R.perturb_example(ex, "typos", seed=1)
  assert out["inputs"] != TEXT and out["targets"] == "dog" and out["id"] == 7
  assert ex["inputs"] == TEXT  # the original is not modified


def test_worst_case_metric():
  examples = [{"inputs": f"What is {i} plus {i}?", "targets": str(2 * i)} for i in range(6)]

  def brittle(exs):  # right only on the exact clean prompt
    return [float(e["inputs"] == f"What is {int(e['targets']) // 2} plus "
                                 f"{int(e['targets']) // 2}?") for e in exs]

  def case_and_space_insensitive(exs):
    return [float(" ".join(e["inputs"].lower().split())
                  == f"what is {int(e['targets']) // 2} plus {int(e['targets']) // 2}?")
            for e in exs]

  out = R.worst_case(examples, brittle, num_variants=2, seed=0)
  assert out["clean"] == 1.0 and out["worst_case"] == 0.0
  assert out["typos"] == 0.0 and out["whitespace"] < 1.0
  out = R.worst_case(examples, case_and_space_insensitive, num_variants=3, seed=0)
  assert out["clean"] == 1.0 and out["casing"] == 1.0 and out["whitespace"] == 1.0
  assert out["typos"] < 1.0 and out["worst_case"] == 0.0
  only = R.worst_case(examples, case_and_space_insensitive,
                      perturbations=("casing", "whitespace"))
  assert only["worst_case"] == 1.0
  # Lower-is-better metrics take the maximum.
  loss = R.worst_case(examples, lambda exs: [len(e["inputs"]) for e in exs],
                      perturbations=("whitespace",), higher_is_better=False)
  assert loss["worst_case"] >= loss["clean"]
  with pytest.raises(ValueError):
    R.worst_case(examples, lambda exs: [1.0])
