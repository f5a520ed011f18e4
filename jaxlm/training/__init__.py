"""jaxlm.training: the sharded trainer (mesh + rules, optimizers, schedules, checkpoints,
stability, metrics). Importing it registers every gin configurable of the package.
Core only: jax, flax, optax, orbax-checkpoint, gin-config (no TensorFlow)."""
from jaxlm.training import (checkpointing, metrics, optimizers, partitioning, schedules, stability,
                            synthetic_data, train_state, trainer)
from jaxlm.training.optimizers import adafactor, adamw, sgd, weight_decay_mask
from jaxlm.training.partitioning import LOGICAL_AXIS_RULES, logical_axis_rules, make_mesh
from jaxlm.training.schedules import batch_ramp, constant, constant_batch, rsqrt, warmup_cosine
from jaxlm.training.stability import LossSpikeDetector
from jaxlm.training.synthetic_data import SyntheticData
from jaxlm.training.train_state import TrainState
from jaxlm.training.trainer import TrainResult, make_train_step, train

__all__ = ["train", "TrainResult", "TrainState", "make_train_step", "adamw", "adafactor", "sgd",
           "weight_decay_mask", "warmup_cosine", "rsqrt", "constant", "constant_batch",
           "batch_ramp", "make_mesh", "logical_axis_rules", "LOGICAL_AXIS_RULES",
           "LossSpikeDetector", "SyntheticData"]
