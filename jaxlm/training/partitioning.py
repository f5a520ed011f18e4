"""Device mesh, the logical-axis rule table, and placing parameters and batches on the mesh.

Models name every parameter and activation axis with a logical name ('batch', 'embed',
'mlp', 'heads', 'kv', 'vocab', 'expert', 'layers', 'length'). One rule table maps those
names onto the mesh axes ('data', 'fsdp', 'tensor', 'expert'):

  data    pure data parallelism: the batch is split, parameters are replicated
  fsdp    the batch is split *and* parameters/optimizer state are split along 'embed'
          (ZeRO-3 / fully sharded data parallelism); XLA all-gathers them per layer
  tensor  Megatron-style model parallelism over heads, MLP hidden units and vocabulary
  expert  MoE expert parallelism (the batch is split over it too)

Rules are tried in order; a mesh axis is used at most once per array (flax semantics), so
an activation ('batch', 'length', 'embed') shards its batch over data x fsdp x expert and
leaves 'embed' whole, while a parameter ('embed', 'mlp') is split fsdp x tensor.

Multi-host: call `initialize_distributed` before anything touches a device. Each process
then reads only the rows of the global batch that its own devices hold
(`host_batch_rows`) and `global_batch` assembles the global jax.Array from those pieces.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "expert")
BATCH_AXES = ("data", "fsdp", "expert")  # mesh axes the batch dimension is split over

# (logical name, mesh axes), in priority order. Edit a copy via gin:
#   logical_axis_rules.overrides = [('mlp', None)]   (replaces the rules for 'mlp').
LOGICAL_AXIS_RULES = (
    ("expert", "expert"),
    ("batch", BATCH_AXES),
    ("batch", ("data", "fsdp")),  # inside MoE layers, where 'expert' holds the expert axis
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
    ("layers", None),
)


@gin.configurable
def logical_axis_rules(overrides: Sequence[tuple] = ()) -> tuple:
  """The rule table, with every rule for a name in `overrides` replaced by the override."""
  replaced = {name for name, _ in overrides}
  return tuple(overrides) + tuple(r for r in LOGICAL_AXIS_RULES if r[0] not in replaced)


@gin.configurable
def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None, auto: bool = False) -> None:
  """jax.distributed.initialize, once, before any device is touched. Nothing happens for a
  single host. `auto=True` lets JAX detect the cluster (TPU pods, SLURM, Open MPI);
  otherwise give the coordinator 'host:port', the number of processes and this one's id."""
  if jax.distributed.is_initialized() or (coordinator_address is None and not auto):
    return
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


@gin.configurable
def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, expert: int = 1,
              devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A Mesh with axes (data, fsdp, tensor, expert) over all devices of all hosts.

  One size may be -1: it takes whatever the others leave. Raises ValueError naming the
  sizes when their product does not equal the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = {"data": data, "fsdp": fsdp, "tensor": tensor, "expert": expert}
  free = [k for k, v in sizes.items() if v == -1]
  bad = {k: v for k, v in sizes.items() if v == 0 or v < -1}
  if bad or len(free) > 1:
    raise ValueError(f"make_mesh: sizes must be positive with at most one -1, got {sizes}")
  fixed = math.prod(v for v in sizes.values() if v != -1)
  if free:
    if len(devices) % fixed:
      raise ValueError(f"make_mesh: {len(devices)} devices are not divisible by "
                       f"{' x '.join(f'{k}={v}' for k, v in sizes.items() if v != -1)} = {fixed}, "
                       f"so {free[0]}=-1 has no integer size")
    sizes[free[0]] = len(devices) // fixed
  total = math.prod(sizes.values())
  if total != len(devices):
    raise ValueError(f"make_mesh: data={sizes['data']} x fsdp={sizes['fsdp']} x tensor={sizes['tensor']}"
                     f" x expert={sizes['expert']} = {total} devices, but there are {len(devices)}")
  shape = tuple(sizes[a] for a in MESH_AXES)
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except Exception:  # pylint: disable=broad-except  (unknown topologies: plain order)
    grid = np.asarray(devices, dtype=object).reshape(shape)
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return Mesh(grid, MESH_AXES, axis_types=auto)


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(mesh: Mesh, microbatch_size: int, what: str = "batch") -> None:
  """Fails before compiling when a (micro)batch cannot be split over the data axes/hosts."""
  dp = data_parallel_size(mesh)
  if microbatch_size % dp:
    raise ValueError(
        f"{what} size {microbatch_size} is not divisible by the data-parallel mesh axes "
        f"data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']} x expert={mesh.shape['expert']} = {dp}")
  if microbatch_size % jax.process_count():
    raise ValueError(f"{what} size {microbatch_size} is not divisible by the number of hosts "
                     f"{jax.process_count()}")


_WARNED = set()


def _is_spec(x) -> bool:
  return isinstance(x, P)


def logical_to_sharding(logical_spec: P, shape: Sequence[int], mesh: Mesh, rules,
                        name: str = "") -> NamedSharding:
  """NamedSharding for one array. A mesh axis that does not divide its dimension is dropped
  (that dimension is replicated over it) with a warning, e.g. 1 KV head over tensor=2."""
  mesh_spec = nn.logical_to_mesh_axes(tuple(logical_spec), rules)
  fixed = []
  for dim, (size, axes) in enumerate(zip(shape, tuple(mesh_spec) + (None,) * len(shape))):
    if axes is None:
      fixed.append(None)
      continue
    axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
    kept = tuple(a for a in axes_t if mesh.shape[a] > 1)
    if size % math.prod(mesh.shape[a] for a in kept):
      key = (logical_spec[dim], size, kept)
      if key not in _WARNED:
        _WARNED.add(key)
        logging.warning("partitioning: logical axis %r of size %d (e.g. %s) does not divide over mesh "
                        "axes %s; replicated there", logical_spec[dim], size, name, kept)
      kept = ()
    fixed.append(kept[0] if len(kept) == 1 else (kept or None))
  return NamedSharding(mesh, P(*fixed))


def tree_shardings(logical_axes, shapes, mesh: Mesh, rules):
  """Shardings for a tree of arrays (or ShapeDtypeStructs) given its logical PartitionSpecs."""
  flat_axes, treedef = jax.tree_util.tree_flatten(logical_axes, is_leaf=_is_spec)
  flat_shapes = treedef.flatten_up_to(shapes)
  names = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(logical_axes, is_leaf=_is_spec)[0]]
  out = [logical_to_sharding(a, s.shape, mesh, rules, n)
         for a, s, n in zip(flat_axes, flat_shapes, names)]
  return treedef.unflatten(out)


def opt_state_logical_axes(opt_state_shapes, params_axes, params_shapes):
  """Logical PartitionSpecs for an optimizer state: every sub-tree shaped like the params
  (Adam's mu and nu, Adafactor's v_row/v_col/v, momentum) is mapped leaf by leaf: a leaf
  shaped like its parameter takes its spec, Adafactor's factored statistics take it with
  the reduced axis removed; counters and placeholders are replicated."""
  params_def = jax.tree.structure(params_shapes)

  def spec_for(leaf, axes, pshape):
    shape, pshape = tuple(leaf.shape), tuple(pshape.shape)
    if shape == pshape:
      return axes
    axes = tuple(axes) + (None,) * (len(pshape) - len(tuple(axes)))
    if len(shape) == len(pshape) - 1:
      for drop in reversed(range(len(pshape))):
        if pshape[:drop] + pshape[drop + 1:] == shape:
          return P(*(axes[:drop] + axes[drop + 1:]))
    return P()

  def like_params(x):
    try:
      return jax.tree.structure(x) == params_def
    except Exception:  # pylint: disable=broad-except
      return False

  def convert(node):
    if like_params(node):
      flat_axes = params_def.flatten_up_to(params_axes)
      flat = [spec_for(l, a, s) for l, a, s in zip(params_def.flatten_up_to(node), flat_axes,
                                                   params_def.flatten_up_to(params_shapes))]
      return params_def.unflatten(flat)
    return P()

  return jax.tree.map(convert, opt_state_shapes, is_leaf=like_params)


# ---- batches ----

def batch_sharding(mesh: Mesh, ndim: int = 3) -> NamedSharding:
  """Batches enter the step stacked [microbatches, batch, length]: split dim 1."""
  return NamedSharding(mesh, P(*([None] + [BATCH_AXES] + [None] * (ndim - 2))))


def host_batch_rows(mesh: Mesh, batch_size: int) -> tuple[int, int]:
  """[start, stop) of the global batch rows that this process's devices hold.

  Each host reads exactly these rows. With the usual device order they are the
  process_index-th of process_count equal slices; anything else is refused loudly.
  """
  sharding = NamedSharding(mesh, P(BATCH_AXES))
  idx = sharding.addressable_devices_indices_map((batch_size,))
  rows = sorted({(s[0].start or 0, batch_size if s[0].stop is None else s[0].stop) for s in idx.values()})
  start, stop = rows[0][0], rows[-1][1]
  covered = sum(b - a for a, b in rows)
  if covered != stop - start or (stop - start) * jax.process_count() != batch_size:
    raise ValueError(f"host {jax.process_index()} holds rows {rows} of the {batch_size}-row batch; "
                     "each host must hold an equal, contiguous, disjoint slice: let the data/fsdp/"
                     "expert mesh axes span the hosts and order the devices by process")
  return start, stop


def global_batch(mesh: Mesh, host_batches: Sequence[Mapping[str, np.ndarray]]) -> dict:
  """Stacks this host's microbatches [k x (rows, ...)] into global jax.Arrays [k, batch, ...]."""
  out = {}
  for key in host_batches[0]:
    local = np.stack([np.asarray(b[key]) for b in host_batches])
    shape = (local.shape[0], local.shape[1] * jax.process_count()) + local.shape[2:]
    out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, local.ndim), local, shape)
  return out


def describe(shardings) -> dict:
  """{'path': 'PartitionSpec(...)'} for logs and tests."""
  flat = jax.tree_util.tree_flatten_with_path(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))[0]
  return {jax.tree_util.keystr(p): str(s.spec) for p, s in flat}
