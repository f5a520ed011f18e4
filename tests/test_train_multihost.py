"""Two processes on localhost (jax.distributed, 4 fake CPU devices each, one 2x2x2 mesh),
each reading only its half of every batch, train like one process; SIGTERM to one of
them stops both at the same step with one checkpoint, and both exit cleanly."""
import json
import signal

import numpy as np

from train_helpers import finish, flat_params, free_port, interrupt, losses, run_tiny, start


def test_two_processes_match_one_and_stop_together(tmp_path):
  model_dir = str(tmp_path / "multi")
  spec = {"model_dir": model_dir, "steps": 20, "mesh": [2, 2, 2], "port": free_port(),
          "num_processes": 2, "out": str(tmp_path / "multi.json"), "data": {"slow": 0.3},
          "train": {"log_every": 1}}
  procs = [start(dict(spec, process_id=i), devices=4) for i in range(2)]
  interrupt([(procs[1], model_dir, 5, signal.SIGTERM)])      # only host 1 gets the notice
  for p in procs:
    finish(p, timeout=300)                                   # both exit with status 0
  multi = json.loads((tmp_path / "multi.json").read_text())
  assert multi["processes"] == 2 and multi["devices"] == 8 and multi["preempted"]
  stopped = len(multi["losses"])
  assert 5 <= stopped < 20

  single = run_tiny(str(tmp_path / "single"), stopped)
  np.testing.assert_allclose(multi["losses"], losses(single), rtol=0, atol=1e-5)
  gathered = np.load(str(tmp_path / "multi.json.npz"))
  for name, value in flat_params(single.state.params).items():
    np.testing.assert_allclose(gathered[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
  # One checkpoint at the stop step, holding each host's data position.
  meta = json.loads((tmp_path / "multi" / "checkpoints" / str(stopped) / "meta" / "metadata").read_text())
  assert meta["data"] == [{"index": stopped}, {"index": stopped}]
