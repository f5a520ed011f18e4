"""Objectives: what the one train step minimises.

An objective is called once per microbatch as

    loss_sum, normalizer, metrics = objective(model, trainable, frozen, batch, rng)

trainable  the trained parameters (the step differentiates with respect to these)
frozen     {'params': the model's frozen parameters, <name>: each extra frozen tree that
           travels with the state, e.g. 'reference' for DPO/PPO}; `model_params(trainable,
           frozen)` is the whole model tree
batch      one microbatch, leaves [rows, length]
rng        a dropout key, or None (no dropout)

and returns the *summed* loss over the microbatch, the count it is to be divided by (target
tokens, pairs, ...), and a dict of metric *sums* over the microbatch. The step adds all
three over the microbatches and reports loss = sum / normalizer and every metric as
metric_sum / normalizer, so accumulated microbatches give exactly the big-batch gradient.
An objective is a gin configurable (`train.objective = @MyObjective()`); adding one never
touches the loop.
"""
from __future__ import annotations

import gin

from jaxlm.training.trainable import merge


def model_params(trainable, frozen):
  """The whole model parameter tree from the trained and the frozen leaves."""
  return merge(trainable, frozen.get("params", {}))


@gin.configurable
class NextTokenObjective:
  """Token cross-entropy on decoder targets (causal, prefix or seq2seq), plus PaLM's z-loss
  (TransformerConfig.z_loss) and the MoE load-balancing loss, normalised by the number of
  weighted target tokens. The default objective of pretraining."""

  def __call__(self, model, trainable, frozen, batch, rng=None):
    return model.loss_sums(model_params(trainable, frozen), batch, rng)
