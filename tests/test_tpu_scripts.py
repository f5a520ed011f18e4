"""tpu_scripts/: every script parses (bash -n), and its dry run prints the exact commands for
a multi-host v5e slice (v5litepod-16: 4 hosts x 4 chips, v5e's smallest multi-host slice;
v4-16 for 2 hosts) and a 4-node GPU job under SLURM; the printed run commands carry gin
bindings that jaxlm.main accepts; run for real, jax_multinode.sh executes what it prints."""
import glob
import os
import shlex
import subprocess

import gin

from jaxlm import main as jaxlm_main

from train_helpers import ROOT

SCRIPTS = os.path.join(ROOT, "tpu_scripts")
TPU = {"TPU_NAME": "lm-pod", "ZONE": "us-west4-a", "PROJECT": "my-project"}
RUN_ARGS = ["--gin_file=gin_configs/runs/pretrain_synthetic.gin", "--gin.MODEL_DIR='gs://bucket/lm run'"]


def dry_run(script, *args, env=None, ok=True):
  """The commands `script --dry-run args` prints, each split into its words."""
  full_env = {k: v for k, v in os.environ.items() if k not in ("TPU_NAME", "ZONE", "PROJECT", "SLURM_PROCID")}
  full_env.update(env or {})
  proc = subprocess.run(["bash", os.path.join(SCRIPTS, script), "--dry-run", *args], env=full_env,
                        capture_output=True, text=True, cwd=ROOT, timeout=60)
  if not ok:
    return proc
  assert proc.returncode == 0, proc.stderr
  return [shlex.split(line) for line in proc.stdout.splitlines()]


def test_every_script_parses():
  scripts = sorted(glob.glob(os.path.join(SCRIPTS, "*.sh")) + glob.glob(os.path.join(SCRIPTS, "*.sbatch")))
  assert {os.path.basename(s) for s in scripts} >= {"create.sh", "setup.sh", "launch.sh", "logs.sh", "stop.sh",
                                                   "delete.sh", "slurm.sbatch", "slurm_submit.sh", "jax_multinode.sh"}
  for script in scripts:
    proc = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert proc.returncode == 0, (script, proc.stderr)


def test_tpu_pod_lifecycle_dry_run():
  create = dry_run("create.sh", env={**TPU, "ACCELERATOR_TYPE": "v5litepod-16", "SPOT": "1"})
  assert create == [["gcloud", "compute", "tpus", "tpu-vm", "create", "lm-pod", "--zone=us-west4-a",
                     "--project=my-project", "--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite",
                     "--spot"]]
  two_hosts = dry_run("create.sh", env={**TPU, "ACCELERATOR_TYPE": "v4-16", "PREEMPTIBLE": "1"})
  assert two_hosts[0][-3:] == ["--accelerator-type=v4-16", "--version=tpu-ubuntu2204-base", "--preemptible"]

  ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "lm-pod", "--zone=us-west4-a", "--project=my-project"]
  setup = dry_run("setup.sh", env={**TPU, "REPO_URL": "https://github.com/me/jaxlm.git"})
  assert [c[:-2] for c in setup] == [ssh, ssh] and all(c[-2] == "--worker=all" for c in setup)
  assert "git clone --branch main https://github.com/me/jaxlm.git jaxlm" in setup[0][-1]
  assert setup[1][-1] == ("--command=cd jaxlm && python3 -m venv .venv && .venv/bin/pip install -q -U pip && "
                          ".venv/bin/pip install -q -e . 'jax[tpu]'")
  copied = dry_run("setup.sh", env=TPU)  # no REPO_URL: this checkout's committed tree
  assert copied[0][:3] == ["git", "-C", ROOT] and copied[0][3:5] == ["archive", "--format=tar.gz"]
  assert copied[1][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in copied[1]

  launch = dry_run("launch.sh", *RUN_ARGS, env=TPU)
  assert len(launch) == 1 and launch[0][:-1] == ssh + ["--worker=all"]
  remote = shlex.split(launch[0][-1][len("--command="):])
  assert remote[:3] == ["cd", "jaxlm", "&&"] and remote[-6:] == [">", "~/jaxlm.log", "2>&1", "<", "/dev/null", "&"]
  python = remote[4:-6]
  assert python == [".venv/bin/python", "-m", "jaxlm.main", *RUN_ARGS, "--gin.initialize_distributed.auto=True"]
  check_bindings(python[3:])

  assert dry_run("logs.sh", env=TPU) == [ssh + ["--worker=0", "--command=tail -n 100 -F ~/jaxlm.log"]]
  assert dry_run("stop.sh", env=TPU) == [ssh + ["--worker=all", "--command=pkill -TERM -f 'python -m jaxlm.main' || true"]]
  assert dry_run("delete.sh", env=TPU) == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "lm-pod",
                                            "--zone=us-west4-a", "--project=my-project", "--quiet"]]


def test_missing_settings_are_named():
  proc = dry_run("create.sh", env={"TPU_NAME": "x"}, ok=False)
  assert proc.returncode == 2 and "set ACCELERATOR_TYPE" in proc.stderr and proc.stdout == ""
  proc = dry_run("delete.sh", env={"TPU_NAME": "x"}, ok=False)
  assert proc.returncode == 2 and "set ZONE" in proc.stderr and proc.stdout == ""
  proc = dry_run("launch.sh", env=TPU, ok=False)
  assert proc.returncode == 2 and "give the run's arguments" in proc.stderr


def test_four_node_gpu_job_dry_run(tmp_path):
  submit = dry_run("slurm_submit.sh", *RUN_ARGS, env={"NODES": "4", "PARTITION": "a100"})
  assert submit == [["sbatch", "--nodes=4", "--gpus-per-node=8", "--time=24:00:00", "--job-name=jaxlm",
                     "--partition=a100", "tpu_scripts/slurm.sbatch", *RUN_ARGS]]
  # Inside the allocation: the first node coordinates (scontrol is faked: no SLURM here).
  (tmp_path / "scontrol").write_text("#!/bin/sh\nprintf 'gpu-0\\ngpu-1\\ngpu-2\\ngpu-3\\n'\n")
  os.chmod(tmp_path / "scontrol", 0o755)
  job = dry_run("slurm.sbatch", *RUN_ARGS, env={"PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_NNODES": "4",
                                                "SLURM_JOB_NODELIST": "gpu-[0-3]", "SLURM_SUBMIT_DIR": ROOT})
  assert job == [["env", "COORDINATOR_ADDRESS=gpu-0:12345", "NUM_PROCESSES=4", "srun", "--nodes=4",
                  "--ntasks-per-node=1", "--ntasks=4", "--kill-on-bad-exit=1", "--export=ALL",
                  "tpu_scripts/jax_multinode.sh", *RUN_ARGS]]
  for rank in range(4):  # each task: SLURM_PROCID -> the process id
    task = dry_run("jax_multinode.sh", *RUN_ARGS, env={"COORDINATOR_ADDRESS": "gpu-0:12345", "NUM_PROCESSES": "4",
                                                       "SLURM_PROCID": str(rank), "PYTHON": "python3"})
    assert task == [["python3", "-m", "jaxlm.main", *RUN_ARGS,
                     "--gin.initialize_distributed.coordinator_address='gpu-0:12345'",
                     "--gin.initialize_distributed.num_processes=4", f"--gin.initialize_distributed.process_id={rank}"]]
  bindings = check_bindings(task[0][3:])
  assert bindings == ("gpu-0:12345", 4, 3)


def check_bindings(argv):
  """jaxlm.main parses the printed arguments (files and bindings exist); returns the
  initialize_distributed bindings."""
  args, bindings = jaxlm_main.parse_flags(argv)
  jaxlm_main.parse_gin(args.gin_file, bindings)
  if any(b.startswith("initialize_distributed.auto ") for b in bindings):
    assert gin.query_parameter("initialize_distributed.auto") is True
    return None
  return tuple(gin.query_parameter(f"initialize_distributed.{name}")
               for name in ("coordinator_address", "num_processes", "process_id"))


def test_jax_multinode_runs_the_command_it_prints(tmp_path):
  """Not a dry run: the script execs the printed command from the repository root (the
  interpreter is a stand-in that records its arguments; tests/test_train_multihost.py
  trains 2 real jax.distributed processes)."""
  fake = tmp_path / "python"
  fake.write_text('#!/bin/sh\npwd > "$0.cwd"\nfor a in "$@"; do echo "$a"; done > "$0.args"\n')
  os.chmod(fake, 0o755)
  env = {k: v for k, v in os.environ.items() if k != "DRY_RUN"}
  env.update(COORDINATOR_ADDRESS="node0:12345", NUM_PROCESSES="2", PROCESS_ID="1", PYTHON=str(fake))
  proc = subprocess.run(["bash", os.path.join(SCRIPTS, "jax_multinode.sh"), *RUN_ARGS], env=env, cwd=tmp_path,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  printed = dry_run("jax_multinode.sh", *RUN_ARGS, env=env)[0]
  assert (tmp_path / "python.args").read_text().splitlines() == printed[1:]
  assert (tmp_path / "python.cwd").read_text().strip() == ROOT
