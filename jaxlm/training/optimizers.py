"""Optimizers as gin-configurable factories: `optimizer(learning_rate) -> optax transform`.

Both start with global-norm gradient clipping (1.0 by default; None turns it off).

AdamW (Loshchilov & Hutter; GPT-3/LLaMA settings): beta1 0.9, beta2 0.95, eps 1e-8,
  weight decay 0.1 applied PyTorch-style (p -= lr * wd * p, decoupled from the adaptive
  scaling), masked off for norm scales and biases.

Adafactor (Shazeer & Stern 2018) via optax.adafactor, whose semantics match the paper:
  - second-moment decay beta2_k = 1 - k^(-0.8) with k counted from 1 (`decay_rate=0.8`), so
    the first step uses g^2 exactly;
  - factored row/column statistics for tensors whose two largest dims are both
    >= min_dim_size_to_factor (128 as in optax/t5x; tests lower it for tiny models); for
    rank > 2 tensors the two *largest* dims are factored (t5x factors the last two);
  - update clipping U / max(1, RMS(U)/d) with d = clipping_threshold = 1.0;
  - relative step size: updates are multiplied by max(1e-3, RMS(param))
    (`multiply_by_parameter_scale`), the learning rate schedule supplies rho_t
    (T5: rsqrt with peak 0.01);
  - optional momentum (beta1) as an EMA of updates, off by default as in T5;
  - optional weight decay, added after the learning rate (not multiplied by it), as in
    optax and t5x's `weight_decay_rate`; masked like AdamW's.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import gin
import jax
import optax

NO_DECAY = ("norm", "scale", "bias")


@gin.configurable
def weight_decay_mask(params, exclude: Sequence[str] = NO_DECAY):
  """True for parameters to decay: those with no path component containing any of
  `exclude` (norm modules, their 'scale', 'bias' and '*_bias' parameters)."""
  def decay(path, _):
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    return not any(pattern in name for name in names for pattern in exclude)
  return jax.tree_util.tree_map_with_path(decay, params)


def _clip(clip_norm: Optional[float]):
  return optax.clip_by_global_norm(clip_norm) if clip_norm else optax.identity()


@gin.configurable
def adamw(learning_rate: Union[float, Callable], b1: float = 0.9, b2: float = 0.95,
          eps: float = 1e-8, weight_decay: float = 0.1, clip_norm: Optional[float] = 1.0,
          mask: Callable = weight_decay_mask) -> optax.GradientTransformation:
  return optax.chain(
      _clip(clip_norm),
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      optax.add_decayed_weights(weight_decay, mask=mask) if weight_decay else optax.identity(),
      optax.scale_by_learning_rate(learning_rate),
  )


@gin.configurable
def adafactor(learning_rate: Union[float, Callable], decay_rate: float = 0.8,
              min_dim_size_to_factor: int = 128, clipping_threshold: Optional[float] = 1.0,
              momentum: Optional[float] = None, multiply_by_parameter_scale: bool = True,
              weight_decay: Optional[float] = None, eps: float = 1e-30, factored: bool = True,
              clip_norm: Optional[float] = 1.0,
              mask: Callable = weight_decay_mask) -> optax.GradientTransformation:
  return optax.chain(
      _clip(clip_norm),
      optax.adafactor(learning_rate=learning_rate, min_dim_size_to_factor=min_dim_size_to_factor,
                      decay_rate=decay_rate, decay_offset=0,
                      multiply_by_parameter_scale=multiply_by_parameter_scale,
                      clipping_threshold=clipping_threshold, momentum=momentum,
                      weight_decay_rate=weight_decay, eps=eps, factored=factored,
                      weight_decay_mask=mask),
  )


@gin.configurable
def sgd(learning_rate: Union[float, Callable], momentum: Optional[float] = None,
        clip_norm: Optional[float] = 1.0) -> optax.GradientTransformation:
  """Plain (momentum) SGD; handy for exact-arithmetic tests."""
  return optax.chain(_clip(clip_norm), optax.sgd(learning_rate, momentum=momentum))
