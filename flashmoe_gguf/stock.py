"""Stock llama-cpp-python in the configuration flashmoe reproduces bit for bit: extra buffer types off.

llama-cpp-python's Llama has no argument for llama.cpp's `use_extra_bufts` (CPU_REPACK, AMX; llama.cpp's
`-nr` / `--no-repack`). It reads the model defaults through llama_cpp.llama_cpp.llama_model_default_params (the
submodule's name: patching the package-level re-export leaves repack on), so that is the name patched, for
the thread that makes a Llama. Used by `flashmoe bench` (configuration stock-norepack) and by the tests' reference.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator


class _Defaults:
    """The function installed under llama_cpp.llama_cpp.llama_model_default_params: llama.cpp's defaults, with
    use_extra_bufts off on a thread inside no_extra_buffer_types(). Per thread, so that a stock model loaded on
    another thread meanwhile keeps llama.cpp's defaults (a module-global swap would leak either way, and two
    overlapping blocks would restore each other's patch)."""

    def __init__(self, original: Any) -> None:
        self.original = original
        self.local = threading.local()

    def __call__(self) -> Any:
        p = self.original()
        if getattr(self.local, "depth", 0):
            p.use_extra_bufts = False
        return p


_install_lock = threading.Lock()


def _defaults() -> _Defaults:
    import llama_cpp.llama_cpp as lc
    with _install_lock:
        current = lc.llama_model_default_params
        if not isinstance(current, _Defaults):
            current = _Defaults(current)
            lc.llama_model_default_params = current
        return current


@contextlib.contextmanager
def no_extra_buffer_types() -> Iterator[None]:
    """Within this block, llama_cpp.Llama made on this thread loads models with use_extra_bufts = False."""
    d = _defaults()
    d.local.depth = getattr(d.local, "depth", 0) + 1
    try:
        yield
    finally:
        d.local.depth -= 1
