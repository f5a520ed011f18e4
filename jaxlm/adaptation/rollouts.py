"""On-policy data for RL (PPO, GRPO): a data source of the one trainer that samples its
batches from the policy being trained.

`RolloutData` is a `train.data_fn`. The trainer calls its `observe(state)` before each
step's batches (jaxlm.training.trainer), which hands it the current parameters and the
frozen reference. When its queue is empty it makes a rollout:

  prompts     prompts_per_rollout prompts (generated tasks with their known answers, or a
              JSONL file), each repeated samples_per_prompt times (GRPO's groups, adjacent)
  generate    responses sampled with jaxlm's KV-cache decoder (decoding.generate) at one
              fixed shape, [rows, prompt_length] -> [rows, response_length], so the
              decoder compiles once
  score       reward(Samples) -> [rows] (jaxlm.adaptation.rewards)
  log-probs   one forward pass of the policy (log pi_old per response token, and the value
              head for PPO) and one of the reference (log pi_ref), each compiled once
  targets     `advantages(rollout)`: PPO's KL-penalised rewards, GAE and whitening
              (ppo.PPOAdvantages) or GRPO's group-normalised advantages
              (grpo.GRPOAdvantages), aligned with the decoder targets
then serves `epochs` shuffled passes over the rollout in minibatches of the trainer's
batch rows: one train step each. With ptx_data_fn each minibatch also carries pretraining
rows under 'ptx_*' keys (PPO-ptx).

Row layout: the prompt left-padded to prompt_length (BOS first, decoder_segment_ids 0 on
the padding, positions from 0 at BOS) followed by the response, inputs/targets shifted by
one: length prompt_length + response_length - 1; decoder_loss_weights are 1 on the
response tokens (EOS included) and every response starts at the same column.

observe() returns the last rollout's metrics, logged with the step's: rollout/score (mean
reward), rollout/kl (mean per-response sum of log pi_old - log pi_ref), response_tokens,
eos_fraction, generate_s and prepare_s (seconds generating; scoring, log-probs and
targets), and the advantage estimator's (kl_coef, ...). state()/restore() resume at the
rollout count (a rollout cut by a preemption is sampled again from the restored policy).
The first batch read before any observe() is zeros of the right shapes: the trainer reads
one batch to learn the shapes and then rewinds. One host (num_shards=1), any devices.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import gin
import jax
import numpy as np

from jaxlm.adaptation.ppo import PTX_PREFIX, policy_outputs
from jaxlm.adaptation.rewards import Samples
from jaxlm.data import generated_tasks, instructions
from jaxlm.inference.decoding import DecodeConfig, generate, left_pad
from jaxlm.inference.infer import tokenize_prompts
from jaxlm.jsonl import FormatError, read_jsonl
from jaxlm.models import TransformerConfig, build_model
from jaxlm.vocabularies import get_vocabulary, until_eos

Prompt = Tuple[str, Mapping[str, Any]]  # (prompt text, the example's fields)
FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids",
            "decoder_positions", "decoder_causal_attention")


# ---- prompts ----
@gin.configurable
def generated_prompts(families: Sequence[str] = gin.REQUIRED, num_prompts: int = 1000, split: str = "train",
                      template: int = 0, chat: Optional[instructions.ChatTemplate] = None,
                      seed: int = 0) -> List[Prompt]:
  """num_prompts prompts per family of jaxlm.data.generated_tasks, worded by the family's
  template number `template` (0: the direct one), as a chat turn with `chat`; each with
  its example (the known answer in 'output'). Families alternate."""
  per_family = []
  for family in families:
    examples = generated_tasks.examples(family, num_prompts, split, seed)  # checks the name
    templates = generated_tasks.FAMILIES[family].templates
    if not 0 <= template < len(templates):
      raise ValueError(f"generated_prompts.template={template}: {family!r} has {len(templates)} templates")
    pairs = instructions.template_pairs(examples, templates[template:template + 1], family, chat=chat)
    per_family.append([(prompt, {**example, "family": family}) for (prompt, _), example in zip(pairs, examples)])
  return [row for rows in zip(*per_family) for row in rows]


@gin.configurable
def jsonl_prompts(path: str = gin.REQUIRED) -> List[Prompt]:
  """The rows of a JSONL file: 'prompt' (or 'inputs') is the prompt, the other fields the
  example (e.g. 'answer' for RuleReward's exact_answer). A bad line raises FormatError
  naming the file and line."""
  prompts = []
  for n, row in read_jsonl(path):
    key = "prompt" if "prompt" in row else "inputs" if "inputs" in row else None
    if key is None or not isinstance(row[key], str):
      raise FormatError(path, n, f"no string 'prompt' (or 'inputs') field; have {sorted(row)}")
    prompts.append((row[key], {k: v for k, v in row.items() if k != key}))
  if not prompts:
    raise ValueError(f"jsonl_prompts.path={path!r} has no prompts")
  return prompts


# ---- one rollout ----
@dataclasses.dataclass
class Rollout:
  """A scored rollout: decoder rows and per-token arrays [rows, L] (old_logprobs,
  ref_logprobs, old_values), scores [rows], and the columns of the responses."""
  batch: dict
  scores: np.ndarray
  response: slice
  group_size: int

  @property
  def mask(self) -> np.ndarray:
    return self.batch["decoder_loss_weights"][:, self.response]

  def tokens(self, key: str) -> np.ndarray:
    """batch[key] at the response columns: [rows, response_length]."""
    return self.batch[key][:, self.response]

  def place(self, values: np.ndarray) -> np.ndarray:
    """Response-aligned [rows, response_length] values as [rows, L] (0 at the prompt)."""
    out = np.zeros(self.batch["decoder_loss_weights"].shape, np.float32)
    out[:, self.response] = values
    return out


def rollout_rows(prompt, prompt_mask, responses, lengths) -> dict:
  """Decoder rows (numpy [rows, P + N - 1]) of right-padded prompts [rows, P] (BOS first)
  and responses [rows, N] of `lengths` tokens; the layout of the module docstring."""
  tokens, segments, positions, prompt_lengths = (np.asarray(x) for x in left_pad(prompt, prompt_mask))
  n = responses.shape[1]
  in_response = (np.arange(n)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
  seq = np.concatenate([tokens, np.asarray(responses, np.int32) * in_response], 1)
  real = np.concatenate([segments, in_response], 1)
  pos = np.concatenate([positions, prompt_lengths[:, None] + np.arange(n)[None]], 1).astype(np.int32)
  weights = np.concatenate([np.zeros((len(seq), tokens.shape[1] - 1), np.float32), in_response], 1)
  return {"decoder_input_tokens": seq[:, :-1], "decoder_target_tokens": seq[:, 1:],
          "decoder_loss_weights": weights.astype(np.float32), "decoder_segment_ids": real[:, :-1],
          "decoder_positions": pos[:, :-1] * real[:, :-1],
          "decoder_causal_attention": np.concatenate([segments, 0 * in_response], 1)[:, :-1]}


def _forward(model, needs_values: bool):
  """jitted (params, rows) -> (log pi [rows, L], values [rows, L] or zeros)."""
  def fn(params, batch):
    out = policy_outputs(model, params, batch, values=needs_values)
    return out.logprobs, out.values if needs_values else 0.0 * out.logprobs
  return jax.jit(fn)


@gin.configurable
class RolloutData:
  """The on-policy data source of the module docstring (a train.data_fn).

  batch_size: rows per minibatch (the trainer passes BATCH_SIZE / num_microbatches); the
  rollout's prompts_per_rollout * samples_per_prompt rows must split into them.
  prompts: a list of (text, example) (generated_prompts, jsonl_prompts), drawn in a
  seeded order, pass after pass. reward: jaxlm.adaptation.rewards. advantages:
  ppo.PPOAdvantages or grpo.GRPOAdvantages. vocabulary: the policy's ('byte', a
  SentencePiece path or a vocabulary object). config: the policy (default:
  TransformerConfig() as gin binds it, like train's). decoding: DecodeConfig (default:
  sampling at temperature 1; max_new_tokens is response_length). reference: the
  train.frozen_models entry of the reference. ptx_data_fn: a data_fn of pretraining rows
  (e.g. DataPipeline), ptx_batch_size rows per minibatch (default batch_size)."""

  def __init__(self, batch_size: int, shard_index: int = 0, num_shards: int = 1, *,
               prompts: Sequence[Prompt] = gin.REQUIRED, reward: Callable = gin.REQUIRED,
               advantages: Any = gin.REQUIRED, vocabulary: Any = gin.REQUIRED,
               config: Optional[TransformerConfig] = None, prompts_per_rollout: int = 16,
               samples_per_prompt: int = 1, prompt_length: int = 64, response_length: int = 16,
               decoding: Optional[DecodeConfig] = None, epochs: int = 4, reference: str = "reference",
               ptx_data_fn: Optional[Callable] = None, ptx_batch_size: Optional[int] = None, seed: int = 0):
    if num_shards != 1:
      raise ValueError(f"RolloutData samples on one host; the run has {num_shards} data shards (hosts)")
    if not prompts:
      raise ValueError("RolloutData.prompts is empty")
    rows = prompts_per_rollout * samples_per_prompt
    if rows % batch_size:
      raise ValueError(f"RolloutData.prompts_per_rollout={prompts_per_rollout} x samples_per_prompt="
                       f"{samples_per_prompt} = {rows} rollout rows do not split into minibatches of "
                       f"{batch_size} rows (BATCH_SIZE / train.num_microbatches)")
    if epochs < 1 or prompt_length < 2 or response_length < 1:
      raise ValueError(f"RolloutData: epochs={epochs} >= 1, prompt_length={prompt_length} >= 2 and "
                       f"response_length={response_length} >= 1 needed")
    self.model = build_model(config if config is not None else TransformerConfig())
    if self.model.config.arch == "encoder_decoder":
      raise ValueError("RolloutData samples from decoders; TransformerConfig.arch='encoder_decoder'")
    if advantages.needs_values and not self.model.config.value_head:
      raise ValueError(f"{type(advantages).__name__} needs a value head: set TransformerConfig.value_head=True")
    decoding = decoding or DecodeConfig(method="sample")
    if decoding.method == "beam":
      raise ValueError("RolloutData.decoding.method='beam': RL needs samples ('sample', or 'greedy')")
    self.decoding = dataclasses.replace(decoding, max_new_tokens=response_length)
    self.prompts, self.reward, self.advantages = list(prompts), reward, advantages
    self.vocabulary = get_vocabulary(vocabulary)
    self.batch_size, self.rows, self.group_size, self.epochs = batch_size, rows, samples_per_prompt, epochs
    self.prompts_per_rollout = prompts_per_rollout
    self.prompt_length, self.response_length = prompt_length, response_length
    self.reference_name, self.seed = reference, seed
    self.ptx = self.ptx_iter = None
    if ptx_data_fn is not None:
      self.ptx = ptx_data_fn(batch_size=ptx_batch_size or batch_size, shard_index=0, num_shards=1)
      self.ptx_iter = self.ptx if hasattr(self.ptx, "__next__") else iter(self.ptx)
    self._policy = _forward(self.model, advantages.needs_values)
    self._reference = _forward(self.model, False)
    self.rollouts = self.prompts_drawn = 0
    self.params = self.reference = None
    self.queue: List[np.ndarray] = []
    self.current: Optional[dict] = None
    self.metrics: dict = {}

  # ---- the trainer's protocol ----
  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self.params is None:
      return self._example()
    if not self.queue:
      self._collect()
    rows = self.queue.pop(0)
    batch = {k: v[rows] for k, v in self.current.items()}
    if self.ptx_iter is not None:
      batch.update({PTX_PREFIX + k: v for k, v in next(self.ptx_iter).items()})
    return batch

  def observe(self, state) -> dict:
    """Takes the current parameters and the reference from the TrainState; makes a new
    rollout when the last one is used up; returns its metrics."""
    if self.reference_name not in state.frozen_models:
      raise ValueError(f"RolloutData needs the frozen reference model: train.frozen_models = "
                       f"{{{self.reference_name!r}: <SFT checkpoint>}} (RolloutData.reference)")
    self.params, self.reference = state.params, state.frozen_models[self.reference_name]
    if not self.queue:
      self._collect()
    return dict(self.metrics)

  def state(self) -> dict:
    return {"rollouts": self.rollouts, "prompts_drawn": self.prompts_drawn,
            "advantages": self.advantages.state(),
            "ptx": self.ptx.state() if hasattr(self.ptx, "state") else None}

  def restore(self, state: Mapping[str, Any]) -> None:
    self.rollouts, self.prompts_drawn = int(state["rollouts"]), int(state["prompts_drawn"])
    self.advantages.restore(state["advantages"])
    if state.get("ptx") is not None and hasattr(self.ptx, "restore"):
      self.ptx.restore(state["ptx"])
    self.queue, self.current = [], None

  # ---- rollouts ----
  def _draw(self) -> List[Prompt]:
    """The next prompts_per_rollout prompts: a seeded shuffle of the list, pass after pass."""
    out = []
    for i in range(self.prompts_drawn, self.prompts_drawn + self.prompts_per_rollout):
      order = np.random.default_rng([self.seed, i // len(self.prompts)]).permutation(len(self.prompts))
      out.append(self.prompts[order[i % len(self.prompts)]])
    self.prompts_drawn += self.prompts_per_rollout
    return out

  def _tokenize(self, texts: Sequence[str]):
    prompt, mask, _ = tokenize_prompts(self.model, self.vocabulary, texts, add_eos=False,
                                       prompt_bucket=self.prompt_length, max_prompt_length=self.prompt_length)
    return prompt, mask

  def _collect(self) -> None:
    start = time.perf_counter()
    chosen = [p for p in self._draw() for _ in range(self.group_size)]
    prompt, mask = self._tokenize([text for text, _ in chosen])
    rng = jax.random.fold_in(jax.random.key(self.seed), self.rollouts)
    out = generate(self.model, self.params, prompt, mask, config=self.decoding, rng=rng)
    responses, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    generated = time.perf_counter()
    batch = rollout_rows(prompt, mask, responses, lengths)
    texts = [self.vocabulary.decode(until_eos(r, self.decoding.eos_id)) for r in responses]
    samples = Samples(prompts=[t for t, _ in chosen], responses=texts, examples=[e for _, e in chosen],
                      batch=batch, model=self.model, params=self.params, vocabulary=self.vocabulary)
    scores = np.asarray(self.reward(samples), np.float32)
    logprobs, values = (np.asarray(x, np.float32) for x in self._policy(self.params, batch))
    ref_logprobs = np.asarray(self._reference(self.reference, batch)[0], np.float32)
    width = prompt.shape[1]
    per_token = {"old_logprobs": logprobs, "ref_logprobs": ref_logprobs, "old_values": values}
    rollout = Rollout(batch={**batch, **per_token}, scores=scores, group_size=self.group_size,
                      response=slice(width - 1, width - 1 + self.response_length))
    targets, extra = self.advantages(rollout)
    rollout.batch.update({k: rollout.place(v) for k, v in targets.items()})
    self.current = {k: rollout.batch[k] for k in (*self._features(), *self.advantages.keys)}
    order = np.random.default_rng([self.seed, self.rollouts, 1])
    self.queue = [rows for _ in range(self.epochs)
                  for rows in np.split(order.permutation(self.rows), self.rows // self.batch_size)]
    self.rollouts += 1
    response_mask = rollout.mask
    kl = ((rollout.tokens("old_logprobs") - rollout.tokens("ref_logprobs")) * response_mask).sum(1)
    self.metrics = {"rollout/score": float(scores.mean()), "rollout/kl": float(kl.mean()),
                    "rollout/response_tokens": float(response_mask.sum(1).mean()),
                    "rollout/eos_fraction": float((responses == self.decoding.eos_id).any(1).mean()),
                    "rollout/generate_s": generated - start,
                    "rollout/prepare_s": time.perf_counter() - generated,
                    **{f"rollout/{k}": float(v) for k, v in extra.items()}}
    self.samples = samples  # the last rollout's texts, for inspection

  def _features(self) -> Tuple[str, ...]:
    return FEATURES if self.model.config.arch == "prefix_decoder" else FEATURES[:-1]

  def _example(self) -> dict:
    """Zeros shaped like a minibatch (what the trainer reads before observe())."""
    length = self.prompt_length + self.response_length - 1
    batch = {k: np.zeros((self.batch_size, length), np.float32 if k == "decoder_loss_weights" else np.int32)
             for k in self._features()}
    batch.update({k: np.zeros((self.batch_size, length), np.float32) for k in self.advantages.keys})
    if self.ptx_iter is not None:
      batch.update({PTX_PREFIX + k: v for k, v in next(self.ptx_iter).items()})
    return batch
