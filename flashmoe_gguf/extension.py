"""The ggml extension (ggml_ext/, built as flashmoe_gguf._fmext): imported and bound to the ggml that llama_cpp
loaded, once per process.

The extension is compiled against the ggml headers of the pinned llama-cpp-python; `fm_init` checks the loaded
ggml's version, resolves the ggml functions it calls from llama_cpp's libraries and registers the flashmoe device.
Its constants (cache policies, instruction sets, ...) come from its C header through cffi: `constants()` gives
them without binding to ggml, so code that only needs a number does not load libllama.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

from .openmp_runtimes import mismatch_warning, runtime_of
from .runtime_errors import FlashMoeError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
_lock = threading.Lock()
_bound: Any = None


def _module() -> Any:
    try:
        from . import _fmext
    except ImportError as exc:
        raise FlashMoeError(f"the flashmoe ggml extension is not built ({exc}); reinstall flashmoe-gguf "
                            "(in a source checkout: pip install -e .)") from exc
    return _fmext


def constants() -> Any:
    """The extension's C constants (`constants().FM_CACHE_LFU`, ...), without loading llama_cpp."""
    return _module().lib


def unbound() -> Any:
    """The extension's module (`.lib`, `.ffi`) for its functions that need no ggml (fm_strings.h's scanners), without
    loading llama_cpp."""
    return _module()


def load() -> Any:
    """The extension, bound to llama_cpp's ggml (imports llama_cpp first)."""
    global _bound
    with _lock:
        if _bound is not None:
            return _bound
        import llama_cpp  # noqa: F401  (loads libllama and its ggml first)
        from importlib.metadata import version

        from .ggml_lib import ggml_cpu_library, llama_cpp_lib_dir
        ext = _module()
        installed = version("llama-cpp-python")
        if installed != LLAMA_CPP_PYTHON_VERSION:
            raise FlashMoeError(f"flashmoe-gguf was built for llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}, "
                                f"found {installed}")
        err = ext.ffi.new("char[1024]")
        if ext.lib.fm_init(str(llama_cpp_lib_dir()).encode(), err, 1024) != 0:
            raise FlashMoeError(ext.ffi.string(err).decode(errors="replace"))
        cpu = ggml_cpu_library()
        note = mismatch_warning(runtime_of(ext.__file__), runtime_of(cpu)) if cpu is not None else None
        if note:
            warnings.warn(note, RuntimeWarning, stacklevel=2)
        _bound = ext
        return ext
