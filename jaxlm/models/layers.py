"""Building blocks: norms, dense layers, feed-forward layers, embeddings (parameters with
logical axes: jaxlm.models.params; every projection: jaxlm.models.projection)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.models.config import TransformerConfig
from jaxlm.models.params import constrain, dtype_of, normal, param
from jaxlm.models.projection import project


class Norm(nn.Module):
  """LayerNorm (scale and bias) or RMSNorm (scale only), computed in float32."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dim = x.shape[-1]
    x32 = x.astype(jnp.float32)
    if cfg.norm_type == "layernorm":
      mean = x32.mean(-1, keepdims=True)
      var = jnp.square(x32 - mean).mean(-1, keepdims=True)
      y = (x32 - mean) * jax.lax.rsqrt(var + cfg.norm_eps)
      y = y * param(self, "scale", jax.nn.initializers.ones, (dim,), ("embed",))
      y = y + param(self, "bias", jax.nn.initializers.zeros, (dim,), ("embed",))
    else:
      y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + cfg.norm_eps)
      y = y * param(self, "scale", jax.nn.initializers.ones, (dim,), ("embed",))
    return y.astype(dtype_of(cfg.dtype))


def activation(cfg: TransformerConfig, x):
  if cfg.mlp_activation == "relu":
    return jax.nn.relu(x)
  if cfg.mlp_activation == "swiglu":
    return jax.nn.silu(x)
  return jax.nn.gelu(x, approximate=cfg.gelu_approximate)  # gelu, geglu


class Dense(nn.Module):
  """x @ kernel (+ bias) with the kernel's logical axes; contracts the last input axis. The
  kernel may be quantized and carry a LoRA branch (jaxlm.models.projection); LoRA targets
  match the module's name (wi, wi_0, wi_1, wo)."""
  config: TransformerConfig
  features: int
  axes: tuple  # (in_axis_name, out_axis_name)
  init_std: float

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    cfg = self.config
    y = project(self, "kernel", x, (x.shape[-1], self.features), self.axes, self.init_std,
                deterministic=deterministic, lora_name=self.name)
    if cfg.use_bias:
      y = y + param(self, "bias", jax.nn.initializers.zeros, (self.features,), self.axes[1:]).astype(y.dtype)
    return y


class MLP(nn.Module):
  """Feed-forward: ReLU/GeLU (wi -> wo) or gated SwiGLU/GeGLU (act(wi_0) * wi_1 -> wo)."""
  config: TransformerConfig
  out_std: float
  in_std: float

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    cfg = self.config
    if cfg.gated_mlp:
      h = activation(cfg, Dense(cfg, cfg.d_ff, ("embed", "mlp"), self.in_std, name="wi_0")(x, deterministic))
      h = h * Dense(cfg, cfg.d_ff, ("embed", "mlp"), self.in_std, name="wi_1")(x, deterministic)
    else:
      h = activation(cfg, Dense(cfg, cfg.d_ff, ("embed", "mlp"), self.in_std, name="wi")(x, deterministic))
    h = constrain(h, ("batch", "length", "mlp"))
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    return Dense(cfg, cfg.d_model, ("mlp", "embed"), self.out_std, name="wo")(h, deterministic)


class Embed(nn.Module):
  """Token embedding (with tie_embeddings also the output layer: Transformer.output_weights)."""
  config: TransformerConfig
  num_embeddings: int
  axes: tuple = ("vocab", "embed")

  def setup(self):
    self.embedding = param(self, "embedding", normal(self.config.init_std),
                           (self.num_embeddings, self.config.d_model), self.axes)

  def __call__(self, ids):
    return jnp.take(self.embedding, ids, axis=0).astype(dtype_of(self.config.dtype))


class ScalarHead(nn.Module):
  """One float32 number per position from the final hidden states: w . x + b (a reward
  model's score, a value function). Initialised small so it starts near 0."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kernel = param(self, "kernel", normal(cfg.init_std), (cfg.d_model,), ("embed",))
    bias = param(self, "bias", jax.nn.initializers.zeros, (), ())
    return jnp.einsum("btd,d->bt", x.astype(jnp.float32), kernel.astype(jnp.float32)) + bias
