"""The jaxlm model zoo: causal, prefix and encoder-decoder transformers in Flax."""
from jaxlm.models.config import TransformerConfig
from jaxlm.models.model import BaseModel, DecoderOnlyModel, EncoderDecoderModel, build_model

__all__ = ["TransformerConfig", "BaseModel", "DecoderOnlyModel", "EncoderDecoderModel", "build_model"]
