#!/usr/bin/env bash
# Puts jaxlm on every worker of the TPU VM and installs it with JAX's TPU build.
#   TPU_NAME=lm ZONE=us-west4-a tpu_scripts/setup.sh [--dry-run]
# REPO_URL set: every worker clones it (BRANCH, default main), or pulls if already there.
# REPO_URL unset: this checkout's committed tree (git archive HEAD) is copied to every worker.
# Then, on every worker: a virtual environment in $REPO_DIR/.venv with `pip install -e .`
# and "jax[tpu]" (JAX's TPU extra: libtpu). EXTRAS=data,eval adds jaxlm's extras.
set -euo pipefail
source "$(dirname "$0")/common.sh"
need TPU_NAME

if [[ -n "${REPO_URL:-}" ]]; then
  tpu_ssh all "if [ -d $(quote "$REPO_DIR")/.git ]; then git -C $(quote "$REPO_DIR") pull --ff-only; else git clone --branch $(quote "${BRANCH:-main}") $(quote "$REPO_URL") $(quote "$REPO_DIR"); fi"
else
  archive="${TMPDIR:-/tmp}/jaxlm-$TPU_NAME.tar.gz"
  run git -C "$JAXLM_ROOT" archive --format=tar.gz "--output=$archive" HEAD
  tpu_flags
  run gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:jaxlm.tar.gz" "${TPU_FLAGS[@]}" --worker=all
  tpu_ssh all "mkdir -p $(quote "$REPO_DIR") && tar -xzf jaxlm.tar.gz -C $(quote "$REPO_DIR")"
fi
package="."
if [[ -n "${EXTRAS:-}" ]]; then
  package=".[$EXTRAS]"
fi
tpu_ssh all "cd $(quote "$REPO_DIR") && python3 -m venv .venv && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e $(quote "$package") 'jax[tpu]'"
