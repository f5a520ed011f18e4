"""Adaptation methods: ways of training a pretrained model further, each an objective of
the one trainer (jaxlm.training.objectives), so checkpoints, resume, microbatching and
rollback come with it unchanged. Instruction tuning now (SFTObjective); alignment and
parameter-efficient methods later.

Core only: nothing under jaxlm.adaptation imports TensorFlow or SeqIO; the data that feeds
these objectives (prompts masked out by decoder_loss_weights) is made in jaxlm.data.
"""
from jaxlm.adaptation.sft import SFTObjective

__all__ = ["SFTObjective"]
