"""Model definitions: one registry from architecture names to classes, shared layers in layers/."""

from kvserve.models.layers.attention import AttentionMetadata
from kvserve.models.registry import SUPPORTED_ARCHITECTURES, build_model, model_class

__all__ = ["AttentionMetadata", "SUPPORTED_ARCHITECTURES", "build_model", "model_class"]
