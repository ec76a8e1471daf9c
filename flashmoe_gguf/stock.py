"""Stock llama-cpp-python in the configuration flashmoe reproduces bit for bit: extra buffer types off.

llama-cpp-python's Llama has no argument for llama.cpp's `use_extra_bufts` (CPU_REPACK, AMX; llama.cpp's
`-nr` / `--no-repack`). It reads the model defaults through llama_cpp.llama_cpp.llama_model_default_params (the
submodule's name: patching the package-level re-export leaves repack on), so that is the name patched, for
the thread that makes a Llama. Used by `flashmoe bench` (configuration stock-norepack) and by the tests' reference.

`tensor_overrides` does the same for llama.cpp's `tensor_buft_overrides` (`-ot`), which llama-cpp-python leaves
unset: stock with the routed experts on the CPU next to GPU layers (offload.py), the reference of GPU hybrid mode.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Sequence


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
        overrides = getattr(self.local, "overrides", None)
        if overrides is not None:
            p.tensor_buft_overrides = overrides.address
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


@contextlib.contextmanager
def tensor_overrides(entries: Sequence[tuple[str, str]]) -> Iterator[None]:
    """Within this block, llama_cpp.Llama made on this thread loads models with these (regex, buffer type name)
    overrides (offload.py; e.g. offload.experts_to_cpu()). The array lives until the block ends: llama.cpp reads
    it only while a model loads."""
    from .offload import stock_overrides
    array = stock_overrides(entries)
    d = _defaults()
    before = getattr(d.local, "overrides", None)
    d.local.overrides = array
    try:
        yield
    finally:
        d.local.overrides = before
