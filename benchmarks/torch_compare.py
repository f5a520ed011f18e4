"""jaxlm beside PyTorch on the same shapes, in one run: GPT-2 small's training step and KV-cache decoding.

  python -m benchmarks.torch_compare --gin_file=gin_configs/models/gpt2_small.gin \\
      [--batch 4 --seq 256 --steps 3 --warmup 1] [--decode_batch 1,16 --prompt_len 64 --new_tokens 32] \\
      [--repeats 2] [--skip_decode] [--gin.TransformerConfig.X=V ...] [--out_dir DIR --name NAME]

jaxlm's numbers come from its own benchmarks (train_throughput.run: the trainer's step,
AdamW, random tokens; decode_throughput.measure: decoding.generate, greedy, every row the
full prompt, exactly new_tokens tokens). PyTorch's come from the same process right after,
on the same shapes and vocabulary: transformers' GPT2LMHeadModel (float32, dropout off) with
a plain eager step (forward, loss, backward, torch.optim.AdamW) and its `generate` (greedy,
KV cache, min_new_tokens = max_new_tokens). Random weights on both sides. The record holds
both sides' tokens/s and the ratios jaxlm / PyTorch (> 1: jaxlm is faster). For CPUs (the
shapes default to the ones the test machine can run in minutes); on a GPU use
../shared/reference/torch_gpt2_bench.py, which compiles and autocasts the PyTorch side.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Sequence

from benchmarks import common, decode_throughput, train_throughput


def torch_model(config):
  """transformers' GPT-2 with config's sizes, float32, no dropout, random weights."""
  from transformers import GPT2Config, GPT2LMHeadModel
  hf = GPT2Config(vocab_size=config.vocab_size, n_positions=config.max_len, n_embd=config.d_model,
                  n_layer=config.num_layers, n_head=config.num_heads, n_inner=config.d_ff,
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  return GPT2LMHeadModel(hf).float()


def torch_train(config, args) -> dict:
  import numpy as np
  import torch
  model = torch_model(config).train()
  opt = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
  tokens = torch.tensor(np.random.default_rng(args.seed).integers(1, config.vocab_size, (args.batch, args.seq)))

  def step():
    opt.zero_grad(set_to_none=True)
    loss = model(tokens, labels=tokens).loss
    loss.backward()
    opt.step()
    return float(loss)

  seconds = []
  for _ in range(args.warmup + args.steps):
    start = time.perf_counter()
    step()
    seconds.append(time.perf_counter() - start)
  stats = common.summarize(seconds[args.warmup:])
  return {"tokens_per_second": args.batch * args.seq / stats["mean_s"], "step_time_mean_s": stats["mean_s"],
          "step_time_min_s": stats["min_s"], "step_times_s": seconds[args.warmup:],
          "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def torch_decode(config, batch: int, args) -> dict:
  import numpy as np
  import torch
  model = torch_model(config).eval()
  prompt = torch.tensor(np.random.default_rng((args.seed, batch)).integers(2, config.vocab_size,
                                                                           (batch, args.prompt_len)))
  kwargs = dict(do_sample=False, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, use_cache=True,
                pad_token_id=0, attention_mask=torch.ones_like(prompt))
  with torch.no_grad():
    model.generate(prompt, **kwargs)  # warm-up
    seconds = []
    for _ in range(args.repeats):
      start = time.perf_counter()
      out = model.generate(prompt, **kwargs)
      seconds.append(time.perf_counter() - start)
  assert out.shape == (batch, args.prompt_len + args.new_tokens), out.shape
  stats = common.summarize(seconds)
  return {"batch": batch, "new_tokens_per_second": batch * args.new_tokens / stats["mean_s"],
          "call_time_mean_s": stats["mean_s"]}


def main(argv: Sequence[str] = None) -> dict:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = common.make_parser("python -m benchmarks.torch_compare", __doc__)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--num_microbatches", type=int, default=1)
  parser.add_argument("--learning_rate", type=float, default=3e-4)
  parser.add_argument("--trainable", default=None)
  parser.add_argument("--peak_flops", type=float, default=None)
  parser.add_argument("--decode_batch", action="append", default=None, help="e.g. 1,16 (default 1,16)")
  parser.add_argument("--prompt_len", type=int, default=64)
  parser.add_argument("--new_tokens", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--skip_decode", action="store_true")
  args, config, gin_files, bindings = common.parse(parser, argv)
  if config.arch != "decoder" or config.position != "learned" or not config.tie_embeddings:
    raise SystemExit("torch_compare: GPT-2-shaped configs only (decoder, learned positions, tied embeddings), "
                     "e.g. gin_configs/models/gpt2_small.gin")

  train = {"jaxlm": train_throughput.run(config, args)}
  train["pytorch"] = torch_train(config, args)
  train["ratio"] = train["jaxlm"]["tokens_per_second"] / train["pytorch"]["tokens_per_second"]
  print(f"train b{args.batch} x {args.seq}: jaxlm {train['jaxlm']['tokens_per_second']:.1f} tokens/s, "
        f"PyTorch {train['pytorch']['tokens_per_second']:.1f} (ratio {train['ratio']:.2f})")
  decode = []
  if not args.skip_decode:
    import jax
    from jaxlm.models import build_model
    model = build_model(config)
    params = model.init(jax.random.key(args.seed), model.dummy_batch(1, args.prompt_len))
    for b in decode_throughput.batch_sizes(args.decode_batch or ["1,16"]):
      row = {"batch": b, "jaxlm": decode_throughput.measure(model, params, b, args), "pytorch": torch_decode(config, b, args)}
      row["ratio"] = row["jaxlm"]["new_tokens_per_second"] / row["pytorch"]["new_tokens_per_second"]
      print(f"decode b{b} ({args.prompt_len} + {args.new_tokens}): jaxlm {row['jaxlm']['new_tokens_per_second']:.1f} "
            f"tokens/s, PyTorch {row['pytorch']['new_tokens_per_second']:.1f} (ratio {row['ratio']:.2f})")
      decode.append(row)
  record = {"benchmark": "torch_compare", "command": common.command("benchmarks.torch_compare", argv),
            "gin_files": gin_files, "gin_bindings": bindings, "train": train, "decode": decode,
            "config": dataclasses.asdict(config), "environment": common.environment()}
  name = args.name or common.default_name("torch_compare", gin_files, config, f"b{args.batch}", f"s{args.seq}")
  common.write_result(record, name, args.out_dir)
  return record


if __name__ == "__main__":
  main()
