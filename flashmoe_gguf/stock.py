"""Stock llama-cpp-python in the configuration flashmoe reproduces bit for bit: extra buffer types off.

llama-cpp-python's Llama has no argument for llama.cpp's `use_extra_bufts` (CPU_REPACK, AMX; llama.cpp's
`-nr` / `--no-repack`). It reads the model defaults through llama_cpp.llama_cpp.llama_model_default_params (the
submodule's name: patching the package-level re-export leaves repack on), so that is the name patched while
a Llama is made. Used by `flashmoe bench` (configuration stock-norepack) and by the tests' reference.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


@contextlib.contextmanager
def no_extra_buffer_types() -> Iterator[None]:
    """Within this block, llama_cpp.Llama loads models with use_extra_bufts = False."""
    import llama_cpp.llama_cpp as lc
    orig = lc.llama_model_default_params

    def patched() -> Any:
        p = orig()
        p.use_extra_bufts = False
        return p
    lc.llama_model_default_params = patched
    try:
        yield
    finally:
        lc.llama_model_default_params = orig
