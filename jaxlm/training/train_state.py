"""TrainState (step, params, optimizer state, frozen models) and its sharded creation.

Parameters are created directly in their shards: `jax.jit(model.init, out_shardings=...)`
never materialises a full copy on one device, and JAX's partitionable threefry RNG gives
the same values on 1 device and on any mesh. The optimizer state covers only the trained
parameters (`trainable.partition`); frozen ones stay in `params` without state.
"""
from __future__ import annotations

import contextlib
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxlm.training import partitioning
from jaxlm.training.trainable import partition


@flax.struct.dataclass
class TrainState:
  step: jax.Array    # int32 scalar: optimizer steps taken (skipped non-finite steps count too)
  params: Any        # the whole model tree (trained and frozen), sharded by the logical-axis rules
  opt_state: Any     # optax state of the trained parameters only, sharded like them
  frozen_models: Any = flax.struct.field(default_factory=dict)  # {name: params-shaped tree}


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules):
  """The context every trace of model code needs: the mesh (jax.set_mesh, which also makes
  flax's with_logical_constraint bind) and the logical-axis rules."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def state_shardings(model, optimizer: optax.GradientTransformation, batch, mesh: Mesh, rules,
                    mask: Mapping[str, bool], frozen_models: Sequence[str] = ()):
  """(TrainState of NamedShardings, TrainState of ShapeDtypeStructs with shardings).
  Frozen models are shaped and sharded like the model's parameters."""
  param_shapes = jax.eval_shape(model.init, jax.random.key(0), batch)
  param_axes = model.logical_axes(batch)
  trained_shapes, trained_axes = partition(param_shapes, mask)[0], partition(param_axes, mask)[0]
  opt_shapes = jax.eval_shape(optimizer.init, trained_shapes)
  opt_axes = partitioning.opt_state_logical_axes(opt_shapes, trained_axes, trained_shapes)
  param_shardings = partitioning.tree_shardings(param_axes, param_shapes, mesh, rules)
  shardings = TrainState(
      step=NamedSharding(mesh, P()), params=param_shardings,
      opt_state=partitioning.tree_shardings(opt_axes, opt_shapes, mesh, rules),
      frozen_models={name: param_shardings for name in frozen_models})
  shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=param_shapes,
                      opt_state=opt_shapes, frozen_models={name: param_shapes for name in frozen_models})
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          shapes, shardings)
  return shardings, abstract


def create_train_state(model, optimizer: optax.GradientTransformation, rng, batch, mesh: Mesh,
                       rules, shardings: TrainState, mask: Mapping[str, bool],
                       params=None, frozen_models: Optional[Mapping[str, Any]] = None) -> TrainState:
  """Step 0 and a fresh optimizer state, created in place on the mesh: from `params` when
  given (host or device arrays of the model's tree), else initialised from `rng`."""
  batch = {k: np.ones(v.shape, v.dtype) for k, v in dict(batch).items()}  # only shapes matter
  frozen_models = dict(frozen_models or {})

  def state_of(params, frozen):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(partition(params, mask)[0]), frozen_models=frozen)

  with mesh_context(mesh, rules):
    if params is None:
      return jax.jit(lambda r, f: state_of(model.init(r, batch), f), out_shardings=shardings)(
          rng, frozen_models)
    return jax.jit(state_of, out_shardings=shardings)(params, frozen_models)
