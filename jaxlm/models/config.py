"""TransformerConfig: every architecture option of the jaxlm model zoo, in one gin dataclass.

Each field is a knob the literature ablates. `validate()` rejects combinations that cannot
work, naming the conflicting fields, so a bad gin file fails before any array is made.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import gin

ARCHS = ("decoder", "prefix_decoder", "encoder_decoder")
NORM_TYPES = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post", "sandwich", "deepnorm")
ACTIVATIONS = ("relu", "gelu", "swiglu", "geglu")
POSITIONS = ("learned", "sinusoidal", "t5_relative", "alibi", "rope", "none")
ROPE_SCALINGS = ("none", "linear", "llama3")
ATTENTION_KERNELS = ("xla", "cudnn", "auto")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16", "float16")
QUANTIZATIONS = ("none", "int8", "int4", "nf4")
ADAPTER_KINDS = ("serial", "parallel")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """All options of the three transformer families (causal, prefix, encoder-decoder)."""
  arch: str = "decoder"
  vocab_size: int = 32128
  d_model: int = 512
  num_layers: int = 6                     # decoder layers (or the only stack)
  num_encoder_layers: Optional[int] = None  # encoder-decoder only; defaults to num_layers
  num_heads: int = 8
  num_kv_heads: Optional[int] = None      # None: MHA; 1: MQA; 1 < k < num_heads: GQA
  head_dim: Optional[int] = None          # None: d_model // num_heads
  d_ff: int = 2048
  # Normalization.
  norm_type: str = "rmsnorm"
  norm_position: str = "pre"              # pre-LN, post-LN, sandwich-LN, DeepNorm (post-LN + alpha/beta)
  norm_eps: float = 1e-6
  embed_norm: bool = False                # LayerNorm right after the embedding (BLOOM)
  # Feed-forward.
  mlp_activation: str = "swiglu"
  gelu_approximate: bool = True           # tanh GeLU ("gelu_new") as in GPT-2 and T5.1.1
  # Positions.
  position: str = "rope"
  max_len: int = 2048                     # learned position table size
  rope_base: float = 10000.0
  rope_scaling: str = "none"              # "linear": position interpolation (Chen et al. 2023)
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0       # "llama3" scaling only
  rope_high_freq_factor: float = 4.0
  rope_original_max_len: int = 8192
  relative_num_buckets: int = 32
  relative_max_distance: int = 128
  # Attention and projections.
  use_bias: bool = False                  # biases of all dense projections
  scale_attention: bool = True            # 1/sqrt(head_dim); T5 folds it into the init instead
  attention_kernel: str = "auto"          # "xla", "cudnn" (jax.nn.dot_product_attention), "auto"
  # Embeddings and output.
  tie_embeddings: bool = False
  scale_decoder_outputs: bool = False     # multiply by d_model**-0.5 before the output layer (T5.1.0)
  scale_embeddings: bool = False          # multiply the embedding by sqrt(d_model)
  # Mixture of experts.
  num_experts: int = 0                    # 0: dense feed-forward everywhere
  experts_per_token: int = 2
  expert_capacity_factor: float = 1.25
  moe_every: int = 1                      # every k-th layer is MoE (k=2: alternate, GShard)
  moe_aux_loss_weight: float = 0.01
  moe_normalize_gates: bool = True
  # Loss.
  z_loss: float = 0.0
  loss_chunk_tokens: int = 0              # > 0: the training loss over the vocabulary in chunks of
                                          # this many tokens, never all float32 logits at once
  # A scalar head beside the LM head, read at every position (Model.values): the reward
  # model's score and the PPO value function (jaxlm/adaptation).
  value_head: bool = False
  # Regularization, precision, memory.
  dropout_rate: float = 0.0
  init_std: float = 0.02
  dtype: str = "float32"                  # compute dtype
  param_dtype: str = "float32"
  remat_policy: str = "none"
  scan_layers: bool = False
  # Parameter-efficient tuning (jaxlm/adaptation): parameters added beside the base weights,
  # which stay as they are (Trainable(added_only=True) trains only the added ones).
  lora_rank: int = 0                      # LoRA (Hu et al. 2021): 0 = off
  lora_alpha: float = 16.0                # the update is scaled by alpha / rank
  lora_rslora: bool = False               # rsLoRA: alpha / sqrt(rank) instead
  lora_dropout: float = 0.0               # on the LoRA branch's input
  lora_targets: str = "query|key|value|out"  # regex over projection names: query key value out wi wi_0 wi_1 wo
  adapter_size: int = 0                   # bottleneck adapters after attention and MLP: 0 = off
  adapter_kind: str = "serial"            # 'serial' (Houlsby et al.) or 'parallel' (He et al.)
  prefix_length: int = 0                  # prefix tuning (Li & Liang): K/V prefixes per layer
  prefix_hidden: int = 0                  # > 0: reparametrised through an MLP this wide; 0: P-tuning v2
  prompt_length: int = 0                  # prompt tuning (Lester et al.): soft prompt embeddings
  # Weight-only quantization of the projection kernels (stored quantized, dequantized on
  # the fly in `dtype`): int8 per output channel, int4 / NF4 in blocks (NF4: QLoRA's
  # double-quantized NormalFloat).
  quantization: str = "none"
  quantization_block: int = 64            # int4 / nf4 block size (along the input axis)

  # ---- derived values ----
  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @property
  def encoder_layers(self) -> int:
    return self.num_encoder_layers if self.num_encoder_layers is not None else self.num_layers

  @property
  def gated_mlp(self) -> bool:
    return self.mlp_activation in ("swiglu", "geglu")

  def is_moe_layer(self, i: int) -> bool:
    return self.num_experts > 0 and (i + 1) % self.moe_every == 0

  def replace(self, **kw) -> "TransformerConfig":
    return dataclasses.replace(self, **kw)

  def validate(self) -> "TransformerConfig":
    """Raises ValueError naming the fields whose values conflict."""
    def choice(field, options):
      if getattr(self, field) not in options:
        raise ValueError(f"TransformerConfig.{field}={getattr(self, field)!r}: must be one of {options}")
    for field, options in (("arch", ARCHS), ("norm_type", NORM_TYPES), ("norm_position", NORM_POSITIONS),
                           ("mlp_activation", ACTIVATIONS), ("position", POSITIONS),
                           ("rope_scaling", ROPE_SCALINGS), ("attention_kernel", ATTENTION_KERNELS),
                           ("remat_policy", REMAT_POLICIES), ("dtype", DTYPES), ("param_dtype", DTYPES),
                           ("quantization", QUANTIZATIONS), ("adapter_kind", ADAPTER_KINDS)):
      choice(field, options)
    for field in ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "max_len"):
      if getattr(self, field) <= 0:
        raise ValueError(f"TransformerConfig.{field}={getattr(self, field)} must be positive")
    if self.num_kv_heads is not None and (self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads):
      raise ValueError(f"TransformerConfig.num_heads={self.num_heads} must be a multiple of "
                       f"num_kv_heads={self.num_kv_heads} (MQA: 1, GQA: a divisor)")
    if self.head_dim is None and self.d_model % self.num_heads:
      raise ValueError(f"TransformerConfig.d_model={self.d_model} is not divisible by num_heads="
                       f"{self.num_heads}; set head_dim explicitly")
    if self.position == "rope" and self.dim_per_head % 2:
      raise ValueError(f"TransformerConfig.position='rope' needs an even head_dim, got {self.dim_per_head}")
    if self.rope_scaling != "none" and self.position != "rope":
      raise ValueError(f"TransformerConfig.rope_scaling={self.rope_scaling!r} needs position='rope', "
                       f"got position={self.position!r}")
    if self.rope_scaling != "none" and self.rope_scaling_factor < 1.0:
      raise ValueError(f"TransformerConfig.rope_scaling_factor={self.rope_scaling_factor} must be >= 1")
    if self.arch != "encoder_decoder" and self.num_encoder_layers is not None:
      raise ValueError(f"TransformerConfig.num_encoder_layers is set but arch={self.arch!r} has no encoder")
    if self.num_experts < 0 or self.num_experts == 1:
      raise ValueError(f"TransformerConfig.num_experts={self.num_experts}: use 0 (dense) or >= 2")
    if self.num_experts:
      if not 1 <= self.experts_per_token <= self.num_experts:
        raise ValueError(f"TransformerConfig.experts_per_token={self.experts_per_token} must be in "
                         f"[1, num_experts={self.num_experts}]")
      if self.expert_capacity_factor <= 0:
        raise ValueError(f"TransformerConfig.expert_capacity_factor={self.expert_capacity_factor} must be > 0")
      if self.moe_every < 1:
        raise ValueError(f"TransformerConfig.moe_every={self.moe_every} must be >= 1")
      if self.scan_layers and self.moe_every != 1:
        raise ValueError(f"TransformerConfig.scan_layers=True needs identical layers, but moe_every="
                         f"{self.moe_every} mixes dense and MoE layers; set moe_every=1 or scan_layers=False")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"TransformerConfig.dropout_rate={self.dropout_rate} must be in [0, 1)")
    for field in ("lora_rank", "adapter_size", "prefix_length", "prefix_hidden", "prompt_length",
                  "loss_chunk_tokens"):
      if getattr(self, field) < 0:
        raise ValueError(f"TransformerConfig.{field}={getattr(self, field)} must be >= 0")
    if not 0.0 <= self.lora_dropout < 1.0:
      raise ValueError(f"TransformerConfig.lora_dropout={self.lora_dropout} must be in [0, 1)")
    if self.prefix_hidden and not self.prefix_length:
      raise ValueError(f"TransformerConfig.prefix_hidden={self.prefix_hidden} reparametrises prefixes, but "
                       "prefix_length=0 adds none; set prefix_length > 0 or prefix_hidden = 0")
    if self.position == "learned" and self.prompt_length >= self.max_len:
      raise ValueError(f"TransformerConfig.prompt_length={self.prompt_length} leaves no learned positions of "
                       f"max_len={self.max_len} for the tokens (the soft prompt takes the first ones)")
    if self.quantization in ("int4", "nf4") and self.quantization_block % 2:
      raise ValueError(f"TransformerConfig.quantization_block={self.quantization_block} must be even "
                       "(two 4-bit codes per byte)")
    return self
