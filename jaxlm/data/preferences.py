"""Preference data for reward models and DPO: readers, generated preferences with a known
true reward, and the batches the trainer reads.

A :class:`Preference` is a prompt and its responses ranked best first (K = 2 is a pairwise
preference). Files (JSONL, one preference per line; a malformed line is reported as
``path:line: what is wrong``, then fatal or skipped as ``errors`` says):

    {"prompt": "...", "chosen": "...", "rejected": "..."}          pairwise (TRL's format)
    {"prompt": "...", "responses": ["best", "...", "worst"]}        a K-way ranking

A prompt may be chat messages (a list of ``{"role", "content"}``, ending before the
assistant's turn): it is rendered with :class:`jaxlm.data.instructions.ChatTemplate` and the
assistant's opening, and each response (a string, or a one-message list of the assistant's
turn, as TRL's conversational format has it) gets the end-of-turn marker, exactly as the
chat SFT data renders an assistant turn.

Generated preferences (:func:`generated_preferences`) come from the generated instruction
families (``jaxlm.data.generated_tasks``, their direct wording, held-out split included),
with a rule whose true reward (:func:`true_reward`) scores any response, so a learning test
can measure the true reward of samples and not only a learned one:

  correctness  the right answer over wrong ones, ranked by how wrong: numbers off by
               distinct amounts, word or letter answers with 1, 2, ... edits (Levenshtein
               over words; letters for last_letters). True reward: -distance (0 if right),
               at most MAX_DISTANCE.
  format       "the response ends with its answer sentence" ("... The answer is X."): 1 if
               it does, 0.5 if the sentence is elsewhere, 0 without one (K <= 3).
  length       the concise answer over wordier ones (the bare answer, then "The answer is
               X.", then with the worked rationale, then with a preamble; K <= 4). True
               reward: -(number of words).

Batches (:class:`PreferenceData`, a ``train.data_fn``): rows = prompts x K, the K responses
of one prompt in consecutive rows, best first; each row is one (prompt, response) sequence
in the layout the instruction-tuning pipeline gives a (prompt, target) pair unpacked (SeqIO's
PrefixLM / EncDec converters: the loss weights on the response and its EOS). Two per-row
features [rows] group the rows: ``response_group`` (1, 2, ... per prompt within the batch; 0
for an empty row) and ``response_rank`` (0 = best). A prompt with fewer than K responses, and
the prompts that pad an epoch's last batch, have empty rows (all zeros), which the objectives
skip. With a ``reference`` scorer the batches also carry ``reference_logps`` (float32 [rows]),
the reference model's log-probability of each response, computed once for the whole split
(DPO's cached reference). Pure Python and numpy; the vocabulary defaults to
``jaxlm.data.vocab.seqio_vocabulary()``.
"""
from __future__ import annotations

import dataclasses
import random
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import gin
import numpy as np

from jaxlm.data import generated_tasks
from jaxlm.data.instructions import ChatTemplate, ReadStats, _read, answer_of, check_messages, instance_pairs
from jaxlm.evaluation.metrics import edit_distance
from jaxlm.vocabularies import EOS_ID

RULES = ("correctness", "format", "length")
MAX_RESPONSES = {"correctness": 6, "format": 3, "length": 4}
MAX_DISTANCE = 10
CONVERTERS = ("decoder", "encoder_decoder")
ROW_FEATURES = ("response_group", "response_rank")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
_STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Preference:
  """A prompt (the text the model reads, chat already rendered) and its responses, best
  first. ``truth`` (generated data): {'rule', 'family', 'example'} for :func:`true_reward`."""
  prompt: str
  responses: Tuple[str, ...]
  truth: Optional[Mapping[str, Any]] = None

  def true_reward(self, response: str) -> float:
    if self.truth is None:
      raise ValueError("this preference has no known true reward (it was not generated)")
    return true_reward(self.truth["rule"], self.truth["family"], self.truth["example"], response)


# ------------------------------------------------------------------ readers
def _text(value: Any, what: str, chat: Optional[ChatTemplate]) -> str:
  """A response as text: a non-empty string, or a one-message assistant turn (chat)."""
  if isinstance(value, list):
    if len(value) != 1 or not isinstance(value[0], Mapping) or value[0].get("role") != "assistant":
      raise ValueError(f"{what} must be a string or a list of one assistant message")
    check_messages(value)
    value = value[0]["content"]
  if not isinstance(value, str) or not value.strip():
    raise ValueError(f"{what} must be a non-empty string")
  return value + (chat.end_of_turn if chat is not None else "")


def parse_preference(row: Mapping[str, Any], chat: Optional[ChatTemplate] = None) -> Preference:
  """One JSONL object (pairwise or ranked) as a Preference; raises ValueError naming what is
  wrong. Chat-message prompts are rendered with ``chat`` (default: ChatTemplate())."""
  if "prompt" not in row:
    raise ValueError(f"missing field 'prompt'; have {sorted(row)}")
  if "responses" in row:
    if not isinstance(row["responses"], list) or len(row["responses"]) < 2:
      raise ValueError("'responses' must be a list of at least 2 responses, best first")
    raw, names = row["responses"], [f"responses[{i}]" for i in range(len(row["responses"]))]
  elif "chosen" in row and "rejected" in row:
    raw, names = [row["chosen"], row["rejected"]], ["'chosen'", "'rejected'"]
  else:
    raise ValueError(f"expected 'chosen' and 'rejected' (pairwise) or 'responses' (ranked); have {sorted(row)}")
  prompt = row["prompt"]
  if isinstance(prompt, list):
    chat = chat or ChatTemplate()
    check_messages(prompt)
    if prompt[-1]["role"] == "assistant":
      raise ValueError("a chat 'prompt' must end before the assistant's turn")
    prompt = chat.render(prompt, add_generation_prompt=True)
  elif isinstance(prompt, str) and prompt.strip():
    chat = None
  else:
    raise ValueError("'prompt' must be a non-empty string or a list of chat messages")
  responses = tuple(_text(value, name, chat) for value, name in zip(raw, names))
  if len(set(responses)) < len(responses):
    raise ValueError("two responses are the same text: a preference needs different responses")
  return Preference(prompt, responses)


def read_preferences(path: str, errors: str = "raise",
                     chat: Optional[ChatTemplate] = None) -> Tuple[List[Preference], ReadStats]:
  """Pairwise and ranked preference JSONL (both may appear in one file)."""
  return _read(path, lambda row: parse_preference(row, chat), errors)


@gin.configurable
def preference_files(paths: Union[str, Mapping[str, str]], errors: str = "raise",
                     chat: Optional[ChatTemplate] = None) -> Callable[[str], List[Preference]]:
  """A PreferenceData source over JSONL files: one path (the 'train' split) or {split: path}."""
  by_split = {"train": paths} if isinstance(paths, str) else dict(paths)

  def source(split: str) -> List[Preference]:
    if split not in by_split:
      raise ValueError(f"no preference file for split {split!r}; preference_files.paths has {sorted(by_split)}")
    return read_preferences(by_split[split], errors, chat)[0]
  return source


# ---------------------------------------------------------------- true rewards
def _strip(response: str) -> str:
  return response.split(ChatTemplate().end_of_turn)[0].strip()


def _units(family: str, text: str) -> List[str]:
  return list(text.replace(" ", "")) if family == "last_letters" else text.split()


def answer_distance(family: str, response: str, correct: str) -> int:
  """How wrong a response's answer (``instructions.answer_of``) is: |difference| for a
  number (a response without one: MAX_DISTANCE), else the Levenshtein distance over words
  (letters for last_letters); at most MAX_DISTANCE."""
  got, want = answer_of(response), correct.strip().lower()
  if re.fullmatch(r"-?\d+", want):
    number = re.search(r"-?\d+", got)
    return MAX_DISTANCE if number is None else min(abs(int(number.group()) - int(want)), MAX_DISTANCE)
  return min(edit_distance(_units(family, got), _units(family, want)), MAX_DISTANCE)


def true_reward(rule: str, family: str, example: Mapping[str, str], response: str) -> float:
  """The rule's reward of ``response`` to the generated ``example`` (see the module docstring)."""
  text = _strip(response)
  if rule == "correctness":
    return -float(answer_distance(family, text, example["output"]))
  if rule == "format":
    if re.search(r"The answer is [^.]*\.$", text):
      return 1.0
    return 0.5 if "The answer is" in text else 0.0
  if rule == "length":
    return -float(len(text.split()))
  raise ValueError(f"unknown preference rule {rule!r}; expected one of {RULES}")


# ------------------------------------------------------- generated candidates
def _wrong_answers(family: str, output: str, k: int, rng: random.Random) -> List[str]:
  """k wrong answers, the i-th at distance i+1 (numbers: a distinct offset each, larger
  further down; words/letters: i+1 edits)."""
  if re.fullmatch(r"\d+", output):
    value = int(output)
    offsets = sorted(rng.sample(range(1, MAX_DISTANCE), k))
    return [str(value + d if value - d < 0 or rng.random() < 0.5 else value - d) for d in offsets]
  units = _units(family, output)
  pool = LETTERS if family == "last_letters" else generated_tasks.WORDS
  joiner = "" if family == "last_letters" else " "
  out = []
  for distance in range(1, k + 1):
    for _ in range(50):
      edited = list(units)
      for i in rng.sample(range(len(units)), min(distance, len(units))):
        edited[i] = rng.choice([u for u in pool if u != units[i]])
      edited += [rng.choice(pool) for _ in range(distance - len(units))]
      if edit_distance(edited, units) == distance:
        break
    else:
      raise ValueError(f"could not make a {family} answer at distance {distance} from {output!r}")
    out.append(joiner.join(edited))
  return out


def candidates(rule: str, family: str, example: Mapping[str, str], k: int, rng: random.Random) -> List[str]:
  """k responses to ``example``, best first, with strictly decreasing true reward."""
  if not 2 <= k <= MAX_RESPONSES[rule]:
    raise ValueError(f"rule {rule!r} makes 2..{MAX_RESPONSES[rule]} ranked responses, asked for {k}")
  out, why = example["output"], example["rationale"]
  if rule == "correctness":
    return [out] + _wrong_answers(family, out, k - 1, rng)
  sentence = f"The answer is {out}."
  if rule == "format":
    ranked = [sentence, f"{sentence} {why}", rng.choice([out, why])]
    return ranked[:k] if k == 3 else [ranked[0], rng.choice(ranked[1:])]
  levels = [out, sentence, f"{why} {sentence}", f"Let me think step by step. {why} {sentence}"]
  return [levels[i] for i in sorted(rng.sample(range(4), k))]


def generated_preferences(family: str, rule: str, n: int, split: str = "train", num_responses: int = 2,
                          seed: int = 0, chat: Optional[ChatTemplate] = None) -> List[Preference]:
  """n preferences over the family's examples of the split (its direct wording, as the SFT
  data has it), each with ``num_responses`` ranked responses and its truth."""
  if rule not in RULES:
    raise ValueError(f"unknown preference rule {rule!r}; expected one of {RULES}")
  examples = generated_tasks.examples(family, n, split, seed)  # names an unknown family
  template = generated_tasks.FAMILIES[family].templates[0]
  rng = random.Random(f"{seed}:{family}:{rule}:{split}")
  end = chat.end_of_turn if chat is not None else ""
  out = []
  for example in examples:
    prompt = instance_pairs(template.instance(example), chat)[0][0]
    responses = tuple(r + end for r in candidates(rule, family, example, num_responses, rng))
    out.append(Preference(prompt, responses, {"rule": rule, "family": family, "example": example}))
  return out


@gin.configurable
def generated_preference_source(families: Sequence[str] = ("multi_step_arithmetic",), rule: str = "correctness",
                                num_train: int = 2000, num_validation: int = 200, num_responses: int = 2,
                                seed: int = 0, chat: Optional[ChatTemplate] = None) -> Callable[[str], List[Preference]]:
  """A PreferenceData source of generated preferences: per split, ``num_train`` /
  ``num_validation`` of each family, interleaved (seeded)."""
  sizes = {"train": num_train, "validation": num_validation}

  def source(split: str) -> List[Preference]:
    if split not in sizes:
      raise ValueError(f"unknown split {split!r}; expected one of {sorted(sizes)}")
    rows = [p for f in families for p in generated_preferences(f, rule, sizes[split], split, num_responses, seed, chat)]
    random.Random(f"{seed}:{split}:mix").shuffle(rows)
    return rows
  return source


# ---------------------------------------------------------------- tokenizing
def encode_pair(vocabulary, prompt: str, response: str, lengths: Mapping[str, int],
                converter: str = "decoder") -> Dict[str, np.ndarray]:
  """One (prompt, response) row, as the instruction pipeline makes a (prompt, target) pair
  unpacked: the prompt cut from the left to lengths['inputs'], the response cut to
  lengths['targets'] - 1 tokens plus EOS. 'decoder': one sequence of inputs + targets
  length (decoder_causal_attention over the prompt and the first response slot, for prefix
  decoders); 'encoder_decoder': the prompt in the encoder."""
  inputs = list(vocabulary.encode(prompt))[-lengths["inputs"]:] if lengths["inputs"] else []
  targets = list(vocabulary.encode(response))[:lengths["targets"] - 1] + [EOS_ID]
  if converter == "encoder_decoder":
    row = _decoder_row([], targets, lengths["targets"])
    encoder = np.zeros(lengths["inputs"], np.int32)
    encoder[:len(inputs)] = inputs
    present = (encoder != 0).astype(np.int32)
    row.update(encoder_input_tokens=encoder, encoder_segment_ids=present,
               encoder_positions=np.arange(lengths["inputs"], dtype=np.int32) * present)
    del row["decoder_causal_attention"]
    return row
  return _decoder_row(inputs, targets, lengths["inputs"] + lengths["targets"])


def _decoder_row(inputs: List[int], targets: List[int], length: int) -> Dict[str, np.ndarray]:
  sequence = np.zeros(length, np.int32)
  sequence[:len(inputs) + len(targets)] = inputs + targets
  n, p = len(inputs) + len(targets), len(inputs)
  positions = np.arange(length, dtype=np.int32)
  return {"decoder_target_tokens": sequence,
          "decoder_input_tokens": np.concatenate([[0], sequence[:-1]]).astype(np.int32),
          "decoder_loss_weights": ((positions >= p) & (positions < n)).astype(np.int32),
          "decoder_segment_ids": (positions < n).astype(np.int32),
          "decoder_positions": np.where(positions < n, positions, 0).astype(np.int32),
          "decoder_causal_attention": (positions <= p).astype(np.int32) * (p > 0)}


def encode_preferences(preferences: Sequence[Preference], vocabulary, lengths: Mapping[str, int], k: int,
                       converter: str = "decoder") -> Dict[str, np.ndarray]:
  """{feature: [len(preferences) * k, ...]}: each preference's k rows, best first (empty rows
  after a preference with fewer responses), with response_group (1 + the preference's index)
  and response_rank."""
  rows: List[Dict[str, np.ndarray]] = []
  empty = None
  for g, pref in enumerate(preferences):
    if len(pref.responses) > k:
      raise ValueError(f"a preference has {len(pref.responses)} responses, more than "
                       f"PreferenceData.num_responses={k}")
    for rank in range(k):
      if rank < len(pref.responses):
        row = encode_pair(vocabulary, pref.prompt, pref.responses[rank], lengths, converter)
        row.update(response_group=np.int32(g + 1), response_rank=np.int32(rank))
        empty = empty or {key: np.zeros_like(v) for key, v in row.items()}
      else:
        row = None
      rows.append(row)
  if empty is None:
    raise ValueError("no preferences to encode")
  return {key: np.stack([(r or empty)[key] for r in rows]) for key in empty}


# ------------------------------------------------------------------ batches
Source = Union[str, Mapping[str, Any], Callable[[str], Sequence[Preference]]]


def _resolve(source: Source, split: str) -> List[Preference]:
  if isinstance(source, str):
    return preference_files(source)(split)
  if isinstance(source, Mapping):
    if split not in source:
      raise ValueError(f"PreferenceData.source has no {split!r} split; it has {sorted(source)}")
    value = source[split]
    return preference_files({split: value})(split) if isinstance(value, str) else list(value)
  return list(source(split))


@gin.configurable
class PreferenceData:
  """Preference batches for train.data_fn: rows = prompts x K, grouped and ranked as the
  module docstring says, shuffled by prompt every epoch (seeded), with state()/restore().

  source: a JSONL path ('train'), {split: path or [Preference]}, or a function of the split
  (``generated_preference_source()``, ``preference_files()``). batch_size: global rows, a
  multiple of K = num_responses (default: the most responses any preference has).
  reference: a function of a dict of rows -> their reference log-probabilities [rows]
  (``jaxlm.adaptation.dpo.reference_scorer()``), computed once here: DPO's cached reference.
  num_epochs None repeats forever; an epoch's last batch is padded with empty prompts."""

  def __init__(self, source: Source = gin.REQUIRED, feature_lengths: Optional[Mapping[str, int]] = None,
               batch_size: int = 8, split: str = "train", vocabulary=None, num_responses: Optional[int] = None,
               feature_converter: str = "decoder", shuffle: bool = True, seed: int = 0,
               num_epochs: Optional[int] = None, shard_index: int = 0, num_shards: int = 1,
               reference: Optional[Callable[[Dict[str, np.ndarray]], np.ndarray]] = None):
    if feature_converter not in CONVERTERS:
      raise ValueError(f"PreferenceData.feature_converter={feature_converter!r}: must be one of {CONVERTERS}")
    self.lengths = dict(feature_lengths or {"inputs": 384, "targets": 128})
    if set(self.lengths) != {"inputs", "targets"}:
      raise ValueError(f"PreferenceData.feature_lengths={self.lengths}: needs exactly 'inputs' and 'targets'")
    self.preferences = _resolve(source, split)
    if not self.preferences:
      raise ValueError(f"PreferenceData: the {split!r} split has no preferences")
    self.k = int(num_responses or max(len(p.responses) for p in self.preferences))
    if batch_size % self.k:
      raise ValueError(f"BATCH_SIZE / microbatches = {batch_size} rows is not a multiple of the {self.k} "
                       f"responses per prompt (PreferenceData.num_responses)")
    self.prompts_per_batch = batch_size // self.k
    if self.prompts_per_batch % num_shards:
      raise ValueError(f"{self.prompts_per_batch} prompts per batch do not split over {num_shards} hosts")
    if vocabulary is None:
      from jaxlm.data import vocab  # pylint: disable=import-outside-toplevel
      vocabulary = vocab.seqio_vocabulary()
    self.vocabulary = vocabulary
    self.split, self.shuffle, self.seed, self.num_epochs = split, shuffle, int(seed), num_epochs
    self.shard_index, self.num_shards, self.batch_size = int(shard_index), int(num_shards), int(batch_size)
    self.feature_converter = feature_converter
    rows = encode_preferences(self.preferences, vocabulary, self.lengths, self.k, feature_converter)
    if reference is not None:
      rows["reference_logps"] = np.asarray(reference(rows), np.float32).reshape(-1)
    self.rows = {key: v.reshape(len(self.preferences), self.k, *v.shape[1:]) for key, v in rows.items()}
    self.batches_per_epoch = -(-len(self.preferences) // self.prompts_per_batch)
    self.step = 0

  def __iter__(self) -> "PreferenceData":
    return self

  def _order(self, epoch: int) -> np.ndarray:
    n = len(self.preferences)
    return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

  def _batch(self, order: np.ndarray, index: int) -> Dict[str, np.ndarray]:
    """This host's rows of batch ``index`` of an epoch with prompt ``order``."""
    per_host = self.prompts_per_batch // self.num_shards
    start = index * self.prompts_per_batch + self.shard_index * per_host
    chosen = order[start:start + per_host]
    batch = {}
    for key, v in self.rows.items():
      block = np.zeros((per_host, *v.shape[1:]), v.dtype)
      block[:len(chosen)] = v[chosen]
      batch[key] = block.reshape(per_host * self.k, *v.shape[2:])
    present = batch["response_group"] > 0  # groups renumbered 1.. within the batch
    batch["response_group"] = np.where(present, np.repeat(np.arange(1, per_host + 1, dtype=np.int32), self.k), 0)
    return batch

  def __next__(self) -> Dict[str, np.ndarray]:
    epoch, index = divmod(self.step, self.batches_per_epoch)
    if self.num_epochs is not None and epoch >= self.num_epochs:
      raise StopIteration
    self.step += 1
    return self._batch(self._order(epoch), index)

  def epoch(self) -> List[Dict[str, np.ndarray]]:
    """Every batch of one pass in order (unshuffled; the position is not moved): held-out
    evaluation."""
    order = np.arange(len(self.preferences))
    return [self._batch(order, i) for i in range(self.batches_per_epoch)]

  def _config(self) -> Dict[str, Any]:
    return {"split": self.split, "seed": self.seed, "batch_size": self.batch_size, "num_responses": self.k,
            "shard_index": self.shard_index, "num_shards": self.num_shards, "shuffle": self.shuffle,
            "preferences": len(self.preferences), "feature_lengths": dict(sorted(self.lengths.items()))}

  def state(self) -> Dict[str, Any]:
    return {"version": _STATE_VERSION, "step": self.step, **self._config()}

  def restore(self, state: Mapping[str, Any]) -> None:
    """Continue after state['step'] batches; the stream's definition must match."""
    if state.get("version") != _STATE_VERSION:
      raise ValueError(f"preference data state version {state.get('version')!r}, expected {_STATE_VERSION}")
    mine = self._config()
    diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
    if diff:
      raise ValueError("cannot restore a preference data state made with different settings: "
                       + "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items()))
    self.step = int(state["step"])
