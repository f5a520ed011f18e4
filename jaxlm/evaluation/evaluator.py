"""SeqIO evaluation glue: every seqio Task with metric fns is a jaxlm eval task.

The model's two t5x roles become seqio.Evaluator's model functions:
  predict_fn   decoding.predict_batch (greedy / sampling / beam, DecodeConfig), tokens cut
               at EOS; seqio decodes them with the task's vocabulary and postprocesses
  score_fn     model.score_batch: the summed log-likelihood of the targets given the inputs
  predict_with_aux_fn   predict_fn plus {'scores': ...} for PREDICTION_WITH_AUX metrics

Three ways in:
  Evaluator(model, names, ...).evaluate(params, step)   {task: {metric: value}}
  make_eval_fn(model, names, ...)(params, step)          {'task/metric': float}; build it
                                                         once, the trainer calls it
  make_train_eval_fn                                     gin factory for `train.eval_fn`:
                                                         periodic evaluation in training
  evaluate(...)                                          gin job `run.mode = 'eval'`
                                                         (gin_configs/runs/eval.gin)

Feature converters (never packed): encoder-decoders use seqio.EncDecFeatureConverter;
decoders seqio.PrefixLMFeatureConverter when the task has 'inputs' (the prompt is BOS +
inputs, attended both ways by prefix decoders) and seqio.LMFeatureConverter otherwise.
seqio and TensorFlow are imported only when an evaluator is built.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

import gin
import jax
import numpy as np

from jaxlm.evaluation.report import flatten_metrics
from jaxlm.inference.decoding import DecodeConfig, predict_batch_with_aux
from jaxlm.models import TransformerConfig, build_model
from jaxlm.training.checkpointing import resolve_checkpoint, restore_model, restore_params
from jaxlm.vocabularies import until_eos

Names = Union[str, Sequence[str]]


def feature_converter_for(model, mixture_or_task_name: str):
  """The unpacked seqio feature converter that matches the model and the task's features."""
  import seqio  # pylint: disable=import-outside-toplevel
  if model.config.arch == "encoder_decoder":
    return seqio.EncDecFeatureConverter(pack=False)
  tasks = seqio.get_subtasks(seqio.get_mixture_or_task(mixture_or_task_name))
  if all("inputs" in t.output_features for t in tasks):
    return seqio.PrefixLMFeatureConverter(pack=False)
  return seqio.LMFeatureConverter(pack=False)


def iterate_batches(ds, batch_size: int):
  """(indices [n], batch padded with zero rows to batch_size, n) of an enumerated dataset."""
  for indices, batch in ds.batch(batch_size).as_numpy_iterator():
    n = len(indices)
    if n < batch_size:
      batch = {k: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield indices, batch, n


def _padded(tokens: list, width: int) -> list:
  return tokens + [0] * (width - len(tokens))


def with_bos(batch: Mapping[str, Any], bos_id: Optional[int]) -> Mapping[str, Any]:
  """The batch with bos_id in the decoder's BOS slot (column 0 of decoder_input_tokens,
  which SeqIO's unpacked converters fill with 0): a Hugging Face model's own BOS. None:
  the batch as it is (jaxlm models, whose BOS is 0)."""
  if bos_id is None or "decoder_input_tokens" not in batch:
    return batch
  tokens = np.array(batch["decoder_input_tokens"])
  tokens[:, 0] = bos_id
  return {**batch, "decoder_input_tokens": tokens}


def make_predict_fn(model, params, *, batch_size: int = 8, decoding: Optional[DecodeConfig] = None,
                    max_new_tokens: Union[int, Callable, None] = None, with_aux: bool = False,
                    bos_id: Optional[int] = None):
  """seqio predict_fn(ds) -> [(index, tokens)] (with_aux: and {'scores': [...]}).

  decoding: DecodeConfig (default: DecodeConfig() as gin binds it). max_new_tokens, used
  where decoding.max_new_tokens is None: an int, a callable ds -> int or None, or None (the
  batch's room: see decoding.batch_prompts). bos_id: see with_bos.
  """
  decoding = decoding or DecodeConfig()
  key = jax.random.key(decoding.seed)

  def predict_fn(ds, model_feature_shapes=None):
    del model_feature_shapes
    config = decoding
    if config.max_new_tokens is None:
      n_new = max_new_tokens(ds) if callable(max_new_tokens) else max_new_tokens
      config = dataclasses.replace(config, max_new_tokens=n_new)
    outputs, scores = [], []
    for b, (indices, batch, n) in enumerate(iterate_batches(ds, batch_size)):
      tokens, aux = predict_batch_with_aux(model, params, with_bos(batch, bos_id), config,
                                           rng=jax.random.fold_in(key, b))
      tokens, batch_scores = np.asarray(tokens)[:n], np.asarray(aux["scores"])[:n]
      width = tokens.shape[1]  # rows cut at EOS, zero-padded: seqio stacks them into one array
      outputs += [(int(i), _padded(until_eos(t, decoding.eos_id), width)) for i, t in zip(indices, tokens)]
      scores += [float(s) for s in batch_scores]
    return (outputs, {"scores": scores}) if with_aux else outputs
  return predict_fn


# One jitted function for every score_fn (model static), so periodic evaluation compiles once.
score_batch_jit = jax.jit(lambda model, params, batch: model.score_batch(params, batch), static_argnums=0)


def make_score_fn(model, params, *, batch_size: int = 8, bos_id: Optional[int] = None):
  """seqio score_fn(ds) -> [(index, log p(targets | inputs))], by model.score_batch;
  bos_id: see with_bos."""

  def score_fn(ds, model_feature_shapes=None):
    del model_feature_shapes
    out = []
    for indices, batch, n in iterate_batches(ds, batch_size):
      values = np.asarray(score_batch_jit(model, params, with_bos(batch, bos_id)))[:n]
      out += [(int(i), float(v)) for i, v in zip(indices, values)]
    return out
  return score_fn


@gin.configurable(allowlist=["seed"])
class Evaluator:
  """seqio.Evaluator(s) over the named tasks/mixtures, built once (datasets cached), run
  on any params: `evaluate(params, step)` -> {task: {metric: value}}.

  seed: seqio.Evaluator's dataset seed (random preprocessors), gin-bound as
  `Evaluator.seed` for the eval job and periodic evaluation alike; decoding samples with
  DecodeConfig.seed. bos_id: the model's BOS where it is not 0 (a Hugging Face model's).
  """

  def __init__(self, model, mixture_or_task_names: Names, feature_lengths: Optional[Mapping[str, int]] = None,
               split: str = "validation", batch_size: int = 8, num_examples: Optional[int] = None,
               decoding: Optional[DecodeConfig] = None, log_dir: Optional[str] = None,
               use_cached: bool = False, seed: int = 42, bos_id: Optional[int] = None):
    import seqio  # pylint: disable=import-outside-toplevel
    self.model, self.batch_size, self.bos_id = model, batch_size, bos_id
    self.decoding = decoding or DecodeConfig()
    self.feature_lengths = dict(feature_lengths) if feature_lengths else None
    names = [mixture_or_task_names] if isinstance(mixture_or_task_names, str) else list(mixture_or_task_names)
    loggers = (seqio.JSONLogger,) if log_dir else ()
    self.evaluators = []
    self._targets_length = {}  # id(model dataset) -> longest target, sizes decoding per task
    for name in names:
      ev = seqio.Evaluator(
          mixture_or_task_name=name, feature_converter=feature_converter_for(model, name),
          eval_split=split, use_cached=use_cached, seed=seed, sequence_length=self.feature_lengths,
          num_examples=num_examples, logger_cls=loggers, log_dir=log_dir, async_compute_metrics=False)
      if not ev.eval_tasks:
        logging.warning("no task of %r has split %r and metric fns; nothing to evaluate", name, split)
      for task in ev.eval_tasks:
        longest = max((len(ex["targets"]) for ex in ev.cached_task_datasets[task.name].as_numpy_iterator()),
                      default=1)
        self._targets_length[id(ev.cached_model_datasets[task.name])] = max(1, longest)
      self.evaluators.append(ev)

  @property
  def task_names(self) -> list:
    return [t.name for ev in self.evaluators for t in ev.eval_tasks]

  def _max_new_tokens(self, ds):
    if self.feature_lengths and "targets" in self.feature_lengths:
      return int(self.feature_lengths["targets"])
    return self._targets_length.get(id(ds))

  def evaluate(self, params, step: Optional[int] = None) -> Dict[str, Dict[str, Any]]:
    common = dict(batch_size=self.batch_size, decoding=self.decoding, max_new_tokens=self._max_new_tokens,
                  bos_id=self.bos_id)
    fns = dict(predict_fn=make_predict_fn(self.model, params, **common),
               predict_with_aux_fn=make_predict_fn(self.model, params, with_aux=True, **common),
               score_fn=make_score_fn(self.model, params, batch_size=self.batch_size, bos_id=self.bos_id))
    results = {}
    for ev in self.evaluators:
      if ev.eval_tasks:
        future, _ = ev.evaluate(compute_metrics=True, step=step, **fns)
        results.update(future.result())
    return results


def make_eval_fn(model, mixture_or_task_names: Names, feature_lengths: Optional[Mapping[str, int]] = None,
                 **kwargs) -> Callable:
  """fn(params, step=None) -> {'task/metric': value}, for the trainer to call periodically.
  Building it registers nothing and caches the eval datasets; kwargs are Evaluator's."""
  evaluator = Evaluator(model, mixture_or_task_names, feature_lengths, **kwargs)

  def eval_fn(params, step: Optional[int] = None) -> Dict[str, Any]:
    return flatten_metrics(evaluator.evaluate(params, step))
  eval_fn.evaluator = evaluator
  return eval_fn


def resolve_task_names(mixture_or_task_names: Optional[Names] = None, task_modules: Sequence[str] = (),
                       suite_tasks: Optional[Mapping[str, Sequence]] = None, suite_vocabulary=None) -> list:
  """The names to evaluate: imports task_modules (they register seqio tasks), registers
  suite_tasks {name: (kind, path)} (jaxlm.evaluation.suites) and appends their names; an
  unknown name fails here, listing the registered ones."""
  for module in task_modules:
    importlib.import_module(module)
  names = mixture_or_task_names or []
  names = [names] if isinstance(names, str) else list(names)
  if suite_tasks:
    from jaxlm.evaluation import suites  # pylint: disable=import-outside-toplevel
    specs = {name: tuple(spec) for name, spec in suite_tasks.items()}
    names += [n for n in suites.register_suite_tasks(specs, suite_vocabulary) if n not in names]
  if not names:
    raise ValueError("nothing to evaluate: give mixture_or_task_names or suite_tasks")
  import seqio  # pylint: disable=import-outside-toplevel
  known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  missing = [name for name in names if name not in known]
  if missing:  # the built-in embedded_* / instructions_* ones register on first use
    from jaxlm.data import tasks  # pylint: disable=import-outside-toplevel
    for name in missing:
      tasks.get_task_or_mixture(name)
  return names


def _check_tokenized_with(names: Sequence[str], vocabulary, setting: str) -> None:
  """Raises if a task's features tokenize with another vocabulary than `vocabulary`."""
  import seqio  # pylint: disable=import-outside-toplevel
  for name in names:
    for task in seqio.get_subtasks(seqio.get_mixture_or_task(name)):
      for key, feature in task.output_features.items():
        if feature.vocabulary != vocabulary:
          raise ValueError(f"task {task.name!r} tokenizes {key!r} with {type(feature.vocabulary).__name__}, not "
                           f"the tokenizer of {setting}={vocabulary.path!r}: with a Hugging Face directory, "
                           "evaluate SUITE_TASKS (local benchmark files), or use lm-eval's `jaxlm` model")


@gin.configurable
def make_train_eval_fn(model, mixture_or_task_names: Optional[Names] = None,
                       feature_lengths: Optional[Mapping[str, int]] = None, task_modules: Sequence[str] = (),
                       suite_tasks: Optional[Mapping[str, Sequence]] = None, suite_vocabulary=None,
                       split: str = "validation", batch_size: int = 8, num_examples: Optional[int] = None,
                       decoding: Optional[DecodeConfig] = None, log_dir: Optional[str] = None) -> Callable:
  """`train.eval_fn = @make_train_eval_fn`: the trainer calls it once with its model, then
  the result every `train.eval_every` steps as fn(params, step) -> {'task/metric': value}.
  Arguments as evaluate's (log_dir: seqio's JSONL logs). seqio and TensorFlow are imported
  here, when the trainer builds it, never by jaxlm.training itself."""
  names = resolve_task_names(mixture_or_task_names, task_modules, suite_tasks, suite_vocabulary)
  return make_eval_fn(model, names, feature_lengths, split=split, batch_size=batch_size,
                      num_examples=num_examples, decoding=decoding, log_dir=log_dir)


@gin.configurable
def evaluate(mixture_or_task_names: Names = gin.REQUIRED, checkpoint_dir: Optional[str] = None,
             step: Optional[int] = None, feature_lengths: Optional[Mapping[str, int]] = None,
             split: str = "validation", batch_size: int = 8, num_examples: Optional[int] = None,
             config: Optional[TransformerConfig] = None, decoding: Optional[DecodeConfig] = None,
             output_dir: Optional[str] = None, task_modules: Sequence[str] = (),
             suite_tasks: Optional[Mapping[str, Sequence]] = None, suite_vocabulary=None,
             prompting: Optional[Mapping[str, Sequence[Any]]] = None, params=None,
             hf_dir: Optional[str] = None, adapter_dir: Optional[str] = None) -> Dict[str, Any]:
  """The 'eval' job: restore a checkpoint, run every task's metrics, write metrics.json.

  task_modules: modules to import first (they register seqio tasks, e.g. 'jaxlm.data.tasks').
  suite_tasks: {name: (kind, path)} local benchmark files registered by
  jaxlm.evaluation.suites.register_suite_tasks (vocabulary suite_vocabulary, default bytes); their
  names are evaluated too. output_dir: metrics.json ({'step': the restored step, 'metrics':
  {...}}) plus seqio's JSONL logs (predictions).
  prompting: {task: [jaxlm.prompting.PromptStrategy, ...]}: each task also evaluated under
  each strategy (few-shot, retrieval, CoT, self-consistency, tools), rows
  '<task>[<strategy name>]/<metric>' (jaxlm.prompting.strategy.evaluate_strategies).
  params: evaluate these instead of restoring checkpoint_dir. hf_dir (eval.gin's HF_DIR): a
  Hugging Face directory instead of a checkpoint (its config, weights and, for the suite
  tasks, its tokenizer; adapter_dir: a peft LoRA adapter merged in); every task must
  tokenize with that tokenizer. Returns {'task/metric': value}.
  """
  bos_id = None
  if hf_dir:
    from jaxlm.data.hf_vocabulary import HFSeqioVocabulary  # pylint: disable=import-outside-toplevel
    suite_vocabulary = suite_vocabulary or HFSeqioVocabulary(hf_dir)
    bos_id = suite_vocabulary.bos_id
    decoding = dataclasses.replace(decoding or DecodeConfig(), eos_id=suite_vocabulary.eos_id)
  names = resolve_task_names(mixture_or_task_names, task_modules, suite_tasks, suite_vocabulary)
  if prompting:
    resolve_task_names(list(prompting))  # an unknown name fails here, before any decoding
  if hf_dir:
    _check_tokenized_with(names, suite_vocabulary, "hf_dir")
    if prompting:
      raise ValueError("evaluate: prompting strategies need a jaxlm checkpoint (they tokenize with jaxlm's "
                       "vocabularies); unset PROMPTING or HF_DIR")
    model, params = restore_model(hf_dir=hf_dir, adapter_dir=adapter_dir)
  else:
    model = build_model(config or TransformerConfig())
  if params is None:
    if checkpoint_dir is None:
      raise ValueError("evaluate needs a model: checkpoint_dir (eval.gin's CHECKPOINT_DIR, a jaxlm checkpoint) "
                       "or hf_dir (HF_DIR, a Hugging Face directory)")
    item, _ = resolve_checkpoint(checkpoint_dir, step)
    params = restore_params(checkpoint_dir, model.param_shapes(), step)
    if step is None:  # the trainer's layout <step>/state: name the restored step in the logs
      parent = os.path.basename(os.path.dirname(item))
      step = int(parent) if os.path.basename(item) == "state" and parent.isdigit() else None
  if output_dir:
    os.makedirs(output_dir, exist_ok=True)
  evaluator = Evaluator(model, names, feature_lengths, split=split, batch_size=batch_size,
                        num_examples=num_examples, decoding=decoding, log_dir=output_dir, bos_id=bos_id)
  metrics = flatten_metrics(evaluator.evaluate(params, step))
  if prompting:
    from jaxlm.prompting.strategy import evaluate_strategies  # pylint: disable=import-outside-toplevel
    metrics.update(flatten_metrics(evaluate_strategies(model, params, prompting, split, num_examples, decoding,
                                                       batch_size)))
  for name, value in sorted(metrics.items()):
    logging.info("%s = %s", name, value)
  if output_dir:
    with open(os.path.join(output_dir, "metrics.json"), "w", encoding="utf-8") as f:
      json.dump({"step": step, "metrics": metrics}, f, indent=2, sort_keys=True, default=str)
  return metrics
