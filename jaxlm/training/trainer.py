"""The trainer: one jitted, sharded `train_step` and the loop around it.

Read top to bottom:
  make_train_step  loss and gradients summed over microbatches (lax.scan), embedding-grad
                   shrink, optimizer update, non-finite guard, metrics. One function, jitted
                   once per step shape with in/out shardings from the logical-axis rules.
  train            mesh -> data -> state (fresh or resumed) -> loop:
                     preemption? -> batch (k microbatches from the batch schedule) -> step
                     -> spike? roll back : log, checkpoint, evaluate (train.eval_fn)
                   and a final checkpoint and evaluation. gin: `train.*`, run files bind
                   the t5x macros MODEL_DIR, TRAIN_STEPS, BATCH_SIZE (and the data source's).

Batch sizes: the data source yields microbatches of BATCH_SIZE / num_microbatches rows
(global; each host gets its rows). A step consumes k microbatches, k = num_microbatches or
batch_schedule(step, tokens_seen) (a batch-size ramp), and divides the summed token losses
by the weight sum of all k, so the accumulated gradient equals the big-batch gradient.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Optional, Union

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxlm.models import TransformerConfig, build_model
from jaxlm.training import checkpointing, metrics as metrics_lib, partitioning, stability
from jaxlm.training.optimizers import adamw
from jaxlm.training.schedules import warmup_cosine
from jaxlm.training.synthetic_data import SyntheticData
from jaxlm.training.train_state import TrainState, create_train_state, mesh_context, state_shardings


def make_train_step(model, optimizer: optax.GradientTransformation, learning_rate,
                    param_shardings=None, embedding_grad_shrink: float = 1.0, dropout_seed: int = 0):
  """train_step(state, batch) -> (state, metrics); batch leaves are [k, batch, length]."""

  def train_step(state: TrainState, batch: dict):
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights", (targets > 0).astype(jnp.int32))
    normalizer = jnp.maximum(weights.astype(jnp.float32).sum(), 1e-8)  # over all k microbatches
    use_dropout = model.config.dropout_rate > 0
    step_rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)

    def microbatch(grads, inputs):
      index, mb = inputs
      rng = jax.random.fold_in(step_rng, index) if use_dropout else None
      (_, m), g = jax.value_and_grad(model.loss_fn, has_aux=True)(
          state.params, mb, rng=rng, loss_normalizer=normalizer)
      return jax.tree.map(jnp.add, grads, g), m

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grads, per_micro = jax.lax.scan(microbatch, zeros, (jnp.arange(targets.shape[0]), batch))
    if param_shardings is not None:
      grads = jax.lax.with_sharding_constraint(grads, param_shardings)
    grads = stability.shrink_embedding_grads(grads, embedding_grad_shrink)

    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    loss, grad_norm, update_norm = per_micro["loss"].sum(), optax.tree.norm(grads), optax.tree.norm(updates)
    ok = stability.is_finite(loss, grad_norm, update_norm)  # NaN/Inf steps are never applied
    new_state = TrainState(step=state.step + 1,
                           params=stability.select_if_finite(ok, params, state.params),
                           opt_state=stability.select_if_finite(ok, opt_state, state.opt_state))

    weight_sum = per_micro["weight_sum"].sum()
    tokens = (targets != 0).sum()
    if "encoder_input_tokens" in batch:
      tokens = tokens + (batch["encoder_input_tokens"] != 0).sum()
    lr = learning_rate(_update_count(state)) if callable(learning_rate) else learning_rate
    out = {
        "loss": loss,
        "cross_entropy": per_micro["cross_entropy"].sum(),
        "z_loss": per_micro["z_loss"].sum(),
        "aux_loss": per_micro["aux_loss"].sum(),
        "accuracy": (per_micro["accuracy"] * per_micro["weight_sum"]).sum() / jnp.maximum(weight_sum, 1e-8),
        "weight_sum": weight_sum,
        "grad_norm": grad_norm,
        "update_norm": update_norm,
        "param_norm": optax.tree.norm(new_state.params),
        "learning_rate": jnp.asarray(lr, jnp.float32),
        "applied": ok,
        "num_tokens": tokens.astype(jnp.int32),
    }
    return new_state, out

  return train_step


def jit_train_step(step_fn, mesh, shardings, example: dict):
  """The step jitted with the state's shardings (donated) and batches split over the data
  axes; batch leaves gain a leading microbatch axis."""
  batch_shardings = {k: partitioning.batch_sharding(mesh, np.ndim(v) + 1) for k, v in example.items()}
  return jax.jit(step_fn, in_shardings=(shardings, batch_shardings),
                 out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=(0,))


def _update_count(state: TrainState):
  """Updates applied so far: the optimizer's own counter (skipped non-finite steps do not
  advance it, so the learning-rate schedule is keyed to it), else the step."""
  counts = optax.tree_utils.tree_get_all_with_path(state.opt_state, "count")
  return counts[0][1] if counts else state.step


@dataclasses.dataclass
class TrainResult:
  state: TrainState
  history: list       # one dict per step run (step, loss, grad_norm, ...), rolled-back ones too
  events: list        # resume / rollback / nonfinite / preempted records
  preempted: bool = False
  tokens_seen: int = 0
  evals: list = dataclasses.field(default_factory=list)  # {'step', 'eval/<task>/<metric>': ...}
  model: Any = None   # the model wrapper train() built (score, decode or evaluate with it)


def _meta(step, tokens_seen, batches, data, detector, rollbacks) -> dict:
  return {"step": int(step), "tokens_seen": int(tokens_seen), "batches_consumed": int(batches),
          "data": data.state() if hasattr(data, "state") else None,
          "detector": detector.state() if detector else None, "rollbacks": rollbacks}


@gin.configurable
def train(model_dir: str = gin.REQUIRED,
          train_steps: int = gin.REQUIRED,
          batch_size: int = gin.REQUIRED,
          config: Optional[TransformerConfig] = None,
          num_microbatches: int = 1,
          batch_schedule: Optional[Callable[[int, int], int]] = None,
          data_fn: Callable[..., Any] = SyntheticData,
          optimizer: Callable[..., optax.GradientTransformation] = adamw,
          learning_rate: Union[float, Callable] = None,
          seed: int = 0,
          mesh_fn: Callable = partitioning.make_mesh,
          rules: Optional[tuple] = None,
          checkpoint_every: int = 1000,
          keep_checkpoints: int = 3,
          async_checkpoints: bool = True,
          log_every: int = 100,
          eval_fn: Optional[Callable] = None,
          eval_every: int = 0,
          spike_detector: Optional[Callable[[], stability.LossSpikeDetector]] = stability.LossSpikeDetector,
          max_rollbacks: int = 5,
          rollback_margin: int = 0,
          embedding_grad_shrink: float = 1.0,
          tensorboard: bool = True,
          progress_bar: bool = True) -> TrainResult:
  """Trains `config`'s model for `train_steps` steps, resuming from MODEL_DIR if it holds a
  checkpoint. Returns the final state, the per-step history, the events and the evals.

  eval_fn: a factory called once as eval_fn(model) -> fn(params, step) -> {'task/metric':
  value}, e.g. `train.eval_fn = @make_train_eval_fn` (jaxlm.evaluation.evaluator, SeqIO
  tasks); run every eval_every steps (0: never) and at the last step, logged to
  metrics.jsonl and TensorBoard as 'eval/<task>/<metric>'."""
  partitioning.initialize_distributed()
  config = config if config is not None else TransformerConfig()
  model = build_model(config)
  rules = rules if rules is not None else partitioning.logical_axis_rules()
  if learning_rate is None:
    learning_rate = warmup_cosine(peak_value=3e-4, warmup_steps=min(2000, train_steps // 10),
                                  decay_steps=train_steps)
  tx = optimizer(learning_rate=learning_rate)

  # ---- mesh and data: every size checked before anything compiles ----
  mesh = mesh_fn()
  if batch_size % num_microbatches:
    raise ValueError(f"BATCH_SIZE={batch_size} is not divisible by num_microbatches={num_microbatches}")
  micro = batch_size // num_microbatches
  partitioning.check_batch(mesh, micro, what=f"microbatch (BATCH_SIZE={batch_size} / "
                                               f"num_microbatches={num_microbatches})")
  start, stop = partitioning.host_batch_rows(mesh, micro)
  data = data_fn(batch_size=micro, shard_index=start // (stop - start), num_shards=micro // (stop - start))
  data_iter = data if hasattr(data, "__next__") else iter(data)
  position = data.state() if hasattr(data, "state") else None
  example = next(data_iter)
  if position is not None:
    data.restore(position)
  else:
    data_iter = _prepend(example, data_iter)
  for key in ("decoder_target_tokens", "decoder_input_tokens", "encoder_input_tokens"):
    if key in example and int(np.max(example[key])) >= config.vocab_size:
      raise ValueError(f"the data has token id {int(np.max(example[key]))} in {key}, but "
                       f"TransformerConfig.vocab_size={config.vocab_size}")
  schedule = batch_schedule or (lambda step, tokens: num_microbatches)

  # ---- state: shardings from the rules, then resume or initialise ----
  shardings, abstract = state_shardings(model, tx, example, mesh, rules)
  logging.info("parameter shardings: %s", partitioning.describe(shardings.params))
  init_rng = jax.random.key(seed)
  new_state = lambda: create_train_state(model, tx, init_rng, example, mesh, rules, shardings)
  ckpt = checkpointing.Checkpointer(model_dir, keep=keep_checkpoints, async_save=async_checkpoints)
  writer = metrics_lib.MetricsWriter(model_dir, train_steps, tensorboard=tensorboard,
                                     progress_bar=progress_bar)
  detector = spike_detector() if spike_detector else None
  events, history, evals = [], [], []

  def event(**record):
    events.append(record)
    writer.event(record)

  if ckpt.half_written:
    event(event="half_written_checkpoints_removed", paths=ckpt.half_written)
  with mesh_context(mesh, rules):
    state, meta, restored_step, rejected = ckpt.restore_latest(abstract)
  if rejected:
    event(event="corrupt_checkpoints_skipped", rejected=rejected, resumed_from=restored_step)
  tokens_seen = batches = rollbacks = 0
  if state is None:
    state = new_state()
  else:
    tokens_seen, batches, rollbacks = meta["tokens_seen"], meta["batches_consumed"], meta["rollbacks"]
    if meta.get("data") and meta["data"][jax.process_index()] is not None and hasattr(data, "restore"):
      data.restore(meta["data"][jax.process_index()])
    else:  # a source without state(): replay its batches
      for _ in range(batches):
        next(data_iter)
    if detector:
      detector.restore(meta["detector"])
    event(event="resumed", step=restored_step, tokens_seen=tokens_seen)
  step = int(jax.device_get(state.step))

  # ---- the compiled step ----
  step_fn = make_train_step(model, tx, learning_rate, shardings.params, embedding_grad_shrink, seed)
  train_step = jit_train_step(step_fn, mesh, shardings, example)
  length = example["decoder_target_tokens"].shape[-1]
  throughput = metrics_lib.Throughput(model.flops_per_token(length), mesh.devices.size,
                                      metrics_lib.peak_flops_per_device())
  evaluate = eval_fn(model) if eval_fn is not None else None

  # ---- the loop ----
  guard = checkpointing.PreemptionGuard()
  preempted, window, compiled_for = False, [], set()
  try:
    while step < train_steps:
      if guard.should_stop(step):
        preempted = True
        if step not in ckpt.steps():
          ckpt.save(step, state, _meta(step, tokens_seen, batches, data, detector, rollbacks), force=True)
        ckpt.wait()
        event(event="preempted", step=step)
        break

      k = int(schedule(step, tokens_seen))
      host_batches = [next(data_iter) for _ in range(k)]
      batches += k
      batch = partitioning.global_batch(mesh, host_batches)
      with mesh_context(mesh, rules):
        state, m = train_step(state, batch)
      m = jax.device_get(m)
      step += 1
      loss = float(m["loss"])
      record = {"step": step, "loss": loss, "grad_norm": float(m["grad_norm"]),
                "learning_rate": float(m["learning_rate"]), "microbatches": k, "batch_size": k * micro}
      history.append(record)
      writer.step(step, loss)

      applied = bool(m["applied"])  # False: NaN/Inf loss or gradient, the step kept the old state
      verdict = detector.check(loss if applied else float("nan")) if detector else (
          stability.OK if applied else stability.NONFINITE)
      if verdict == stability.SPIKE:
        rollbacks += 1
        if rollbacks > max_rollbacks:
          raise RuntimeError(f"loss spike at step {step} (loss {loss}) after {max_rollbacks} rollbacks")
        with mesh_context(mesh, rules):
          restored, meta, good, _ = ckpt.restore_latest(abstract, before=step - rollback_margin)
        skipped = batches - (meta["batches_consumed"] if meta else 0)
        state = restored if restored is not None else new_state()
        tokens_seen = meta["tokens_seen"] if meta else 0
        ckpt.delete_after(good if good is not None else -1)
        step = int(jax.device_get(state.step))
        detector.reset_nonfinite()
        event(event="rollback", spike_step=record["step"], loss=loss, restored_step=step,
              skipped_batches=skipped, rollbacks=rollbacks)
        window = []
        continue
      if verdict == stability.NONFINITE:
        event(event="nonfinite_step_skipped", step=step, loss=loss, grad_norm=record["grad_norm"])
      else:
        tokens_seen += int(m["num_tokens"])
      record["tokens_seen"] = tokens_seen

      throughput.step(k * micro * length, compiled=k not in compiled_for)
      compiled_for.add(k)
      window.append(record | {key: float(m[key]) for key in ("accuracy", "z_loss", "aux_loss")})
      if step % log_every == 0 or step == train_steps:
        writer.write({"step": step,
                      **metrics_lib.mean_of(window, ("loss", "grad_norm", "accuracy", "z_loss", "aux_loss")),
                      "learning_rate": record["learning_rate"], **throughput.report(),
                      "tokens_seen": tokens_seen, "batch_size": k * micro, "microbatches": k,
                      "rollbacks": rollbacks})
        window = []

      if step % checkpoint_every == 0 or step == train_steps:
        ckpt.save(step, state, _meta(step, tokens_seen, batches, data, detector, rollbacks),
                  force=step == train_steps)
      if evaluate is not None and (step == train_steps or (eval_every and step % eval_every == 0)):
        evals.append(metrics_lib.eval_record(step, evaluate(state.params, step)))
        writer.write(evals[-1])
  finally:
    guard.close()
    ckpt.close()
    writer.close()
  return TrainResult(state=state, history=history, events=events, preempted=preempted,
                     tokens_seen=tokens_seen, evals=evals, model=model)


def _prepend(first, rest):
  yield first
  yield from rest
