"""Mixture-of-experts feed-forward: top-k routing with expert capacity and a balancing loss.

Each sequence is a routing group. A token's k choices are served in priority order (all
first choices of the group, then all second choices, as in GShard); a choice beyond an
expert's capacity C = ceil(k * tokens * capacity_factor / experts) is dropped and the token
passes through the residual alone. The auxiliary loss is Switch Transformer's
E * sum_e f_e * P_e (f_e: fraction of routed choices to expert e, P_e: mean router prob).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.models.config import TransformerConfig
from jaxlm.models.layers import activation
from jaxlm.models.params import constrain, dtype_of, normal, param


class MoeMLP(nn.Module):
  config: TransformerConfig
  out_std: float
  in_std: float

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    cfg = self.config
    b, t, d = x.shape
    e, k, f = cfg.num_experts, cfg.experts_per_token, cfg.d_ff
    dtype = dtype_of(cfg.dtype)
    capacity = max(1, math.ceil(k * t * cfg.expert_capacity_factor / e))

    router = param(self, "router", normal(cfg.init_std), (d, e), ("embed", None))
    probs = jax.nn.softmax(jnp.dot(x.astype(jnp.float32), router.astype(jnp.float32)), axis=-1)
    gates, choice = jax.lax.top_k(probs, k)                       # [b, t, k]
    if cfg.moe_normalize_gates:
      gates = gates / gates.sum(-1, keepdims=True)
    onehot = jax.nn.one_hot(choice, e, dtype=jnp.int32)           # [b, t, k, e]
    by_priority = onehot.transpose(0, 2, 1, 3).reshape(b, k * t, e)
    slot = (jnp.cumsum(by_priority, axis=1) - 1) * by_priority
    slot = slot.reshape(b, k, t, e).transpose(0, 2, 1, 3)         # [b, t, k, e]
    keep = onehot * (slot < capacity)
    slot_onehot = jax.nn.one_hot(slot, capacity, dtype=jnp.float32) * keep[..., None]
    dispatch = slot_onehot.sum(2)                                  # [b, t, e, c]
    combine = (slot_onehot * gates[..., None, None]).sum(2)

    expert_in = jnp.einsum("btec,btd->becd", dispatch.astype(dtype), x)
    expert_in = constrain(expert_in, ("batch", "expert", None, "embed"))
    kernel = lambda name, shape, axes, std: param(self, name, normal(std), shape, axes).astype(dtype)
    if cfg.gated_mlp:
      h = activation(cfg, jnp.einsum("becd,edf->becf", expert_in,
                                     kernel("wi_0", (e, d, f), ("expert", "embed", "mlp"), self.in_std)))
      h = h * jnp.einsum("becd,edf->becf", expert_in,
                         kernel("wi_1", (e, d, f), ("expert", "embed", "mlp"), self.in_std))
    else:
      h = activation(cfg, jnp.einsum("becd,edf->becf", expert_in,
                                     kernel("wi", (e, d, f), ("expert", "embed", "mlp"), self.in_std)))
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    out = jnp.einsum("becf,efd->becd", h, kernel("wo", (e, f, d), ("expert", "mlp", "embed"), self.out_std))
    y = jnp.einsum("becd,btec->btd", out, combine.astype(dtype))

    routed_fraction = onehot.sum(2).astype(jnp.float32).mean(axis=(0, 1)) / k
    aux = e * jnp.sum(routed_fraction * probs.mean(axis=(0, 1))) * cfg.moe_aux_loss_weight
    return y, aux
