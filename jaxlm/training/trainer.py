"""The trainer: `train()` runs the one train step (train_step.build_train_step) in a loop.

Read top to bottom, it is four named stages:
  _set_up     mesh -> data (first batch checked, then rewound) -> model, shardings and the
              step (compiled, memory-checked) -> checkpointer, metrics writer, spike detector
  _start      resume MODEL_DIR's latest good checkpoint, else step 0: fresh parameters,
              or train.init_from's, and the frozen models of train.frozen_models
  _run        the loop: preemption? -> k microbatches -> step -> spike? _roll_back :
              log, checkpoint, evaluate (train.eval_fn)
  _roll_back  restore the last good checkpoint before the spike, skip the batches since
gin: `train.*`; run files bind the t5x macros MODEL_DIR, TRAIN_STEPS, BATCH_SIZE, and
`train.data_fn` and `train.learning_rate` (required: no hidden defaults).

Batch sizes: the data source yields microbatches of BATCH_SIZE / num_microbatches rows
(global; each host gets its rows). A step consumes k microbatches, k = num_microbatches or
batch_schedule(step, tokens_seen) (a batch-size ramp); the objective's summed losses are
divided by the normalizer summed over all k, so the accumulated gradient equals the
big-batch gradient.

Data sources: data_fn(batch_size=ROWS, shard_index=HOST, num_shards=HOSTS) -> an iterator
of {feature: np.int32 [ROWS // HOSTS, length]}; with state()/restore() it resumes exactly,
without them the consumed batches are replayed. An on-policy source (RL rollouts,
jaxlm.adaptation.rollouts) also has observe(state): called with the current TrainState
before each step's batches are fetched, it returns {name: float} about the data the step
trains on (the same names every step), logged and averaged with the step's metrics.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import gin
import jax
import numpy as np
import optax

from jaxlm.models import TransformerConfig, build_model
from jaxlm.training import checkpointing, init_from as init_from_lib, metrics as metrics_lib
from jaxlm.training import partitioning, stability
from jaxlm.training.optimizers import adamw
from jaxlm.training.trainable import Trainable, merge, partition
from jaxlm.training.train_state import TrainState, mesh_context
from jaxlm.training.train_step import STEP_METRICS, TrainSetup, build_train_step


@dataclasses.dataclass
class TrainResult:
  state: TrainState
  history: list       # one dict per step run (step, loss, grad_norm, ...), rolled-back ones too
  events: list        # resume / rollback / nonfinite / preempted records
  preempted: bool = False
  tokens_seen: int = 0
  evals: list = dataclasses.field(default_factory=list)  # {'step', 'eval/<task>/<metric>': ...}
  model: Any = None   # the model wrapper train() built (score, decode or evaluate with it)


@dataclasses.dataclass
class _Run:
  """Everything the loop reads and updates."""
  setup: TrainSetup
  data: Any
  data_iter: Any
  micro: int
  schedule: Callable[[int, int], int]
  new_state: Callable[[], TrainState]
  ckpt: checkpointing.Checkpointer
  writer: metrics_lib.MetricsWriter
  detector: Optional[stability.LossSpikeDetector]
  throughput: metrics_lib.Throughput
  evaluate: Optional[Callable]
  compiled: dict
  step: int = 0
  tokens_seen: int = 0
  batches: int = 0
  rollbacks: int = 0
  events: list = dataclasses.field(default_factory=list)
  history: list = dataclasses.field(default_factory=list)
  evals: list = dataclasses.field(default_factory=list)

  def event(self, **record):
    self.events.append(record)
    self.writer.event(record)

  def meta(self) -> dict:
    return {"step": self.step, "tokens_seen": int(self.tokens_seen), "batches_consumed": int(self.batches),
            "data": self.data.state() if hasattr(self.data, "state") else None,
            "detector": self.detector.state() if self.detector else None, "rollbacks": self.rollbacks}

  def step_fn(self, k: int):
    if k not in self.compiled:
      self.compiled[k] = self.setup.compile(k)
    return self.compiled[k]


@gin.configurable
def train(model_dir: str = gin.REQUIRED,
          train_steps: int = gin.REQUIRED,
          batch_size: int = gin.REQUIRED,
          data_fn: Callable[..., Any] = gin.REQUIRED,
          learning_rate: Union[float, Callable] = gin.REQUIRED,
          config: Optional[TransformerConfig] = None,
          objective: Optional[Callable] = None,
          trainable: Optional[Trainable] = None,
          init_from: Optional[str] = None,
          init_from_allow_missing: Sequence[str] = (),
          frozen_models: Optional[Mapping[str, str]] = None,
          num_microbatches: int = 1,
          batch_schedule: Optional[Callable[[int, int], int]] = None,
          optimizer: Callable[..., optax.GradientTransformation] = adamw,
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
          memory_limit_bytes: Optional[int] = None,
          tensorboard: bool = True,
          progress_bar: bool = True) -> TrainResult:
  """Trains `config`'s model (default: TransformerConfig() as gin binds it) with `objective`
  (default: next-token cross-entropy) for `train_steps` steps, resuming from MODEL_DIR if it
  holds a checkpoint. Returns the final state, the per-step history, the events, the evals
  and the model.

  trainable: which parameters train (jaxlm.training.trainable.Trainable; default all).
  init_from: a jaxlm checkpoint or Hugging Face directory to start from (step 0, fresh
  optimizer); init_from_allow_missing: path patterns it may lack. frozen_models: {name:
  checkpoint or HF directory} of extra frozen trees shaped like the model (e.g. a reference
  model), passed to the objective as frozen[name] and saved with the state.
  memory_limit_bytes: the memory the step must fit in (default: the device's).
  eval_fn: a factory called once as eval_fn(model) -> fn(params, step) -> {'task/metric':
  value}, e.g. `train.eval_fn = @make_train_eval_fn` (jaxlm.evaluation.evaluator, SeqIO
  tasks); run every eval_every steps (0: never) and at the last step, logged to
  metrics.jsonl and TensorBoard as 'eval/<task>/<metric>'."""
  partitioning.initialize_distributed()
  run = _set_up(**locals())
  try:
    state = _start(run, model_dir)
    state, preempted = _run(run, state, train_steps, log_every, checkpoint_every, eval_every,
                            max_rollbacks, rollback_margin)
  finally:
    run.ckpt.close()
    run.writer.close()
  return TrainResult(state=state, history=run.history, events=run.events, preempted=preempted,
                     tokens_seen=run.tokens_seen, evals=run.evals, model=run.setup.model)


def _set_up(model_dir, train_steps, batch_size, data_fn, learning_rate, config, objective, trainable,
            init_from, init_from_allow_missing, frozen_models, num_microbatches, batch_schedule,
            optimizer, seed, mesh_fn, rules, keep_checkpoints, async_checkpoints, eval_fn,
            spike_detector, embedding_grad_shrink, memory_limit_bytes, tensorboard, progress_bar,
            **_) -> _Run:
  config = config if config is not None else TransformerConfig()
  config.validate()
  mesh = mesh_fn()
  if batch_size % num_microbatches:
    raise ValueError(f"BATCH_SIZE={batch_size} is not divisible by train.num_microbatches={num_microbatches}")
  micro = batch_size // num_microbatches
  partitioning.check_batch(mesh, micro, what=f"microbatch (BATCH_SIZE={batch_size} / "
                                               f"train.num_microbatches={num_microbatches})")
  data, data_iter, example = _open_data(data_fn, mesh, micro, config)
  model = build_model(config)
  shapes = model.param_shapes(example)

  @functools.cache
  def load(path: str, allow_missing: tuple = ()):
    """(tree, paths) of a checkpoint or HF directory matching the model; read at most once."""
    return init_from_lib.load_matching(path, shapes, config, allow_missing)

  allow_missing = tuple(init_from_allow_missing)

  def weights():
    """(init_from's (tree, paths) or None, {name: frozen model's (tree, paths)})."""
    return (load(init_from, allow_missing) if init_from else None,
            {name: load(path) for name, path in (frozen_models or {}).items()})

  ckpt = checkpointing.Checkpointer(model_dir, keep=keep_checkpoints, async_save=async_checkpoints)
  if not ckpt.steps():
    weights()  # a fresh run reads and checks its weights before compiling; a resumed one reads none
  added_only = trainable is not None and trainable.added_only
  tx = optimizer(learning_rate=learning_rate)
  length = example["decoder_target_tokens"].shape[-1]
  hint = (f"driven by BATCH_SIZE={batch_size}, train.num_microbatches={num_microbatches} ({micro} "
          f"rows a pass), length {length} (TASK_FEATURE_LENGTHS), TransformerConfig.remat_policy="
          f"{config.remat_policy!r}: lower BATCH_SIZE or the lengths, raise train.num_microbatches, "
          f"or set TransformerConfig.remat_policy='dots'")
  setup = build_train_step(model, tx, example, learning_rate=learning_rate, objective=objective,
                           trainable=trainable,
                           loaded=load(init_from, allow_missing)[1] if init_from and added_only else None,
                           frozen_models=tuple(frozen_models or ()), mesh=mesh, rules=rules,
                           embedding_grad_shrink=embedding_grad_shrink, seed=seed, memory_hint=hint,
                           memory_limit_bytes=memory_limit_bytes)
  logging.info("parameter shardings: %s", partitioning.describe(setup.shardings.params))

  def new_state() -> TrainState:
    """Step 0: fresh parameters, or init_from's, and the frozen models; the leaves a
    checkpoint lacks (init_from.ADDED_PARAMETERS: PEFT parameters, a value head) start fresh."""
    start, frozen = weights()

    @functools.cache
    def fresh():  # the parameters of a fresh run (the values init_state(rng) gives)
      with mesh_context(setup.mesh, setup.rules):
        init = jax.jit(setup.model.init, out_shardings=setup.shardings.params)
        return jax.device_get(init(jax.random.key(seed), setup.example))

    def completed(tree, loaded):
      if len(loaded) == len(setup.mask):
        return tree
      tree = merge(partition(fresh(), {n: n not in set(loaded) for n in setup.mask})[0], tree)
      return init_from_lib.init_added(tree, loaded, config, seed)

    frozen = {name: completed(*tree_and_paths) for name, tree_and_paths in frozen.items()}
    if start is None:
      return setup.init_state(jax.random.key(seed), frozen_models=frozen)
    return setup.init_state(params=completed(*start), frozen_models=frozen)

  schedule = batch_schedule or (lambda step, tokens: num_microbatches)
  run = _Run(setup=setup, data=data, data_iter=data_iter, micro=micro, schedule=schedule,
             new_state=new_state, compiled={}, ckpt=ckpt,
             writer=metrics_lib.MetricsWriter(model_dir, train_steps, tensorboard=tensorboard,
                                              progress_bar=progress_bar),
             detector=spike_detector() if spike_detector else None,
             throughput=metrics_lib.Throughput(model.flops_per_token(length), mesh.devices.size,
                                               metrics_lib.peak_flops_per_device()),
             evaluate=eval_fn(model) if eval_fn is not None else None)
  run.step_fn(int(schedule(0, 0)))  # compile (and check memory) before anything runs
  return run


def _open_data(data_fn, mesh, micro, config):
  """(source, iterator, first batch): the first batch is read to learn the shapes and check
  the token ids, then the source is rewound (or the batch replayed)."""
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
  return data, data_iter, example


def _start(run: _Run, model_dir: str) -> TrainState:
  """The latest readable checkpoint of MODEL_DIR (data, detector and counters too), else a
  new state. Resuming always wins over train.init_from."""
  if run.ckpt.half_written:
    run.event(event="half_written_checkpoints_removed", paths=run.ckpt.half_written)
  with mesh_context(run.setup.mesh, run.setup.rules):
    state, meta, restored_step, rejected = run.ckpt.restore_latest(run.setup.abstract)
  if rejected:
    run.event(event="corrupt_checkpoints_skipped", rejected=rejected, resumed_from=restored_step)
  if state is None:
    return run.new_state()
  run.tokens_seen, run.batches, run.rollbacks = meta["tokens_seen"], meta["batches_consumed"], meta["rollbacks"]
  if meta.get("data") and meta["data"][jax.process_index()] is not None and hasattr(run.data, "restore"):
    run.data.restore(meta["data"][jax.process_index()])
  else:  # a source without state(): replay its batches
    for _ in range(run.batches):
      next(run.data_iter)
  if run.detector:
    run.detector.restore(meta["detector"])
  run.event(event="resumed", step=restored_step, tokens_seen=run.tokens_seen)
  return state


def _run(run: _Run, state, train_steps, log_every, checkpoint_every, eval_every, max_rollbacks,
         rollback_margin):
  """Steps until train_steps (or a preemption); returns (state, preempted)."""
  run.step = int(jax.device_get(state.step))
  length = run.setup.example["decoder_target_tokens"].shape[-1]
  guard = checkpointing.PreemptionGuard()
  window, seen_k = [], set()
  try:
    while run.step < train_steps:
      if guard.should_stop(run.step):
        if run.step not in run.ckpt.steps():
          run.ckpt.save(run.step, state, run.meta(), force=True)
        run.ckpt.wait()
        run.event(event="preempted", step=run.step)
        return state, True

      k = int(run.schedule(run.step, run.tokens_seen))
      observed = run.data.observe(state) if hasattr(run.data, "observe") else {}  # on-policy data
      host_batches = [next(run.data_iter) for _ in range(k)]
      run.batches += k
      batch = partitioning.global_batch(run.setup.mesh, host_batches)
      with mesh_context(run.setup.mesh, run.setup.rules):
        state, m = run.step_fn(k)(state, batch)
      m = jax.device_get(m)
      run.step += 1
      loss = float(m["loss"])
      record = {"step": run.step, "loss": loss, "grad_norm": float(m["grad_norm"]),
                "learning_rate": float(m["learning_rate"]), "microbatches": k, "batch_size": k * run.micro,
                **observed}
      run.history.append(record)
      run.writer.step(run.step, loss)

      applied = bool(m["applied"])  # False: NaN/Inf loss or gradient, the step kept the old state
      verdict = run.detector.check(loss if applied else float("nan")) if run.detector else (
          stability.OK if applied else stability.NONFINITE)
      if verdict == stability.SPIKE:
        state = _roll_back(run, record, max_rollbacks, rollback_margin)
        window = []
        continue
      if verdict == stability.NONFINITE:
        run.event(event="nonfinite_step_skipped", step=run.step, loss=loss, grad_norm=record["grad_norm"])
      else:
        run.tokens_seen += int(m["num_tokens"])
      record["tokens_seen"] = run.tokens_seen

      run.throughput.step(k * run.micro * length, compiled=k not in seen_k)
      seen_k.add(k)
      objective_metrics = [key for key in m if key not in STEP_METRICS and key != "loss"]
      window.append(record | {key: float(m[key]) for key in objective_metrics})
      if run.step % log_every == 0 or run.step == train_steps:
        run.writer.write({"step": run.step,
                          **metrics_lib.mean_of(window, ("loss", "grad_norm", *objective_metrics, *observed)),
                          "learning_rate": record["learning_rate"], **run.throughput.report(),
                          "tokens_seen": run.tokens_seen, "batch_size": k * run.micro, "microbatches": k,
                          "rollbacks": run.rollbacks})
        window = []

      if run.step % checkpoint_every == 0 or run.step == train_steps:
        run.ckpt.save(run.step, state, run.meta(), force=run.step == train_steps)
      if run.evaluate is not None and (run.step == train_steps or (eval_every and run.step % eval_every == 0)):
        run.evals.append(metrics_lib.eval_record(run.step, run.evaluate(state.params, run.step)))
        run.writer.write(run.evals[-1])
  finally:
    guard.close()
  return state, False


def _roll_back(run: _Run, record: dict, max_rollbacks: int, rollback_margin: int) -> TrainState:
  """After a loss spike: the newest good checkpoint before it (or a new state), with the
  checkpoints after it deleted and the data batches since skipped (not replayed)."""
  run.rollbacks += 1
  if run.rollbacks > max_rollbacks:
    raise RuntimeError(f"loss spike at step {run.step} (loss {record['loss']}) after {max_rollbacks} "
                       f"rollbacks (train.max_rollbacks)")
  with mesh_context(run.setup.mesh, run.setup.rules):
    restored, meta, good, _ = run.ckpt.restore_latest(run.setup.abstract, before=run.step - rollback_margin)
  skipped = run.batches - (meta["batches_consumed"] if meta else 0)
  state = restored if restored is not None else run.new_state()
  run.tokens_seen = meta["tokens_seen"] if meta else 0
  run.ckpt.delete_after(good if good is not None else -1)
  run.step = int(jax.device_get(state.step))
  run.detector.reset_nonfinite()
  run.event(event="rollback", spike_step=record["step"], loss=record["loss"], restored_step=run.step,
            skipped_batches=skipped, rollbacks=run.rollbacks)
  return state


def _prepend(first, rest):
  yield first
  yield from rest
