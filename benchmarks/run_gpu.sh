#!/usr/bin/env bash
# Issue 7's GPU measurements on one H100 (see benchmarks/README.md, "GPU targets").
# Run from the repository root after:  pip install -U "jax[cuda12]" && pip install -e .
# Every command writes its JSON under benchmarks/results/; a failing command is reported
# and the others still run (exit status 1 at the end if any failed).
set -u
cd "$(dirname "$0")/.."

# XLA flags from the JAX GPU performance tips and NVIDIA's JAX-Toolbox defaults: the latency
# hiding scheduler, and cuBLAS rather than Triton for GEMMs (A/B it against
# --xla_gpu_triton_gemm_any=true, the JAX guide's code-generation suggestion). Overridable.
export XLA_FLAGS="${XLA_FLAGS:---xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_triton_gemm=false}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
PY="${PYTHON:-python}"
FAST="--scan --dtype bfloat16 --attention_kernel cudnn"
GPT2="--gin_file=gin_configs/models/gpt2_small.gin"
LLAMA="--gin_file=gin_configs/models/llama_1b.gin"
status=0
run() {
  echo "+ XLA_FLAGS='$XLA_FLAGS' $PY -m $*"
  "$PY" -m "$@" || { echo "FAILED: $*" >&2; status=1; }
}

# Training, GPT-2 small 124M, seq 1024, batch 32: target >= 575,000 tokens/s (50% MFU).
run benchmarks.train_throughput $GPT2 --batch 32 --seq 1024 --steps 20 --warmup 3 $FAST --remat none
run benchmarks.train_throughput $GPT2 --batch 32 --seq 1024 --steps 20 --warmup 3 $FAST --remat dots_no_batch
# The plain path for comparison: float32, XLA attention, no scan, no remat (4 microbatches of 8 rows).
run benchmarks.train_throughput $GPT2 --batch 32 --seq 1024 --steps 10 --warmup 2 --num_microbatches 4 \
    --no-scan --remat none --dtype float32 --attention_kernel xla

# Training, LLaMA-style 1.1B, seq 2048: target >= 50% MFU.
run benchmarks.train_throughput $LLAMA --batch 8 --seq 2048 --steps 10 --warmup 2 $FAST --remat dots_no_batch
run benchmarks.train_throughput $LLAMA --batch 8 --seq 2048 --steps 10 --warmup 2 $FAST --remat full

# Decoding, GPT-2 small, bf16 weights and compute, prompt 64 + 128 new tokens, greedy:
# targets >= 585 new tokens/s at batch 1 and >= 43,500 at batch 64 (5x HF generate).
run benchmarks.decode_throughput $GPT2 --prompt_len 64 --new_tokens 128 --batch 1,32,64 --repeats 5 \
    --dtype bfloat16 --gin.TransformerConfig.param_dtype="'bfloat16'" --attention_kernel cudnn
run benchmarks.decode_throughput $GPT2 --prompt_len 64 --new_tokens 128 --batch 1,32,64 --repeats 5 \
    --dtype bfloat16 --gin.TransformerConfig.param_dtype="'bfloat16'" --attention_kernel xla

exit $status
