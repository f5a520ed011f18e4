"""Sharding: 1 device vs a 2x2x2 (data x fsdp x tensor) mesh of 8 fake CPU devices, the
rule table, and the errors for meshes and batches that do not divide."""
import json
import types

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from train_helpers import finish, losses, run_tiny, start
from jaxlm.training import partitioning


def test_mesh_that_does_not_divide_the_devices_names_the_numbers():
  n = jax.device_count()
  with pytest.raises(ValueError, match=rf"data=3 x fsdp=1 x tensor=1 x expert=1 = 3 devices, but there are {n}"):
    partitioning.make_mesh(data=3)
  with pytest.raises(ValueError, match=rf"{n} devices are not divisible by fsdp=2 x tensor=3 x expert=1 = 6"):
    partitioning.make_mesh(data=-1, fsdp=2, tensor=3)


def test_batch_that_does_not_divide_the_data_axes_names_the_numbers(tmp_path):
  mesh = types.SimpleNamespace(shape={"data": 2, "fsdp": 2, "tensor": 2, "expert": 1})
  with pytest.raises(ValueError, match=r"batch size 6 is not divisible by .* data=2 x fsdp=2 x expert=1 = 4"):
    partitioning.check_batch(mesh, 6)
  partitioning.check_batch(mesh, 8)
  # In the trainer the check comes before any compilation or checkpoint directory.
  with pytest.raises(ValueError, match=r"BATCH_SIZE=6 is not divisible by train.num_microbatches=4"):
    run_tiny(str(tmp_path / "run"), 2, batch_size=6, num_microbatches=4)
  assert not (tmp_path / "run").exists()


def test_logical_rules_map_model_axes_onto_the_mesh():
  rules = partitioning.logical_axis_rules()
  import flax.linen as nn
  assert nn.logical_to_mesh_axes(("embed", "mlp"), rules) == P("fsdp", "tensor")
  assert nn.logical_to_mesh_axes(("vocab", "embed"), rules) == P("tensor", "fsdp")
  assert nn.logical_to_mesh_axes(("embed", "heads", "kv"), rules) == P("fsdp", "tensor", None)
  assert nn.logical_to_mesh_axes(("layers", "embed", "mlp"), rules) == P(None, "fsdp", "tensor")
  # activations: the batch takes data x fsdp x expert, so 'embed' stays whole
  assert nn.logical_to_mesh_axes(("batch", "length", "embed"), rules) == P(("data", "fsdp", "expert"), None, None)
  assert nn.logical_to_mesh_axes(("expert", "embed", "mlp"), rules) == P("expert", "fsdp", "tensor")
  over = partitioning.logical_axis_rules(overrides=[("mlp", None)])
  assert nn.logical_to_mesh_axes(("embed", "mlp"), over) == P("fsdp", None)


def test_one_device_and_a_2x2x2_mesh_give_the_same_training(tmp_path):
  proc = start({"model_dir": str(tmp_path / "mesh8"), "steps": 5, "mesh": [2, 2, 2],
                "out": str(tmp_path / "mesh8.json")}, devices=8)
  single = run_tiny(str(tmp_path / "single"), 5)       # meanwhile, here on 1 device
  finish(proc)
  sharded = json.loads((tmp_path / "mesh8.json").read_text())
  assert sharded["devices"] == 8
  np.testing.assert_allclose(sharded["losses"], losses(single), rtol=0, atol=1e-5)
  assert losses(single)[-1] < losses(single)[0] - 0.05  # it trained
  params8 = np.load(str(tmp_path / "mesh8.json.npz"))
  from train_helpers import flat_params
  for name, value in flat_params(single.state.params).items():
    np.testing.assert_allclose(params8[name], value, rtol=1e-4, atol=1e-5, err_msg=name)

  # The parameters really are split as the rules say (fsdp over 'embed', tensor over
  # 'mlp'/'heads'/'vocab'), and each device holds only its shard.
  specs, shapes = sharded["shardings"], sharded["local_shapes"]
  wi = "['decoder']['layers_0']['mlp']['wi_0']['kernel']"
  assert specs[wi] == str(P("fsdp", "tensor")) and shapes[wi] == [16, 32]           # of (32, 64)
  wo = "['decoder']['layers_1']['mlp']['wo']['kernel']"
  assert specs[wo] == str(P("tensor", "fsdp")) and shapes[wo] == [32, 16]           # of (64, 32)
  q = "['decoder']['layers_0']['self_attention']['query']"
  assert specs[q] == str(P("fsdp", "tensor", None)) and shapes[q] == [16, 2, 8]     # of (32, 4, 8)
  emb = "['token_embedding']['embedding']"
  assert specs[emb] == str(P("tensor", "fsdp")) and shapes[emb] == [64, 16]         # of (128, 32)
  assert specs["['lm_head']"] == str(P("fsdp", "tensor"))
  norm = "['decoder']['final_norm']['scale']"
  assert specs[norm] == str(P("fsdp")) and shapes[norm] == [16]
