"""The extension's OpenMP regions run in llama.cpp's team only when both bind to one OpenMP runtime
(flashmoe_gguf/openmp_runtimes.py; extension.load() warns otherwise). Reference: the dynamic linker's own answer
(`ldd`) for each library."""

from __future__ import annotations

import ctypes.util
import os
import re
import subprocess

import pytest

from flashmoe_gguf import extension
from flashmoe_gguf.ggml_lib import ggml_cpu_library
from flashmoe_gguf.openmp_runtimes import mapping_of, mismatch_warning, runtime_of


def ldd_openmp(path: str) -> str | None:
    """the OpenMP runtime ldd resolves for a library, as a real path"""
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
    m = re.search(r"lib(?:gomp|omp|iomp5)\S*\s+=>\s+(\S+)", out)
    return os.path.realpath(m.group(1)) if m else None


def test_extension_and_ggml_share_one_runtime() -> None:
    ext = extension.load()
    cpu = ggml_cpu_library()
    assert cpu is not None
    want_ext, want_cpu = ldd_openmp(ext.__file__), ldd_openmp(str(cpu))
    if want_ext is None:
        pytest.skip("the extension was built without OpenMP")
    assert runtime_of(ext.__file__) == want_ext
    assert runtime_of(cpu) == want_cpu
    assert mismatch_warning(runtime_of(ext.__file__), runtime_of(cpu)) is None    # this build: one runtime


def test_a_library_without_openmp_has_no_runtime() -> None:
    libm = ctypes.util.find_library("m")
    assert libm is not None
    ctypes.CDLL(libm)
    assert runtime_of(libm) is None


def test_mapping_of_reads_maps() -> None:
    maps = ("7f0000000000-7f0000001000 r-xp 00000000 08:01 12 /usr/lib/libgomp.so.1.0.0\n"
            "7f0000001000-7f0000002000 rw-p 00000000 00:00 0 \n"
            "7f0000002000-7f0000003000 r-xp 00000000 08:01 13 /usr/lib/libomp.so.5\n")
    assert mapping_of(0x7f0000000800, maps) == "/usr/lib/libgomp.so.1.0.0"
    assert mapping_of(0x7f0000002fff, maps) == "/usr/lib/libomp.so.5"
    assert mapping_of(0x7f0000001800, maps) is None      # anonymous
    assert mapping_of(0x7f0000003000, maps) is None


def test_mismatch_warning() -> None:
    assert mismatch_warning("/a/libgomp.so.1", "/a/libgomp.so.1") is None
    assert mismatch_warning(None, "/a/libgomp.so.1") is None          # the extension runs no OpenMP region
    two = mismatch_warning("/a/libgomp.so.1", "/b/libomp.so.5")
    assert two is not None and "/a/libgomp.so.1" in two and "/b/libomp.so.5" in two and "FLASHMOE_OPENMP=0" in two
    pool = mismatch_warning("/a/libgomp.so.1", None)
    assert pool is not None and "ggml's own thread pool" in pool
