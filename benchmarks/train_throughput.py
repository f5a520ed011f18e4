"""Training throughput of the trainer's own step: tokens/s, step time, MFU, memory, compile time.

  python -m benchmarks.train_throughput --gin_file=gin_configs/models/gpt2_small.gin \\
      --batch 32 --seq 1024 [--steps 10 --warmup 2 --num_microbatches 1 --learning_rate 3e-4] \\
      [--scan | --no-scan] [--remat dots] [--dtype bfloat16] [--attention_kernel cudnn] \\
      [--peak_flops 989e12] [--gin.TransformerConfig.X=V ...] [--out_dir DIR --name NAME]
      [--trainable REGEX]   # train only matching parameters, e.g. '_lora_' (PEFT)

Parameter-efficient tuning on GPT-2 small (full vs LoRA r=8 vs QLoRA; see README.md):
  python -m benchmarks.train_throughput --gin_file=gin_configs/models/gpt2_small.gin --batch 4 --seq 256 \
      --gin.TransformerConfig.lora_rank=8 [--gin.TransformerConfig.quantization="'nf4'"] --trainable _lora_

It gets its step where jaxlm.training.trainer.train does, from
train_step.build_train_step: the model from TransformerConfig (gin), adamw
(gin-configurable), a mesh over all devices with the logical-axis rules, the TrainState
created in its shards, and the step jitted with the trainer's in/out shardings and state
donation. It feeds uniform random tokens (SyntheticData
kind='random'), all made and put on device before the clock starts, so no input pipeline
is timed.

Timing: lower and compile are timed apart (compile_s); then `--warmup` steps, then
`--steps` timed steps, each blocked until its state and metrics are ready (the trainer
also reads the metrics every step). tokens/s = batch x seq / mean step time. MFU =
tokens/s x model.flops_per_token(seq) / (devices x peak), peak from
jaxlm.training.metrics.peak_flops_per_device() or --peak_flops; null when unknown (CPUs).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Sequence

from benchmarks import common


def run(config, args) -> dict:
  import jax

  from jaxlm.adaptation.quantization import weight_bytes
  from jaxlm.training import metrics as metrics_lib, partitioning
  from jaxlm.training.optimizers import adamw
  from jaxlm.training.toy_data import SyntheticData
  from jaxlm.training.train_state import mesh_context
  from jaxlm.training.train_step import build_train_step
  from jaxlm.training.trainable import Trainable, partition

  if config.arch == "encoder_decoder":
    raise SystemExit("train_throughput: decoder and prefix_decoder configs only")
  if config.position == "learned" and args.seq > config.max_len:
    raise SystemExit(f"--seq {args.seq} exceeds TransformerConfig.max_len={config.max_len}")
  if args.batch % args.num_microbatches:
    raise SystemExit(f"--batch {args.batch} is not divisible by --num_microbatches {args.num_microbatches}")
  mesh = partitioning.make_mesh()
  micro = args.batch // args.num_microbatches
  partitioning.check_batch(mesh, micro, what="microbatch")

  # ---- data: every step's batch on device before the clock starts ----
  start, stop = partitioning.host_batch_rows(mesh, micro)
  data = SyntheticData(batch_size=micro, shard_index=start // (stop - start),
                       num_shards=micro // (stop - start), feature_lengths={"targets": args.seq},
                       vocab_size=config.vocab_size, kind="random", seed=args.seed)
  host = [[next(data) for _ in range(args.num_microbatches)] for _ in range(args.warmup + args.steps)]
  batches = [partitioning.global_batch(mesh, mbs) for mbs in host]

  # ---- state and the jitted step: the trainer's own builder ----
  trainable = Trainable(include=(args.trainable,)) if args.trainable else None
  setup = build_train_step(config, adamw(learning_rate=args.learning_rate), host[0][0],
                           learning_rate=args.learning_rate, mesh=mesh, seed=args.seed, trainable=trainable)
  model = setup.model
  state = setup.init_state(jax.random.key(args.seed))

  t0 = time.perf_counter()
  lowered = setup.lower(args.num_microbatches)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  trained = partition(state.params, setup.mask)[0]
  with mesh_context(setup.mesh, setup.rules):
    losses, seconds = [], []
    for batch in batches:
      (state, m), dt = common.timed(compiled, state, batch)
      losses.append(float(m["loss"]))
      seconds.append(dt)

  timed = seconds[args.warmup:]
  stats = common.summarize(timed)
  tokens_per_step = args.batch * args.seq
  tps = tokens_per_step / stats["mean_s"]
  flops_per_token = model.flops_per_token(args.seq)
  peak = metrics_lib.peak_flops_per_device(override=args.peak_flops)
  mfu = metrics_lib.mfu(tps, flops_per_token, mesh.devices.size, peak)
  return {
      "tokens_per_second": tps,
      "tokens_per_second_best_step": tokens_per_step / stats["min_s"],
      "step_time_mean_s": stats["mean_s"],
      "step_time_min_s": stats["min_s"],
      "step_time_median_s": stats["median_s"],
      "step_times_s": timed,
      "warmup_step_times_s": seconds[:args.warmup],
      "mfu": mfu,
      "peak_flops_per_device": peak,
      "flops_per_token": flops_per_token,
      "num_params": model.num_params(state.params),
      "trainable_params": model.num_params(trained),
      "param_bytes": weight_bytes(state.params),
      "optimizer_state_bytes": weight_bytes(state.opt_state),
      "compiled_temp_bytes": _temp_bytes(compiled),
      "lower_s": t1 - t0,
      "compile_s": t2 - t1,
      "loss_first_step": losses[0],
      "loss_last_step": losses[-1],
      "batch": args.batch, "seq": args.seq, "num_microbatches": args.num_microbatches,
      "steps": args.steps, "warmup": args.warmup, "tokens_per_step": tokens_per_step,
      "mesh": dict(mesh.shape),
      **common.peak_memory(),
  }


def _temp_bytes(compiled):
  """XLA's scratch memory for the step (activations, gradients), or None if unreported."""
  analysis = compiled.memory_analysis()
  return None if analysis is None else int(analysis.temp_size_in_bytes)


def main(argv: Sequence[str] = None) -> dict:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = common.make_parser("python -m benchmarks.train_throughput", __doc__)
  parser.add_argument("--batch", type=int, required=True, help="global batch (rows)")
  parser.add_argument("--seq", type=int, required=True, help="sequence length")
  parser.add_argument("--steps", type=int, default=10, help="timed steps")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  parser.add_argument("--num_microbatches", type=int, default=1)
  parser.add_argument("--learning_rate", type=float, default=3e-4)
  parser.add_argument("--trainable", default=None,
                      help="regex: train only the parameters whose path matches (e.g. '_lora_'); default all")
  parser.add_argument("--peak_flops", type=float, default=None,
                      help="peak FLOP/s per device for MFU (default: the table by device kind)")
  args, config, gin_files, bindings = common.parse(parser, argv)
  if args.steps < 1 or args.warmup < 0:
    parser.error("--steps must be >= 1 and --warmup >= 0")
  record = {"benchmark": "train_throughput", "command": common.command("benchmarks.train_throughput", argv),
            "gin_files": gin_files, "gin_bindings": bindings}
  record.update(run(config, args))
  record["config"] = dataclasses.asdict(config)
  record["environment"] = common.environment()
  parts = [f"b{args.batch}", f"s{args.seq}"] + ([f"mb{args.num_microbatches}"] if args.num_microbatches > 1 else [])
  name = args.name or common.default_name("train", gin_files, config, *parts)
  common.write_result(record, name, args.out_dir)
  return record


if __name__ == "__main__":
  main()
