"""The one train step, and `build_train_step`: everything a run needs to take steps.

make_train_step   objective and gradients summed over microbatches (lax.scan), divided by
                  the summed normalizer, embedding-grad shrink, optimizer update of the
                  trained parameters only, non-finite guard, metrics.
build_train_step  model, mesh, shardings, abstract state, state creation and the jitted
                  step (donated state, batches split over the data axes), compiled per
                  microbatch count with the memory check. trainer.train, the throughput
                  benchmark and the tests all get their step from here.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxlm.models import TransformerConfig, build_model
from jaxlm.training import memory, partitioning, stability
from jaxlm.training.objectives import NextTokenObjective
from jaxlm.training.trainable import Trainable, merge, partition
from jaxlm.training.train_state import TrainState, create_train_state, mesh_context, state_shardings


def make_train_step(model, optimizer: optax.GradientTransformation, learning_rate,
                    objective: Optional[Callable] = None, mask: Optional[Mapping[str, bool]] = None,
                    param_shardings=None, embedding_grad_shrink: float = 1.0, dropout_seed: int = 0):
  """train_step(state, batch) -> (state, metrics); batch leaves are [k, rows, length].

  metrics: 'loss' and every metric of the objective, each summed over the k microbatches
  and divided by the summed normalizer; 'normalizer', grad/update/param norms, the learning
  rate, 'applied' (False: a NaN/Inf step, not applied) and 'num_tokens' (non-padding
  decoder targets and encoder inputs)."""
  objective = objective or NextTokenObjective()
  use_dropout = model.config.dropout_rate > 0

  def train_step(state: TrainState, batch: dict):
    step_mask = mask if mask is not None else Trainable().mask(state.params)
    trained, frozen_params = partition(state.params, step_mask)
    frozen = {"params": frozen_params, **state.frozen_models}
    step_rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)

    def loss_of(params, mb, rng):
      loss, normalizer, metrics = objective(model, params, frozen, mb, rng)
      return loss, (normalizer, metrics)

    def microbatch(grads, inputs):
      index, mb = inputs
      rng = jax.random.fold_in(step_rng, index) if use_dropout else None
      (loss, (normalizer, metrics)), g = jax.value_and_grad(loss_of, has_aux=True)(trained, mb, rng)
      return jax.tree.map(jnp.add, grads, g), {"loss": loss, "normalizer": normalizer, **metrics}

    k = jax.tree.leaves(batch)[0].shape[0]
    grads, per_micro = jax.lax.scan(microbatch, jax.tree.map(jnp.zeros_like, trained),
                                    (jnp.arange(k), batch))
    sums = jax.tree.map(lambda x: x.sum(0), per_micro)
    normalizer = jnp.maximum(sums.pop("normalizer").astype(jnp.float32), 1e-8)
    grads = jax.tree.map(lambda g: g / normalizer.astype(g.dtype), grads)
    if param_shardings is not None:
      grads = jax.lax.with_sharding_constraint(grads, partition(param_shardings, step_mask)[0])
    grads = stability.shrink_embedding_grads(grads, embedding_grad_shrink)

    updates, opt_state = optimizer.update(grads, state.opt_state, trained)
    params = merge(optax.apply_updates(trained, updates), frozen_params)
    loss, grad_norm, update_norm = sums["loss"] / normalizer, optax.tree.norm(grads), optax.tree.norm(updates)
    ok = stability.is_finite(loss, grad_norm, update_norm)  # NaN/Inf steps are never applied
    new_state = state.replace(step=state.step + 1,
                              params=stability.select_if_finite(ok, params, state.params),
                              opt_state=stability.select_if_finite(ok, opt_state, state.opt_state))
    lr = learning_rate(_update_count(state)) if callable(learning_rate) else learning_rate
    out = {key: value / normalizer for key, value in sums.items()}
    out.update(normalizer=normalizer, grad_norm=grad_norm, update_norm=update_norm,
               param_norm=optax.tree.norm(new_state.params), learning_rate=jnp.asarray(lr, jnp.float32),
               applied=ok, num_tokens=_num_tokens(batch))
    return new_state, out

  return train_step


STEP_METRICS = ("normalizer", "grad_norm", "update_norm", "param_norm", "learning_rate", "applied",
                "num_tokens")


def _num_tokens(batch) -> jax.Array:
  tokens = jnp.zeros((), jnp.int32)
  for key in ("decoder_target_tokens", "encoder_input_tokens"):
    if key in batch:
      tokens = tokens + (batch[key] != 0).sum().astype(jnp.int32)
  return tokens


def _update_count(state: TrainState):
  """Updates applied so far: the optimizer's own counter (skipped non-finite steps do not
  advance it, so the learning-rate schedule is keyed to it), else the step."""
  counts = optax.tree_utils.tree_get_all_with_path(state.opt_state, "count")
  return counts[0][1] if counts else state.step


@dataclasses.dataclass
class TrainSetup:
  """What build_train_step returns. `step(state, batch)` is the jitted step; `compile(k)`
  gives it compiled for k microbatches, after checking that it fits in device memory."""
  model: Any
  optimizer: optax.GradientTransformation
  mesh: Any
  rules: tuple
  mask: dict
  shardings: TrainState
  abstract: TrainState
  example: dict
  step: Callable
  memory_hint: str = ""
  memory_limit_bytes: Optional[int] = None

  def init_state(self, rng=None, params=None, frozen_models=None) -> TrainState:
    """A step-0 state from `params` (any arrays of the model's tree), else from `rng`."""
    rng = jax.random.key(0) if rng is None else rng
    return create_train_state(self.model, self.optimizer, rng, self.example, self.mesh, self.rules,
                              self.shardings, self.mask, params=params, frozen_models=frozen_models)

  def batch_spec(self, k: int) -> dict:
    """Abstract global batch of k microbatches, with the shardings the step expects."""
    spec = lambda v: jax.ShapeDtypeStruct(
        (k, v.shape[0] * jax.process_count(), *v.shape[1:]), v.dtype,  # as partitioning.global_batch
        sharding=partitioning.batch_sharding(self.mesh, v.ndim + 1))
    return {key: spec(v) for key, v in self.example.items()}

  def lower(self, k: int = 1):
    with mesh_context(self.mesh, self.rules):
      return self.step.lower(self.abstract, self.batch_spec(k))

  def compile(self, k: int = 1):
    """The step compiled for k microbatches; raises memory.DoesNotFit before any step runs
    when its memory estimate exceeds the device's."""
    compiled = self.lower(k).compile()
    memory.check_fits(compiled, self.mesh, self.memory_hint, self.memory_limit_bytes)
    return compiled


def build_train_step(config: Union[TransformerConfig, Any], optimizer: optax.GradientTransformation,
                     example: Mapping[str, np.ndarray], *, learning_rate,
                     objective: Optional[Callable] = None, trainable: Optional[Trainable] = None,
                     loaded: Optional[Sequence[str]] = None, frozen_models: Sequence[str] = (),
                     mesh=None, rules=None, embedding_grad_shrink: float = 1.0, seed: int = 0,
                     memory_hint: str = "", memory_limit_bytes: Optional[int] = None) -> TrainSetup:
  """The model (from `config`, or a model wrapper as is), the mesh (default: all devices,
  data parallel) and rules, the trained-parameter mask (`trainable`; `loaded` = the paths
  init_from filled), shardings and abstract state, and the jitted step for batches shaped
  like `example` (one host's microbatch, leaves [rows, length])."""
  model = build_model(config) if isinstance(config, TransformerConfig) else config
  mesh = mesh if mesh is not None else partitioning.make_mesh()
  rules = rules if rules is not None else partitioning.logical_axis_rules()
  example = {k: np.asarray(v) for k, v in example.items()}
  shapes = model.param_shapes(example)
  mask = (trainable or Trainable()).mask(shapes, loaded)
  shardings, abstract = state_shardings(model, optimizer, example, mesh, rules, mask, frozen_models)
  step_fn = make_train_step(model, optimizer, learning_rate, objective, mask, shardings.params,
                            embedding_grad_shrink, seed)
  batch_shardings = {k: partitioning.batch_sharding(mesh, np.ndim(v) + 1) for k, v in example.items()}
  step = jax.jit(step_fn, in_shardings=(shardings, batch_shardings),
                 out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=(0,))
  return TrainSetup(model=model, optimizer=optimizer, mesh=mesh, rules=rules, mask=mask,
                    shardings=shardings, abstract=abstract, example=example, step=step,
                    memory_hint=memory_hint, memory_limit_bytes=memory_limit_bytes)
