#!/usr/bin/env bash
# Submits tpu_scripts/slurm.sbatch for NODES GPU hosts (one task per host).
#   NODES=4 GPUS_PER_NODE=8 TIME=24:00:00 PARTITION=gpu tpu_scripts/slurm_submit.sh [--dry-run] \
#     --gin_file=gin_configs/runs/pretrain.gin --gin.MODEL_DIR="'/shared/lm'"
# NODES (required), GPUS_PER_NODE (default 8), TIME (default 24:00:00), PARTITION and
# ACCOUNT (optional), JOB_NAME (default jaxlm). Run from anywhere: it submits from the
# repository root, where the job runs.
set -euo pipefail
source "$(dirname "$0")/common.sh"
if [[ "${1:-}" == "--dry-run" ]]; then
  shift
fi
need NODES
if (( $# == 0 )); then
  echo "slurm_submit.sh: give the run's arguments, e.g. --gin_file=gin_configs/runs/pretrain.gin" >&2
  exit 2
fi
flags=("--nodes=$NODES" "--gpus-per-node=${GPUS_PER_NODE:-8}" "--time=${TIME:-24:00:00}"
       "--job-name=${JOB_NAME:-jaxlm}")
if [[ -n "${PARTITION:-}" ]]; then
  flags+=("--partition=$PARTITION")
fi
if [[ -n "${ACCOUNT:-}" ]]; then
  flags+=("--account=$ACCOUNT")
fi
cd "$JAXLM_ROOT"
run sbatch "${flags[@]}" tpu_scripts/slurm.sbatch "$@"
