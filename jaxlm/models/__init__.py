"""The jaxlm model zoo: causal, prefix and encoder-decoder transformers in Flax."""
from jaxlm.models.config import TransformerConfig
from jaxlm.models.model import Model, build_model

__all__ = ["TransformerConfig", "Model", "build_model"]
