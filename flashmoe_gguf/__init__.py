"""flashmoe-gguf: run Mixture-of-Experts GGUFs larger than RAM, inside the llama.cpp ecosystem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"

# Installed, `converter/` becomes the subpackage flashmoe_gguf.converter (see pyproject.toml). Imported from a
# source checkout instead (e.g. `python -m flashmoe_gguf.cli` in the repository), it sits beside this package.
_checkout = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "converter").exists() and (_checkout / "converter" / "convert.py").exists():
    __path__.append(str(_checkout))  # type: ignore[name-defined]  # noqa: F821


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
