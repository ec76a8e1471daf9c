"""flashmoe-gguf: run Mixture-of-Experts GGUFs larger than RAM, inside the llama.cpp ecosystem."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def convert(*args: Any, **kwargs: Any) -> Any:
    """See `flashmoe_gguf.converter.convert`."""
    from .converter import convert as _convert
    return _convert(*args, **kwargs)


__all__ = ["__version__", "convert"]
