"""flashmoe-gguf: run Mixture-of-Experts GGUFs larger than RAM, inside the llama.cpp ecosystem."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def convert(*args: Any, **kwargs: Any) -> Any:
    """See `flashmoe_gguf.converter.convert`."""
    from .converter import convert as _convert
    return _convert(*args, **kwargs)


def __getattr__(name: str) -> Any:
    # the runtime imports llama_cpp (and its ggml): only when asked for
    if name in ("Llama", "FlashMoeError"):
        from . import runtime
        return getattr(runtime, name)
    raise AttributeError(f"module 'flashmoe_gguf' has no attribute {name!r}")


__all__ = ["FlashMoeError", "Llama", "__version__", "convert"]
