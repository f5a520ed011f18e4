#!/usr/bin/env bash
# Stops the run on every host as a preemption would: SIGTERM, so the trainer saves a
# checkpoint at the same step on every host and exits; launch.sh resumes it.
#   TPU_NAME=lm ZONE=us-west4-a tpu_scripts/stop.sh [--dry-run]
set -euo pipefail
source "$(dirname "$0")/common.sh"
tpu_ssh all "pkill -TERM -f 'python -m jaxlm.main' || true"
