#!/usr/bin/env bash
# Follows the run's log on one host (WORKER, default 0: process 0 logs the metrics), or
# prints the last lines of every host's with WORKER=all.
#   TPU_NAME=lm ZONE=us-west4-a tpu_scripts/logs.sh [--dry-run]
set -euo pipefail
source "$(dirname "$0")/common.sh"
worker="${WORKER:-0}"
lines="${LINES_SHOWN:-100}"
if [[ "$worker" == "all" ]]; then
  tpu_ssh all "hostname; tail -n $(quote "$lines") ~/$(quote "$LOG_FILE")"
else
  tpu_ssh "$worker" "tail -n $(quote "$lines") -F ~/$(quote "$LOG_FILE")"
fi
