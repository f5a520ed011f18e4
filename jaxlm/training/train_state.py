"""TrainState (step, params, optimizer state) and its sharded creation.

Parameters are created directly in their shards: `jax.jit(model.init, out_shardings=...)`
never materialises a full copy on one device, and JAX's partitionable threefry RNG gives
the same values on 1 device and on any mesh.
"""
from __future__ import annotations

import contextlib
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxlm.training import partitioning


@flax.struct.dataclass
class TrainState:
  step: jax.Array    # int32 scalar: optimizer steps taken (skipped non-finite steps count too)
  params: Any        # float32 (param_dtype) tree, sharded by the logical-axis rules
  opt_state: Any     # optax state, sharded like the parameters it belongs to


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules):
  """The context every trace of model code needs: the mesh (jax.set_mesh, which also makes
  flax's with_logical_constraint bind) and the logical-axis rules."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def state_shardings(model, optimizer: optax.GradientTransformation, batch, mesh: Mesh, rules):
  """(TrainState of NamedShardings, TrainState of ShapeDtypeStructs with shardings)."""
  param_shapes = jax.eval_shape(model.init, jax.random.key(0), batch)
  param_axes = model.logical_axes(batch)
  opt_shapes = jax.eval_shape(optimizer.init, param_shapes)
  opt_axes = partitioning.opt_state_logical_axes(opt_shapes, param_axes, param_shapes)
  shardings = TrainState(
      step=NamedSharding(mesh, P()),
      params=partitioning.tree_shardings(param_axes, param_shapes, mesh, rules),
      opt_state=partitioning.tree_shardings(opt_axes, opt_shapes, mesh, rules))
  shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=param_shapes,
                      opt_state=opt_shapes)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          shapes, shardings)
  return shardings, abstract


def create_train_state(model, optimizer: optax.GradientTransformation, rng, batch, mesh: Mesh,
                       rules, shardings: TrainState) -> TrainState:
  """Initial parameters and optimizer state, created in place on the mesh."""
  batch = {k: np.ones(v.shape, v.dtype) for k, v in dict(batch).items()}  # only shapes matter

  def init(rng):
    params = model.init(rng, batch)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

  with mesh_context(mesh, rules):
    return jax.jit(init, out_shardings=shardings)(rng)
