"""Parameters with logical axis names, and activation sharding constraints: the base every
module of jaxlm.models builds on."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = jax.nn.initializers.Initializer


def dtype_of(name: str):
  return jnp.dtype(name)


def param(module: nn.Module, name: str, init: Initializer, shape: Sequence[int], axes: Sequence):
  """A parameter annotated with logical axis names (see jaxlm.training.partitioning)."""
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape),
                      dtype_of(module.config.param_dtype))


def normal(std: float) -> Initializer:
  return jax.nn.initializers.normal(stddev=std)


def constrain(x, axes):
  """Activation sharding by logical names; a no-op outside a mesh + rules context."""
  return nn.with_logical_constraint(x, axes)
