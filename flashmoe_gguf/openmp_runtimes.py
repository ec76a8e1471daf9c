"""Whether the extension and llama.cpp's CPU backend use one OpenMP runtime.

Built with OpenMP, the extension runs its expert products as OpenMP regions, meant to be served by the team of
threads llama.cpp's CPU backend already keeps spinning between its own regions (ggml_ext/fm_pool.c). That holds
only when both bind to one runtime: a llama-cpp-python built with another compiler (clang's libomp, Intel's
libiomp5) or without OpenMP (ggml's own thread pool) beside an extension built with GCC's libgomp gives two sets of
threads that spin against each other for the cores (on 2 cores that made 2-thread decode 10-20x slower than
1-thread). `extension.load()` warns when it finds that. The runtime a library uses is where the dynamic linker
resolves `omp_get_num_threads` from that library (its own dependencies first).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path


def mapping_of(address: int, maps: str) -> str | None:
    """The file mapped at address in a /proc/<pid>/maps text, None if none."""
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        lo, _, hi = parts[0].partition("-")
        try:
            if int(lo, 16) <= address < int(hi, 16):
                return parts[5].strip()
        except ValueError:
            continue
    return None


def runtime_of(library: str | Path) -> str | None:
    """The OpenMP runtime an already loaded library binds to (the file that defines the `omp_get_num_threads` it
    sees), None if it uses none or cannot be asked."""
    try:
        lib = ctypes.CDLL(str(library), mode=os.RTLD_NOW | os.RTLD_NOLOAD)
        fn = lib.omp_get_num_threads
        address = ctypes.cast(fn, ctypes.c_void_p).value
        return mapping_of(address, Path("/proc/self/maps").read_text()) if address else None
    except (OSError, AttributeError):
        return None


def mismatch_warning(extension_runtime: str | None, ggml_runtime: str | None) -> str | None:
    """The warning when the extension runs OpenMP regions that are not in llama.cpp's team, else None."""
    if extension_runtime is None or extension_runtime == ggml_runtime:
        return None
    theirs = ggml_runtime or "no OpenMP (ggml's own thread pool)"
    return (f"flashmoe: the extension's OpenMP runtime ({extension_runtime}) is not the one llama.cpp's CPU "
            f"backend uses ({theirs}): flashmoe's expert products and llama.cpp then run separate threads that "
            "compete for the cores, and decode on several threads is much slower. Build flashmoe-gguf with the "
            "compiler that built llama-cpp-python (CC=... pip install), or without OpenMP (FLASHMOE_OPENMP=0 "
            "pip install)")
