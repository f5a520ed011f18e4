"""The SeqIO registry: tasks and mixtures by name, so a gin file can pick one.

A task is (source, optional text cleaning, SentencePiece tokenization, objective); the
steps before the objective are deterministic, so a task can be cached offline with
SeqIO's ``cache_tasks_main`` (then ``DataPipeline(use_cached=True)``) and the objective
still draws new noise every epoch:

    register_task("my_corpus_lm", "data/*.jsonl", objective="lm")
    register_mixture("my_mix", ["my_corpus_lm", "embedded_prose_lm"], rate="temperature")

Built in, over the embedded corpus (registered on first use, with :func:`vocab.seqio_vocabulary`):

* ``embedded_{prose,code}_{lm,prefix_lm,span_corruption,ul2}``;
* mixtures of prose and code: ``embedded_mix`` (causal LM, examples-proportional with a
  cap), ``embedded_mix_fixed`` (fixed rates), ``embedded_mix_temperature`` (temperature
  sampling), and ``embedded_mix_{prefix_lm,span_corruption,ul2}`` (examples-proportional).

``lm`` tasks have a ``targets`` feature only (for the 'decoder' converter); the other
objectives have ``inputs`` and ``targets`` (for 'prefix_decoder' or 'encoder_decoder').
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import gin
import seqio
import tensorflow as tf

from jaxlm.data import objectives, sources
from jaxlm.data import vocab as vocab_lib

OBJECTIVES: Dict[str, Callable] = {
    "lm": objectives.causal_lm,
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
  return {"inputs": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32), "targets": targets}


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
  if rate not in RATE_KINDS:
    raise ValueError(f"rate must be one of {RATE_KINDS}, got {rate!r}")
  if rate == "fixed":
    rates = list(rates) if rates is not None else [1.0] * len(tasks)
    if len(rates) != len(tasks):
      raise ValueError(f"{len(rates)} rates for {len(tasks)} tasks")
    pairs = [(t, fixed_rate(r)) for t, r in zip(tasks, rates)]
  else:
    fn = proportional_rate(cap) if rate == "proportional" else temperature_rate(temperature, cap)
    pairs = [(t, fn) for t in tasks]
  if overwrite:
    seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, pairs)


# --------------------------------------------------------- embedded registry
_EMBEDDED: Dict[str, Any] = {"vocabulary": None}


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
