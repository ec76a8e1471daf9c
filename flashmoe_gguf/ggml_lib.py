"""Access to the ggml that llama-cpp-python ships (libggml-base), through cffi's ABI mode.

Only a handful of stable, exported C functions are used: the quantizer (`ggml_quantize_chunk`), row sizes
and the per-type `to_float` dequantizer. They are the same routines llama-quantize calls, so our bytes equal
llama.cpp's for the same input.

Q4_K (the routed experts' default type) is the exception: ggml's reference Q4_K quantizer is slow (a 21-step
search per 32 values, about 12 M values/s per core), so it runs through our own `fm_quantize_q4_K`
(ggml_ext/fm_quant.c, AVX2 with a scalar fallback), which performs exactly ggml's float operations in ggml's
order and gives the same bytes. On first use a self-check compares the two on a few hundred varied rows; if
they ever differed (a libggml-base built differently, e.g. with FMA), ggml's own quantizer is used and a
warning says so. FLASHMOE_GGML_QUANT=1 forces ggml's quantizer for every type.

The library is opened by its soname (`libggml-base.so.0`), the name libllama links against: pip installs
`libggml-base.so` and `libggml-base.so.0` as two separate files, and loading the other one would give this
process a second ggml (see shared/notes/llama-cpp-integration.md).
"""

from __future__ import annotations

import importlib.util
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cffi import FFI
from gguf import GGMLQuantizationType, GGML_QUANT_SIZES

_CDEF = """
size_t ggml_quantize_chunk(int type, const float * src, void * dst, int64_t start, int64_t nrows,
                           int64_t n_per_row, const float * imatrix);
bool   ggml_quantize_requires_imatrix(int type);
size_t ggml_row_size(int type, int64_t ne);
int64_t ggml_blck_size(int type);
size_t ggml_type_size(int type);
const char * ggml_type_name(int type);
typedef void (*ggml_to_float_t)(const void * x, float * y, int64_t k);
typedef void (*ggml_from_float_t)(const float * x, void * y, int64_t k);
struct ggml_type_traits {
    const char * type_name;
    int64_t blck_size;
    int64_t blck_size_interleave;
    size_t type_size;
    bool is_quantized;
    ggml_to_float_t to_float;
    ggml_from_float_t from_float_ref;
};
const struct ggml_type_traits * ggml_get_type_traits(int type);
"""


class GgmlLibraryError(RuntimeError):
    """llama-cpp-python's ggml libraries could not be found or do not look as expected."""


def llama_cpp_lib_dir() -> Path:
    """The directory holding llama-cpp-python's shared libraries, found without importing llama_cpp."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise GgmlLibraryError("llama-cpp-python is not installed (pip install llama-cpp-python==0.3.36)")
    lib_dir = Path(next(iter(spec.submodule_search_locations))) / "lib"
    if not lib_dir.is_dir():
        raise GgmlLibraryError(f"llama-cpp-python has no lib/ directory at {lib_dir}")
    return lib_dir


def ggml_cpu_library() -> Path | None:
    """llama-cpp-python's libggml-cpu (the CPU backend), None if it is not there"""
    try:
        return _library_path(llama_cpp_lib_dir(), "libggml-cpu")
    except GgmlLibraryError:
        return None


def _library_path(lib_dir: Path, stem: str) -> Path:
    for name in (f"{stem}.so.0", f"{stem}.so", f"{stem}.dylib"):
        if (lib_dir / name).exists():
            return lib_dir / name
    raise GgmlLibraryError(f"{stem} not found in {lib_dir}")


@dataclass(frozen=True)
class TypeInfo:
    gtype: GGMLQuantizationType
    block_size: int
    type_size: int

    def row_bytes(self, n_per_row: int) -> int:
        return n_per_row // self.block_size * self.type_size


class Ggml:
    """A handle on libggml-base. Create one with `Ggml.load()`; it is cheap to share."""

    def __init__(self, path: Path) -> None:
        self.ffi = FFI()
        self.ffi.cdef(_CDEF)
        try:
            self.lib = self.ffi.dlopen(str(path))
        except OSError as exc:
            raise GgmlLibraryError(f"cannot load {path}: {exc}") from exc
        self.path = path
        # sanity check: our view of the type table must match ggml's
        for t in (GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q8_0, GGMLQuantizationType.BF16):
            blck, size = GGML_QUANT_SIZES[t]
            if self.lib.ggml_blck_size(int(t)) != blck or self.lib.ggml_type_size(int(t)) != size:
                raise GgmlLibraryError(f"{path}: ggml type table disagrees with gguf-py for {t.name}")

    _instance: "Ggml | None" = None
    _lock = threading.Lock()

    @classmethod
    def load(cls) -> "Ggml":
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls(_library_path(llama_cpp_lib_dir(), "libggml-base"))
            return cls._instance

    def type_info(self, gtype: GGMLQuantizationType) -> TypeInfo:
        blck, size = GGML_QUANT_SIZES[gtype]
        return TypeInfo(gtype, blck, size)

    def requires_imatrix(self, gtype: GGMLQuantizationType) -> bool:
        return bool(self.lib.ggml_quantize_requires_imatrix(int(gtype)))

    _fast_q4k: object = None  # the extension's lib once the self-check passed, False when not to be used
    _fast_lock = threading.Lock()

    def fast_q4_K(self):
        """The extension (flashmoe_gguf._fmext) if its Q4_K quantizer is to be used, else None."""
        if self._fast_q4k is None:
            with self._fast_lock:
                if self._fast_q4k is None:
                    self._fast_q4k = self._check_fast_q4_K()
        return self._fast_q4k or None

    def _check_fast_q4_K(self):
        if os.environ.get("FLASHMOE_GGML_QUANT") == "1":
            return False
        try:
            from . import _fmext
        except ImportError:
            return False
        rows = _self_check_rows()
        ours = _fast_q4_K(_fmext, rows)
        ref = self._quantize(GGMLQuantizationType.Q4_K, rows)
        if ours is None or not np.array_equal(ours, ref):
            warnings.warn("flashmoe: our Q4_K quantizer disagrees with this libggml-base's; using ggml's (slower)",
                          RuntimeWarning, stacklevel=3)
            return False
        return _fmext

    def quantize_rows(self, gtype: GGMLQuantizationType, rows: np.ndarray, threads: int = 1) -> np.ndarray:
        """Quantize a float32 matrix [nrows, n_per_row] row by row; returns uint8 [nrows, row_bytes]."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2:
            raise ValueError(f"quantize_rows expects a 2-D array, got shape {rows.shape}")
        nrows, n_per_row = rows.shape
        info = self.type_info(gtype)
        if n_per_row % info.block_size:
            raise ValueError(f"row length {n_per_row} is not a multiple of {gtype.name}'s block size {info.block_size}")
        if self.requires_imatrix(gtype):
            raise ValueError(f"{gtype.name} needs an importance matrix, which the converter does not compute")
        fast = self.fast_q4_K() if gtype == GGMLQuantizationType.Q4_K else None
        return self._quantize(gtype, rows, threads, fast)

    def _quantize(self, gtype: GGMLQuantizationType, rows: np.ndarray, threads: int = 1,
                       fast=None) -> np.ndarray:
        nrows, n_per_row = rows.shape
        info = self.type_info(gtype)
        out = np.empty((nrows, info.row_bytes(n_per_row)), dtype=np.uint8)
        if nrows == 0:
            return out
        src = self.ffi.from_buffer("float[]", rows)
        dst = self.ffi.from_buffer("char[]", out)

        def work(r0: int, r1: int) -> None:
            if fast is not None and _fast_q4_K(fast, rows[r0:r1], out[r0:r1]) is not None:
                return  # else the rows hold a NaN or an infinity: ggml's quantizer decides what they become
            # ggml_quantize_chunk indexes src by `start` elements and dst by start row
            n = self.lib.ggml_quantize_chunk(int(gtype), src, dst, r0 * n_per_row, r1 - r0, n_per_row,
                                             self.ffi.NULL)
            if n != (r1 - r0) * info.row_bytes(n_per_row):
                raise GgmlLibraryError(f"ggml_quantize_chunk wrote {n} bytes, expected "
                                       f"{(r1 - r0) * info.row_bytes(n_per_row)}")

        threads = max(1, min(threads, nrows))
        if threads == 1 or nrows * n_per_row < 1 << 16:
            work(0, nrows)
        else:
            step = -(-nrows // threads)
            with ThreadPoolExecutor(threads) as pool:  # cffi releases the GIL during the call
                list(pool.map(lambda r: work(r, min(r + step, nrows)), range(0, nrows, step)))
        return out

    def dequantize(self, gtype: GGMLQuantizationType, data: np.ndarray, n_elements: int) -> np.ndarray:
        """ggml's own `to_float` for a quantized byte buffer; returns float32 [n_elements]."""
        data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        info = self.type_info(gtype)
        if n_elements % info.block_size or data.nbytes != n_elements // info.block_size * info.type_size:
            raise ValueError(f"{data.nbytes} bytes do not hold {n_elements} {gtype.name} elements")
        if gtype == GGMLQuantizationType.F32:
            return data.view(np.float32).copy()
        traits = self.lib.ggml_get_type_traits(int(gtype))
        if traits.to_float == self.ffi.NULL:
            raise ValueError(f"ggml has no to_float for {gtype.name}")
        out = np.empty(n_elements, dtype=np.float32)
        traits.to_float(self.ffi.from_buffer("char[]", data), self.ffi.from_buffer("float[]", out), n_elements)
        return out


def _fast_q4_K(ext, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray | None:
    """Q4_K through the extension's quantizer; None if the rows hold a NaN or an infinity."""
    nrows, n_per_row = rows.shape
    if out is None:
        out = np.empty((nrows, n_per_row // 256 * 144), dtype=np.uint8)
    rc = ext.lib.fm_quantize_q4_K(ext.ffi.from_buffer("float[]", rows), ext.ffi.from_buffer("char[]", out),
                                  nrows, n_per_row, ext.lib.FM_QUANT_ISA_AUTO)
    if rc < 0:
        raise GgmlLibraryError(f"fm_quantize_q4_K refused {nrows} x {n_per_row}")
    return out if rc == 0 else None


def _self_check_rows() -> np.ndarray:
    """A few hundred varied rows (scales, tails, zeros, constants, outliers, bf16-rounded) for the self-check."""
    rng = np.random.default_rng(20261123)
    rows = []
    for i in range(192):
        scale = np.float32(10.0 ** rng.uniform(-8, 4))
        kind = i % 8
        if kind == 0:
            x = rng.standard_normal(256)
        elif kind == 1:
            x = rng.uniform(-1, 1, 256)
        elif kind == 2:
            x = rng.standard_t(2, 256)
        elif kind == 3:
            x = rng.standard_normal(256)
            x[rng.integers(0, 256)] *= 1000
        elif kind == 4:
            x = -np.abs(rng.standard_normal(256))
        elif kind == 5:
            x = np.repeat(rng.standard_normal(8), 32)  # constant sub-blocks
        elif kind == 6:
            x = rng.standard_normal(256) * (rng.uniform(size=256) < 0.1)
        else:
            x = rng.exponential(1, 256)
        x = (x * scale).astype(np.float32)
        if i % 2:  # bf16-rounded, as the converter's usual input
            x = ((x.view(np.uint32) + np.uint32(0x8000)) & np.uint32(0xFFFF0000)).view(np.float32)
        rows.append(x)
    rows.append(np.zeros(256, np.float32))
    return np.ascontiguousarray(np.stack(rows), dtype=np.float32)


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
