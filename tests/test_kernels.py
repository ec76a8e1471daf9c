"""The expert-matmul dot-product kernels (ggml_ext/fm_kernels*.c) against ggml's own CPU code, bit for bit.

Weight rows are quantized by ggml (`ggml_quantize_chunk`, libggml-base), activation rows by ggml-cpu's
`from_float` for the weight type's vec_dot_type. The kernels must give exactly (bitwise) what ggml computes:
  - `dot` what ggml-cpu's `vec_dot` gives for the same pair of quantized rows;
  - `dot_tiled` (K-quants) what ggml-cpu's MUL_MAT_ID gives for an expert with 8 or more activation rows,
    where ggml takes its tiled path (ggml-cpu/tiled/), run through a one-node ggml graph (tests/ggml_mmid.py);
  - `fm_kernel_matmul`, fed the way ggml_ext/fm_matmul.c feeds it (activation rows gathered per expert,
    an expert's rows split between threads, 1 to 512 activation rows, misaligned cache slots and activation
    buffers), what ggml's MUL_MAT_ID gives for the whole routed product.
Every type, every instruction set this machine can run; on a CPU without AVX-512 its kernels still run,
compiled on SIMDe's portable emulation of the intrinsics (the `simde-py` package, SIMDe's headers), with
native AVX2/FMA underneath so that emulated fused multiply-adds stay fused.

The kernels are built here with cffi (API mode) into the pytest cache, once per source version; ggml is
reached through cffi's ABI mode (the libraries llama-cpp-python installs). Independently of our kernels,
ggml's results are checked against a float64 numpy decoding of the blocks (ggml's own rounding error,
relative to the sum of the magnitudes of the products, is ~1e-7), so the block layouts the kernels assume
are known to be ggml's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from cffi import FFI

REPO = Path(__file__).resolve().parent.parent
EXT = REPO / "ggml_ext"
SOURCES = ("fm_kernels.c", "fm_kernels_avx2.c", "fm_kernels_avx512.c")

Q4_0, Q4_1, Q8_0, Q8_1, Q2_K, Q4_K, Q8_K = 2, 3, 8, 9, 10, 12, 15
TYPE_NAMES = {Q4_0: "q4_0", Q4_1: "q4_1", Q8_0: "q8_0", Q2_K: "q2_K", Q4_K: "q4_K"}
VEC_DOT_TYPE = {Q4_0: Q8_0, Q4_1: Q8_1, Q8_0: Q8_0, Q2_K: Q8_K, Q4_K: Q8_K}
BLOCK = {Q4_0: (32, 18), Q4_1: (32, 20), Q8_0: (32, 34), Q8_1: (32, 36), Q2_K: (256, 84), Q4_K: (256, 144),
         Q8_K: (256, 292)}
ISA_NAMES = {1: "scalar", 2: "avx2", 3: "avx512"}
GGML_ERROR_BOUND = 1e-6   # ggml's own float error against the exact value, relative to the products' mass

KERNEL_CDEF = """
typedef void (*fm_dot_fn)(int n, const void *w, const void *act, size_t act_stride, int n_act, float *s,
                          size_t s_stride);
typedef struct { const char *name; fm_dot_fn dot; fm_dot_fn dot_tiled; } fm_kernel;
const fm_kernel *fm_kernel_get(int ggml_type, int isa);
int fm_kernel_best_isa(void);
int fm_kernel_vec_dot_type(int ggml_type);
int fm_kernel_block_size(int ggml_type);
size_t fm_kernel_type_size(int ggml_type);
void fm_kernels_init(void);
extern float fm_fp16_table[65536];
void fm_kernel_matmul(const fm_kernel *k, int type, int tiled, int n, const void *w, size_t w_stride, int n_rows,
                      const void *act, size_t act_stride, int n_act, float *dst, size_t dst_stride);
"""
EMULATED_CDEF = KERNEL_CDEF.split("const fm_kernel *fm_kernel_get(")[0] + \
    "const fm_kernel *fm_kernel_get_avx512(int ggml_type);\nvoid fm_kernels_init(void);\n"

COMPILE_ARGS = ["-std=c11", "-O2", "-ffp-contract=off", "-Wall", "-Wextra"]


def row_bytes(gtype: int, n: int) -> int:
    blck, size = BLOCK[gtype]
    return n // blck * size


# --------------------------------------------------------------------------------------------------------
# building the kernels

def build_module(name: str, sources: list[Path], cdef: str, build_dir: Path, *, extra_source: str = "",
                 extra_args: tuple[str, ...] = (), include_dirs: tuple[str, ...] = (),
                 define_macros: tuple[tuple[str, str], ...] = ()):
    """Compile `sources` into a cffi extension under build_dir (reused while nothing it depends on
    changes) and import it."""
    h = hashlib.sha1()
    for p in [*sources, EXT / "fm_kernels.h"]:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    h.update(repr((cdef, extra_source, extra_args, include_dirs, define_macros, COMPILE_ARGS,
                   sys.version_info[:2], sysconfig.get_platform())).encode())
    modname = f"{name}_{h.hexdigest()[:12]}"
    out = build_dir / modname
    found = sorted(out.glob(f"{modname}*.so")) + sorted(out.glob(f"{modname}*.pyd")) if out.is_dir() else []
    if found:
        so = found[0]
    else:
        ffi = FFI()
        ffi.cdef(cdef)
        ffi.set_source(modname, '#include "fm_kernels.h"\n' + extra_source, sources=[str(p) for p in sources],
                       include_dirs=[str(EXT), *include_dirs], define_macros=list(define_macros),
                       extra_compile_args=[*COMPILE_ARGS, *extra_args], libraries=["m"])
        out.mkdir(parents=True, exist_ok=True)
        so = Path(ffi.compile(tmpdir=str(out)))
    spec = importlib.util.spec_from_file_location(modname, so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_kernels(build_dir: Path, extra_source: str = "", extra_cdef: str = ""):
    return build_module("_fmk", [EXT / s for s in SOURCES], KERNEL_CDEF + extra_cdef, build_dir,
                        extra_source=extra_source)


def simde_include() -> str | None:
    try:
        import simde_py  # type: ignore[import-not-found]
    except ImportError:
        return None
    return simde_py.get_include()


def build_emulated_avx512(build_dir: Path):
    """fm_kernels_avx512.c on SIMDe (portable emulation of the AVX-512 intrinsics), or None without SIMDe or
    without AVX2 + FMA: SIMDe emulates each fused multiply-add with native FMA only when the compiler may use it
    (without, it would round twice and not be the kernel's arithmetic)."""
    inc = simde_include()
    if inc is None or not {"avx2", "fma"} <= cpu_flags():
        return None
    mod = build_module("_fmk_avx512emu", [EXT / s for s in SOURCES], EMULATED_CDEF, build_dir,
                       include_dirs=(inc,), define_macros=(("FM_AVX512_SIMDE", "1"),), extra_args=("-Wno-psabi", "-mavx2", "-mfma"))
    mod.lib.fm_kernels_init()  # fm_kernel_get would; the emulated kernels are taken directly
    return mod


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    m = re.search(r"^flags\s*:(.*)$", text, re.M)
    return set(m.group(1).split()) if m else set()


# --------------------------------------------------------------------------------------------------------
# ggml's CPU kernels, the reference

GGML_CPU_CDEF = """
typedef void (*ggml_from_float_t)(const float *x, void *y, int64_t k);
typedef void (*ggml_vec_dot_t)(int n, float *s, size_t bs, const void *x, size_t bx, const void *y, size_t by,
                               int nrc);
struct ggml_type_traits_cpu {
    ggml_from_float_t from_float;
    ggml_vec_dot_t    vec_dot;
    int               vec_dot_type;
    int64_t           nrows;
};
const struct ggml_type_traits_cpu *ggml_get_type_traits_cpu(int type);
void ggml_cpu_init(void);
"""


class GgmlCpu:
    """ggml-cpu's quantizers and vec_dot (ABI mode), plus libggml-base's weight quantizer."""

    def __init__(self) -> None:
        from flashmoe_gguf.ggml_lib import Ggml, llama_cpp_lib_dir
        self.base = Ggml.load()
        lib_dir = llama_cpp_lib_dir()
        path = next((lib_dir / f for f in ("libggml-cpu.so.0", "libggml-cpu.so", "libggml-cpu.dylib")
                     if (lib_dir / f).exists()), None)
        if path is None:
            raise FileNotFoundError(f"no libggml-cpu in {lib_dir}")
        self.ffi = FFI()
        self.ffi.cdef(GGML_CPU_CDEF)
        self.lib = self.ffi.dlopen(str(path))
        self.lib.ggml_cpu_init()

    def traits(self, gtype: int):
        return self.lib.ggml_get_type_traits_cpu(gtype)

    def quantize_weights(self, gtype: int, rows: np.ndarray) -> np.ndarray:
        from gguf import GGMLQuantizationType
        return self.base.quantize_rows(GGMLQuantizationType(gtype), rows)

    def quantize_activations(self, gtype: int, rows: np.ndarray) -> np.ndarray:
        """rows quantized to gtype's vec_dot_type by ggml-cpu's from_float; uint8 [nrows, row bytes]"""
        vdt = self.traits(gtype).vec_dot_type
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        out = np.zeros((rows.shape[0], row_bytes(vdt, rows.shape[1])), dtype=np.uint8)
        from_float = self.traits(vdt).from_float
        for i in range(rows.shape[0]):
            from_float(self.ffi.from_buffer("float[]", rows[i]), self.ffi.from_buffer("char[]", out[i]),
                       rows.shape[1])
        return out

    def dots(self, gtype: int, n: int, wq: np.ndarray, aq: np.ndarray) -> np.ndarray:
        """ggml's vec_dot for every (weight row, activation row) pair: float32 [n_w, n_act]"""
        vec_dot = self.traits(gtype).vec_dot
        out = np.zeros((wq.shape[0], aq.shape[0]), dtype=np.float32)
        s = self.ffi.new("float *")
        for i in range(wq.shape[0]):
            w = self.ffi.from_buffer("char[]", wq[i])
            for j in range(aq.shape[0]):
                vec_dot(n, s, 0, w, 0, self.ffi.from_buffer("char[]", aq[j]), 0, 1)
                out[i, j] = s[0]
        return out


# --------------------------------------------------------------------------------------------------------
# data

def weight_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Rows of different character: plain Gaussian, large magnitude with outliers, a strong offset (the
    mins of Q4_1/Q4_K/Q2_K), tiny, a row with all-zero blocks, heavy-tailed."""
    rows = [rng.standard_normal(n) * 0.02,
            rng.standard_normal(n) * 1e3,
            rng.standard_normal(n) + 3.0,
            rng.standard_normal(n) * 1e-4,
            rng.standard_t(2, n)]
    big = rng.standard_normal(n) * 50.0
    big[rng.integers(0, n, 8)] *= 100.0
    rows.append(big)
    zero = rng.standard_normal(n)
    zero[: n // 2] = 0.0
    rows.append(zero)
    return np.stack(rows).astype(np.float32)


def activation_rows(rng: np.random.Generator, n: int, count: int, large: float = 1e4) -> np.ndarray:
    rows = rng.standard_normal((count, n)).astype(np.float32)
    rows[1] *= large
    rows[2] = np.abs(rows[2]) + 1.0          # all positive: sum-of-activations terms do not cancel
    rows[3, rng.integers(0, n, 4)] = 300.0    # outliers
    rows[4] *= 1e-5
    rows[5, : n // 2] = 0.0
    rows[6] = rng.standard_t(2, n)
    return rows


def _f16(b: np.ndarray) -> np.ndarray:
    """little-endian fp16 from the last axis (2 bytes) as float64"""
    return np.ascontiguousarray(b).view("<f2")[..., 0].astype(np.float64)


def _blocks(q: np.ndarray, gtype: int) -> np.ndarray:
    blck, size = BLOCK[gtype]
    return q.reshape(q.shape[0], -1, size)


def _activations(vdt: int, aq: np.ndarray):
    """(d [na, nb], int values [na, nb, 32 or 256], s [na, nb] for Q8_1 else None)"""
    b = _blocks(aq, vdt)
    if vdt == Q8_K:
        return b[..., 0:4].copy().view("<f4")[..., 0].astype(np.float64), b[..., 4:260].view(np.int8).astype(np.int64), None
    off = 4 if vdt == Q8_1 else 2
    s = _f16(b[..., 2:4]) if vdt == Q8_1 else None
    return _f16(b[..., 0:2]), b[..., off:off + 32].view(np.int8).astype(np.int64), s


def _q4k_scales(sc: np.ndarray):
    """6-bit scales and mins [..., 8] from the 12 scale bytes [..., 12] of Q4_K blocks"""
    sc = sc.astype(np.int64)
    lo = [sc[..., j] & 63 for j in range(4)] + [(sc[..., j + 8] & 15) | ((sc[..., j] >> 6) << 4) for j in range(4)]
    mn = [sc[..., j + 4] & 63 for j in range(4)] + [(sc[..., j + 8] >> 4) | ((sc[..., j + 4] >> 6) << 4)
                                                    for j in range(4)]
    return np.stack(lo, -1), np.stack(mn, -1)


def exact_dots(gtype: int, wq: np.ndarray, aq: np.ndarray):
    """ggml's dot-product formula in float64, decoded independently with numpy: the per-block integer sums
    times the block scales. Returns (exact [n_w, n_act], mass [n_w, n_act]): mass is the same sum with
    every product replaced by its magnitude (sum of |scale * q * y| and of |min * 16-value activation sum|),
    the classical bound that float rounding errors of any summation order are proportional to."""
    vdt = VEC_DOT_TYPE[gtype]
    yd, yq, ys = _activations(vdt, aq)
    b = _blocks(wq, gtype)
    if gtype == Q4_K:
        dx, mx = _f16(b[..., 0:2]), _f16(b[..., 2:4])
        sc, mn = _q4k_scales(b[..., 4:16])
        qs = b[..., 16:144].reshape(*b.shape[:2], 4, 32).astype(np.int64)
        q = np.stack([qs & 15, qs >> 4], 3).reshape(*b.shape[:2], 8, 32)        # [w, b, sub-block, 32]
        y = yq.reshape(*yq.shape[:2], 8, 32)
        isum = np.einsum("wbj,wabj->wab", sc, np.einsum("wbjl,abjl->wabj", q, y))
        iabs = np.einsum("wbj,wabj->wab", sc, np.einsum("wbjl,abjl->wabj", np.abs(q), np.abs(y)))
        bsums = yq.reshape(*yq.shape[:2], 8, 2, 16).sum(-1)
        msum = np.einsum("wbj,abj->wab", mn, bsums.sum(-1))
        mabs = np.einsum("wbj,abj->wab", mn, np.abs(bsums).sum(-1))
    elif gtype == Q2_K:
        dx, mx = _f16(b[..., 80:82]), _f16(b[..., 82:84])
        sc, mn = b[..., 0:16].astype(np.int64) & 15, b[..., 0:16].astype(np.int64) >> 4
        qs = b[..., 16:80].reshape(*b.shape[:2], 2, 1, 32).astype(np.int64)
        q = (qs >> np.array([0, 2, 4, 6]).reshape(1, 1, 1, 4, 1)) & 3            # [w, b, c, k, 32]
        q = q.reshape(*b.shape[:2], 16, 16)
        y = yq.reshape(*yq.shape[:2], 16, 16)
        isum = np.einsum("wbj,wabj->wab", sc, np.einsum("wbjl,abjl->wabj", q, y))
        iabs = np.einsum("wbj,wabj->wab", sc, np.einsum("wbjl,abjl->wabj", np.abs(q), np.abs(y)))
        msum = np.einsum("wbj,abj->wab", mn, y.sum(-1))
        mabs = np.einsum("wbj,abj->wab", mn, np.abs(y.sum(-1)))
    else:
        dx = _f16(b[..., 0:2])
        if gtype == Q8_0:
            q = b[..., 2:34].view(np.int8).astype(np.int64)
        else:
            qs = b[..., 4:20] if gtype == Q4_1 else b[..., 2:18]
            q = np.concatenate([qs & 15, qs >> 4], -1).astype(np.int64) - (8 if gtype == Q4_0 else 0)
        isum = np.einsum("wbl,abl->wab", q, yq)
        iabs = np.einsum("wbl,abl->wab", np.abs(q), np.abs(yq))
        scale = dx[:, None, :] * yd[None, :, :]
        t2 = _f16(b[..., 2:4])[:, None, :] * ys[None, :, :] if gtype == Q4_1 else np.zeros(isum.shape)
        return (scale * isum + t2).sum(-1), (np.abs(scale) * iabs + np.abs(t2)).sum(-1)
    scale, mscale = yd[None, :, :] * dx[:, None, :], yd[None, :, :] * mx[:, None, :]
    return ((scale * isum - mscale * msum).sum(-1),
            (np.abs(scale) * iabs + np.abs(mscale) * mabs).sum(-1))


# --------------------------------------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="session")
def build_dir(request) -> Path:
    return Path(request.config.cache.mkdir("fm_kernels"))


@pytest.fixture(scope="session")
def kern(build_dir):
    return build_kernels(build_dir)


@pytest.fixture(scope="session")
def emulated(build_dir):
    return build_emulated_avx512(build_dir)


@pytest.fixture(scope="session")
def ggml():
    try:
        return GgmlCpu()
    except Exception as exc:  # noqa: BLE001 - any failure to reach ggml means no reference
        pytest.skip(f"ggml CPU library not usable: {exc}")


def kernels_under_test(kern, emulated, gtype: int):
    """(label, kernel struct, module) for every instruction set this machine can run, and the AVX-512 kernels
    through SIMDe (so that AVX2-only machines test them too, and AVX-512 machines test the emulated build
    that AVX2-only machines use for the runtime tests)."""
    out = []
    for isa in (1, 2, 3):
        k = kern.lib.fm_kernel_get(gtype, isa)
        if k != kern.ffi.NULL:
            out.append((ISA_NAMES[isa], k, kern))
    if emulated is not None:
        out.append(("avx512-emulated", emulated.lib.fm_kernel_get_avx512(gtype), emulated))
    return out


_cases = {}


def reference_case(ggml, gtype: int, n: int):
    """quantized weights and activations and ggml's dots for them, cached per (type, n)"""
    key = (gtype, n)
    if key not in _cases:
        rng = np.random.default_rng(1000 * gtype + n)
        w = weight_rows(rng, n)
        # Q8_1 keeps d * sum(q) as fp16, which overflows (in ggml too) once a block's values sum past 65504
        a = activation_rows(rng, n, 17, large=1e2 if gtype == Q4_1 else 1e4)
        wq = ggml.quantize_weights(gtype, w)
        aq = ggml.quantize_activations(gtype, a)
        ref = ggml.dots(gtype, n, wq, aq)
        _cases[key] = (w, a, wq, aq, ref)
    return _cases[key]


def run_kernel(mod, k, n: int, wq_row: np.ndarray, aq: np.ndarray, n_act: int, *, pad: int = 0,
               s_stride: int = 1, misalign: int = 0, tiled: bool = False) -> np.ndarray:
    """our kernel (k.dot, or k.dot_tiled) on one weight row and the first n_act activation rows, through
    arbitrary strides and unaligned buffers; returns float32 [n_act]"""
    ffi = mod.ffi
    rb = aq.shape[1]
    stride = rb + pad
    abuf = np.zeros(misalign + stride * max(n_act, 1) + 64, dtype=np.uint8)
    for j in range(n_act):
        abuf[misalign + j * stride: misalign + j * stride + rb] = aq[j]
    wbuf = np.zeros(misalign + wq_row.size + 64, dtype=np.uint8)
    wbuf[misalign: misalign + wq_row.size] = wq_row
    sentinel = np.float32(-12345.0)
    out = np.full(max(n_act, 1) * s_stride + 1, sentinel, dtype=np.float32)
    pw = ffi.from_buffer("char[]", wbuf) + misalign
    pa = ffi.from_buffer("char[]", abuf) + misalign
    (k.dot_tiled if tiled else k.dot)(n, pw, pa, stride, n_act, ffi.from_buffer("float[]", out), s_stride)
    res = out[: n_act * s_stride: s_stride].copy()
    untouched = np.delete(out, np.arange(0, n_act * s_stride, s_stride))
    assert np.all(untouched == sentinel), "kernel wrote outside s[j * s_stride]"
    return res


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(np.ascontiguousarray(a, np.float32).view(np.uint32),
                                                 np.ascontiguousarray(b, np.float32).view(np.uint32))


@pytest.fixture(scope="session")
def mmid():
    from ggml_mmid import GgmlMulMatId
    try:
        return GgmlMulMatId()
    except Exception as exc:  # noqa: BLE001 - any failure to reach ggml means no reference
        pytest.skip(f"ggml CPU library not usable: {exc}")


def kernel_matmul(kern, mod, k, gtype: int, tiled: bool, n: int, w: np.ndarray, w_off: int, n_rows: int,
                  act: np.ndarray, a_off: int, n_act: int, out: np.ndarray, o_off: int, o_stride: int) -> None:
    """kern's fm_kernel_matmul with kernel k of module mod (kern, or the SIMDe build), on buffers at offsets"""
    ffi = kern.ffi
    kk = ffi.cast("fm_kernel *", int(mod.ffi.cast("uintptr_t", k)))
    rb = row_bytes(gtype, n)
    kern.lib.fm_kernel_matmul(kk, gtype, int(tiled), n, ffi.from_buffer("char[]", w) + w_off, rb, n_rows,
                              ffi.from_buffer("char[]", act) + a_off, row_bytes(VEC_DOT_TYPE[gtype], n), n_act,
                              ffi.from_buffer("float[]", out) + o_off, o_stride)


# --------------------------------------------------------------------------------------------------------
# tests

CASES = [(t, n) for t in (Q4_K, Q2_K) for n in (256, 512, 2048, 4096)] + \
        [(t, n) for t in (Q4_0, Q4_1, Q8_0) for n in (32, 96, 2048)]
N_ACT = (1, 2, 3, 5, 8, 17)


@pytest.mark.parametrize("gtype,n", CASES, ids=[f"{TYPE_NAMES[t]}-{n}" for t, n in CASES])
def test_matches_ggml_vec_dot(kern, emulated, ggml, gtype, n):
    """k.dot == ggml's vec_dot, bitwise, for varied rows (outliers, offsets, zeros, tiny and huge values)"""
    w, a, wq, aq, ref = reference_case(ggml, gtype, n)
    assert ggml.traits(gtype).vec_dot_type == VEC_DOT_TYPE[gtype] == kern.lib.fm_kernel_vec_dot_type(gtype)
    assert np.all(np.isfinite(ref))
    exact, mass = exact_dots(gtype, wq, aq)
    # the block layouts and the formula are ggml's: ggml's own float error, relative to the mass, is tiny
    assert float((np.abs(ref - exact) / mass).max()) <= GGML_ERROR_BOUND
    kernels = kernels_under_test(kern, emulated, gtype)
    if {"avx2", "fma"} <= cpu_flags():
        want = ["scalar", "avx2"] + (["avx512"] if {"avx512f", "avx512bw", "avx512vl"} <= cpu_flags() else [])
        assert [lbl for lbl, _, _ in kernels] == want + (["avx512-emulated"] if emulated is not None else [])
    for label, k, mod in kernels:
        for n_act in N_ACT:
            for i in range(wq.shape[0]):
                for pad, s_stride, mis in ((0, 1, 0), (5, 3, 1)) if n_act in (5, 17) else ((0, 1, 0),):
                    got = run_kernel(mod, k, n, wq[i], aq, n_act, pad=pad, s_stride=s_stride, misalign=mis)
                    assert same_bits(got, ref[i, :n_act]), (
                        f"{label} {TYPE_NAMES[gtype]} n={n} n_act={n_act} weight row {i}: "
                        f"got {got} want {ref[i, :n_act]}")


@pytest.mark.parametrize("gtype", [Q4_K, Q2_K], ids=["q4_K", "q2_K"])
@pytest.mark.parametrize("n", [256, 2048])
def test_tiled_matches_ggml_mul_mat_id(kern, emulated, ggml, mmid, gtype, n):
    """k.dot_tiled == ggml's MUL_MAT_ID for one expert with >= 8 activation rows (ggml's tiled path), bitwise;
    k.dot == the same MUL_MAT_ID below 8 rows (ggml's vec_dot). And the two procedures really differ, so the
    switch between them matters."""
    rng = np.random.default_rng(gtype * 7 + n)
    rows = 40
    wq = ggml.quantize_weights(gtype, np.concatenate([weight_rows(rng, n) for _ in range(6)])[:rows])
    acts = np.concatenate([activation_rows(rng, n, 7) for _ in range(10)])
    differ = 0
    for n_tok in (1, 5, 7, 8, 9, 33, 64):
        x = acts[:n_tok]
        ref = mmid(gtype, n, wq[None], x[:, None, :], np.zeros((n_tok, 1), np.int32))[:, 0, :]   # [n_tok, rows]
        aq = ggml.quantize_activations(gtype, x)
        tiled = n_tok >= 8
        if tiled:
            differ += int((ggml.dots(gtype, n, wq, aq).T != ref).sum())
        for label, k, mod in kernels_under_test(kern, emulated, gtype):
            got = np.stack([run_kernel(mod, k, n, wq[r], aq, n_tok, tiled=tiled) for r in range(rows)], axis=1)
            assert same_bits(got, ref), f"{label} {TYPE_NAMES[gtype]} n={n} rows={n_tok} tiled={tiled}"
    assert differ > 0, "ggml's tiled path gave vec_dot's results: the test no longer tells them apart"


MATMUL_TYPES = [Q4_K, Q2_K, Q4_0, Q4_1, Q8_0]


@pytest.mark.parametrize("gtype", MATMUL_TYPES, ids=[TYPE_NAMES[t] for t in MATMUL_TYPES])
def test_matmul_as_the_runtime_feeds_it(kern, emulated, ggml, mmid, gtype):
    """fm_kernel_matmul used as ggml_ext/fm_matmul.c uses it equals ggml's MUL_MAT_ID on the whole routed product:
    tokens routed to experts (ids), each expert's activation rows gathered into a scratch buffer at an odd
    offset, its weight bytes in a cache slot at an odd offset, its rows split into chunks as between threads,
    the tiled procedure from 8 rows on; 1 to 512 activation rows per expert."""
    rng = np.random.default_rng(gtype)
    n = 512 if BLOCK[gtype][0] == 256 else 96
    n_exp, rows, n_used = 4, 48, 2
    wq = ggml.quantize_weights(gtype, rng.standard_normal((n_exp * rows, n)).astype(np.float32) * 0.05)
    wq = wq.reshape(n_exp, rows, -1)
    vdt = VEC_DOT_TYPE[gtype]
    arow = row_bytes(vdt, n)
    for n_tok in (1, 3, 4, 9, 40, 256):
        x = rng.standard_normal((n_tok, n)).astype(np.float32)
        if n_tok == 256:     # one expert gets every token: 512 rows... and 256 rows for expert 1
            ids = np.stack([np.zeros(n_tok, np.int32), np.ones(n_tok, np.int32)], 1)
            ids[::2] = ids[::2, ::-1]
        else:
            ids = np.stack([rng.choice(n_exp, n_used, replace=False) for _ in range(n_tok)]).astype(np.int32)
        ref = mmid(gtype, n, wq, x[:, None, :], ids)                       # [n_tok, n_used, rows]
        aq = ggml.quantize_activations(gtype, x)
        for label, k, mod in kernels_under_test(kern, emulated, gtype):
            got = np.full((n_tok, n_used, rows), np.nan, np.float32)
            for e in range(n_exp):
                pairs = [(t, j) for t in range(n_tok) for j in range(n_used) if ids[t, j] == e]
                if not pairs:
                    continue
                gathered = np.zeros(7 + len(pairs) * arow, np.uint8)        # odd offset, as a scratch buffer
                for p, (t, _) in enumerate(pairs):
                    gathered[7 + p * arow: 7 + (p + 1) * arow] = aq[t]
                slot = np.zeros(3 + wq[e].size, np.uint8)
                slot[3:] = wq[e].reshape(-1)
                out = np.full(len(pairs) * rows + 1, np.nan, np.float32)
                for chunk in range(3):                                      # rows split as between 3 threads
                    r0, r1 = rows * chunk // 3, rows * (chunk + 1) // 3
                    part = np.full(len(pairs) * (r1 - r0), np.nan, np.float32)
                    kernel_matmul(kern, mod, k, gtype, len(pairs) >= 8 and gtype in (Q4_K, Q2_K), n, slot,
                                  3 + r0 * row_bytes(gtype, n), r1 - r0, gathered, 7, len(pairs), part, 0, r1 - r0)
                    out[:-1].reshape(len(pairs), rows)[:, r0:r1] = part.reshape(len(pairs), r1 - r0)
                for p, (t, j) in enumerate(pairs):
                    got[t, j] = out[p * rows:(p + 1) * rows]
            assert same_bits(got, ref), f"{label} {TYPE_NAMES[gtype]} {n_tok} tokens"


@pytest.mark.parametrize("gtype", list(TYPE_NAMES), ids=list(TYPE_NAMES.values()))
def test_matmul_is_dot_tiled(kern, ggml, gtype):
    """fm_kernel_matmul gives bitwise the results of one kernel call per (weight row, activation row)"""
    ffi, lib = kern.ffi, kern.lib
    rng = np.random.default_rng(7)
    n = 2048 if BLOCK[gtype][0] == 256 else 1024
    n_rows, n_act = 61, 19                       # more rows than a row tile, acts not a multiple of 4
    wq = ggml.quantize_weights(gtype, rng.standard_normal((n_rows, n)).astype(np.float32))
    aq = ggml.quantize_activations(gtype, rng.standard_normal((n_act, n)).astype(np.float32))
    for isa in (1, 2, 3):
        k = lib.fm_kernel_get(gtype, isa)
        if k == ffi.NULL:
            continue
        for tiled in (False, True) if k.dot_tiled != ffi.NULL else (False,):
            fn = k.dot_tiled if tiled else k.dot
            dst = np.full((n_act, n_rows + 3), -1.0, np.float32)
            lib.fm_kernel_matmul(k, gtype, int(tiled), n, ffi.from_buffer(wq), wq.shape[1], n_rows,
                                 ffi.from_buffer(aq), aq.shape[1], n_act, ffi.from_buffer("float[]", dst), n_rows + 3)
            want = np.empty((n_act, n_rows), np.float32)
            one = ffi.new("float *")
            for r in range(n_rows):
                for j in range(n_act):
                    fn(n, ffi.from_buffer(wq[r]), ffi.from_buffer(aq[j]), 0, 1, one, 1)
                    want[j, r] = one[0]
            assert same_bits(dst[:, :n_rows], want), (ISA_NAMES[isa], tiled)
            assert np.all(dst[:, n_rows:] == -1.0)


def test_tiled_only_for_ggml_tiled_types(kern):
    """ggml's tiled path covers K-quants (and IQ types), not the 32-value block types: a dot_tiled exists
    exactly where ggml has one, on every instruction set"""
    for gtype in TYPE_NAMES:
        for isa in (1, 2, 3):
            k = kern.lib.fm_kernel_get(gtype, isa)
            if k != kern.ffi.NULL:
                assert (k.dot_tiled != kern.ffi.NULL) == (gtype in (Q4_K, Q2_K))


def test_n_act_zero_writes_nothing(kern):
    for gtype in TYPE_NAMES:
        for isa in (1, 2, 3):
            k = kern.lib.fm_kernel_get(gtype, isa)
            if k == kern.ffi.NULL:
                continue
            n = BLOCK[gtype][0]
            out = np.full(4, 7.0, dtype=np.float32)
            w = np.zeros(row_bytes(gtype, n), dtype=np.uint8)
            for fn in (k.dot, k.dot_tiled) if k.dot_tiled != kern.ffi.NULL else (k.dot,):
                fn(n, kern.ffi.from_buffer("char[]", w), kern.ffi.NULL, 0, 0, kern.ffi.from_buffer("float[]", out), 1)
            assert np.all(out == 7.0)


def test_dispatch(kern):
    lib, ffi = kern.lib, kern.ffi
    flags = cpu_flags()
    has_avx2 = {"avx2", "fma"} <= flags
    has_avx512 = has_avx2 and {"avx512f", "avx512bw", "avx512vl"} <= flags
    expect = "avx512" if has_avx512 else "avx2" if has_avx2 else "scalar"
    if flags:  # on x86 Linux
        assert ISA_NAMES[lib.fm_kernel_best_isa()] == expect
    for gtype, name in TYPE_NAMES.items():
        best = lib.fm_kernel_get(gtype, 0)
        assert ffi.string(best.name).decode() == f"{name}_{ISA_NAMES[lib.fm_kernel_best_isa()]}"
        assert ffi.string(lib.fm_kernel_get(gtype, 1).name).decode() == f"{name}_scalar"
        assert (lib.fm_kernel_get(gtype, 2) != ffi.NULL) == (lib.fm_kernel_best_isa() >= 2)
        assert (lib.fm_kernel_get(gtype, 3) != ffi.NULL) == (lib.fm_kernel_best_isa() >= 3)
        assert lib.fm_kernel_block_size(gtype) == BLOCK[gtype][0]
        assert lib.fm_kernel_type_size(gtype) == BLOCK[gtype][1]
    for gtype in (0, 1, 6, 7, 11, 13, 14, 15, 30, 99, -1):  # types without kernels (and Q8_K itself)
        assert lib.fm_kernel_get(gtype, 0) == ffi.NULL
        assert lib.fm_kernel_vec_dot_type(gtype) == -1
    for gtype in TYPE_NAMES:
        assert lib.fm_kernel_get(gtype, 4) == ffi.NULL
        assert lib.fm_kernel_get(gtype, -1) == ffi.NULL


def test_fp16_table(kern):
    """the fp16 -> fp32 table the kernels convert scales with: every half, including subnormals and inf"""
    kern.lib.fm_kernels_init()
    table = np.frombuffer(kern.ffi.buffer(kern.lib.fm_fp16_table), dtype=np.float32)
    want = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(table), nan)
    assert np.array_equal(table[~nan].view(np.uint32), want[~nan].view(np.uint32))


def test_block_sizes_match_ggml(ggml):
    for gtype, (blck, size) in BLOCK.items():
        assert ggml.base.lib.ggml_blck_size(gtype) == blck
        assert ggml.base.lib.ggml_type_size(gtype) == size


def test_emulated_avx512_available(emulated, kern):
    """Where the CPU has no AVX-512, its kernels are only tested through SIMDe: say so when it is missing."""
    if kern.lib.fm_kernel_best_isa() >= 3:
        return
    if emulated is None:
        pytest.skip("no AVX-512 on this CPU and simde-py not installed: the AVX-512 kernels are untested")


def test_sources_compile_cleanly(tmp_path):
    """Each kernel file compiles as C11 with -Wall -Wextra -Wpedantic and no warning, with the default flags
    (the instruction sets are enabled per function)."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    for src in SOURCES:
        res = subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-c",
                              str(EXT / src), "-o", str(tmp_path / (src + ".o"))], capture_output=True, text=True)
        assert res.returncode == 0, f"{src}:\n{res.stderr}"
