#!/usr/bin/env bash
# Deletes the TPU VM (checkpoints in a gs:// MODEL_DIR stay).
#   TPU_NAME=lm ZONE=us-west4-a tpu_scripts/delete.sh [--dry-run]
set -euo pipefail
source "$(dirname "$0")/common.sh"
need TPU_NAME
tpu_flags
run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${TPU_FLAGS[@]}" --quiet
