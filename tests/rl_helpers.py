"""Helpers of the RL learning tests (no tests here): PPO, PPO-ptx and GRPO runs of train()
from the shared tiny instruction model (train_helpers.tiny_instruction_model), each run
once per test session and measured.

The task: reverse_words prompts (the SFT model's direct wording) and the rule-based
brevity reward RuleReward({'length': 1}, max_words=2): 1 for answers of at most two words,
2 / words otherwise. The SFT model answers with 2-4 words, so it is partly right (about
0.74 on held-out prompts when sampling) and the reward can rise. The true reward is
measured on 128 held-out (validation) prompts, sampled at the rollout's shape (the
decoder program the rollouts compiled), with the reference (SFT) parameters before and the
trained ones after.
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
import time

import numpy as np

import train_helpers as h

FAMILY = "reverse_words"
MAX_WORDS = 2
PROMPT_LENGTH, RESPONSE_LENGTH = 32, 12
ROWS, BATCH, EPOCHS = 64, 16, 2          # rollout rows, minibatch rows, passes: 8 steps a rollout
HELD_OUT = 128
PTX_LENGTH = 64


def reward():
  from jaxlm.adaptation import RuleReward
  return RuleReward({"length": 1.0}, max_words=MAX_WORDS)


class ProseRows:
  """Pretraining rows for PPO-ptx without a SeqIO pipeline (which takes seconds to build):
  the embedded prose's `split` documents, tokenized with the instruction vocabulary and cut
  into rows of PTX_LENGTH targets, served in order from row `offset`, cycling."""

  def __init__(self, batch_size: int, shard_index: int = 0, num_shards: int = 1, split: str = "train",
               offset: int = 0):
    from jaxlm.data import sources
    del shard_index, num_shards
    vocab, ids = h.instruction_vocabulary(), []
    for doc in sources.embedded_documents("prose", split)[:200]:
      ids += list(vocab.encode(doc["text"])) + [1]
    rows = np.array(ids[:len(ids) // PTX_LENGTH * PTX_LENGTH], np.int32).reshape(-1, PTX_LENGTH)
    self.rows, self.batch_size, self.position = rows, batch_size, offset

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    index = np.arange(self.position, self.position + self.batch_size) % len(self.rows)
    self.position += self.batch_size
    targets = self.rows[index]
    inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], 1)
    return {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
            "decoder_loss_weights": np.ones(targets.shape, np.float32)}

  def state(self) -> dict:
    return {"position": self.position}

  def restore(self, state) -> None:
    self.position = state["position"]


def pretraining_batches(count: int = 4):
  """Fixed held-out prose batches (validation documents) for the pretraining loss."""
  rows = ProseRows(BATCH, split="validation")
  return [next(rows) for _ in range(count)]


def pretraining_loss(model, params, batches) -> float:
  import jax
  fn = jax.jit(model.loss_fn)
  return float(np.mean([float(fn(params, b)[0]) for b in batches]))


def rollout_source(algorithm: str, ptx: bool = False, kl_coef: float = 0.05, seed: int = 0):
  """The RolloutData of a run: 64 rows a rollout (GRPO: 8 prompts x 8 samples)."""
  from jaxlm.adaptation import (AdaptiveKLController, GRPOAdvantages, PPOAdvantages, RolloutData,
                                generated_prompts)
  group = 1 if algorithm == "ppo" else 8
  advantages = (PPOAdvantages(kl_controller=AdaptiveKLController(coef=kl_coef, target=6.0, horizon=1000))
                if algorithm == "ppo" else GRPOAdvantages())
  ptx_fn = ProseRows if ptx else None
  return RolloutData(BATCH, prompts=generated_prompts([FAMILY], num_prompts=500), reward=reward(),
                     advantages=advantages, vocabulary=h.instruction_vocabulary(),
                     config=h.tiny_instruction_config(value_head=algorithm == "ppo"),
                     prompts_per_rollout=ROWS // group, samples_per_prompt=group, prompt_length=PROMPT_LENGTH,
                     response_length=RESPONSE_LENGTH, epochs=EPOCHS, ptx_data_fn=ptx_fn, seed=seed)


def held_out_reward(data, params, seed: int = 5) -> float:
  """Mean true reward of samples on HELD_OUT validation prompts, in rollout-shaped batches."""
  import jax
  from jaxlm.adaptation import generated_prompts
  from jaxlm.adaptation.rewards import Samples
  from jaxlm.inference.decoding import generate
  from jaxlm.vocabularies import until_eos
  prompts = generated_prompts([FAMILY], num_prompts=HELD_OUT, split="validation")
  scores = []
  for start in range(0, HELD_OUT, data.rows):
    chunk = prompts[start:start + data.rows]
    tokens, mask = data._tokenize([text for text, _ in chunk])
    out = generate(data.model, params, tokens, mask, config=data.decoding, rng=jax.random.key(seed + start))
    texts = [data.vocabulary.decode(until_eos(r, data.decoding.eos_id)) for r in np.asarray(out.tokens)]
    scores += list(data.reward(Samples([t for t, _ in chunk], texts, [e for _, e in chunk])))
  return float(np.mean(scores))


def logged(model_dir) -> list:
  """The records of MODEL_DIR/metrics.jsonl that have a loss (the logged step metrics)."""
  with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as f:
    return [r for r in map(json.loads, f) if "loss" in r]


class _Timed:
  """A data source's observe(), timestamped: the step times of the run."""

  def __init__(self, data):
    self.data, self.times = data, []

  def __getattr__(self, name):
    return getattr(self.data, name)

  def __iter__(self):
    return self

  def __next__(self):
    return next(self.data)

  def observe(self, state):
    self.times.append(time.perf_counter())
    return self.data.observe(state)


@functools.cache
def rl_run(algorithm: str, steps: int, learning_rate: float, ptx_coef: float = 0.0) -> dict:
  """One run of train() with PPOObjective (algorithm 'ppo', PPO-ptx with ptx_coef > 0) or
  GRPOObjective ('grpo'); returns the measurements the tests assert on."""
  from jaxlm.adaptation import GRPOObjective, PPOObjective
  from jaxlm.inference import decoding
  from jaxlm.training import adamw, constant, train
  h.use_compilation_cache()
  path = h.tiny_instruction_model()
  data = _Timed(rollout_source(algorithm, ptx=ptx_coef > 0))
  objective = PPOObjective(ptx_coef=ptx_coef) if algorithm == "ppo" else GRPOObjective(kl_coef=0.02)
  compiled = decoding._generate._cache_size()
  model_dir = tempfile.mkdtemp(prefix=f"rl_{algorithm}_")
  result = train(model_dir=model_dir, train_steps=steps, batch_size=BATCH,
                 config=data.model.config, data_fn=lambda **_: data, learning_rate=constant(learning_rate),
                 optimizer=functools.partial(adamw, weight_decay=0.0), objective=objective, init_from=path,
                 frozen_models={"reference": path}, **h.QUIET_RUN)
  compiles = decoding._generate._cache_size() - compiled
  reference = result.state.frozen_models["reference"]
  per_rollout = ROWS // BATCH * EPOCHS
  rollouts = result.history[::per_rollout]
  step_s = np.diff(data.times + [time.perf_counter()])
  generate_s = np.array([r["rollout/generate_s"] for r in rollouts])
  prepare_s = np.array([r["rollout/prepare_s"] for r in rollouts])
  out = {"before": held_out_reward(data, reference), "after": held_out_reward(data, result.state.params),
         "scores": [r["rollout/score"] for r in rollouts], "kl": [r["rollout/kl"] for r in rollouts],
         "kl_coef": [r.get("rollout/kl_coef") for r in rollouts], "history": result.history,
         "logged": logged(model_dir)[-1],
         "generate_compiles": compiles, "rollouts": data.rollouts,
         # steady state (the first rollout and step compile): seconds per rollout of 8 steps
         "rollout_s": float(step_s[per_rollout:].sum() / (len(rollouts) - 1)),
         "generate_s": float(generate_s[1:].mean()), "prepare_s": float(prepare_s[1:].mean())}
  out["update_s"] = out["rollout_s"] - out["generate_s"] - out["prepare_s"]
  if algorithm == "ppo":
    batches = pretraining_batches()
    model = data.model
    out["ptx_loss_before"] = pretraining_loss(model, reference, batches)
    out["ptx_loss_after"] = pretraining_loss(model, result.state.params, batches)
  if os.environ.get("JAXLM_TEST_VERBOSE"):
    print(algorithm, ptx_coef, {k: v for k, v in out.items() if k != "history"})
  return out
