# Shared by the tpu_scripts: settings, checks and the dry run. Sourced, not run.
#
# DRY_RUN=1 (or --dry-run as a script's first argument) prints each command, one line each,
# quoted so that pasting the line runs it, instead of running it.
# TPU settings (environment):
#   TPU_NAME          the TPU VM (pod slice) name                       (required)
#   ZONE              e.g. us-west4-a                                   (required)
#   PROJECT           the Google Cloud project             (default: gcloud's configured one)
#   REPO_DIR          the checkout on every worker, relative to $HOME   (default: jaxlm)
#   LOG_FILE          the run's log on every worker, relative to $HOME  (default: jaxlm.log)

DRY_RUN="${DRY_RUN:-0}"
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
fi
REPO_DIR="${REPO_DIR:-jaxlm}"
LOG_FILE="${LOG_FILE:-jaxlm.log}"
JAXLM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# run CMD ARGS...: runs the command, or prints it quoted under DRY_RUN=1.
run() {
  if [[ "$DRY_RUN" == "1" ]]; then
    quote "$@"
  else
    "$@"
  fi
}

# need NAME...: exits naming every required setting that is empty.
need() {
  local missing=()
  local name
  for name in "$@"; do
    if [[ -z "${!name:-}" ]]; then
      missing+=("$name")
    fi
  done
  if (( ${#missing[@]} )); then
    echo "$(basename "$0"): set ${missing[*]} (see tpu_scripts/common.sh)" >&2
    exit 2
  fi
}

# quote ARGS...: the arguments as one line of shell words, each left bare if it is safe and
# single-quoted otherwise (as Python's shlex.quote): a remote --command, or a dry run's line.
quote() {
  local words=() word
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      words+=("$word")
    else
      words+=("'${word//\'/\'\"\'\"\'}'")
    fi
  done
  echo "${words[*]}"
}

# tpu_flags: TPU_FLAGS, the gcloud flags every TPU command takes.
tpu_flags() {
  need ZONE
  TPU_FLAGS=("--zone=$ZONE")
  if [[ -n "${PROJECT:-}" ]]; then
    TPU_FLAGS+=("--project=$PROJECT")
  fi
}

# tpu_ssh WORKER COMMAND: runs COMMAND (one string) on WORKER ('all': every host at once).
tpu_ssh() {
  need TPU_NAME
  tpu_flags
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${TPU_FLAGS[@]}" "--worker=$1" "--command=$2"
}
