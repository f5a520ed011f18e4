"""Helpers of the jaxlm.training tests (no tests here), and a subprocess entry point.

Every test trains the same tiny causal LM (2 layers, width 32, vocab 128, 8 x 16 tokens,
AdamW, float32) so that compiled programs are shared through JAX's persistent
compilation cache (a directory under the system temp dir, reused between runs).

    python tests/train_helpers.py '{"model_dir": ..., "steps": 5, "mesh": [2, 2, 2], ...}'
runs `run_tiny` in a fresh process (fake devices, jax.distributed) and writes its results
to the "out" path as JSON (+ an .npz of the final parameters).
"""
from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.path.join(tempfile.gettempdir(), "jaxlm_test_jax_cache")
TINY = dict(vocab_size=128, d_model=32, num_layers=2, num_heads=4, d_ff=64, max_len=32,
            dtype="float32", param_dtype="float32")
BATCH, LENGTH = 8, 16


def use_compilation_cache():
  import jax
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", CACHE_DIR)


def tiny_config(**overrides):
  from jaxlm.models import TransformerConfig
  return TransformerConfig(**{**TINY, **overrides})


def run_tiny(model_dir, steps, *, total_steps=30, mesh=(1, 1, 1), data=None, data_fn=None,
             optimizer=None, learning_rate=None, config=None, **train_kwargs):
  """train() on the tiny LM; data: SyntheticData kwargs (feature_lengths defaults to 16),
  or data_fn: a data source of its own."""
  from jaxlm.training import SyntheticData, adamw, make_mesh, train, warmup_cosine
  use_compilation_cache()
  data_kw = {"feature_lengths": {"targets": LENGTH}, **(data or {})}
  slow = data_kw.pop("slow", 0.0)
  if data_fn is None:
    data_fn = functools.partial(_SlowData, delay=slow, **data_kw) if slow else functools.partial(SyntheticData, **data_kw)
  kwargs = dict(log_every=5, checkpoint_every=5, progress_bar=False, tensorboard=False)
  kwargs.update(train_kwargs)
  return train(model_dir=model_dir, train_steps=steps, batch_size=kwargs.pop("batch_size", BATCH),
               config=config or tiny_config(), data_fn=data_fn, optimizer=optimizer or adamw,
               learning_rate=learning_rate or warmup_cosine(peak_value=1e-2, warmup_steps=3,
                                                            decay_steps=total_steps),
               mesh_fn=functools.partial(make_mesh, data=mesh[0], fsdp=mesh[1], tensor=mesh[2]),
               **kwargs)


class _SlowData:
  """SyntheticData that takes `delay` seconds per batch (to interrupt a run mid-way)."""

  def __init__(self, delay, **kw):
    from jaxlm.training import SyntheticData
    self.inner, self.delay = SyntheticData(**kw), delay

  def __iter__(self):
    return self

  def __next__(self):
    time.sleep(self.delay)
    return next(self.inner)

  def state(self):
    return self.inner.state()

  def restore(self, state):
    self.inner.restore(state)


def losses(result):
  return [h["loss"] for h in result.history]


def flat_params(params) -> dict:
  import jax
  return {jax.tree_util.keystr(p): np.asarray(jax.device_get(x))
          for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def subprocess_env(devices: int) -> dict:
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_COMPILATION_CACHE_DIR=CACHE_DIR, PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
             TF_CPP_MIN_LOG_LEVEL="3")
  return env


def start(spec: dict, devices: int = 1) -> subprocess.Popen:
  """Starts `main(spec)` in a fresh python with `devices` fake CPU devices."""
  return subprocess.Popen([sys.executable, os.path.abspath(__file__), json.dumps(spec)],
                          env=subprocess_env(devices), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, f"subprocess failed (rc={proc.returncode}):\n{out[-4000:]}"
  return out


def last_step(model_dir):
  path = os.path.join(model_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  lines = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip().endswith("}")]
  return lines[-1]["step"] if lines else 0


def interrupt(plan, timeout=240):
  """plan: [(proc, model_dir, step, signal)]: sends each signal as soon as its run has logged
  `step` (log_every=1); returns the step each run had logged at that moment."""
  seen, t0 = {}, time.time()
  while len(seen) < len(plan):
    assert time.time() - t0 < timeout, "runs too slow"
    for i, (proc, model_dir, step, sig) in enumerate(plan):
      if i in seen:
        continue
      assert proc.poll() is None, f"run {model_dir} ended before it could be interrupted"
      logged = last_step(model_dir)
      if logged >= step:
        proc.send_signal(sig)
        seen[i] = logged
    time.sleep(0.02)
  return [seen[i] for i in range(len(plan))]


def main(spec: dict) -> None:
  import jax
  if "process_id" in spec:
    jax.distributed.initialize(coordinator_address=f"localhost:{spec['port']}",
                               num_processes=spec["num_processes"], process_id=spec["process_id"])
  mesh = tuple(spec.get("mesh", (1, 1, 1)))
  result = run_tiny(spec["model_dir"], spec["steps"], mesh=mesh, data=spec.get("data"),
                    **spec.get("train", {}))
  from jaxlm.training import partitioning
  out = {"losses": losses(result), "events": result.events, "preempted": result.preempted,
         "tokens_seen": result.tokens_seen, "devices": jax.device_count(),
         "processes": jax.process_count(),
         "shardings": partitioning.describe(jax.tree.map(lambda x: x.sharding, result.state.params)),
         "local_shapes": {k: list(v.addressable_shards[0].data.shape) for k, v in
                          ((jax.tree_util.keystr(p), x) for p, x in
                           jax.tree_util.tree_flatten_with_path(result.state.params)[0])}}
  from jax.experimental import multihost_utils
  params = multihost_utils.process_allgather(result.state.params, tiled=True)  # whole arrays
  if "out" in spec and jax.process_index() == 0:
    with open(spec["out"], "w", encoding="utf-8") as f:
      json.dump(out, f)
    np.savez(spec["out"] + ".npz", **flat_params(params))


if __name__ == "__main__":
  main(json.loads(sys.argv[1]))


def prefill_then_steps(model, params, seq, enc, lengths, width=5, steps=4, cache_length=12):
  """KV-cache decoding as the decoder runs it: rows of `seq` left-padded to `width` with
  their first `lengths` tokens, prefilled, then `steps` tokens fed one at a time.
  Returns (prefill logits [b, width, v], step logits [b, steps, v])."""
  import jax
  import jax.numpy as jnp
  prompt, seg, pos = (np.zeros((len(lengths), width), np.int32) for _ in range(3))
  for i, n in enumerate(lengths):
    prompt[i, width - n:] = seq[i, :n]
    seg[i, width - n:] = 1
    pos[i, width - n:] = np.arange(n)
  batch = {"decoder_input_tokens": prompt, "decoder_segment_ids": seg, "decoder_positions": pos,
           "decoder_causal_attention": seg, "encoder_input_tokens": enc}
  cache = model.init_cache(len(lengths), cache_length, encoder_length=enc.shape[1])
  logits, cache = jax.jit(model.prefill)(params, cache, batch)
  step = jax.jit(model.decode_step)
  outs = []
  for j in range(steps):
    tok = np.stack([seq[i, n + j] for i, n in enumerate(lengths)])[:, None]
    out, cache = step(params, cache, jnp.asarray(tok), jnp.asarray((lengths + j)[:, None], jnp.int32))
    outs.append(out[:, 0])
  return np.asarray(logits), np.stack([np.asarray(o) for o in outs], axis=1)


# ---- a tiny instruction-tuned model, trained once and shared by the learning tests ----
# A 2-layer causal decoder (vocab 1024, width 128) pretrained on the embedded prose, then
# instruction-tuned (SFTObjective) on five generated families with their direct zero-shot
# wording. The PEFT, reward-model, DPO, PPO and GRPO learning tests start from it and tune
# on other families (or improve these). It is built once per code version under
# $JAXLM_CACHE/test_models (a file lock makes parallel workers wait for one build).
INSTRUCTION_CONFIG = dict(vocab_size=1024, d_model=128, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=256,
                          max_len=128, dtype="float32")
INSTRUCTION_FAMILIES = ("reverse_words", "sort_words", "last_letters", "word_problems", "multi_step_arithmetic")
INSTRUCTION_LENGTHS = {"inputs": 64, "targets": 16}
INSTRUCTION_STEPS = {"pretrain": 80, "sft": 300}
QUIET_RUN = dict(progress_bar=False, tensorboard=False, log_every=50, checkpoint_every=10_000,
                 async_checkpoints=False)


def instruction_vocabulary():
  """The 1024-piece SentencePiece vocabulary of the embedded corpus (chat markers reserved)."""
  from jaxlm.data import vocab
  return vocab.seqio_vocabulary(vocab_size=1024, num_sentinels=128)


def register_family(v, family, *, chat=None, name=None, sizes=(1000, 60)):
  """The generated `family` as a SeqIO instruction task (templates[0], the direct wording)
  with `sizes` = (train, validation) examples; returns the task name."""
  from jaxlm.data import generated_tasks, instructions, tasks
  templates = generated_tasks.FAMILIES[family].templates[:1]
  counts = dict(zip(("train", "validation"), sizes))

  def pairs(split):
    return instructions.template_pairs(generated_tasks.examples(family, counts[split], split), templates,
                                       family, chat=chat)
  return tasks.register_instruction_task(name or f"it_{family}", pairs, v, chat=chat).name


def _code_version() -> str:
  import hashlib
  digest = hashlib.sha1(json.dumps([INSTRUCTION_CONFIG, INSTRUCTION_FAMILIES, INSTRUCTION_LENGTHS,
                                    INSTRUCTION_STEPS]).encode())
  files = [os.path.join("jaxlm/models", n) for n in sorted(os.listdir(os.path.join(ROOT, "jaxlm/models")))]
  files += ["jaxlm/data/generated_tasks.py", "jaxlm/data/instructions.py", "jaxlm/data/vocab.py"]
  for name in files:  # what the trained weights depend on (not the trainer's bookkeeping)
    if name.endswith(".py"):
      with open(os.path.join(ROOT, name), "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()[:12]


def tiny_instruction_model() -> str:
  """The checkpoint directory of the shared instruction-tuned model (a train.init_from
  path; its config is tiny_instruction_config()), trained here the first time."""
  import shutil
  from jaxlm.data import sources, tasks
  from jaxlm.data.pipeline import DataPipeline
  from jaxlm.training import adamw, train, warmup_cosine
  use_compilation_cache()
  path = os.path.join(sources.cache_dir("test_models"), f"instruction-{_code_version()}")
  with sources.file_lock(path):
    if os.path.isdir(os.path.join(path, "sft")):
      return os.path.join(path, "sft")
    work = path + ".partial"
    shutil.rmtree(work, ignore_errors=True)
    v = instruction_vocabulary()
    config = tiny_instruction_config()
    tasks.register_task("it_pretrain_text", "embedded_prose", "lm", v)
    steps = INSTRUCTION_STEPS
    train(model_dir=os.path.join(work, "pretrained"), train_steps=steps["pretrain"], batch_size=8, config=config,
          data_fn=functools.partial(DataPipeline, "it_pretrain_text", {"targets": 128}), optimizer=adamw,
          learning_rate=warmup_cosine(peak_value=3e-3, warmup_steps=20, decay_steps=steps["pretrain"]),
          **QUIET_RUN)
    names = [register_family(v, family) for family in INSTRUCTION_FAMILIES]
    tasks.register_mixture("it_base_mix", names, "fixed")
    from jaxlm.adaptation import SFTObjective
    train(model_dir=os.path.join(work, "sft"), train_steps=steps["sft"], batch_size=16, config=config,
          data_fn=functools.partial(DataPipeline, "it_base_mix", INSTRUCTION_LENGTHS), optimizer=adamw,
          learning_rate=warmup_cosine(peak_value=3e-3, warmup_steps=20, decay_steps=steps["sft"]),
          objective=SFTObjective(), init_from=os.path.join(work, "pretrained"), **QUIET_RUN)
    os.replace(work, path)
    return os.path.join(path, "sft")


def shared_run(name: str, settings, run) -> str:
  """The model directory of a training run that the test workers share (xdist may split a
  module whose fixture trains it across both workers): run(work_dir) trains it the first
  time, under a file lock; the directory is keyed by `settings` and every jaxlm source
  file, so any change to the code trains it again."""
  import glob
  import hashlib
  import shutil
  from jaxlm.data import sources
  digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode())
  for name_ in sorted(glob.glob(os.path.join(ROOT, "jaxlm", "**", "*.py"), recursive=True)):
    with open(name_, "rb") as f:
      digest.update(f.read())
  path = os.path.join(sources.cache_dir("test_models"), f"{name}-{digest.hexdigest()[:12]}")
  with sources.file_lock(path):
    if not os.path.isdir(path):
      work = path + ".partial"
      shutil.rmtree(work, ignore_errors=True)
      run(work)
      os.replace(work, path)
  return path


def tiny_pretrained_model() -> str:
  """The checkpoint directory of the shared model's pretraining stage (before any SFT)."""
  return os.path.join(os.path.dirname(tiny_instruction_model()), "pretrained")


def tiny_instruction_config(**overrides):
  from jaxlm.models import TransformerConfig
  return TransformerConfig(**{**INSTRUCTION_CONFIG, **overrides})
