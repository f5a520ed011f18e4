"""Checkpoints with orbax-checkpoint, and preemption (SIGTERM) handling.

MODEL_DIR/checkpoints/<step>/ holds two items:
  state  the TrainState (sharded arrays; each host writes its own shards), saved
         asynchronously: `save` returns once the arrays are copied off the devices
  meta   JSON: every host's data-iterator position, tokens seen, the spike detector's
         window, and a fingerprint (per-leaf sums) of the state
Only the last `keep` checkpoints are kept.

Resuming (`restore_latest`) walks the steps newest first. A step that fails to load
(missing or truncated files) or whose arrays do not match the saved fingerprint (silent
corruption) is moved to MODEL_DIR/checkpoints_corrupt/ and the next older one is tried;
the trainer reports which step it resumed from and which it rejected. Half-written
checkpoints (orbax's temporary directories of an interrupted save) are never listed as
steps; they are reported and removed.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import threading
from typing import Any, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


def gather_from_hosts(obj: Any) -> list:
  """[obj of process 0, obj of process 1, ...] on every process (JSON-able objects)."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int32))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  everything = np.asarray(multihost_utils.process_allgather(padded))
  return [json.loads(bytes(everything[i, :sizes[i]]).decode()) for i in range(len(sizes))]


@jax.jit
def _leaf_sums(tree):
  return jnp.stack([jnp.stack([jnp.sum(x.astype(jnp.float32)), jnp.sum(jnp.abs(x.astype(jnp.float32)))])
                    for x in jax.tree.leaves(tree)])


def fingerprint(state) -> list:
  """Per-leaf (sum, sum of |x|), as floats; equal for equal arrays up to summation order."""
  return np.asarray(jax.device_get(_leaf_sums(state))).tolist()


def _fingerprints_match(a, b, rtol: float = 1e-4) -> bool:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return a.shape == b.shape and bool(np.all(np.abs(a - b) <= rtol * (np.abs(b[:, 1:]) + 1e-6)))


class Checkpointer:

  def __init__(self, model_dir: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(model_dir, "checkpoints"))
    self.corrupt_dir = os.path.abspath(os.path.join(model_dir, "checkpoints_corrupt"))
    self.half_written = self._half_written()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=1, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

  def _half_written(self) -> list:
    if not os.path.isdir(self.directory):
      return []
    return sorted(n for n in os.listdir(self.directory) if "tmp" in n)

  def steps(self) -> list:
    self.manager.wait_until_finished()
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, meta: dict, force: bool = False) -> None:
    """Queues an (asynchronous) save. `meta` holds this host's entries; its 'data' value is
    gathered from every host."""
    meta = dict(meta, data=gather_from_hosts(meta.get("data")), fingerprint=fingerprint(state))
    self.manager.wait_until_finished()  # one save in flight at a time
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, step: int, abstract_state):
    """(state, meta) of one step; raises if it cannot be read or fails its fingerprint."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    state, meta = out["state"], out["meta"]
    if not _fingerprints_match(fingerprint(state), meta["fingerprint"]):
      raise ValueError(f"checkpoint {step}: arrays do not match their saved fingerprint")
    return state, meta

  def restore_latest(self, abstract_state, before: Optional[int] = None):
    """(state, meta, step, rejected_steps) from the newest readable checkpoint (with step <
    `before` if given), or (None, None, None, rejected) when there is none."""
    self.manager.wait_until_finished()
    rejected = []
    for step in reversed(self.steps()):
      if before is not None and step >= before:
        continue
      try:
        state, meta = self.restore(step, abstract_state)
        return state, meta, step, rejected
      except Exception as e:  # pylint: disable=broad-except
        logging.error("checkpoint step %d is unreadable or corrupt (%s: %s); trying an older one",
                      step, type(e).__name__, str(e)[:300])
        rejected.append({"step": step, "error": f"{type(e).__name__}: {str(e)[:300]}"})
        self._quarantine(step)
    return None, None, None, rejected

  def _quarantine(self, step: int) -> None:
    if jax.process_index() == 0:
      src = os.path.join(self.directory, str(step))
      if os.path.exists(src):
        os.makedirs(self.corrupt_dir, exist_ok=True)
        dst = os.path.join(self.corrupt_dir, str(step))
        if os.path.exists(dst):
          shutil.rmtree(dst)
        shutil.move(src, dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"jaxlm_quarantine_{step}")
    self.manager.reload()

  def delete_after(self, step: int) -> None:
    """Drops checkpoints newer than `step` (after a rollback they belong to a discarded past)."""
    self.manager.wait_until_finished()
    for s in self.steps():
      if s > step:
        self.manager.delete(s)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


@gin.configurable
class PreemptionGuard:
  """Turns SIGTERM (gin: `signals`, by name, e.g. ['SIGTERM', 'SIGINT'] to make Ctrl-C
  checkpoint and stop too) into a stop request the train loop polls once per step.

  Single process: a Python SIGTERM handler sets a flag. Multi-host with JAX's preemption
  service (on by default with jax.distributed): JAX catches the notice on any host and
  `reached_preemption_sync_point` makes every host stop at the same step, with no device
  collective. Otherwise the hosts agree by an all-gather every `check_every` steps.
  Restores the previous handler on close."""

  def __init__(self, signals=("SIGTERM",), check_every: int = 10):
    self.requested, self.check_every = False, check_every
    signals = [getattr(signal, s) if isinstance(s, str) else s for s in signals]
    self._previous = {}
    self._jax_service = jax.process_count() > 1 and _jax_preemption_service()
    if not self._jax_service and threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("received signal %d: checkpointing and stopping", signum)
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.requested
    if self._jax_service:
      return multihost_utils.reached_preemption_sync_point(step)
    if step % self.check_every:
      return False
    flags = multihost_utils.process_allgather(np.array([int(self.requested)], np.int32))
    return bool(np.asarray(flags).any())

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}


def _jax_preemption_service() -> bool:
  try:
    from jax._src import distributed  # pylint: disable=import-outside-toplevel
    return distributed.global_state.preemption_sync_manager is not None
  except Exception:  # pylint: disable=broad-except
    return False


# ---- reading parameters (infer, eval, train.init_from) ----
def _is_step_dir(name: str) -> bool:
  return re.fullmatch(r"\d+", name) is not None


def resolve_checkpoint(path: str, step: Optional[int] = None) -> tuple[str, bool]:
  """(orbax item directory, whether params are its 'params' subtree) for any supported layout."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint directory {path} does not exist")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  steps = sorted(int(n) for n in os.listdir(path) if _is_step_dir(n) and os.path.isdir(os.path.join(path, n)))
  if steps:
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise FileNotFoundError(f"no step {step} in {path}; have {steps}")
    path = os.path.join(path, str(step))
  elif step is not None:
    raise FileNotFoundError(f"step={step} given but {path} has no step directories")
  if os.path.isdir(os.path.join(path, "state")):
    return os.path.join(path, "state"), True
  if os.path.isdir(os.path.join(path, "params")):
    return os.path.join(path, "params"), False
  return path, False


def restore_params(path: str, abstract_params=None, step: Optional[int] = None):
  """Parameters from a checkpoint: the trainer's MODEL_DIR (MODEL_DIR/checkpoints/<step>/state,
  a TrainState; only its 'params' are read), its checkpoints/ or <step>/ directory, a
  directory with a 'params' item, or a parameter tree saved with orbax's
  StandardCheckpointer.

  abstract_params (e.g. model.param_shapes()) fixes the tree, shapes and dtypes; without
  it the tree is restored as saved.
  """
  item, in_state = resolve_checkpoint(path, step)
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(item).item_metadata
  tree = getattr(tree, "tree", tree)
  # a bare params tree may also be a TrainState-like tree with 'params'
  in_state = in_state or (isinstance(tree, dict) and "params" in tree and "opt_state" in tree)
  if abstract_params is None:  # as saved, to host memory, and only the parameters
    saved = tree["params"] if in_state else tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved)
    if not in_state:
      return checkpointer.restore(item, args=ocp.args.PyTreeRestore(item=saved, restore_args=as_numpy))
    return checkpointer.restore(item, args=ocp.args.PyTreeRestore(
        item={"params": saved}, restore_args={"params": as_numpy}, partial_restore=True))["params"]
  restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_params)
  if in_state:
    args = ocp.args.PyTreeRestore(item={"params": abstract_params}, restore_args={"params": restore_args},
                                  partial_restore=True)
    params = checkpointer.restore(item, args=args)["params"]
  else:
    params = checkpointer.restore(item, args=ocp.args.PyTreeRestore(item=abstract_params,
                                                                    restore_args=restore_args))
  for (path_, got), want in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                jax.tree.leaves(abstract_params)):
    if tuple(got.shape) != tuple(want.shape):
      raise ValueError(f"checkpoint {item}: {jax.tree_util.keystr(path_)} has shape {got.shape}, the "
                       f"model expects {want.shape}; is the gin model config the one trained?")
  return jax.tree.map(lambda x, a: jax.numpy.asarray(x, a.dtype), params, abstract_params)


def restore_model(checkpoint_dir: Optional[str] = None, config=None, step: Optional[int] = None, *,
                  hf_dir: Optional[str] = None, adapter_dir: Optional[str] = None, dtype: Optional[str] = None):
  """(model, params) that the infer and eval jobs and lm-eval's `jaxlm` model run: a jaxlm
  checkpoint with its model `config` (TransformerConfig; any layout restore_params reads),
  or a Hugging Face directory `hf_dir` (config.json and weights through convert.load_hf,
  with the peft LoRA adapter in `adapter_dir` merged). dtype: the parameters' and the
  computation's dtype (None: as the config has them; float32 for hf_dir)."""
  from jaxlm.models import build_model  # pylint: disable=import-outside-toplevel
  if hf_dir:
    if checkpoint_dir:
      raise ValueError(f"give a jaxlm checkpoint (checkpoint_dir={checkpoint_dir!r}) or a Hugging Face "
                       f"directory (hf_dir={hf_dir!r}), not both")
    from jaxlm.models.convert import load_hf  # pylint: disable=import-outside-toplevel
    config, params = load_hf(hf_dir, adapter_dir, dtype=dtype or "float32")
    return build_model(config.replace(dtype=dtype or "float32")), params
  if adapter_dir:
    raise ValueError(f"adapter_dir={adapter_dir!r} is a peft adapter of a Hugging Face model: give hf_dir too")
  if not checkpoint_dir:
    raise ValueError("no model: give checkpoint_dir (a jaxlm checkpoint; the run files' CHECKPOINT_DIR) or "
                     "hf_dir (a Hugging Face directory; HF_DIR)")
  if dtype:
    config = config.replace(dtype=dtype, param_dtype=dtype)
  model = build_model(config)
  return model, restore_params(checkpoint_dir, model.param_shapes(), step)
