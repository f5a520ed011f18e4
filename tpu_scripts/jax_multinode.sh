#!/usr/bin/env bash
# One process of a multi-node JAX run on GPU hosts, without torchrun or MPI: run it once on
# every node (one process per node, driving all of that node's GPUs), with the same
# COORDINATOR_ADDRESS and NUM_PROCESSES and this node's PROCESS_ID (0 on the coordinator).
#   node0$ COORDINATOR_ADDRESS=node0:12345 NUM_PROCESSES=4 PROCESS_ID=0 tpu_scripts/jax_multinode.sh \
#            --gin_file=gin_configs/runs/pretrain.gin --gin.MODEL_DIR="'/shared/lm'"
#   node1$ COORDINATOR_ADDRESS=node0:12345 NUM_PROCESSES=4 PROCESS_ID=1 tpu_scripts/jax_multinode.sh ...
# Under SLURM (tpu_scripts/slurm.sbatch) PROCESS_ID and NUM_PROCESSES default to
# SLURM_PROCID and SLURM_NTASKS. The trainer's jax.distributed.initialize gets them as gin
# bindings of initialize_distributed. MODEL_DIR must be on storage every node sees. SIGTERM
# (a preemption, scancel, SLURM's --signal) makes the trainer save and exit; running the
# same command again resumes. PYTHON: the interpreter (default .venv/bin/python, else python3).
set -euo pipefail
source "$(dirname "$0")/common.sh"
if [[ "${1:-}" == "--dry-run" ]]; then
  shift
fi
PROCESS_ID="${PROCESS_ID:-${SLURM_PROCID:-}}"
NUM_PROCESSES="${NUM_PROCESSES:-${SLURM_NTASKS:-}}"
need COORDINATOR_ADDRESS NUM_PROCESSES PROCESS_ID
if (( $# == 0 )); then
  echo "jax_multinode.sh: give the run's arguments, e.g. --gin_file=gin_configs/runs/pretrain.gin" >&2
  exit 2
fi
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  python="$JAXLM_ROOT/.venv/bin/python"
  [[ -x "$python" ]] || python=python3
fi
cd "$JAXLM_ROOT"
exec_or_print=(run)
if [[ "$DRY_RUN" != "1" ]]; then
  exec_or_print=(exec)
fi
"${exec_or_print[@]}" "$python" -m jaxlm.main "$@" \
  "--gin.initialize_distributed.coordinator_address='$COORDINATOR_ADDRESS'" \
  "--gin.initialize_distributed.num_processes=$NUM_PROCESSES" \
  "--gin.initialize_distributed.process_id=$PROCESS_ID"
