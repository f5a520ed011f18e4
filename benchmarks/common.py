"""What the model benchmarks share: flags and gin, the environment record, peak memory,
timing, and JSON output.

Flags. A benchmark's own flags (`--batch`, `--steps`, ...) plus the speed levers below;
everything else is jaxlm.main's (`--gin_file=F`, `--gin.X=V`, `--gin_bindings="X = V"`),
parsed by jaxlm.main's own functions, so a benchmark configures the model exactly like a
training run does. The levers are shorthands for TransformerConfig bindings, applied after
the gin files (so they win) and only when given:
  --scan / --no-scan       scan_layers          --remat POLICY      remat_policy
  --dtype D                dtype (compute)       --attention_kernel K  attention_kernel
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import time
from typing import List, Optional, Sequence

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ---- flags and gin ----
def make_parser(prog: str, doc: str) -> argparse.ArgumentParser:
  """A parser with the shared flags; allow_abbrev=False so `--gin.*` never matches ours."""
  from jaxlm.models.config import ATTENTION_KERNELS, DTYPES, REMAT_POLICIES
  parser = argparse.ArgumentParser(prog=prog, description=doc, allow_abbrev=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--scan", action=argparse.BooleanOptionalAction, default=None,
                      help="TransformerConfig.scan_layers (default: the gin files' value)")
  parser.add_argument("--remat", choices=REMAT_POLICIES, default=None, help="TransformerConfig.remat_policy")
  parser.add_argument("--dtype", choices=DTYPES, default=None, help="TransformerConfig.dtype (compute)")
  parser.add_argument("--attention_kernel", choices=ATTENTION_KERNELS, default=None,
                      help="TransformerConfig.attention_kernel")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--name", default=None, help="result file name without .json (default: derived)")
  parser.add_argument("--out_dir", default=RESULTS_DIR, help="where the JSON goes")
  return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str]):
  """(args, TransformerConfig, gin files, bindings): our flags, then jaxlm.main's for the rest."""
  from jaxlm import main as jaxlm_main
  from jaxlm.models import TransformerConfig
  args, rest = parser.parse_known_args(list(argv))
  gin_args, bindings = jaxlm_main.parse_flags(rest)
  levers = {"scan_layers": args.scan, "remat_policy": args.remat, "dtype": args.dtype,
            "attention_kernel": args.attention_kernel}
  bindings += [f"TransformerConfig.{k} = {v!r}" for k, v in levers.items() if v is not None]
  jaxlm_main.parse_gin(gin_args.gin_file, bindings, gin_args.gin_search_paths)
  return args, TransformerConfig(), list(gin_args.gin_file), bindings


def default_name(prefix: str, gin_files: List[str], config, *parts: str) -> str:
  """e.g. train_gpt2_small_b4_s256_scan_remat-dots_bfloat16: the levers that differ from
  the plain path (no scan, no remat, float32, attention_kernel 'auto')."""
  model = os.path.splitext(os.path.basename(gin_files[-1]))[0] if gin_files else "default"
  levers = (["scan"] if config.scan_layers else []) + (
      [f"remat-{config.remat_policy}"] if config.remat_policy != "none" else []) + (
      [config.dtype] if config.dtype != "float32" else []) + (
      [f"params-{config.param_dtype}"] if config.param_dtype != "float32" else []) + (
      [config.attention_kernel] if config.attention_kernel != "auto" else [])
  return "_".join([prefix, model, *parts, *levers])


def command(module: str, argv: Sequence[str]) -> str:
  """The exact command line, XLA_FLAGS included when set."""
  flags = os.environ.get("XLA_FLAGS")
  env = f"XLA_FLAGS={shlex.quote(flags)} " if flags else ""
  return f"{env}python -m {module} {shlex.join(list(argv))}".rstrip()


# ---- environment and memory ----
def environment() -> dict:
  """Versions, backend, device kind and count, host."""
  import flax
  import jax
  import jaxlib
  import optax
  devices = jax.devices()
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
          "optax": optax.__version__, "python": platform.python_version(),
          "platform": jax.default_backend(), "device_kind": devices[0].device_kind,
          "device_count": len(devices), "process_count": jax.process_count(),
          "host": platform.platform(), "host_cpu_count": os.cpu_count(),
          "host_load_average_1m": os.getloadavg()[0],  # other jobs on a shared host
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def peak_memory(device=None) -> dict:
  """Peak memory: the device allocator's peak_bytes_in_use where it has one (GPU, TPU),
  else this process's max resident set size (CPU), labelled as such."""
  import jax
  device = device or jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    return {"peak_memory_bytes": int(stats["peak_bytes_in_use"]),
            "peak_memory_source": "device.memory_stats()['peak_bytes_in_use'] (process lifetime)"}
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
  return {"peak_memory_bytes": int(rss),
          "peak_memory_source": "process max RSS (no device memory stats; includes Python, XLA, compiler)"}


# ---- timing ----
def timed(fn, *args, **kwargs):
  """(result, seconds), the result blocked until ready."""
  import jax
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args, **kwargs))
  return out, time.perf_counter() - start


_COMPILE_SECONDS = [0.0]
_LISTENING = [False]


def compile_seconds() -> float:
  """Seconds JAX has spent tracing, lowering and compiling in this process so far (from
  jax.monitoring's /jax/core/compile/* events); take differences around a call."""
  import jax
  if not _LISTENING[0]:
    def listen(name, seconds, **_):
      if name.startswith("/jax/core/compile/"):
        _COMPILE_SECONDS[0] += seconds
    jax.monitoring.register_event_duration_secs_listener(listen)
    _LISTENING[0] = True
  return _COMPILE_SECONDS[0]


def summarize(seconds: Sequence[float]) -> dict:
  return {"mean_s": statistics.fmean(seconds), "min_s": min(seconds),
          "median_s": statistics.median(seconds), "count": len(seconds)}


# ---- output ----
def write_result(record: dict, name: str, out_dir: Optional[str] = None) -> str:
  """Writes out_dir/name.json (default benchmarks/results/), prints it, returns the path."""
  out_dir = out_dir or RESULTS_DIR
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"{name}.json")
  text = json.dumps(record, indent=1, sort_keys=False, default=str)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text + "\n")
  print(text)
  print(f"wrote {path}")
  return path
