"""jaxlm.prompting on planted data, without a trained model: every selector and order, the
vote, the CoT stages, the calculator and the tool registry, retrieval over a JSONL corpus.

A scripted stand-in for PromptLM (:class:`FakeLM`) answers generate / samples / score /
embed from tables, so each test knows the right answer in advance.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from jaxlm.data import generated_tasks
from jaxlm.data.instructions import Template
from jaxlm.prompting import cot, icl, retrieval, strategy, tools

TEMPLATE = Template("Name the animal's sound.", "{input}", "{output}")


class FakeLM:
  """generate: reply(prompt) of a function; samples: a table by prompt; score: a function
  of (prompt, continuation); embed: a table by text. Records the prompts it saw."""

  def __init__(self, reply=None, samples=None, score=None, embed=None):
    self._reply, self._samples, self._score, self._embed = reply, samples, score, embed
    self.seen = []

  def generate(self, prompts, decoding):
    self.seen += list(prompts)
    return [self._reply(p) for p in prompts]

  def samples(self, prompts, k, decoding):
    self.seen += list(prompts)
    return [self._samples(p, k) for p in prompts]

  def score(self, prompts, continuations):
    return np.array([self._score(p, c) for p, c in zip(prompts, continuations)])

  def embed(self, texts):
    return np.array([self._embed[t] for t in texts], np.float64)


# ------------------------------------------------------------------ selection
POOL = [{"input": t, "output": o} for t, o in [
    ("the red fox runs", "a"), ("a blue whale swims", "b"), ("the red fox sleeps", "a"),
    ("green frogs jump high", "c"), ("a blue whale sings", "b"), ("old owls hoot", "c")]]


@pytest.mark.parametrize("similarity", ["tfidf", "bm25"])
def test_knn_picks_the_planted_nearest_demonstrations(similarity):
  queries = [{"input": "where does the red fox go", "output": "?"}, {"input": "blue whale", "output": "?"}]
  config = icl.ICLConfig(num_shots=2, selection="knn", similarity=similarity)
  picks = icl.demonstrations(queries, POOL, TEMPLATE, config)
  assert sorted(picks[0]) == [0, 2] and sorted(picks[1]) == [1, 4]
  # Most similar last: the 'similarity' order reverses knn's best-first order.
  ordered = icl.demonstrations(queries, POOL, TEMPLATE, icl.ICLConfig(num_shots=3, selection="knn",
                                                                      similarity=similarity, order="similarity"))
  sims = retrieval.similarities(similarity, [TEMPLATE.parts(q)[0] for q in queries], [p["input"] for p in POOL])
  nearest = icl.demonstrations(queries, POOL, TEMPLATE, icl.ICLConfig(num_shots=1, selection="knn",
                                                                       similarity=similarity))
  for row, pick, best in zip(sims, ordered, nearest):
    assert list(row[pick]) == sorted(row[pick]) and pick[-1] == best[0]


def test_knn_by_embeddings_uses_the_models_vectors():
  vectors = {p["input"]: np.eye(6)[i] for i, p in enumerate(POOL)}
  vectors["query"] = np.eye(6)[3] + 0.5 * np.eye(6)[5]
  lm = FakeLM(embed=vectors)
  config = icl.ICLConfig(num_shots=2, selection="knn", similarity="embedding")
  assert icl.demonstrations([{"input": "query", "output": ""}], POOL, TEMPLATE, config, lm) == [[3, 5]]
  with pytest.raises(ValueError, match="needs the model"):
    icl.demonstrations([{"input": "query", "output": ""}], POOL, TEMPLATE, config)


def test_mmr_trades_relevance_for_diversity_as_lambda_moves():
  # Documents 0-2 are near-duplicates close to the query; 3 is less relevant but different.
  query = np.array([1.0, 0.95, 0.9, 0.5])
  pool = np.array([[1.0, 0.99, 0.98, 0.1], [0.99, 1.0, 0.99, 0.1], [0.98, 0.99, 1.0, 0.1], [0.1, 0.1, 0.1, 1.0]])
  assert icl.mmr(query, pool, 2, lam=1.0) == [0, 1]     # pure relevance: knn
  assert icl.mmr(query, pool, 2, lam=0.5) == [0, 3]     # the duplicate is penalised
  assert icl.mmr(query, pool, 2, lam=0.0)[1] == 3
  redundancy = [pool[np.ix_(p, p)][0, 1] for p in (icl.mmr(query, pool, 2, lam) for lam in (1.0, 0.7, 0.5, 0.2))]
  assert redundancy == sorted(redundancy, reverse=True) and redundancy[0] > redundancy[-1]


def test_cluster_selection_takes_one_demonstration_per_planted_cluster():
  rng = np.random.default_rng(0)
  centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
  points = np.concatenate([c + rng.normal(0, 0.3, (5, 2)) for c in centers])
  picks = icl.select_by_cluster(points, 3, seed=1)
  assert sorted(p // 5 for p in picks) == [0, 1, 2]
  for p in picks:  # each is the member nearest its cluster's mean
    members = points[(p // 5) * 5:(p // 5) * 5 + 5]
    assert np.argmin(((members - members.mean(0)) ** 2).sum(1)) == p % 5
  _, labels = icl.kmeans(points, 3, seed=2)
  assert len({tuple(labels[i * 5:i * 5 + 5]) for i in range(3)}) == 3 and all(
      len(set(labels[i * 5:i * 5 + 5])) == 1 for i in range(3))


def test_label_balanced_sampling_covers_the_labels_evenly():
  labels = ["pos"] * 20 + ["neg"] * 3 + ["neutral"] * 2
  for seed in range(5):
    picks = icl.select_label_balanced(labels, 6, random.Random(seed))
    counts = {l: sum(labels[p] == l for p in picks) for l in set(labels)}
    assert len(set(picks)) == 6 and counts == {"pos": 2, "neg": 2, "neutral": 2}
  random_picks = icl.select_random(len(labels), 6, random.Random(0))
  assert sum(labels[p] == "pos" for p in random_picks) > 2  # what balancing corrects


def test_random_selection_and_order_are_seeded():
  queries = [{"input": "q", "output": ""}] * 3
  config = icl.ICLConfig(num_shots=3, selection="random", order="random", seed=4)
  assert icl.demonstrations(queries, POOL, TEMPLATE, config) == icl.demonstrations(queries, POOL, TEMPLATE, config)
  other = icl.demonstrations(queries, POOL, TEMPLATE, icl.ICLConfig(num_shots=3, selection="random", seed=5))
  assert other != icl.demonstrations(queries, POOL, TEMPLATE, config)
  prompt = icl.build_prompts(queries[:1], POOL, TEMPLATE, config)[0]
  picks = icl.demonstrations(queries[:1], POOL, TEMPLATE, config)[0]
  assert prompt == TEMPLATE.instance(queries[0], [POOL[j] for j in picks]).prompt()  # instruction tuning's wording
  assert prompt.startswith("Name the animal's sound.\n\n") and prompt.endswith("\n\nq\n")


def test_the_config_names_a_wrong_setting():
  with pytest.raises(ValueError, match="ICLConfig.selection='nearest'"):
    icl.ICLConfig(selection="nearest")
  with pytest.raises(ValueError, match="ICLConfig.mmr_lambda=2"):
    icl.ICLConfig(mmr_lambda=2)
  with pytest.raises(ValueError, match="PromptStrategy 'x'"):
    strategy.PromptStrategy(name="x", zero_shot_cot=cot.ZeroShotCoT(), tools=("calc",))


def test_sensitivity_reports_mean_and_spread_over_demonstration_sets():
  seen = []

  def evaluate(config):
    seen.append((config.selection, config.order, config.seed))
    return [0.2, 0.6, 0.4, 0.8][config.seed]
  report = icl.sensitivity(evaluate, icl.ICLConfig(selection="knn"), runs=4)
  assert seen == [("random", "random", s) for s in range(4)]
  assert report["mean"] == pytest.approx(0.5) and report["min"] == 0.2 and report["max"] == 0.8
  assert report["std"] == pytest.approx(np.std([0.2, 0.6, 0.4, 0.8]))


# ---------------------------------------------------------------- entropy order
def test_entropy_order_picks_the_order_with_the_highest_global_entropy():
  """A planted model: after demonstrations ending in label L it predicts L for every probe
  (recency bias), except that an order whose first demonstration is 'x' and last 'y' makes
  it answer by the probe itself; only that order has balanced predictions."""
  pool = [{"input": "x", "output": "yes"}, {"input": "z", "output": "yes"}, {"input": "y", "output": "no"}]
  probes = ["p1 yes", "p2 no", "p3 yes", "p4 no"]

  def score(prompt, label):
    shots = prompt.split("\n\n")[1:-1]
    query = prompt.split("\n\n")[-1].strip()
    by_probe = shots[0].startswith("x") and shots[-1].startswith("y")
    want = query.split()[-1] if by_probe else shots[-1].split("\n")[1]
    return 0.0 if label == want else -3.0
  lm = FakeLM(samples=lambda p, k: [probes[(i + len(p)) % 4] for i in range(k)], score=score)
  config = icl.ICLConfig(num_shots=3, selection="label_balanced", order="global_entropy", num_probes=4)
  shots = icl.shots_of(TEMPLATE, pool)
  scores = icl.score_orders(lm, TEMPLATE.instruction, shots, ["no", "yes"], config)
  assert len(scores.orders) == 6 and sorted(set(scores.probes)) == probes
  best = scores.orders[int(np.argmax(scores.global_entropy))]
  assert [pool[i]["input"] for i in best] == ["x", "z", "y"]
  assert scores.global_entropy.max() == pytest.approx(np.log(2)) and np.sort(scores.global_entropy)[-2] == 0.0
  prompt = icl.build_prompts([{"input": "q", "output": ""}], pool, TEMPLATE, config, lm)[0]
  assert prompt.index("\nx\n") < prompt.index("\nz\n") < prompt.index("\ny\n")
  # LocalE of [probes, labels] distributions, GlobalE of their argmax histogram.
  assert icl.local_entropy(np.array([[0.5, 0.5], [1.0, 0.0]])) == pytest.approx(np.log(2) / 2)
  assert icl.global_entropy(np.array([[0.9, 0.1], [0.2, 0.8]])) == pytest.approx(np.log(2))


# ---------------------------------------------------------------- CoT
def test_majority_vote_on_planted_samples():
  assert cot.majority_vote(["3", "4", "3", "5", "4", "3"]) == ("3", 0.5)
  assert cot.majority_vote(["4", "3", "3", "4"]) == ("4", 0.5)      # a tie: the one that got there first
  assert cot.majority_vote(["", "", "7"]) == ("7", 1 / 3)            # no answer is no vote
  assert cot.majority_vote(["", ""]) == ("", 0.0)
  samples = {"Q1\n": ["2 + 2 = 4. The answer is 4.", "The answer is 5.", "2 + 2 = 4, so 4", "The answer is 4."],
             "Q2\n": ["it is 10", "The answer is 1,000.", "1000", "The answer is $1000"]}
  lm = FakeLM(samples=lambda p, k: samples[p][:k])
  out = cot.self_consistency(lm, list(samples), cot.SelfConsistency(num_samples=4),
                             strategy.DecodeConfig(max_new_tokens=8))
  assert [r["answer"] for r in out] == ["4", "1000"] and [r["share"] for r in out] == [0.75, 0.75]
  assert out[0]["prediction"] == "The answer is 4."
  assert cot.SelfConsistency(temperature=0.5).decoding(strategy.DecodeConfig(max_new_tokens=9)).method == "sample"


def test_zero_shot_cot_runs_two_stages():
  def reply(prompt):
    return " 3 and 4 make 7.\n" if prompt.endswith("step by step.") else " 7.\nmore"
  lm = FakeLM(reply=reply)
  out = cot.zero_shot_cot(lm, ["Q: 3 + 4?\n"], cot.ZeroShotCoT())
  assert lm.seen == ["Q: 3 + 4?\nLet's think step by step.",
                     "Q: 3 + 4?\nLet's think step by step. 3 and 4 make 7.\nTherefore, the answer is"]
  assert out[0]["answer"] == "7." and out[0]["prediction"] == "3 and 4 make 7. The answer is 7."


def test_least_to_most_answers_the_subquestions_in_order():
  def reply(prompt):
    if prompt.startswith("Break"):
      return "How many apples first?\nHow many after?\n"
    return {"How many apples first?": " 3", "How many after?": " 5", "Ann has 3 apples, gets 2.": " 5"}[
        prompt.rsplit("Q: ", 1)[1].split("\n")[0]]
  lm = FakeLM(reply=reply)
  out = cot.least_to_most(lm, ["Ann has 3 apples, gets 2."], cot.LeastToMost())[0]
  assert out["subquestions"] == ["How many apples first?", "How many after?", "Ann has 3 apples, gets 2."]
  assert out["answers"] == ["3", "5", "5"] and out["prediction"] == "The answer is 5."
  last = lm.seen[-1]  # the solved steps come before the question itself
  assert last.index("Q: How many apples first?\nA: 3") < last.index("Q: How many after?\nA: 5") < last.index(
      "Q: Ann has 3 apples, gets 2.\nA:")


def test_auto_cot_builds_one_demonstration_per_question_cluster():
  questions = ["how many apples does ann have", "how many apples does bob have", "how many apples does cy have",
               "what color is the red sky", "what color is the blue sky", "what color is the green sky"]
  lm = FakeLM(reply=lambda p: " think." if p.endswith("step by step.") else " 1")
  demos = cot.auto_cot_demonstrations(lm, questions, 2, cot.ZeroShotCoT(), seed=0)
  assert sorted("apples" in q for q, _ in demos) == [False, True]
  assert all(t == "think. The answer is 1." for _, t in demos)


# ---------------------------------------------------------------- tools
def test_the_calculator_parses_arithmetic_and_returns_errors_as_text():
  assert tools.calculate("347 * 28") == "9716" and tools.calculate("(3 + 4) * -2") == "-14"
  assert tools.calculate("7 / 2") == "3.5" and tools.calculate("2 ** 10") == "1024" and tools.calculate("1,000 + 1") == "1001"
  assert tools.calculate("6 / 3") == "2" and tools.calculate("3 × 4") == "12"
  for bad, message in [("1 / 0", "division by zero"), ("__import__('os').system('true')", "unsupported syntax Call"),
                       ("x + 1", "unsupported syntax Name"), ("2 ** 999", "exponent too large"),
                       ("3 +", "error:"), ("", "empty expression")]:
    assert tools.calculate(bad).startswith("error:") and message in tools.calculate(bad), bad


def test_tools_are_registered_by_name_and_their_failures_come_back_as_text():
  tools.register_tool("shout", lambda: str.upper, overwrite=True)
  assert tools.get_tools(["shout", "calc"])["shout"]("hi") == "HI"
  with pytest.raises(ValueError, match="unknown tool.*'nope'.*registered"):
    tools.get_tools(["nope"])
  with pytest.raises(ValueError, match="is registered"):
    tools.register_tool("calc", lambda: tools.calculate)
  assert tools.run_tool(lambda s: 1 / 0, "x") == "error: ZeroDivisionError: division by zero"
  syntax = tools.ToolSyntax()
  text = "so <calc>3 * 4</calc> = 12 and <shout>hey</shout> then <calc>1 +"
  assert [(n, a) for n, a, _ in syntax.find_calls(text, ["calc", "shout"])] == [("calc", "3 * 4"), ("shout", "hey")]
  with pytest.raises(ValueError, match="ToolSyntax.result_format"):
    tools.ToolSyntax(result_format=" = ")


def test_calculator_call_data_from_the_generated_arithmetic():
  ex = generated_tasks.examples("multi_step_arithmetic", 1, seed=3)[0]
  called = tools.with_calculator_calls(ex)
  steps = ex["rationale"].split(". ")
  assert called["rationale"].count("<calc>") == len(steps) and called["output"] == ex["output"]
  for name, argument, _ in tools.ToolSyntax().find_calls(called["rationale"], ["calc"]):
    assert f"<calc>{argument}</calc> = {tools.calculate(argument)}" in called["rationale"]
  wrong = tools.with_calculator_calls({"rationale": "2 + 2 = 5. 3 * 3 = 9."})["rationale"]
  assert wrong == "2 + 2 = 5. <calc>3 * 3</calc> = 9."  # a wrong step is not a call
  train = tools.arithmetic_examples(200, "train")
  held_out = tools.arithmetic_examples(50, "validation")
  assert not {e["input"] for e in train} & {e["input"] for e in held_out}
  assert all(tools.calculate(e["input"]) == e["output"] and len(e["input"].split()[0]) >= 2 for e in held_out)


# ------------------------------------------------------------- retrieval
def test_retrieval_augmentation_over_a_jsonl_corpus(tmp_path):
  facts = {"owl": 42, "cat": 17, "fox": 88, "yak": 23}
  path = tmp_path / "corpus.jsonl"
  path.write_text("".join(json.dumps({"text": f"The {k} lives in room {v}. " + "It is quiet there. " * 3}) + "\n"
                          for k, v in facts.items()))
  aug = retrieval.RetrievalAugmentation(corpus=str(path), k=2, passage_words=8)
  assert aug.retrieve("Which room does the fox live in?")[0] == "The fox lives in room 88. It is"
  prompt = aug.augment("Which room does the fox live in?", "Q\n")
  assert prompt.endswith("Passage: The fox lives in room 88. It is\n\nQ\n") and prompt.count("Passage: ") == 2
  assert tools.SearchTool(aug)("where is the yak") == "The yak lives in room 23. It is"
  index = retrieval.BM25Index(["a b c", "the owl hoots", "the the the"])
  assert index.search("owl", 1) == [1] and retrieval.top_k(np.array([1.0, 3.0, 3.0]), 2) == [1, 2]
  with pytest.raises(ValueError, match="passage_format"):
    retrieval.RetrievalAugmentation(corpus=str(path), passage_format="no slot")
  with pytest.raises(ValueError, match="has no documents"):
    (tmp_path / "empty.jsonl").write_text("")
    retrieval.RetrievalAugmentation(corpus=str(tmp_path / "empty.jsonl")).retrieve("x")


def test_prompting_imports_no_tensorflow():
  from test_core_without_tensorflow import BLOCKER
  code = BLOCKER + "import jaxlm.prompting\nassert not any(m.split('.')[0] in ('tensorflow', 'seqio') for m in sys.modules)\n"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
