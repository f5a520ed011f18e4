#!/usr/bin/env bash
# Creates a TPU VM pod slice: gcloud compute tpus tpu-vm create.
#   TPU_NAME=lm ZONE=us-west4-a ACCELERATOR_TYPE=v5litepod-16 SPOT=1 tpu_scripts/create.sh [--dry-run]
# ACCELERATOR_TYPE (required): v5litepod-16 is a 4x4 v5e slice (4 hosts x 4 chips; the
#   smallest multi-host v5e, as v5litepod-8 is 1 host x 8 chips); v4-16 and v5p-16 are 2
#   hosts x 4 chips.
# TPU_VERSION: the TPU software version (default: from the type: v5litepod ->
#   v2-alpha-tpuv5-lite, v5p -> v2-alpha-tpuv5, v6e -> v2-alpha-tpuv6e, v4 -> tpu-ubuntu2204-base).
# SPOT=1: a Spot TPU; PREEMPTIBLE=1: a preemptible one. Either can be taken away: the trainer
#   checkpoints on the notice (SIGTERM) and create.sh, setup.sh and launch.sh again resume it.
set -euo pipefail
source "$(dirname "$0")/common.sh"
need TPU_NAME ACCELERATOR_TYPE

default_version() {
  case "$1" in
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    v4-*) echo tpu-ubuntu2204-base ;;
    *) echo "create.sh: no default TPU_VERSION for ACCELERATOR_TYPE=$1; set TPU_VERSION" >&2; exit 2 ;;
  esac
}

version="${TPU_VERSION:-$(default_version "$ACCELERATOR_TYPE")}"
tpu_flags
extra=()
if [[ "${SPOT:-0}" == "1" ]]; then
  extra+=(--spot)
fi
if [[ "${PREEMPTIBLE:-0}" == "1" ]]; then
  extra+=(--preemptible)
fi
run gcloud compute tpus tpu-vm create "$TPU_NAME" "${TPU_FLAGS[@]}" "--accelerator-type=$ACCELERATOR_TYPE" \
  "--version=$version" "${extra[@]}"
