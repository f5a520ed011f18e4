"""Benchmark formats: local-file loaders, plain evaluation, and seqio Tasks."""
import json

import pytest

from jaxlm.evaluation import suites
from jaxlm.evaluation.suites import FormatError

MMLU_CSV = '''What is 2 + 2?,3,4,5,6,B
"Which is a prime,
spread over two lines?",4,6,7,9,C
Capital of France?,Paris,Rome,Madrid,Berlin,A
'''


def _jsonl(path, rows):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return str(path)


@pytest.fixture
def mmlu(tmp_path):
  path = tmp_path / "elementary_math_test.csv"
  path.write_text(MMLU_CSV)
  return str(path)


def test_load_mmlu_csv(mmlu, tmp_path):
  assert len(suites.load_multiple_choice(str(tmp_path))) == 3  # a directory of CSVs
  exs = suites.load_multiple_choice(mmlu)
  assert [e["answer"] for e in exs] == [1, 2, 0]
  assert exs[1]["question"] == "Which is a prime,\nspread over two lines?"
  assert exs[1]["choices"] == ["4", "6", "7", "9"]
  assert {e["subject"] for e in exs} == {"elementary_math"}


def test_malformed_csv_names_file_and_line(tmp_path):
  path = tmp_path / "x_test.csv"
  path.write_text(MMLU_CSV + "Too few columns,1,A\n")
  with pytest.raises(FormatError, match=rf"{path}:5: .*3 column"):
    suites.load_multiple_choice(str(path))
  path.write_text(MMLU_CSV + "Bad answer letter?,1,2,3,4,E\n")
  with pytest.raises(FormatError, match=rf"{path}:5: answer 'E'"):
    suites.load_multiple_choice(str(path))


def test_load_multiple_choice_jsonl(tmp_path):
  path = _jsonl(tmp_path / "mc.jsonl", [
      {"question": "q1", "choices": ["a", "b"], "answer": 1},
      {"question": "q2", "choices": ["a", "b", "c"], "answer": "C"},
      {"question": "q3", "choices": ["yes", "no"], "answer": "no"}])
  assert [e["answer"] for e in suites.load_multiple_choice(path)] == [1, 2, 1]
  bad = _jsonl(tmp_path / "bad.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 0},
                                        {"question": "q", "choices": ["a", "b"], "answer": 5}])
  with pytest.raises(FormatError, match=rf"{bad}:2: answer index 5 out of range"):
    suites.load_multiple_choice(bad)
  bad = _jsonl(tmp_path / "bad2.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 0},
                                         "{not json"])
  with pytest.raises(FormatError, match=rf"{bad}:2: invalid JSON"):
    suites.load_multiple_choice(bad)
  bad = _jsonl(tmp_path / "bad3.jsonl", [{"question": "q", "answer": 0}])
  with pytest.raises(FormatError, match=rf"{bad}:1: missing field\(s\) \['choices'\]"):
    suites.load_multiple_choice(bad)


def test_load_qa_math_code_last_word(tmp_path):
  qa = suites.load_qa(_jsonl(tmp_path / "qa.jsonl", [
      {"question": "Who?", "answers": ["Ada", "Ada Lovelace"], "context": "Ada wrote it."},
      {"question": "When?", "answers": {"text": ["1843"]}},
      {"question": "Where?", "answer": "London"}]))
  assert [e["answers"] for e in qa] == [["Ada", "Ada Lovelace"], ["1843"], ["London"]]
  with pytest.raises(FormatError, match=r"qa2.jsonl:1: need 'answers'"):
    suites.load_qa(_jsonl(tmp_path / "qa2.jsonl", [{"question": "q", "answers": []}]))

  math_rows = [{"question": "Tom has 3 apples and buys 4. How many?",
                "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
               {"question": "Cost?", "answer": "It costs 1,000 dollars.\n#### 1,000"}]
  gsm = suites.load_math(_jsonl(tmp_path / "gsm.jsonl", math_rows))
  assert [e["answer"] for e in gsm] == ["7", "1000"]
  with pytest.raises(FormatError, match=r"gsm2.jsonl:2: answer lacks the '####"):
    suites.load_math(_jsonl(tmp_path / "gsm2.jsonl", [math_rows[0],
                                                      {"question": "q", "answer": "7"}]))

  assert len(suites.load_code()) == 164
  with pytest.raises(FormatError, match=r"code.jsonl:1: missing field"):
    suites.load_code(_jsonl(tmp_path / "code.jsonl", [{"task_id": "x", "prompt": "p"}]))

  txt = tmp_path / "lambada.txt"
  txt.write_text("the cat sat on the mat\n\nshe opened the door\n")
  lw = suites.load_last_word(str(txt))
  assert lw == [{"context": "the cat sat on the", "target": "mat"},
                {"context": "she opened the", "target": "door"}]
  assert suites.load_last_word(_jsonl(tmp_path / "l.jsonl", [{"text": "a b c"}])) == \
      [{"context": "a b", "target": "c"}]
  txt.write_text("fine passage here\nlonely\n")
  with pytest.raises(FormatError, match=rf"{txt}:2: passage needs at least two words"):
    suites.load_last_word(str(txt))


def _oracle_scorer(examples, style, right=True):
  """Fake model: log-likelihood 0 for the gold continuation, -5 for the others."""
  gold = {}
  for ex in examples:
    ctx, conts = suites.multiple_choice_requests(ex, style)
    gold[ctx] = conts[ex["answer"]]

  def loglikelihood_fn(requests):
    return [(0.0 if (gold[c] == cont) == right else -5.0) for c, cont in requests]
  return loglikelihood_fn


@pytest.mark.parametrize("style", ["letters", "text"])
def test_multiple_choice_with_a_fake_scorer(mmlu, style):
  exs = suites.load_multiple_choice(mmlu)
  out = suites.evaluate_multiple_choice(exs, _oracle_scorer(exs, style), style)
  assert out["acc"] == 1.0 and out["acc_norm"] == 1.0
  out = suites.evaluate_multiple_choice(exs, _oracle_scorer(exs, style, right=False), style)
  assert out["acc"] == 0.0
  with pytest.raises(ValueError, match="returned 1 scores"):
    suites.evaluate_multiple_choice(exs, lambda reqs: [0.0], style)


def test_generative_evaluation_with_fake_generators(tmp_path):
  qa = [{"question": "Who?", "context": "", "answers": ["Ada Lovelace"]},
        {"question": "When?", "context": "", "answers": ["1843"]}]
  out = suites.evaluate_generation("qa", qa, lambda ps: ["the Ada Lovelace\nQuestion: ...", "1842"])
  assert out == {"em": 50.0, "f1": 50.0}
  gsm = [{"question": "q", "solution": "#### 7", "answer": "7"}]
  assert suites.evaluate_generation("math", gsm, lambda ps: ["3+4=7. The answer is 7."]) == \
      {"accuracy": 1.0}
  problems = suites.load_code()[:3]
  out = suites.evaluate_generation(
      "code", problems,
      lambda ps: [p["canonical_solution"] + "\n\ndef unrelated():\n    while True: pass\n"
                  for p in problems])  # the trailing function is cut off by the stop rule
  assert out == {"pass@1": 1.0}
  assert suites.truncate_completion("    return 1\n\nprint(f())\n") == "    return 1\n"


def test_seqio_tasks_wire_into_the_seqio_evaluator(mmlu, tmp_path):
  import seqio
  exs = suites.load_multiple_choice(mmlu)
  suites.register_suite_task("jaxlm_test_mmlu", "multiple_choice", mmlu)
  qa_path = _jsonl(tmp_path / "qa.jsonl", [{"question": "Who?", "answers": ["Ada", "Ada L"]},
                                           {"question": "When?", "answer": "1843"}])
  suites.register_suite_task("jaxlm_test_qa", "qa", qa_path)
  vocab = seqio.ByteVocabulary()
  converter = seqio.EncDecFeatureConverter(pack=False)
  gold = {suites.multiple_choice_requests(e)[0]: suites.multiple_choice_requests(e)[1][e["answer"]]
          for e in exs}

  def score_fn(ds):  # fake model: log-likelihood 0 for the gold continuation
    out = []
    for i, ex in ds.as_numpy_iterator():
      assert 1 not in ex["decoder_target_tokens"].tolist()  # no EOS in the scored span
      ctx = vocab.decode(ex["encoder_input_tokens"].tolist())
      cont = vocab.decode(ex["decoder_target_tokens"].tolist())
      out.append((i, 0.0 if gold[ctx] == cont else -5.0))
    return out

  ev = seqio.Evaluator("jaxlm_test_mmlu", converter, eval_split="validation")
  result = ev.evaluate(compute_metrics=True, score_fn=score_fn)[0].result()
  assert result["jaxlm_test_mmlu"]["acc"] == 1.0
  assert result["jaxlm_test_mmlu"]["acc_norm"] == 1.0

  answers = {"Question: Who?\nAnswer:": " ada\nQuestion: next", "Question: When?\nAnswer:": "1844"}

  def predict_fn(ds):  # fake decoder: fixed-length outputs, EOS then padding
    out = []
    for i, ex in ds.as_numpy_iterator():
      ids = vocab.encode(answers[vocab.decode(ex["encoder_input_tokens"].tolist())]) + [1]
      out.append((i, ids + [0] * (32 - len(ids))))
    return out

  ev = seqio.Evaluator("jaxlm_test_qa", converter, eval_split="validation")
  result = ev.evaluate(compute_metrics=True, predict_fn=predict_fn)[0].result()
  assert result["jaxlm_test_qa"] == {"em": 50.0, "f1": 50.0}


  # Every format builds a dataset whose targets postprocess into what its metrics take.
  gsm = _jsonl(tmp_path / "gsm.jsonl", [{"question": "1+1?", "answer": "1+1=2\n#### 2"}])
  lam = tmp_path / "lambada.txt"
  lam.write_text("she opened the door\n")
  code = _jsonl(tmp_path / "he.jsonl", suites.load_code()[:2])
  names = suites.register_suite_tasks({"jaxlm_test_gsm": ("math", gsm),
                                       "jaxlm_test_lambada": ("last_word", str(lam)),
                                       "jaxlm_test_code": ("code", code)})
  for name in names:
    task = seqio.get_mixture_or_task(name)
    ex = next(task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
    target = task.postprocess_fn(ex["targets_pretokenized"].decode(), example=ex,
                                 is_target=True)
    assert target == {"jaxlm_test_gsm": "1+1=2\n#### 2", "jaxlm_test_lambada": " door",
                      "jaxlm_test_code": "HumanEval/0"}[name]
    assert task.metric_fns
  code_metric = seqio.get_mixture_or_task("jaxlm_test_code").predict_metric_fns[0]
  canonical = [p["canonical_solution"] for p in suites.load_code()[:2]]
  assert code_metric(["HumanEval/0", "HumanEval/1"], canonical) == {"pass@1": 1.0}
  assert code_metric(["HumanEval/0", "HumanEval/1"], ["    pass\n"] * 2) == {"pass@1": 0.0}
