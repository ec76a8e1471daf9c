"""The converter: Hugging Face MoE checkpoints -> streaming GGUF (installed as `flashmoe_gguf.converter`)."""

from .convert import DEFAULT_ALIGNMENT, ConversionReport, convert
from .errors import CheckpointError, ConversionError, RecipeError, UnsupportedArchitectureError

__all__ = ["DEFAULT_ALIGNMENT", "CheckpointError", "ConversionError", "ConversionReport", "RecipeError",
           "UnsupportedArchitectureError", "convert"]
