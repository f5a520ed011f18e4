"""The quickstart's training stages: each a `train()` run in its own directory, started
from the previous stage's checkpoint, cached once its last checkpoint exists and resumed
from its latest checkpoint when it was stopped (train() resumes MODEL_DIR by itself).

  pretrain            MODEL_DIR: train() as runs/quickstart.gin binds it
  instruction_tuning  MODEL_DIR/sft: SFTObjective on a fixed-rate mixture of generated
                      instruction families (count_words, unit_conversion: learned in a few
                      hundred steps) and the prompting tasks of jaxlm.data.prompting_tasks
                      (lookup with demonstrations, calculator calls, rationales), the whole
                      model ('full') or LoRA adapters ('lora')
  alignment           MODEL_DIR/<dpo|ppo|grpo>: DPO on generated preferences whose true
                      reward is known (jaxlm.data.preferences, 'format' rule by default:
                      "The answer is X." over the bare answer), or PPO / GRPO against the
                      same rule as a reward (jaxlm.adaptation.rollouts)
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Dict, Optional, Sequence

import gin

from jaxlm.data import preferences as prefs
from jaxlm.data import prompting_tasks
from jaxlm.models import TransformerConfig, build_model
from jaxlm.quickstart.corpus import say
from jaxlm.training import checkpointing
from jaxlm.training.trainable import Trainable

SFT_METHODS = ("full", "lora")
ALIGNMENTS = ("dpo", "ppo", "grpo")
REWARD_RULES = {"format": {"format": 1.0}, "correctness": {"exact_answer": 1.0}, "length": {"length": 1.0}}
PROMPTING_TASKS = {"lookup": prompting_tasks.lookup_pairs, "passages": prompting_tasks.passage_pairs,
                   "calculator": prompting_tasks.calculator_pairs, "rationales": prompting_tasks.rationale_pairs}


@dataclasses.dataclass
class Stage:
  """A trained (or untrained) model of the lifecycle and what it cost."""
  name: str
  config: TransformerConfig
  params: Any
  model_dir: Optional[str] = None
  steps: int = 0
  tokens_seen: int = 0
  cached: bool = False
  train_seconds: float = 0.0  # this run's (a cached stage's: the run that trained it)

  @property
  def model(self):
    return model_for(self.config)


@functools.cache
def model_for(config: TransformerConfig):
  """One model object per config: jitted functions take the model as a static argument,
  so stages that share a config share their compiled programs."""
  return build_model(config)


def last_checkpoint(model_dir: str) -> int:
  """The newest checkpoint step in MODEL_DIR/checkpoints (-1: none)."""
  folder = os.path.join(model_dir, "checkpoints")
  steps = [int(s) for s in os.listdir(folder) if s.isdigit()] if os.path.isdir(folder) else []
  return max(steps, default=-1)


def _timing_path(model_dir: str) -> str:
  return os.path.join(model_dir, "quickstart_stage.json")


def run_stage(name: str, model_dir: str, steps: int, config: TransformerConfig, **train_kwargs) -> Optional[Stage]:
  """train(model_dir, steps, config, **train_kwargs), or the cached parameters when
  model_dir already has the checkpoint of step `steps`; None when the run was stopped
  (Ctrl-C / SIGTERM: checkpointed, the next run resumes it)."""
  from jaxlm.training.trainer import train  # pylint: disable=import-outside-toplevel
  done = last_checkpoint(model_dir)
  if done >= steps:
    params = checkpointing.restore_params(model_dir, model_for(config).param_shapes())
    record = {}
    if os.path.exists(_timing_path(model_dir)):
      with open(_timing_path(model_dir), encoding="utf-8") as f:
        record = json.load(f)
    say(f"  {name}: step {done} checkpoint in {model_dir} (cached)")
    return Stage(name, config, params, model_dir, done, record.get("tokens_seen", 0), True,
                 record.get("train_seconds", 0.0))
  if done > 0:
    say(f"  {name}: resuming from step {done} in {model_dir}")
  start = time.time()
  result = train(model_dir=model_dir, train_steps=steps, config=config, **train_kwargs)
  if result.preempted:
    note_partial_time(model_dir, time.time() - start)
    return None
  seconds = time.time() - start
  if os.path.exists(_timing_path(model_dir)):  # a resumed stage: add the earlier runs' time
    with open(_timing_path(model_dir), encoding="utf-8") as f:
      seconds += json.load(f).get("partial_seconds", 0.0)
  record = {"tokens_seen": int(result.tokens_seen), "train_seconds": seconds}
  with open(_timing_path(model_dir), "w", encoding="utf-8") as f:
    json.dump(record, f)
  return Stage(name, config, result.state.params, model_dir, int(result.state.step), int(result.tokens_seen),
               False, seconds)


def note_partial_time(model_dir: str, seconds: float) -> None:
  """Adds a stopped run's seconds to the stage's record (the time split counts them)."""
  os.makedirs(model_dir, exist_ok=True)
  record = {}
  if os.path.exists(_timing_path(model_dir)):
    with open(_timing_path(model_dir), encoding="utf-8") as f:
      record = json.load(f)
  record["partial_seconds"] = record.get("partial_seconds", 0.0) + seconds
  with open(_timing_path(model_dir), "w", encoding="utf-8") as f:
    json.dump(record, f)


def check_choice(setting: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f"{setting}={value!r}: expected one of {tuple(choices)}")


@gin.configurable
def register_sft_mixture(vocabulary, name: str = "quickstart_sft", families: Sequence[str] = ("count_words",
                                                                                               "unit_conversion"),
                         prompting: Sequence[str] = ("lookup", "calculator", "rationales"),
                         rates: Optional[Dict[str, float]] = None, num_train: int = 2000,
                         num_validation: int = 64, pretraining_task: Optional[str] = None,
                         pretraining_rate: float = 0.1) -> str:
  """The instruction mixture: instructions_<family> of the generated families (every
  template) and quickstart_<task> of the prompting tasks, mixed at fixed `rates`
  ({task: rate}, default 1; lookup and calculator 1.5: they take longest to learn), and
  `pretraining_task` as a `pretraining_rate` share of all examples (OPT-IML's
  regularisation: the model keeps its held-out perplexity)."""
  from jaxlm.data import tasks  # pylint: disable=import-outside-toplevel
  for task in prompting:
    check_choice("register_sft_mixture.prompting", task, tuple(PROMPTING_TASKS))
  rates = {"lookup": 1.5, "calculator": 1.5, **(rates or {})}
  names = [n for n in tasks.register_generated_instruction_tasks(vocabulary, families=list(families),
                                                                 num_train=num_train,
                                                                 num_validation=num_validation)
           if n != f"{tasks.INSTRUCTIONS_PREFIX}mix"]
  sizes = {"train": num_train, "validation": num_validation}
  for task in prompting:
    make = PROMPTING_TASKS[task]
    names.append(tasks.register_instruction_task(f"quickstart_{task}", lambda split, make=make: make(sizes[split], split),
                                                 vocabulary).name)
  tasks.register_instruction_mixture(name, names, "fixed", rates=[rates.get(n.split("_", 1)[1], 1.0) for n in names],
                                     pretraining_task=pretraining_task,
                                     pretraining_rate=pretraining_rate if pretraining_task else 0.0)
  return name


@gin.configurable
def instruction_tuning(model_dir: str, init_from: str, config: TransformerConfig, vocabulary, method: str = "full",
                       steps: int = 250, batch_size: int = 32, peak_learning_rate: float = 2e-3,
                       lora_rank: int = 8, feature_lengths: Optional[Dict[str, int]] = None,
                       pretraining_task: Optional[str] = None, seed: int = 0) -> Optional[Stage]:
  """Stage 3: SFT of the pretrained checkpoint (see the module docstring) on
  register_sft_mixture's mixture (with pretraining_task mixed in); method 'full' trains
  every parameter, 'lora' rank-`lora_rank` adapters on the attention projections
  (TransformerConfig.lora_targets), the base frozen."""
  from jaxlm.adaptation import SFTObjective  # pylint: disable=import-outside-toplevel
  from jaxlm.data.pipeline import DataPipeline  # pylint: disable=import-outside-toplevel
  from jaxlm.training import adamw, warmup_cosine  # pylint: disable=import-outside-toplevel
  check_choice("quickstart.sft_method", method, SFT_METHODS)
  lengths = dict(feature_lengths or {"inputs": 80, "targets": 48})
  if sum(lengths.values()) > config.max_len:
    raise ValueError(f"instruction_tuning.feature_lengths={lengths} exceed TransformerConfig.max_len={config.max_len}")
  mixture = register_sft_mixture(vocabulary, pretraining_task=pretraining_task)
  trainable = None
  if method == "lora":
    config = config.replace(lora_rank=lora_rank)
    trainable = Trainable(added_only=True)
  return run_stage(f"instruction-tuned ({method})", model_dir, steps, config,
                   batch_size=batch_size, data_fn=functools.partial(DataPipeline, mixture, lengths, seed=seed),
                   learning_rate=warmup_cosine(peak_value=peak_learning_rate, warmup_steps=max(1, steps // 10),
                                               decay_steps=steps),
                   optimizer=functools.partial(adamw, weight_decay=0.0), objective=SFTObjective(),
                   init_from=init_from, trainable=trainable)


@gin.configurable
def preference_source(families: Sequence[str] = ("count_words", "unit_conversion"), rule: str = "format",
                      num_train: int = 300, num_validation: int = 32):
  """The generated preferences alignment trains on and the suite measures (their truth is
  known: jaxlm.data.preferences.true_reward under `rule`)."""
  check_choice("preference_source.rule", rule, prefs.RULES)
  return prefs.generated_preference_source(families, rule, num_train=num_train, num_validation=num_validation)


@gin.configurable
def alignment(model_dir: str, init_from: str, config: TransformerConfig, vocabulary, method: str = "dpo",
              steps: int = 30, batch_size: int = 16, peak_learning_rate: float = 3e-4, beta: float = 0.1,
              rpo_alpha: float = 1.0, feature_lengths: Optional[Dict[str, int]] = None,
              rollout_prompts: int = 32, response_length: int = 16, seed: int = 0) -> Optional[Stage]:
  """Stage 4 from the instruction-tuned checkpoint (the frozen reference too): 'dpo'
  (DPOObjective with the reference's log-probabilities computed once, RPO's NLL term
  rpo_alpha), or 'ppo' / 'grpo' on rollouts of the preference prompts rewarded by the
  preference rule (REWARD_RULES). A LoRA checkpoint trains its adapters only."""
  from jaxlm.adaptation import DPOObjective  # pylint: disable=import-outside-toplevel
  from jaxlm.adaptation.dpo import reference_scorer  # pylint: disable=import-outside-toplevel
  from jaxlm.training import adamw, warmup_cosine  # pylint: disable=import-outside-toplevel
  check_choice("quickstart.alignment", method, ALIGNMENTS)
  lengths = dict(feature_lengths or {"inputs": 48, "targets": 24})
  trainable = Trainable(include=(r"_lora_[ab]$",)) if config.lora_rank else None
  common = dict(init_from=init_from, trainable=trainable, optimizer=functools.partial(adamw, weight_decay=0.0),
                learning_rate=warmup_cosine(peak_value=peak_learning_rate, warmup_steps=max(1, steps // 8),
                                            decay_steps=steps))
  source = preference_source()
  if method == "dpo":
    scorer = reference_scorer(init_from, config=config, batch_size=64)
    data_fn = functools.partial(prefs.PreferenceData, source, lengths, vocabulary=vocabulary, reference=scorer,
                                seed=seed)
    return run_stage("aligned (dpo)", model_dir, steps, config, batch_size=batch_size, data_fn=data_fn,
                     objective=DPOObjective(beta=beta, rpo_alpha=rpo_alpha, reference="cached"), **common)
  from jaxlm.adaptation import (GRPOAdvantages, GRPOObjective, PPOAdvantages,  # pylint: disable=import-outside-toplevel
                                PPOObjective, RolloutData, RuleReward)
  rule = source("train")[0].truth["rule"]
  prompts = [(p.prompt, p.truth["example"]) for p in source("train")]
  group = 1 if method == "ppo" else 4
  config = config.replace(value_head=method == "ppo")
  data = RolloutData(batch_size, prompts=prompts, reward=RuleReward(REWARD_RULES[rule]),
                     advantages=PPOAdvantages() if method == "ppo" else GRPOAdvantages(), vocabulary=vocabulary,
                     config=config, prompts_per_rollout=rollout_prompts // group, samples_per_prompt=group,
                     prompt_length=lengths["inputs"], response_length=response_length, epochs=1, seed=seed)
  return run_stage(f"aligned ({method})", model_dir, steps, config, batch_size=batch_size,
                   data_fn=lambda **_: data, objective=PPOObjective() if method == "ppo" else GRPOObjective(),
                   frozen_models={"reference": init_from}, **common)
