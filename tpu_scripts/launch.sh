#!/usr/bin/env bash
# Starts a gin run on every host of the TPU VM at once, in the background; its output goes
# to ~/$LOG_FILE on each host (tpu_scripts/logs.sh shows it).
#   TPU_NAME=lm ZONE=us-west4-a tpu_scripts/launch.sh [--dry-run] --gin_file=... [--gin.X=V ...]
# e.g.  tpu_scripts/launch.sh --gin_file=gin_configs/models/gpt2_small.gin \
#         --gin_file=gin_configs/runs/pretrain.gin --gin.MODEL_DIR="'gs://my-bucket/gpt2'"
# Every host runs the same command; `initialize_distributed.auto=True` makes the trainer
# call jax.distributed.initialize(), which finds the coordinator, the number of hosts and
# its own id from the TPU VM's metadata. MODEL_DIR must be shared by the hosts (a gs://
# bucket): every host writes its shards of each checkpoint there. On a preemption notice
# (SIGTERM) the trainer saves and exits; launch.sh again (after create.sh and setup.sh if
# the slice was deleted) resumes from the latest checkpoint.
set -euo pipefail
source "$(dirname "$0")/common.sh"
need TPU_NAME
if [[ "${1:-}" == "--dry-run" ]]; then
  shift
fi
if (( $# == 0 )); then
  echo "launch.sh: give the run's arguments, e.g. --gin_file=gin_configs/runs/pretrain.gin" >&2
  exit 2
fi
command="$(quote .venv/bin/python -m jaxlm.main "$@" --gin.initialize_distributed.auto=True)"
tpu_ssh all "cd $(quote "$REPO_DIR") && nohup $command > ~/$(quote "$LOG_FILE") 2>&1 < /dev/null &"
