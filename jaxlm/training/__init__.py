"""jaxlm.training: the sharded trainer as a library (mesh + rules, objectives, trainable
selection, the train step and its builder, optimizers, schedules, checkpoints, stability,
metrics). Importing it registers every gin configurable of the package.
Core only: jax, flax, optax, orbax-checkpoint, gin-config (no TensorFlow)."""
from jaxlm.training import (checkpointing, init_from, memory, metrics, objectives, optimizers,
                            partitioning, schedules, stability, toy_data, trainable, train_state,
                            train_step, trainer)
from jaxlm.training.checkpointing import restore_params
from jaxlm.training.objectives import NextTokenObjective, model_params
from jaxlm.training.optimizers import adafactor, adamw, sgd, weight_decay_mask
from jaxlm.training.partitioning import LOGICAL_AXIS_RULES, logical_axis_rules, make_mesh
from jaxlm.training.schedules import batch_ramp, constant, constant_batch, rsqrt, warmup_cosine
from jaxlm.training.stability import LossSpikeDetector
from jaxlm.training.toy_data import SyntheticData
from jaxlm.training.trainable import Trainable
from jaxlm.training.train_state import TrainState
from jaxlm.training.train_step import TrainSetup, build_train_step, make_train_step
from jaxlm.training.trainer import TrainResult, train

__all__ = ["train", "TrainResult", "TrainState", "TrainSetup", "build_train_step", "make_train_step",
           "NextTokenObjective", "model_params", "Trainable", "restore_params", "adamw", "adafactor",
           "sgd", "weight_decay_mask", "warmup_cosine", "rsqrt", "constant", "constant_batch",
           "batch_ramp", "make_mesh", "logical_axis_rules", "LOGICAL_AXIS_RULES",
           "LossSpikeDetector", "SyntheticData"]
