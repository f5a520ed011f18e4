"""The SeqIO registry: tasks and mixtures by name, so a gin file can pick one.

A task is (source, optional text cleaning, SentencePiece tokenization, objective); the
steps before the objective are deterministic, so a task can be cached offline with
SeqIO's ``cache_tasks_main`` (then ``DataPipeline(use_cached=True)``) and the objective
still draws new noise every epoch:

    register_task("my_corpus_lm", "data/*.jsonl", objective="lm")
    register_mixture("my_mix", ["my_corpus_lm", "embedded_prose_lm"], rate="temperature")

Built in, over the embedded corpus (registered on first use, with :func:`vocab.seqio_vocabulary`):

* ``embedded_{prose,code}_{lm,lm_as_targets,prefix_lm,span_corruption,ul2}``;
* mixtures of prose and code: ``embedded_mix`` (causal LM, examples-proportional with a
  cap), ``embedded_mix_fixed`` (fixed rates), ``embedded_mix_temperature`` (temperature
  sampling), and ``embedded_mix_{lm_as_targets,prefix_lm,span_corruption,ul2}``
  (examples-proportional).

``lm`` tasks have a ``targets`` feature only; the other objectives have ``inputs`` and
``targets`` (any converter: a causal decoder reads them as one sequence, the loss on the
targets).

Instruction tasks (instruction tuning): :func:`register_instruction_task` over (prompt,
target) texts, :func:`register_instruction_file_task` over Alpaca / chat / benchmark files,
:func:`register_instruction_mixture` (Flan's capped examples-proportional mixing, with
pretraining text at a set share), and the generated families built in on first use of an
``instructions_*`` name: ``instructions_<family>`` and ``instructions_mix``
(:func:`register_generated_instruction_tasks`, gin-configurable).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import gin
import seqio
import tensorflow as tf

from jaxlm.data import generated_tasks, instructions, objectives, sources
from jaxlm.evaluation import metrics
from jaxlm.data import vocab as vocab_lib

OBJECTIVES: Dict[str, Callable] = {
    "lm": objectives.causal_lm,
    "lm_as_targets": objectives.lm_as_targets,
    "prefix_lm": objectives.prefix_lm,
    "span_corruption": objectives.span_corruption,
    "ul2": objectives.ul2_objective,
}
EMBEDDED_SOURCES = sources.EMBEDDED_SOURCES
RATE_KINDS = ("fixed", "proportional", "temperature")


# ------------------------------------------------------------------ sources
def make_source(spec: Union[str, Any], text_key: str = "text"):
  """A SeqIO data source from a spec: ``embedded_prose``/``embedded_code``,
  ``tfds:DATA_DIR``, a ``.jsonl`` path/glob (or ``{split: pattern}``), else text files
  (one document per file). A ``seqio.DataSource`` is returned unchanged."""
  if isinstance(spec, seqio.DataSource):
    return spec
  if isinstance(spec, Mapping):
    patterns = list(spec.values())
    first = patterns[0] if isinstance(patterns[0], str) else patterns[0][0]
    return sources.jsonl_source(spec, text_key) if ".jsonl" in first else sources.text_source(spec)
  if spec.startswith("embedded_") and spec[len("embedded_"):] in EMBEDDED_SOURCES:
    return sources.embedded_source(spec[len("embedded_"):])
  if spec.startswith("tfds:"):
    return sources.tfds_directory_source(spec[len("tfds:"):], text_key)
  if ".jsonl" in spec:
    return sources.jsonl_source(spec, text_key)
  return sources.text_source(spec)


# -------------------------------------------------------------------- tasks
def _text_to_targets(dataset: tf.data.Dataset) -> tf.data.Dataset:
  return dataset.map(lambda ex: {"targets": ex["text"]}, num_parallel_calls=tf.data.AUTOTUNE)


def output_features_for(objective: str, vocabulary) -> Dict[str, seqio.Feature]:
  targets = seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32)
  if objective == "lm":
    return {"targets": targets}
  inputs_eos = objective != "lm_as_targets"
  return {"inputs": seqio.Feature(vocabulary, add_eos=inputs_eos, dtype=tf.int32), "targets": targets}


@gin.configurable
def register_task(
    name: str,
    source: Union[str, Any],
    objective: str = "lm",
    vocabulary=None,
    text_preprocessors: Sequence[Callable] = (),
    objective_kwargs: Optional[Mapping[str, Any]] = None,
    text_key: str = "text",
    shuffle_buffer_size: int = 1_000,
    overwrite: bool = True,
) -> seqio.Task:
  """Register a SeqIO task ``name``: source -> text preprocessors -> tokens -> objective.

  name: task name.
  source: a ``seqio.DataSource`` or a spec for :func:`make_source`.
  objective: one of ``OBJECTIVES`` ('lm', 'prefix_lm', 'span_corruption', 'ul2').
  vocabulary: a SeqIO vocabulary; default :func:`vocab.seqio_vocabulary()`.
  text_preprocessors: SeqIO preprocessors over the raw ``text`` feature, e.g.
    :func:`cleaning.seqio_preprocessor` of cleaning stages.
  objective_kwargs: extra arguments of the objective (e.g. ``noise_density``).
  text_key: field holding the text in JSONL/TFDS sources.
  shuffle_buffer_size: SeqIO's example shuffle buffer.
  overwrite: replace a task already registered under ``name``.
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"unknown objective {objective!r}; expected one of {sorted(OBJECTIVES)}")
  vocabulary = vocabulary if vocabulary is not None else vocab_lib.seqio_vocabulary()
  objective_fn = OBJECTIVES[objective]
  if objective_kwargs:
    objective_fn = functools.partial(objective_fn, **objective_kwargs)
  if overwrite:
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=make_source(source, text_key),
      output_features=output_features_for(objective, vocabulary),
      preprocessors=[*text_preprocessors, _text_to_targets,
                     functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                     seqio.CacheDatasetPlaceholder(),  # deterministic above, random below
                     objective_fn],
      shuffle_buffer_size=shuffle_buffer_size,
  )


# ----------------------------------------------------------------- mixtures
def fixed_rate(rate: float = 1.0) -> float:
  """A constant mixing rate."""
  return float(rate)


def num_examples(task: seqio.Task, split: str = "train") -> int:
  """Input documents of ``task``'s split: the source's ``count_documents`` (jaxlm
  sources), else SeqIO's ``num_input_examples`` (e.g. a cached task)."""
  count = getattr(task.source, "count_documents", None)
  value = count(split) if count is not None else task.num_input_examples(split)
  if value is None:
    raise ValueError(f"task {task.name!r} does not know its number of examples; use rate='fixed'")
  return int(value)


def _examples_rate(task: seqio.Task, cap: Optional[int], temperature: float) -> float:
  rate = float(num_examples(task))
  if cap:
    rate = min(rate, float(cap))
  return rate ** (1.0 / temperature)


def proportional_rate(cap: Optional[int] = None) -> Callable:
  """Examples-proportional mixing (T5): rate = min(number of examples, cap)."""
  return functools.partial(_examples_rate, cap=cap, temperature=1.0)


def temperature_rate(temperature: float = 2.0, cap: Optional[int] = None) -> Callable:
  """Temperature sampling: rate = min(number of examples, cap) ** (1 / temperature)."""
  return functools.partial(_examples_rate, cap=cap, temperature=temperature)


def mixing_rates(tasks: Sequence[str], rate: str, cap: Optional[int], temperature: float,
                 rates: Optional[Sequence[float]]) -> List[Union[float, Callable]]:
  """One rate per task: numbers ('fixed') or SeqIO rate functions of the task."""
  if rate not in RATE_KINDS:
    raise ValueError(f"rate must be one of {RATE_KINDS}, got {rate!r}")
  if rate == "fixed":
    rates = list(rates) if rates is not None else [1.0] * len(tasks)
    if len(rates) != len(tasks):
      raise ValueError(f"{len(rates)} rates for {len(tasks)} tasks")
    return [fixed_rate(r) for r in rates]
  fn = proportional_rate(cap) if rate == "proportional" else temperature_rate(temperature, cap)
  return [fn] * len(tasks)


@gin.configurable
def register_mixture(
    name: str,
    tasks: Sequence[str],
    rate: str = "proportional",
    cap: Optional[int] = 2 ** 16,
    temperature: float = 2.0,
    rates: Optional[Sequence[float]] = None,
    overwrite: bool = True,
) -> seqio.Mixture:
  """Register a mixture of ``tasks``.

  ``rate`` is 'fixed' (``rates``, one per task; default equal), 'proportional'
  (examples-proportional with ``cap``) or 'temperature' (proportional with ``cap``,
  then ``** 1/temperature``). Rates are relative: SeqIO normalizes them.
  """
  pairs = list(zip(tasks, mixing_rates(tasks, rate, cap, temperature, rates)))
  if overwrite:
    seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, pairs)


# ------------------------------------------------------ instruction tasks
Pairs = Sequence[Tuple[str, str]]
INSTRUCTIONS_PREFIX = "instructions_"


def _instruction_postprocess(output, example=None, is_target=False):
  del example, is_target
  return instructions.answer_of(output)


def keep_prompt_end(dataset: tf.data.Dataset, sequence_length: Optional[Mapping[str, int]] = None) -> tf.data.Dataset:
  """Cut an over-long ``inputs`` from the left, so the query and the assistant's opening
  (what the target continues) survive; SeqIO's own trimming would cut the end."""
  if not sequence_length or not sequence_length.get("inputs"):
    return dataset
  limit = int(sequence_length["inputs"])
  return dataset.map(lambda ex: {**ex, "inputs": ex["inputs"][-limit:]}, num_parallel_calls=tf.data.AUTOTUNE)


def register_instruction_task(name: str, pairs: Union[Mapping[str, Pairs], Callable[[str], Pairs]],
                              vocabulary=None, splits: Sequence[str] = ("train", "validation"),
                              chat: Optional[instructions.ChatTemplate] = None,
                              shuffle_buffer_size: int = 10_000, overwrite: bool = True) -> seqio.Task:
  """Register ``(prompt, target)`` text pairs as the SeqIO task ``name``: ``inputs`` is the
  prompt (no EOS), ``targets`` the target + EOS; the loss falls on the targets only under
  every feature converter. ``pairs`` maps each split to its pairs, or is a function of the
  split. A prompt longer than the inputs length loses its start (:func:`keep_prompt_end`). With ``chat`` the vocabulary is checked for its markers. Evaluation: exact match
  (``metrics.exact_match``, 0-1) of the answers that ``instructions.answer_of`` reads: the
  text after "The answer is" for chain-of-thought targets, else the whole output."""
  vocabulary = vocabulary if vocabulary is not None else vocab_lib.seqio_vocabulary()
  if chat is not None:
    chat.check_vocabulary(vocabulary)
  columns = {}
  for split in splits:
    rows = list(pairs[split] if isinstance(pairs, Mapping) else pairs(split))
    if not rows:
      raise ValueError(f"instruction task {name!r} has no {split!r} examples")
    columns[split] = {"inputs": [p for p, _ in rows], "targets": [t for _, t in rows]}

  def dataset_fn(split, shuffle_files=False, seed=None):
    del shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(columns[split])

  if overwrite:
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(dataset_fn, splits=list(splits),
                                      num_input_examples={k: len(v["inputs"]) for k, v in columns.items()}),
      output_features={"inputs": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32),
                       "targets": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32)},
      preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(), keep_prompt_end,
                     seqio.preprocessors.append_eos_after_trim],
      postprocess_fn=_instruction_postprocess,
      metric_fns=[metrics.exact_match],
      shuffle_buffer_size=shuffle_buffer_size)


def _file_pairs(path_by_split: Mapping[str, str], kind: str, errors: str, chat, seed: Any):
  """Pairs of an Alpaca ('alpaca'), chat ('chat') or suites (kind of jaxlm.evaluation.suites)
  file per split."""
  def pairs(split):
    path = path_by_split[split]
    if kind == "alpaca":
      records, _ = instructions.read_alpaca(path, errors)
      return [p for r in records for p in instructions.instance_pairs(instructions.alpaca_instance(r), chat)]
    if kind == "chat":
      conversations, _ = instructions.read_chat(path, errors)
      chat_template = chat or instructions.ChatTemplate()
      return [p for c in conversations for p in chat_template.training_pairs(c)]
    from jaxlm.evaluation import suites  # pylint: disable=import-outside-toplevel
    examples = instructions.suite_examples(kind, suites.LOADERS[kind](path))
    return instructions.template_pairs(examples, instructions.SUITE_TEMPLATES[kind], seed, chat=chat)
  return pairs


@gin.configurable
def register_instruction_file_task(name: str, kind: str, paths: Union[str, Mapping[str, str]], vocabulary=None,
                                   errors: str = "raise", chat: Optional[instructions.ChatTemplate] = None,
                                   seed: int = 0) -> seqio.Task:
  """An instruction task over the files users have: ``kind`` 'alpaca' (JSONL instruction /
  input / output), 'chat' (JSONL ``messages``; every assistant turn is trained) or a
  benchmark format of ``jaxlm.evaluation.suites`` ('qa', 'multiple_choice', 'math': its
  worked solution is the rationale), worded by ``instructions.SUITE_TEMPLATES``. ``paths``:
  one file (the 'train' split) or ``{split: file}``. ``errors`` 'raise' stops at a
  malformed line, 'skip' skips it (counts logged: ``instructions.ReadStats``)."""
  kinds = ("alpaca", "chat", *instructions.SUITE_TEMPLATES)
  if kind not in kinds:
    raise ValueError(f"register_instruction_file_task.kind={kind!r}: expected one of {kinds}")
  path_by_split = {"train": paths} if isinstance(paths, str) else dict(paths)
  if kind == "chat":
    chat = chat or instructions.ChatTemplate()
  return register_instruction_task(name, _file_pairs(path_by_split, kind, errors, chat, seed), vocabulary,
                                   splits=list(path_by_split), chat=chat)


@gin.configurable
def register_instruction_mixture(name: str, tasks: Sequence[str], rate: str = "proportional",
                                 cap: Optional[int] = 3_000, temperature: float = 2.0,
                                 rates: Optional[Sequence[float]] = None, pretraining_task: Optional[str] = None,
                                 pretraining_rate: float = 0.0) -> seqio.Mixture:
  """A Flan-style mixture of instruction tasks: examples-proportional with a per-task
  ``cap`` (a big task cannot drown the rest), temperature mixing or fixed ``rates`` (see
  :func:`register_mixture`), and optionally ``pretraining_task`` (an inputs/targets LM task,
  e.g. ``embedded_prose_lm_as_targets``) mixed in as a ``pretraining_rate`` share of all
  examples (OPT-IML's regularisation). Rates are resolved to numbers here."""
  values = [r(seqio.get_mixture_or_task(t)) if callable(r) else r
            for t, r in zip(tasks, mixing_rates(tasks, rate, cap, temperature, rates))]
  pairs = list(zip(tasks, values))
  if pretraining_task:
    if not 0.0 < pretraining_rate < 1.0:
      raise ValueError(f"register_instruction_mixture.pretraining_rate={pretraining_rate}: needs 0 < rate < 1 "
                       "with a pretraining_task")
    get_task_or_mixture(pretraining_task)  # registers embedded tasks on first use
    pairs.append((pretraining_task, pretraining_rate / (1.0 - pretraining_rate) * sum(values)))
  seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, pairs)


@gin.configurable
def register_generated_instruction_tasks(
    vocabulary=None, families: Optional[Sequence[str]] = None, held_out_families: Sequence[str] = (),
    num_train: int = 2_000, num_validation: int = 200, num_shots: int = 0,
    chat: Optional[instructions.ChatTemplate] = None, seed: int = 0) -> List[str]:
  """``instructions_<family>`` for each generated family (``generated_tasks.FAMILIES``;
  every template of the family, chosen per example), ``instructions_mix`` (the families
  not in ``held_out_families``: :func:`register_instruction_mixture` as gin binds it) and,
  if any are held out, ``instructions_held_out`` (theirs, for evaluating on unseen tasks).
  ``num_shots`` demonstrations per instance; ``chat`` renders instances as chat turns.
  Returns the names."""
  families = list(families or generated_tasks.FAMILIES)
  unknown = sorted((set(families) | set(held_out_families)) - set(generated_tasks.FAMILIES))
  if unknown:
    raise ValueError(f"unknown instruction families {unknown}; expected some of {sorted(generated_tasks.FAMILIES)}")
  sizes = {"train": num_train, "validation": num_validation}
  names = []
  for family in families:
    def pairs(split, family=family):
      examples = generated_tasks.examples(family, sizes[split], split, seed)
      return instructions.template_pairs(examples, generated_tasks.FAMILIES[family].templates,
                                         f"{seed}:{family}:{split}", num_shots, chat)
    register_instruction_task(f"{INSTRUCTIONS_PREFIX}{family}", pairs, vocabulary, chat=chat)
    names.append(f"{INSTRUCTIONS_PREFIX}{family}")
  trained = [f"{INSTRUCTIONS_PREFIX}{f}" for f in families if f not in held_out_families]
  register_instruction_mixture(f"{INSTRUCTIONS_PREFIX}mix", trained)
  names.append(f"{INSTRUCTIONS_PREFIX}mix")
  if held_out_families:
    held = [f"{INSTRUCTIONS_PREFIX}{f}" for f in held_out_families]
    seqio.MixtureRegistry.remove(f"{INSTRUCTIONS_PREFIX}held_out")
    seqio.MixtureRegistry.add(f"{INSTRUCTIONS_PREFIX}held_out", [(t, 1.0) for t in held])
    names.append(f"{INSTRUCTIONS_PREFIX}held_out")
  _REGISTERED["instructions"] = True
  return names


# --------------------------------------------------------- embedded registry
_EMBEDDED: Dict[str, Any] = {"vocabulary": None}
_REGISTERED = {"instructions": False}


@gin.configurable
def register_embedded_tasks(vocabulary=None, mixture_cap: Optional[int] = 2 ** 16,
                            temperature: float = 2.0, fixed_rates: Sequence[float] = (0.5, 0.5)) -> List[str]:
  """(Re)register the embedded-corpus tasks and mixtures; returns their names.

  ``vocabulary`` defaults to :func:`vocab.seqio_vocabulary()` (gin-configurable, cached).
  ``fixed_rates`` are the (prose, code) rates of ``embedded_mix_fixed``.
  """
  vocabulary = vocabulary if vocabulary is not None else vocab_lib.seqio_vocabulary()
  names = []
  for objective in OBJECTIVES:
    task_names = []
    for source in EMBEDDED_SOURCES:
      task = f"embedded_{source}_{objective}"
      register_task(task, f"embedded_{source}", objective, vocabulary)
      task_names.append(task)
    mix = "embedded_mix" if objective == "lm" else f"embedded_mix_{objective}"
    register_mixture(mix, task_names, "proportional", cap=mixture_cap)
    names += task_names + [mix]
  lm_tasks = [f"embedded_{s}_lm" for s in EMBEDDED_SOURCES]
  register_mixture("embedded_mix_fixed", lm_tasks, "fixed", rates=fixed_rates)
  register_mixture("embedded_mix_temperature", lm_tasks, "temperature", cap=mixture_cap, temperature=temperature)
  _EMBEDDED["vocabulary"] = vocabulary
  return names + ["embedded_mix_fixed", "embedded_mix_temperature"]


def _ensure_embedded() -> None:
  if _EMBEDDED["vocabulary"] is None:
    register_embedded_tasks()


def get_task_or_mixture(name: str):
  """The registered ``seqio.Task`` or ``seqio.Mixture`` called ``name``."""
  if name.startswith("embedded_"):
    _ensure_embedded()
  if name.startswith(INSTRUCTIONS_PREFIX) and not _REGISTERED["instructions"] \
      and name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
    register_generated_instruction_tasks()
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError as e:
    known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
    raise ValueError(f"no task or mixture named {name!r}; registered: {', '.join(known)}") from e


def list_tasks_and_mixtures() -> List[str]:
  """Every registered task and mixture name (the embedded ones included), sorted."""
  _ensure_embedded()
  return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


def embedded_vocabulary():
  """The vocabulary the embedded tasks were registered with."""
  _ensure_embedded()
  return _EMBEDDED["vocabulary"]
