"""The quickstart's training stages: each a `train()` run in its own directory, started
from the previous stage's checkpoint, cached once its last checkpoint exists and resumed
from its latest checkpoint when it was stopped (train() resumes MODEL_DIR by itself).
A stage's directory records the settings it was trained with (its gin bindings, the model
config, the checkpoint it started from: quickstart_stage.json); a rerun with other
settings is refused with the settings that changed, and nothing is overwritten.

  pretrain            MODEL_DIR: train() as runs/quickstart.gin binds it
  instruction_tuning  MODEL_DIR/sft[_lora]: SFTObjective on a fixed-rate mixture of generated
                      instruction families (count_words, unit_conversion: learned in a few
                      hundred steps) and the prompting tasks of jaxlm.data.prompting_tasks
                      (lookup with demonstrations, calculator calls, rationales), the whole
                      model ('full') or LoRA adapters ('lora')
  alignment           MODEL_DIR/<dpo|ppo|grpo>[_lora]: DPO on generated preferences whose true
                      reward is known (jaxlm.data.preferences, 'format' rule by default:
                      "The answer is X." over the bare answer), or PPO / GRPO against the
                      same rule as a reward (jaxlm.adaptation.rollouts)
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
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
  identity: str = ""          # its settings and its step: what the next stage starts from

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


def _record_path(model_dir: str) -> str:
  return os.path.join(model_dir, "quickstart_stage.json")


def _read_record(model_dir: str) -> Dict[str, Any]:
  if not os.path.exists(_record_path(model_dir)):
    return {}
  with open(_record_path(model_dir), encoding="utf-8") as f:
    return json.load(f)


def _write_record(model_dir: str, **fields) -> None:
  from jaxlm.data.sources import atomic_write  # pylint: disable=import-outside-toplevel
  os.makedirs(model_dir, exist_ok=True)
  atomic_write(_record_path(model_dir), json.dumps({**_read_record(model_dir), **fields}, sort_keys=True))


RUN_ONLY = frozenset({"model_dir", "train_steps", "checkpoint_every", "log_every", "progress_bar", "tensorboard",
                      "async_checkpoints"})


def gin_settings(*configurables: str) -> Dict[str, Dict[str, Any]]:
  """{configurable: its gin bindings}, callables by name and the bindings that change how
  a run is watched, not what it trains (RUN_ONLY) left out: a stage's settings."""
  def plain(value):
    return getattr(value, "__qualname__", type(value).__name__) if callable(value) else value
  return {name: {k: plain(v) for k, v in sorted(gin.get_bindings(name).items()) if k not in RUN_ONLY}
          for name in configurables}


def _flat(settings: Dict[str, Any], prefix: str = "") -> Dict[str, str]:
  out = {}
  for key, value in settings.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = json.dumps(value, sort_keys=True, default=str)
  return out


def _check_settings(name: str, model_dir: str, settings: Dict[str, str]) -> None:
  """Refuses a directory that holds this stage trained with other settings."""
  saved = _read_record(model_dir).get("settings")
  if saved is None or saved == settings or last_checkpoint(model_dir) < 0:
    return
  changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
  shown = "; ".join(f"{k}: {saved.get(k, 'unset')} -> {settings.get(k, 'unset')}" for k in changed[:6])
  raise ValueError(f"{model_dir} holds the {name} stage trained with other settings ({shown}"
                   f"{'; ...' if len(changed) > 6 else ''}). Delete {model_dir} to train it again with these, "
                   f"or give another MODEL_DIR")


def run_stage(name: str, model_dir: str, steps: int, config: TransformerConfig, settings: Dict[str, Any],
              **train_kwargs) -> Optional[Stage]:
  """train(model_dir, steps, config, **train_kwargs), or the cached parameters when
  model_dir already has the checkpoint of step `steps`; None when the run was stopped
  (Ctrl-C / SIGTERM: checkpointed, the next run resumes it). `settings` (JSON-able: the
  gin bindings and arguments that shape the stage, the previous stage's identity), with
  `steps` and `config`, are recorded and checked against the directory's record
  (_check_settings): other steps would also mean another learning-rate schedule."""
  from jaxlm.training.trainer import train  # pylint: disable=import-outside-toplevel
  settings = _flat({**settings, "steps": steps, "config": dataclasses.asdict(config)})
  _check_settings(name, model_dir, settings)
  fingerprint = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
  done = last_checkpoint(model_dir)
  if done >= steps:
    params = checkpointing.restore_params(model_dir, model_for(config).param_shapes())
    record = _read_record(model_dir)
    say(f"  {name}: step {done} checkpoint in {model_dir} (cached)")
    return Stage(name, config, params, model_dir, done, record.get("tokens_seen", 0), True,
                 record.get("train_seconds", 0.0), f"{fingerprint}:{done}")
  if done > 0:
    say(f"  {name}: resuming from step {done} in {model_dir}")
  _write_record(model_dir, settings=settings)
  start = time.time()
  result = train(model_dir=model_dir, train_steps=steps, config=config, **train_kwargs)
  seconds = time.time() - start + _read_record(model_dir).get("partial_seconds", 0.0)  # with the stopped runs'
  if result.preempted:
    _write_record(model_dir, partial_seconds=seconds)
    return None
  _write_record(model_dir, tokens_seen=int(result.tokens_seen), train_seconds=seconds, partial_seconds=0.0)
  step = int(result.state.step)
  return Stage(name, config, result.state.params, model_dir, step, int(result.tokens_seen), False, seconds,
               f"{fingerprint}:{step}")


def check_choice(setting: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f"{setting}={value!r}: expected one of {tuple(choices)}")


@gin.configurable
def register_sft_mixture(vocabulary, name: str = "quickstart_sft", families: Sequence[str] = ("count_words",
                                                                                               "unit_conversion"),
                         prompting: Sequence[str] = ("lookup", "calculator", "rationales"),
                         chat_families: Sequence[str] = ("count_words",),
                         rates: Optional[Dict[str, float]] = None, num_train: int = 2000,
                         num_validation: int = 64, pretraining_task: Optional[str] = None,
                         pretraining_rate: float = 0.1) -> str:
  """The instruction mixture: instructions_<family> of the generated families (every
  template), quickstart_chat_<family> of `chat_families` (their direct wording as a user
  turn and an assistant turn closed by the end-of-turn marker: the chat symbols the
  tokenizer reserved) and quickstart_<task> of the prompting tasks, mixed at fixed `rates`
  ({task: rate}, default 1; lookup and calculator 1.5: they take longest to learn), and
  `pretraining_task` as a `pretraining_rate` share of all examples (OPT-IML's
  regularisation: the model keeps its held-out perplexity)."""
  from jaxlm.data import generated_tasks, instructions, tasks  # pylint: disable=import-outside-toplevel
  for task in prompting:
    check_choice("register_sft_mixture.prompting", task, tuple(PROMPTING_TASKS))
  for family in chat_families:
    check_choice("register_sft_mixture.chat_families", family, tuple(generated_tasks.FAMILIES))
  rates = {"lookup": 1.5, "calculator": 1.5, **(rates or {})}
  names = [n for n in tasks.register_generated_instruction_tasks(vocabulary, families=list(families),
                                                                 num_train=num_train,
                                                                 num_validation=num_validation)
           if n != f"{tasks.INSTRUCTIONS_PREFIX}mix"]
  sizes = {"train": num_train, "validation": num_validation}
  chat = instructions.ChatTemplate()
  for family in chat_families:
    def chat_pairs(split, family=family):
      return instructions.template_pairs(generated_tasks.examples(family, sizes[split], split),
                                         generated_tasks.FAMILIES[family].templates[:1], f"chat:{family}", chat=chat)
    names.append(tasks.register_instruction_task(f"quickstart_chat_{family}", chat_pairs, vocabulary, chat=chat).name)
  for task in prompting:
    make = PROMPTING_TASKS[task]
    names.append(tasks.register_instruction_task(f"quickstart_{task}", lambda split, make=make: make(sizes[split], split),
                                                 vocabulary).name)
  tasks.register_instruction_mixture(name, names, "fixed", rates=[rates.get(n.split("_", 1)[1], 1.0) for n in names],
                                     pretraining_task=pretraining_task,
                                     pretraining_rate=pretraining_rate if pretraining_task else 0.0)
  return name


@gin.configurable
def instruction_tuning(model_dir: str, parent: Stage, vocabulary, method: str = "full",
                       steps: int = 250, batch_size: int = 32, peak_learning_rate: float = 2e-3,
                       lora_rank: int = 8, feature_lengths: Optional[Dict[str, int]] = None,
                       pretraining_task: Optional[str] = None, seed: int = 0) -> Optional[Stage]:
  """Stage 3: SFT of the pretrained stage `parent` (see the module docstring) on
  register_sft_mixture's mixture (with pretraining_task mixed in); method 'full' trains
  every parameter, 'lora' rank-`lora_rank` adapters on the attention projections
  (TransformerConfig.lora_targets), the base frozen."""
  from jaxlm.adaptation import SFTObjective  # pylint: disable=import-outside-toplevel
  from jaxlm.data.pipeline import DataPipeline  # pylint: disable=import-outside-toplevel
  from jaxlm.training import adamw, warmup_cosine  # pylint: disable=import-outside-toplevel
  check_choice("quickstart.sft_method", method, SFT_METHODS)
  lengths = dict(feature_lengths or {"inputs": 80, "targets": 48})
  config = parent.config
  if sum(lengths.values()) > config.max_len:
    raise ValueError(f"instruction_tuning.feature_lengths={lengths} exceed TransformerConfig.max_len={config.max_len}")
  mixture = register_sft_mixture(vocabulary, pretraining_task=pretraining_task)
  trainable = None
  if method == "lora":
    config = config.replace(lora_rank=lora_rank)
    trainable = Trainable(added_only=True)
  settings = dict(parent=parent.identity, method=method, batch_size=batch_size, peak_learning_rate=peak_learning_rate,
                  lora_rank=lora_rank, feature_lengths=lengths, pretraining_task=pretraining_task, seed=seed,
                  **gin_settings("register_sft_mixture", "train"))
  return run_stage(f"instruction-tuned ({method})", model_dir, steps, config, settings,
                   batch_size=batch_size, data_fn=functools.partial(DataPipeline, mixture, lengths, seed=seed),
                   learning_rate=warmup_cosine(peak_value=peak_learning_rate, warmup_steps=max(1, steps // 10),
                                               decay_steps=steps),
                   optimizer=functools.partial(adamw, weight_decay=0.0), objective=SFTObjective(),
                   init_from=parent.model_dir, trainable=trainable)


@gin.configurable
def preference_source(families: Sequence[str] = ("count_words", "unit_conversion"), rule: str = "format",
                      num_train: int = 300, num_validation: int = 32):
  """The generated preferences alignment trains on and the suite measures (their truth is
  known: jaxlm.data.preferences.true_reward under `rule`)."""
  check_choice("preference_source.rule", rule, prefs.RULES)
  return prefs.generated_preference_source(families, rule, num_train=num_train, num_validation=num_validation)


@gin.configurable
def alignment(model_dir: str, parent: Stage, vocabulary, method: str = "dpo",
              steps: int = 30, batch_size: int = 16, peak_learning_rate: float = 3e-4, beta: float = 0.1,
              rpo_alpha: float = 1.0, feature_lengths: Optional[Dict[str, int]] = None,
              rollout_prompts: int = 32, response_length: int = 16, seed: int = 0) -> Optional[Stage]:
  """Stage 4 from the instruction-tuned stage `parent` (the frozen reference too): 'dpo'
  (DPOObjective with the reference's log-probabilities computed once, RPO's NLL term
  rpo_alpha), or 'ppo' / 'grpo' on rollouts of the preference prompts rewarded by the
  preference rule (REWARD_RULES). A LoRA checkpoint trains its adapters only."""
  from jaxlm.adaptation import DPOObjective  # pylint: disable=import-outside-toplevel
  from jaxlm.adaptation.dpo import reference_scorer  # pylint: disable=import-outside-toplevel
  from jaxlm.training import adamw, warmup_cosine  # pylint: disable=import-outside-toplevel
  check_choice("quickstart.alignment", method, ALIGNMENTS)
  lengths = dict(feature_lengths or {"inputs": 48, "targets": 24})
  init_from, config = parent.model_dir, parent.config
  settings = dict(parent=parent.identity, method=method, batch_size=batch_size, peak_learning_rate=peak_learning_rate,
                  beta=beta, rpo_alpha=rpo_alpha, feature_lengths=lengths, rollout_prompts=rollout_prompts,
                  response_length=response_length, seed=seed, **gin_settings("preference_source", "train"))
  trainable = Trainable(include=(r"_lora_[ab]$",)) if config.lora_rank else None
  common = dict(init_from=init_from, trainable=trainable, optimizer=functools.partial(adamw, weight_decay=0.0),
                learning_rate=warmup_cosine(peak_value=peak_learning_rate, warmup_steps=max(1, steps // 8),
                                            decay_steps=steps))
  source = preference_source()
  if method == "dpo":
    scorer = reference_scorer(init_from, config=config, batch_size=64)
    data_fn = functools.partial(prefs.PreferenceData, source, lengths, vocabulary=vocabulary, reference=scorer,
                                seed=seed)
    return run_stage("aligned (dpo)", model_dir, steps, config, settings, batch_size=batch_size, data_fn=data_fn,
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
  return run_stage(f"aligned ({method})", model_dir, steps, config, settings, batch_size=batch_size,
                   data_fn=lambda **_: data, objective=PPOObjective() if method == "ppo" else GRPOObjective(),
                   frozen_models={"reference": init_from}, **common)
