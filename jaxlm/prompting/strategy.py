"""A prompting strategy, and its evaluation on SeqIO tasks with the tasks' own metrics.

:class:`PromptStrategy` (gin) combines the pieces of this package: few-shot demonstrations
(``icl``), retrieval augmentation (``retrieval``), zero-shot chain of thought
(``zero_shot_cot``), self-consistency (``self_consistency``) and tools (``tools``).
:func:`predictions` runs one on raw examples worded by a template; :func:`evaluate_strategies`
runs strategies per task on SeqIO tasks (the eval job's ``evaluate.prompting``): the
queries are the eval split's examples, the demonstration pool is the 'train' split, each
example being its task's (inputs, targets) texts, so a demonstration reads exactly as the
task's own instance. Predictions and targets are postprocessed and scored by the task's
postprocess_fn and predict metric fns, the numbers the evaluator reports for the task; each
strategy is a row '<task>[<strategy name>]'. SeqIO is imported only there.

    knn/PromptStrategy.name = 'knn_4'
    knn/PromptStrategy.icl = @knn/ICLConfig()
    knn/ICLConfig.selection = 'knn'
    evaluate.prompting = {'instructions_word_problems': [@knn/PromptStrategy()]}

(gin_configs/prompting/strategies.gin names a few.)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence

import gin

from jaxlm.data.instructions import Template
from jaxlm.inference.decoding import DecodeConfig
from jaxlm.prompting.cot import SelfConsistency, ZeroShotCoT, self_consistency, zero_shot_cot
from jaxlm.prompting.icl import ICLConfig, build_prompts
from jaxlm.prompting.lm import PromptLM
from jaxlm.prompting.retrieval import RetrievalAugmentation
from jaxlm.prompting.tools import decode_with_tools

# A SeqIO example as a raw example: its whole inputs text is the worded input.
TASK_TEMPLATE = Template("", "{input}", "{output}")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PromptStrategy:
  """How a prompt is built and decoded. name: its row in reports. icl: demonstrations
  (None: zero-shot). retrieval: passages prepended (open-book). zero_shot_cot: the two-stage
  "Let's think step by step" prompting. self_consistency: sampled rationales and a vote
  (else one decoding with the evaluator's DecodeConfig). tools: tool names executed while
  decoding (jaxlm.prompting.tools). max_new_tokens: None decodes the longest target's
  tokens plus 8, or DecodeConfig.max_new_tokens when that is set."""
  name: str = "zero_shot"
  icl: Optional[ICLConfig] = None
  retrieval: Optional[RetrievalAugmentation] = None
  zero_shot_cot: Optional[ZeroShotCoT] = None
  self_consistency: Optional[SelfConsistency] = None
  tools: Sequence[str] = ()
  max_new_tokens: Optional[int] = None

  def __post_init__(self):
    if self.zero_shot_cot is not None and (self.self_consistency is not None or self.tools):
      raise ValueError(f"PromptStrategy {self.name!r}: zero_shot_cot decodes in two greedy stages; it cannot "
                       "be combined with self_consistency or tools")
    if self.self_consistency is not None and self.tools:
      raise ValueError(f"PromptStrategy {self.name!r}: self_consistency with tools is not supported")


def prompts_for(strategy: PromptStrategy, queries: Sequence[Mapping[str, Any]], pool: Sequence[Mapping[str, Any]],
                template: Template, lm: Optional[PromptLM] = None) -> List[str]:
  """The prompt of every query: zero- or few-shot, with retrieved passages in front."""
  if strategy.icl is not None:
    prompts = build_prompts(queries, pool, template, strategy.icl, lm)
  else:
    prompts = [template.instance(q).prompt() for q in queries]
  if strategy.retrieval is not None:
    prompts = [strategy.retrieval.augment(template.parts(q)[0], p) for q, p in zip(queries, prompts)]
  return prompts


def predictions(lm: PromptLM, strategy: PromptStrategy, queries: Sequence[Mapping[str, Any]],
                pool: Sequence[Mapping[str, Any]], template: Template, decoding: DecodeConfig) -> List[str]:
  """The prediction text of every query under the strategy. decoding needs max_new_tokens."""
  prompts = prompts_for(strategy, queries, pool, template, lm)
  if strategy.zero_shot_cot is not None:
    return [r["prediction"] for r in zero_shot_cot(lm, prompts, strategy.zero_shot_cot, decoding)]
  if strategy.self_consistency is not None:
    return [r["prediction"] for r in self_consistency(lm, prompts, strategy.self_consistency, decoding)]
  if strategy.tools:
    rows = decode_with_tools(lm.model, lm.params, lm.vocab, prompts, decoding, strategy.tools,
                             batch_size=lm.batch_size)
    return [r["output"] for r in rows]
  return lm.generate(prompts, decoding)


def task_examples(task, split: str, num_examples: Optional[int] = None) -> List[Dict[str, str]]:
  """A SeqIO task's examples of the split as raw examples {'input', 'output'}: its
  inputs text (the trailing newline dropped: the template adds it) and targets text."""
  ds = task.get_dataset(None, split=split, shuffle=False, seed=0)
  if num_examples is not None:
    ds = ds.take(num_examples)
  out = []
  for ex in ds.as_numpy_iterator():
    if "inputs_pretokenized" not in ex or "targets_pretokenized" not in ex:
      raise ValueError(f"task {task.name!r} has no inputs_pretokenized/targets_pretokenized texts: prompting "
                       "strategies need an inputs/targets text task (seqio.preprocessors.tokenize keeps them)")
    text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)
    out.append({"input": text(ex["inputs_pretokenized"]).rstrip("\n"), "output": text(ex["targets_pretokenized"]),
                "_example": ex})
  return out


def evaluate_strategies(model, params, strategies: Mapping[str, Sequence[PromptStrategy]], split: str = "validation",
                        num_examples: Optional[int] = None, decoding: Optional[DecodeConfig] = None,
                        batch_size: int = 8, pool_size: int = 1000) -> Dict[str, Dict[str, float]]:
  """{'<task>[<strategy>]': {metric: value}} for every task's strategies: the task's eval
  split (num_examples of it) prompted by each strategy, demonstrations from the first
  pool_size 'train' examples, scored with the task's postprocess_fn and metric fns."""
  import seqio  # pylint: disable=import-outside-toplevel
  base = decoding or DecodeConfig()
  results = {}
  for task_name, task_strategies in strategies.items():
    task = seqio.get_mixture_or_task(task_name)
    if not isinstance(task, seqio.Task):
      raise ValueError(f"evaluate.prompting names {task_name!r}, a mixture: name its tasks one by one")
    vocab = task.output_features["targets"].vocabulary
    lm = PromptLM(model, params, vocab, batch_size=batch_size)
    queries = task_examples(task, split, num_examples)
    needs_pool = any(s.icl is not None for s in task_strategies)
    pool = task_examples(task, "train", pool_size) if needs_pool else []
    longest = max((len(vocab.encode(q["output"])) for q in queries), default=1) + 8
    post = task.postprocess_fn or (lambda x, example=None, is_target=False: x)
    targets = [post(q["output"], example=q["_example"], is_target=True) for q in queries]
    for strategy in task_strategies:
      n = strategy.max_new_tokens or base.max_new_tokens or longest
      texts = predictions(lm, strategy, queries, pool, TASK_TEMPLATE, dataclasses.replace(base, max_new_tokens=n))
      preds = [post(t, example=q["_example"], is_target=False) for t, q in zip(texts, queries)]
      scores = {}
      for metric_fn in task.predict_metric_fns:
        scores.update({k: float(getattr(v, "value", v)) for k, v in metric_fn(targets, preds).items()})
      results[f"{task_name}[{strategy.name}]"] = scores
  return results
