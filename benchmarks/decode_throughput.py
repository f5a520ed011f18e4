"""KV-cache decoding throughput through jaxlm.inference.decoding.generate (greedy).

  python -m benchmarks.decode_throughput --gin_file=gin_configs/models/gpt2_small.gin \\
      --prompt_len 64 --new_tokens 128 --batch 1 --batch 64 [--repeats 3] \\
      [--dtype bfloat16] [--scan] [--attention_kernel cudnn] [--gin.X=V ...] [--out_dir DIR]

`--batch` repeats or takes a list (`--batch 1,32,64`). Parameters are random (model.init),
prompts uniform random tokens after BOS 0, all rows the full prompt_len; eos_id=None, so
every call decodes exactly new_tokens tokens per row (no early stop).

Per batch size:
  new_tokens_per_second  batch x new_tokens / mean time of a full generate call (prefill
                         + new_tokens greedy steps; the first new token comes from prefill)
  ttft_s                 time to first token: a generate call with max_new_tokens=1
                         (prefill of the prompt and one argmax; its cache is new_tokens - 1
                         positions shorter than the full call's)
  per_token_ms           (full call - ttft) / (new_tokens - 1): one decode step for the batch
  compile_s              seconds JAX spent tracing, lowering and compiling during the first
                         full call (jax.monitoring compile events); ttft_compile_s likewise
Each timed number is the mean of --repeats calls after the compiling one.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Sequence

from benchmarks import common


def batch_sizes(values) -> list:
  out = []
  for v in values or ["1"]:
    out += [int(x) for x in str(v).split(",") if x.strip()]
  if not out or min(out) < 1:
    raise SystemExit(f"--batch: positive integers, got {values}")
  return out


def measure(model, params, batch: int, args) -> dict:
  import numpy as np
  from jaxlm.inference.decoding import DecodeConfig, generate

  rng = np.random.default_rng((args.seed, batch))
  prompt = rng.integers(2, model.config.vocab_size, (batch, args.prompt_len)).astype(np.int32)
  prompt[:, 0] = 0  # BOS, as training inputs start
  call = lambda n: generate(model, params, prompt,
                            config=DecodeConfig(method="greedy", max_new_tokens=n, eos_id=None))

  compiled = common.compile_seconds()
  out, first = common.timed(call, args.new_tokens)
  compile_s = common.compile_seconds() - compiled
  assert out.tokens.shape == (batch, args.new_tokens), out.tokens.shape
  full = common.summarize([common.timed(call, args.new_tokens)[1] for _ in range(args.repeats)])
  compiled = common.compile_seconds()
  common.timed(call, 1)
  ttft_compile_s = common.compile_seconds() - compiled
  ttft = common.summarize([common.timed(call, 1)[1] for _ in range(args.repeats)])
  steps = max(args.new_tokens - 1, 1)
  return {
      "batch": batch,
      "new_tokens_per_second": batch * args.new_tokens / full["mean_s"],
      "call_time_mean_s": full["mean_s"],
      "call_time_min_s": full["min_s"],
      "ttft_s": ttft["mean_s"],
      "ttft_min_s": ttft["min_s"],
      "per_token_ms": 1000 * max(full["mean_s"] - ttft["mean_s"], 0.0) / steps,
      "compile_s": compile_s,
      "ttft_compile_s": ttft_compile_s,
      "first_call_s": first,
      **common.peak_memory(),
  }


def main(argv: Sequence[str] = None) -> dict:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = common.make_parser("python -m benchmarks.decode_throughput", __doc__)
  parser.add_argument("--prompt_len", type=int, default=64)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--batch", action="append", default=None,
                      help="batch size; repeat or comma-separate for several (default 1)")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement")
  args, config, gin_files, bindings = common.parse(parser, argv)
  if args.prompt_len < 1 or args.new_tokens < 1 or args.repeats < 1:
    parser.error("--prompt_len, --new_tokens and --repeats must be >= 1")
  sizes = batch_sizes(args.batch)
  if config.arch == "encoder_decoder":
    raise SystemExit("decode_throughput: decoder and prefix_decoder configs only")

  import jax
  from jaxlm.models import build_model
  model = build_model(config)
  params = model.init(jax.random.key(args.seed), model.dummy_batch(1, args.prompt_len))
  results = [measure(model, params, b, args) for b in sizes]
  for r in results:
    print(f"batch {r['batch']:4d}: {r['new_tokens_per_second']:12.1f} new tokens/s, "
          f"ttft {1000 * r['ttft_s']:.1f} ms, {r['per_token_ms']:.2f} ms/step, compile {r['compile_s']:.1f} s")
  record = {"benchmark": "decode_throughput", "command": common.command("benchmarks.decode_throughput", argv),
            "gin_files": gin_files, "gin_bindings": bindings, "method": "greedy",
            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "repeats": args.repeats,
            "num_params": model.num_params(params), "results": results,
            "config": dataclasses.asdict(config), "environment": common.environment()}
  name = args.name or common.default_name("decode", gin_files, config, f"p{args.prompt_len}",
                                          f"n{args.new_tokens}", "b" + "-".join(map(str, sizes)))
  common.write_result(record, name, args.out_dir)
  return record


if __name__ == "__main__":
  main()
