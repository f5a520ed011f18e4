"""Supervised fine-tuning (SFT) on instruction data, as an objective of the one trainer.

Instruction tuning trains a pretrained LM on (instruction, output) pairs with the usual
token cross-entropy, but on the outputs only: Flan (Wei et al. 2022, "Finetuned Language
Models Are Zero-Shot Learners") and the SFT stage of InstructGPT (Ouyang et al. 2022,
"Training language models to follow instructions with human feedback"). The masking lives
in the data: the pipeline sets decoder_loss_weights to 0 over the prompt / instruction /
user turns (a causal or prefix decoder reads them as decoder tokens) and to 1 over the
output / assistant tokens; an encoder-decoder reads the instruction in the encoder and all
its decoder targets are outputs. SFTObjective honours those weights and nothing else, so
a target at a weight-0 position changes neither the loss nor its gradient.

Normalization (SFTObjective.normalize):
  'tokens'     the summed loss over every output token of the (big) batch divided by their
               count: each output token weighs the same, so long answers weigh more. The
               usual choice (and the pretraining loss restricted to outputs); exact under
               gradient accumulation.
  'sequences'  each example's mean token loss, averaged over examples: every example weighs
               the same whatever its length, so short answers (classification, short QA in
               a Flan-style mixture) are not drowned by long ones. An example is a (row,
               decoder_segment_ids) pair, so packed rows count each segment (SeqIO packing
               numbers them 1, 2, ... <= length; 0 is padding); without decoder_segment_ids
               each row is one example. The normalizer is the number of examples with at
               least one weighted token, so this too is exact under accumulation.

Metric sums (the step divides each by the summed normalizer):
  cross_entropy, z_loss, accuracy  the output-token means ('tokens') or the per-example
                    token means averaged over examples ('sequences'), like the loss
  aux_loss          the MoE load-balancing loss (summed as aux * normalizer, so it reads as
                    the loss term it adds)
  output_tokens     weighted output tokens: 'sequences' reads it as the mean output length
                    per example; 'tokens' reads 1.0 (the count is the step's 'normalizer')
loss = cross_entropy + z_loss + aux_loss, after division, for both normalizations.
"""
from __future__ import annotations

import dataclasses

import gin
import jax
import jax.numpy as jnp

from jaxlm.training.objectives import model_params

NORMALIZE = ("tokens", "sequences")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SFTObjective:
  """Token cross-entropy on the output tokens (decoder_loss_weights > 0) plus PaLM's z-loss
  (TransformerConfig.z_loss) and the MoE aux loss, normalised per output token ('tokens',
  the default) or per example ('sequences'); see the module docstring. An invalid
  `normalize` raises ValueError naming SFTObjective.normalize."""
  normalize: str = "tokens"

  def __post_init__(self):
    if self.normalize not in NORMALIZE:
      raise ValueError(f"SFTObjective.normalize={self.normalize!r}: must be one of {NORMALIZE}")

  def __call__(self, model, trainable, frozen, batch, rng=None):
    t = model.token_losses(model_params(trainable, frozen), batch, rng)
    terms = {"cross_entropy": t.nll, "z_loss": t.z_loss, "accuracy": t.correct}
    if self.normalize == "tokens":
      sums = {name: x.sum() for name, x in terms.items()}
      normalizer = t.weights.sum()
    else:
      sums, normalizer = per_example_means(terms, t.weights, batch.get("decoder_segment_ids"))
    sums.update(aux_loss=t.aux * normalizer, output_tokens=t.weights.sum())
    return sums["cross_entropy"] + sums["z_loss"] + sums["aux_loss"], normalizer, sums


def example_ids(weights, segment_ids=None):
  """[b, t] int ids, one per (row, segment) example (each row one example without segment
  ids), and how many ids there can be."""
  rows, length = weights.shape
  segments = jnp.zeros(weights.shape, jnp.int32) if segment_ids is None else jnp.asarray(segment_ids)
  return jnp.arange(rows, dtype=jnp.int32)[:, None] * (length + 1) + segments, rows * (length + 1)


def per_example_means(terms, weights, segment_ids=None):
  """({name: sum over examples of the example's weighted mean of terms[name]}, number of
  examples with a weighted token). Each term is already multiplied by the weights."""
  ids, num = example_ids(weights, segment_ids)
  total = lambda x: jax.ops.segment_sum(x.ravel(), ids.ravel(), num_segments=num)
  counts = total(weights)
  scale = jnp.where(counts > 0, 1.0 / jnp.where(counts > 0, counts, 1.0), 0.0)
  sums = {name: (total(x) * scale).sum() for name, x in terms.items()}
  return sums, (counts > 0).sum().astype(jnp.float32)
