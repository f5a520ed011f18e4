"""Instruction tuning's data: formatted instances, templates, chat turns, and readers.

An :class:`Instance` is a task description (the instruction), an optional input, the
output, and optionally demonstrations (solved instances shown before the query) and a
chain-of-thought rationale. A task's raw examples are dicts of fields (``input``,
``output``, ``answer``, ``rationale``, ...); a :class:`Template` words them as an
instance, and a task has several templates (Flan/PromptSource), one chosen per example
by a seeded RNG (:func:`choose_template`). A template can invert its task (show the
output, ask for the input) or ask for the rationale (chain of thought).

:meth:`Instance.prompt` / :meth:`Instance.target` are the text a model reads and the
text it is trained to write: the loss falls on the target only. For a causal decoder the
two are one sequence (SeqIO's prefix-LM feature converter, loss on the targets); a
prefix decoder reads the prompt bidirectionally; an encoder-decoder reads it in the
encoder.

Chat: a conversation is a list of ``{"role", "content"}`` messages (roles ``system``,
``user``, ``assistant``: the Hugging Face chat-template convention), rendered by
:class:`ChatTemplate` with one role marker per role and an end-of-turn marker, each a
single piece of the SentencePiece vocabulary (``jaxlm.data.vocab`` reserves them as
user symbols: :data:`CHAT_SYMBOLS`). :meth:`ChatTemplate.training_pairs` makes one
(prompt, target) pair per assistant turn, each with the conversation before it as the
prompt, so every assistant turn is trained and no user turn is.

Readers (errors name the file and line; ``errors='skip'`` skips a bad line and counts
it in the returned :class:`ReadStats`, ``errors='raise'`` stops at it): Alpaca JSONL
(``instruction``, ``input``, ``output``), chat JSONL (``messages``), and the benchmark
formats of ``jaxlm.evaluation.suites`` (QA, multiple choice, GSM8K-style math with its
worked solution as the rationale) through :func:`suite_examples`. Pure Python.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import gin

from jaxlm.jsonl import FormatError, read_jsonl
from jaxlm.vocabularies import piece_id

ERRORS = ("raise", "skip")
ROLES = ("system", "user", "assistant")
CHAT_MARKERS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END_OF_TURN = "<|end|>"
CHAT_SYMBOLS = (*CHAT_MARKERS.values(), END_OF_TURN)
ANSWER_PREFIX = "The answer is"


# ---------------------------------------------------------------- instances
@dataclasses.dataclass(frozen=True)
class Instance:
  """One formatted instance. ``demonstrations`` are (input, target) pairs worded like the
  query; ``rationale`` (if the template asks for it) is the target's chain of thought."""
  instruction: str
  input: str
  output: str
  demonstrations: Tuple[Tuple[str, str], ...] = ()
  rationale: str = ""

  def prompt(self) -> str:
    """The instruction, the demonstrations, then the query's input (blank-line separated),
    and a newline: the target starts on the next line, as in the demonstrations."""
    shots = [f"{x}\n{y}" if x else y for x, y in self.demonstrations]
    parts = [self.instruction, *shots, self.input]
    return "\n\n".join(p for p in parts if p) + "\n"

  def target(self) -> str:
    """What the model is trained to write: the rationale (if any), then the output."""
    return f"{self.rationale} {self.output}" if self.rationale else self.output


@dataclasses.dataclass(frozen=True)
class Template:
  """Wording of a task's raw example as an :class:`Instance`.

  ``instruction``, ``input`` and ``output`` are ``str.format`` patterns over the example's
  fields. ``inverted`` marks a template that asks the task backwards (its ``output``
  pattern names the example's input); ``cot`` one whose target is the worked ``rationale``
  field followed by "The answer is <answer>." (the form
  ``jaxlm.evaluation.metrics.extract_answer`` reads).
  """
  instruction: str
  input: str = "{input}"
  output: str = "{output}"
  inverted: bool = False
  cot: bool = False

  def fields_used(self) -> List[str]:
    names = []
    for pattern in (self.instruction, self.input, self.output):
      names += [m.group(1) for m in re.finditer(r"{(\w+)[^}]*}", pattern)]
    return sorted(set(names))

  def _format(self, pattern: str, example: Mapping[str, Any]) -> str:
    try:
      return pattern.format(**example)
    except KeyError as e:
      raise KeyError(f"template pattern {pattern!r} names field {e.args[0]!r}; the example "
                     f"has {sorted(example)}") from None

  def parts(self, example: Mapping[str, Any]) -> Tuple[str, str, str]:
    """(input, rationale, output) texts of one example; the rationale is '' unless ``cot``,
    and then the output reads "The answer is <output>."."""
    query, output = self._format(self.input, example), self._format(self.output, example)
    if not self.cot:
      return query, "", output
    return query, self._format("{rationale}", example), f"{ANSWER_PREFIX} {output}."

  def instance(self, example: Mapping[str, Any], demonstrations: Sequence[Mapping[str, Any]] = ()) -> Instance:
    """The instance of ``example``, with ``demonstrations`` (raw examples) worded alike."""
    query, rationale, output = self.parts(example)
    shots = []
    for demo in demonstrations:
      x, r, y = self.parts(demo)
      shots.append((x, f"{r} {y}" if r else y))
    return Instance(self._format(self.instruction, example), query, output, tuple(shots), rationale)


def choose_template(templates: Sequence[Template], seed: Any, index: int) -> Template:
  """The template of example ``index``: a seeded choice, the same on every run."""
  if not templates:
    raise ValueError("a task needs at least one template")
  return templates[random.Random(f"{seed}:{index}").randrange(len(templates))]


def instance_messages(instance: Instance, system: Optional[str] = None) -> List[Dict[str, str]]:
  """The instance as a conversation: an optional system turn, the prompt as the user's turn
  and the target as the assistant's."""
  turns = [{"role": "system", "content": system}] if system else []
  return turns + [{"role": "user", "content": instance.prompt().rstrip("\n")},
                  {"role": "assistant", "content": instance.target()}]


def instance_pairs(instance: Instance, chat: Optional[ChatTemplate] = None,
                   system: Optional[str] = None) -> List[Tuple[str, str]]:
  """The (prompt, target) texts of one instance: as written, or with ``chat`` rendered as a
  user turn and an assistant turn (``system`` first)."""
  if chat is None:
    return [(instance.prompt(), instance.target())]
  return chat.training_pairs(instance_messages(instance, system))


def template_pairs(examples: Sequence[Mapping[str, Any]], templates: Sequence[Template], seed: Any = 0,
                   num_shots: int = 0, chat: Optional[ChatTemplate] = None,
                   system: Optional[str] = None) -> List[Tuple[str, str]]:
  """(prompt, target) texts of raw ``examples``: each worded by a seeded choice of
  ``templates``, with ``num_shots`` demonstrations drawn (seeded) from the other examples,
  and with ``chat`` rendered as a user turn and an assistant turn (``system`` first)."""
  pairs = []
  for i, example in enumerate(examples):
    template = choose_template(templates, seed, i)
    demos = []
    if num_shots:
      others = [j for j in range(len(examples)) if j != i]
      picks = random.Random(f"{seed}:shots:{i}").sample(others, min(num_shots, len(others)))
      demos = [examples[j] for j in picks]
    pairs += instance_pairs(template.instance(example, demos), chat, system)
  return pairs


def answer_of(text: str) -> str:
  """The answer a target or a prediction gives: what follows the last "The answer is" (to
  the sentence's end), else the whole text; cut at an end-of-turn marker, stripped, lower
  case."""
  text = text.split(END_OF_TURN)[0]
  at = text.rfind(ANSWER_PREFIX)
  if at >= 0:
    text = text[at + len(ANSWER_PREFIX):].strip()
    text = text[:-1] if text.endswith(".") else text
  return " ".join(text.split()).lower()


# --------------------------------------------------------------------- chat
@gin.configurable
@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """Renders conversations: ``<marker>\\ncontent<end>\\n`` per turn.

  ``markers`` maps each role to its marker, ``end_of_turn`` closes every turn; both must
  be single pieces of the vocabulary (:meth:`check_vocabulary`). To use a vocabulary
  trained without them, map them to pieces it has, e.g.
  ``ChatTemplate.markers = {'system': '[S2S]', 'user': '[NLU]', 'assistant': '[NLG]'}``.
  """
  markers: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(CHAT_MARKERS))
  end_of_turn: str = END_OF_TURN

  def symbols(self) -> List[str]:
    return [self.markers[r] for r in ROLES] + [self.end_of_turn]

  def render_turn(self, role: str, content: str) -> str:
    return f"{self.markers[role]}\n{content}{self.end_of_turn}\n"

  def generation_prompt(self) -> str:
    """What opens the assistant's turn: the text a decoder continues."""
    return f"{self.markers['assistant']}\n"

  def render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
    """The conversation as text; with ``add_generation_prompt`` the assistant's opening."""
    check_messages(messages)
    text = "".join(self.render_turn(m["role"], m["content"]) for m in messages)
    return text + (self.generation_prompt() if add_generation_prompt else "")

  def training_pairs(self, messages: Sequence[Mapping[str, str]]) -> List[Tuple[str, str]]:
    """One (prompt, target) per assistant turn: the conversation before it plus the
    assistant's opening, and the turn's content with its end-of-turn marker."""
    check_messages(messages)
    pairs = []
    for k, message in enumerate(messages):
      if message["role"] == "assistant":
        prompt = self.render(messages[:k], add_generation_prompt=True)
        pairs.append((prompt, message["content"] + self.end_of_turn))
    if not pairs:
      raise ValueError("a conversation to train on needs at least one assistant turn")
    return pairs

  def parse(self, text: str) -> List[Dict[str, str]]:
    """The messages of rendered text (the inverse of :meth:`render`)."""
    by_marker = {self.markers[r]: r for r in ROLES}
    pattern = "(" + "|".join(re.escape(m) for m in by_marker) + ")\n"
    pieces = re.split(pattern, text)
    if pieces[0].strip():
      raise ValueError(f"text before the first role marker: {pieces[0][:40]!r}")
    messages = []
    for marker, body in zip(pieces[1::2], pieces[2::2]):
      content = body[:-1] if body.endswith("\n") else body
      if not content.endswith(self.end_of_turn):
        raise ValueError(f"a {by_marker[marker]} turn does not end with {self.end_of_turn!r}")
      messages.append({"role": by_marker[marker], "content": content[:-len(self.end_of_turn)]})
    return messages

  def check_vocabulary(self, vocabulary) -> Dict[str, int]:
    """{symbol: id} for every marker; a vocabulary lacking one is rejected, saying how to
    retrain it or map the markers."""
    ids, missing = {}, []
    for symbol in self.symbols():
      idx = piece_id(vocabulary, symbol)
      (missing.append(symbol) if idx is None else ids.__setitem__(symbol, idx))
    if missing:
      raise ValueError(
          f"the vocabulary {getattr(vocabulary, 'sentencepiece_model_file', '') or vocabulary} has no single "
          f"piece for the chat marker(s) {missing}. Retrain it with jaxlm (python -m jaxlm.data.vocab "
          f"... reserves {list(CHAT_SYMBOLS)} as user symbols), or map the roles to pieces it has with "
          f"ChatTemplate.markers / ChatTemplate.end_of_turn")
    return ids

  def end_of_turn_id(self, vocabulary) -> int:
    """The id decoding stops at (``DecodeConfig.eos_id``) for an assistant turn."""
    return self.check_vocabulary(vocabulary)[self.end_of_turn]


def check_messages(messages: Any) -> None:
  """Raises ValueError naming what is wrong with a conversation."""
  if not isinstance(messages, (list, tuple)) or not messages:
    raise ValueError("'messages' must be a non-empty list of {role, content} objects")
  for k, m in enumerate(messages):
    if not isinstance(m, Mapping) or set(m) - {"role", "content", "name"} or "role" not in m or "content" not in m:
      raise ValueError(f"message {k} must be an object with 'role' and 'content', got {m!r}"[:200])
    if m["role"] not in ROLES:
      raise ValueError(f"message {k} has role {m['role']!r}; expected one of {ROLES}")
    if not isinstance(m["content"], str):
      raise ValueError(f"message {k}'s content must be a string")
    if m["role"] == "system" and k:
      raise ValueError(f"message {k} is a system message; only the first message may be one")


# ------------------------------------------------------------------ readers
@dataclasses.dataclass
class ReadStats:
  """What a reader did: lines read, records kept, bad lines skipped (with their errors)."""
  path: str
  read: int = 0
  kept: int = 0
  skipped: List[str] = dataclasses.field(default_factory=list)

  def log(self) -> None:
    logging.info("%s: %d records read, %d kept, %d malformed lines skipped%s", self.path, self.read,
                 self.kept, len(self.skipped), f" (first: {self.skipped[0]})" if self.skipped else "")


def _read(path: str, parse, errors: str) -> Tuple[List[Any], ReadStats]:
  if errors not in ERRORS:
    raise ValueError(f"errors={errors!r}: expected one of {ERRORS}")
  stats, out = ReadStats(path), []
  for line, row in read_jsonl(path, errors="yield"):
    stats.read += 1
    try:
      if isinstance(row, FormatError):
        raise row
      try:
        out.append(parse(row))
      except (KeyError, TypeError, ValueError) as e:
        raise FormatError(path, line, str(e).strip("'\"")) from None
    except FormatError as e:
      if errors == "raise":
        raise
      stats.skipped.append(str(e))
  stats.kept = len(out)
  stats.log()
  return out, stats


def _alpaca(row: Mapping[str, Any]) -> Dict[str, str]:
  for key in ("instruction", "output"):
    if key not in row:
      raise ValueError(f"missing field {key!r}; have {sorted(row)}")
  fields = {k: row.get(k, "") for k in ("instruction", "input", "output")}
  for key, value in fields.items():
    if not isinstance(value, str):
      raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
  if not fields["instruction"].strip() or not fields["output"].strip():
    raise ValueError("empty 'instruction' or 'output'")
  return fields


def _chat(row: Mapping[str, Any]) -> List[Dict[str, str]]:
  if "messages" not in row:
    raise ValueError(f"missing field 'messages'; have {sorted(row)}")
  check_messages(row["messages"])
  if not any(m["role"] == "assistant" for m in row["messages"]):
    raise ValueError("a conversation needs at least one assistant turn")
  return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]


def read_alpaca(path: str, errors: str = "raise") -> Tuple[List[Dict[str, str]], ReadStats]:
  """Alpaca-style JSONL: ``{"instruction", "input" (optional), "output"}`` per line."""
  return _read(path, _alpaca, errors)


def read_chat(path: str, errors: str = "raise") -> Tuple[List[List[Dict[str, str]]], ReadStats]:
  """Chat JSONL: ``{"messages": [{"role", "content"}, ...]}`` per line."""
  return _read(path, _chat, errors)


def alpaca_instance(record: Mapping[str, str]) -> Instance:
  """An Alpaca record as it is written: its own instruction, input and output."""
  return Instance(record["instruction"], record.get("input", ""), record["output"])


# Benchmark formats (jaxlm.evaluation.suites loaders) as instruction tasks: raw-example
# fields and templates. The math templates ask for the worked solution (chain of thought).
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SUITE_TEMPLATES: Dict[str, Tuple[Template, ...]] = {
    "qa": (Template("Answer the question.", "{context_and_question}"),
           Template("Read the question and reply with a short answer.", "Question: {context_and_question}"),
           Template("{context_and_question}\n\nWhat is the answer?", "")),
    "multiple_choice": (Template("Answer the multiple-choice question with the letter of the right choice.",
                                 "{question}\n{lettered_choices}"),
                        Template("{question}", "Options:\n{lettered_choices}\nAnswer:"),
                        Template("Pick the correct option.", "{question}\n{lettered_choices}", "{choice_text}")),
    "math": (Template("Solve the problem. Show your work.", "{question}", "{answer}", cot=True),
             Template("Solve the math word problem step by step.", "Q: {question}", "{answer}", cot=True),
             Template("Give the final answer to the problem.", "{question}", "{answer}")),
}


def suite_examples(kind: str, examples: Iterable[Mapping[str, Any]]) -> List[Dict[str, str]]:
  """Raw examples (fields for :data:`SUITE_TEMPLATES`) of a ``jaxlm.evaluation.suites``
  loader's output: 'qa', 'multiple_choice' or 'math' (GSM8K: the solution before its
  '####' line becomes the rationale)."""
  if kind not in SUITE_TEMPLATES:
    raise ValueError(f"suite kind {kind!r} has no instruction templates; expected one of {sorted(SUITE_TEMPLATES)}")
  out = []
  for ex in examples:
    if kind == "qa":
      question = f"{ex['context']}\n\n{ex['question']}" if ex.get("context") else ex["question"]
      out.append({"context_and_question": question, "output": ex["answers"][0], "answer": ex["answers"][0]})
    elif kind == "multiple_choice":
      letters = LETTERS[:len(ex["choices"])]
      out.append({"question": ex["question"], "output": letters[ex["answer"]], "answer": letters[ex["answer"]],
                  "lettered_choices": "\n".join(f"{l}. {c}" for l, c in zip(letters, ex["choices"])),
                  "choice_text": ex["choices"][ex["answer"]]})
    else:
      rationale = ex["solution"].rsplit("####", 1)[0].strip()
      rationale = re.sub(r"<<[^>]*>>", "", rationale)  # GSM8K's calculator annotations
      out.append({"question": ex["question"], "answer": ex["answer"], "output": ex["answer"],
                  "rationale": " ".join(rationale.split())})
  return out
