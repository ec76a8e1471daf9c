"""The expert-matmul dot-product kernels (ggml_ext/fm_kernels*.c) against ggml's own CPU code, bit for bit.

Weight rows are quantized by ggml (`ggml_quantize_chunk`, libggml-base), activation rows by ggml-cpu's
`from_float` for the weight type's vec_dot_type. The kernels must give exactly (bitwise) what ggml computes:
  - `dot` what ggml-cpu's `vec_dot` gives for the same pair of quantized rows;
  - `dot_tiled` (K-quants, IQ4_XS) what ggml-cpu's MUL_MAT_ID gives for an expert with 8 or more activation rows,
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

Q4_0, Q4_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K = 2, 3, 8, 9, 10, 11, 12, 13, 14, 15
IQ4_XS, MXFP4 = 23, 39
TYPE_NAMES = {Q4_0: "q4_0", Q4_1: "q4_1", Q8_0: "q8_0", Q2_K: "q2_K", Q4_K: "q4_K", Q3_K: "q3_K", Q5_K: "q5_K",
              Q6_K: "q6_K", IQ4_XS: "iq4_xs", MXFP4: "mxfp4"}
VEC_DOT_TYPE = {Q4_0: Q8_0, Q4_1: Q8_1, Q8_0: Q8_0, Q2_K: Q8_K, Q4_K: Q8_K, Q3_K: Q8_K, Q5_K: Q8_K, Q6_K: Q8_K,
                IQ4_XS: Q8_K, MXFP4: Q8_0}
BLOCK = {Q4_0: (32, 18), Q4_1: (32, 20), Q8_0: (32, 34), Q8_1: (32, 36), Q2_K: (256, 84), Q4_K: (256, 144),
         Q8_K: (256, 292), Q3_K: (256, 110), Q5_K: (256, 176), Q6_K: (256, 210), IQ4_XS: (256, 136),
         MXFP4: (32, 17)}
# the types ggml-cpu's MUL_MAT_ID computes with its tiled path (ggml-cpu/tiled/) for an expert with >= 8 rows;
# the others (32-value block types) always go through vec_dot
NO_TILED_TYPES = (Q4_0, Q4_1, Q8_0, MXFP4)
# the 32-value block types without an AVX-512 spelling: fm_kernel_get serves AVX-512 with their AVX2 kernels
NO_AVX512_TYPES = (Q4_0, Q4_1, Q8_0)
TILED_TYPES = tuple(t for t in TYPE_NAMES if t not in NO_TILED_TYPES)
ISA_NAMES = {1: "scalar", 2: "avx2", 3: "avx512"}
GGML_ERROR_BOUND = 1e-6   # ggml's own float error against the exact value, relative to the products' mass

KERNEL_CDEF = """
typedef void (*fm_dot_fn)(int n, const void *w, const void *act, size_t act_stride, int n_act, float *s,
                          size_t s_stride);
typedef void (*fm_mm_fn)(int n, const void *w, size_t w_stride, int n_rows, const void *act, size_t act_stride,
                         int n_act, float *dst, size_t dst_stride);
typedef struct { const char *name; fm_dot_fn dot; fm_dot_fn dot_tiled; fm_mm_fn mm_tiled; } fm_kernel;
const fm_kernel *fm_kernel_get(int ggml_type, int isa);
int fm_kernel_best_isa(void);
int fm_kernel_has_vnni(void);
int fm_kernel_vec_dot_type(int ggml_type);
int fm_kernel_block_size(int ggml_type);
int fm_kernel_n_multiple(int ggml_type);
size_t fm_kernel_type_size(int ggml_type);
void fm_kernels_init(void);
extern float fm_fp16_table[65536];
void fm_kernel_matmul(const fm_kernel *k, int type, int tiled, int n, const void *w, size_t w_stride, int n_rows,
                      const void *act, size_t act_stride, int n_act, float *dst, size_t dst_stride);
"""
EMULATED_CDEF = KERNEL_CDEF.split("const fm_kernel *fm_kernel_get(")[0] + \
    "const fm_kernel *fm_kernel_get_avx512(int ggml_type, int vnni);\nvoid fm_kernels_init(void);\n"

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

def _sign_pattern(n: int) -> np.ndarray:
    return np.where((np.arange(n) // 5) % 2 == 1, -1.0, 1.0)


def weight_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """Rows of different character: plain Gaussian, large magnitude with outliers, a strong offset (the
    mins of Q4_1/Q4_K/Q2_K), tiny, a row with all-zero blocks, heavy-tailed; and two of near-constant
    magnitude (all positive, and with a fixed sign pattern), whose blocks quantize to values near the extremes:
    against the matching activation rows their per-block integer sums are large (products of a block scale
    and such a sum are inexact in float32, so fusing or not fusing the multiply-add shows)."""
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
    flat = 1.0 + 0.1 * np.abs(rng.standard_normal(n))
    rows += [flat, flat[::-1] * _sign_pattern(n)]
    return np.stack(rows).astype(np.float32)


def activation_rows(rng: np.random.Generator, n: int, count: int, large: float = 1e4) -> np.ndarray:
    rows = rng.standard_normal((count, n)).astype(np.float32)
    rows[1] *= large
    rows[2] = np.abs(rows[2]) + 1.0          # all positive: sum-of-activations terms do not cancel
    rows[3, rng.integers(0, n, 4)] = 300.0    # outliers
    rows[4] *= 1e-5
    rows[5, : n // 2] = 0.0
    rows[6] = rng.standard_t(2, n)
    if count > 8:                             # near-constant magnitudes, see weight_rows
        rows[7] = rng.uniform(0.9, 1.0, n)
        rows[8] = rng.uniform(0.9, 1.0, n) * _sign_pattern(n)
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
    """6-bit scales and mins [..., 8] from the 12 scale bytes [..., 12] of Q4_K (and Q5_K) blocks"""
    sc = sc.astype(np.int64)
    lo = [sc[..., j] & 63 for j in range(4)] + [(sc[..., j + 8] & 15) | ((sc[..., j] >> 6) << 4) for j in range(4)]
    mn = [sc[..., j + 4] & 63 for j in range(4)] + [(sc[..., j + 8] >> 4) | ((sc[..., j + 4] >> 6) << 4)
                                                    for j in range(4)]
    return np.stack(lo, -1), np.stack(mn, -1)


def _q3k_scales(sc: np.ndarray) -> np.ndarray:
    """the 16 signed scales [..., 16] (6-bit value - 32) from the 12 scale bytes [..., 12] of Q3_K blocks:
    scale j has its low 4 bits in byte j % 8 (low nibble for j < 8, high nibble after) and its high 2 bits
    in byte 8 + j % 4, at bit 2 * (j // 4)"""
    sc = sc.astype(np.int64)
    out = [((sc[..., j % 8] >> (4 * (j // 8))) & 15) | (((sc[..., 8 + j % 4] >> (2 * (j // 4))) & 3) << 4)
           for j in range(16)]
    return np.stack(out, -1) - 32


KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int64)
KVALUES_FP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.int64)  # 2 * e2m1


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[..., k] bytes -> [..., 2, k]: low nibbles, then high nibbles"""
    qs = qs.astype(np.int64)
    return np.stack([qs & 15, qs >> 4], -2)


def _kquant_blocks(gtype: int, b: np.ndarray):
    """256-value super-blocks [w, nb, bytes] decoded: (d [w, nb], sub-block scales [w, nb, S] (signed ints),
    values [w, nb, S, 256 / S] (ints), dmin [w, nb] or None, mins [w, nb, S] or None), such that value l of
    sub-block j is d * scale[j] * q[j, l] - dmin * min[j]"""
    w, nb = b.shape[:2]
    if gtype == Q4_K or gtype == Q5_K:
        d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])
        sc, mn = _q4k_scales(b[..., 4:16])
        qs = b[..., 16:144] if gtype == Q4_K else b[..., 48:176]
        q = _nibbles(qs.reshape(w, nb, 4, 32)).reshape(w, nb, 8, 32)     # sub-block 2c: low nibbles of chunk c
        if gtype == Q5_K:                                                # 5th bit of sub-block j: bit j of qh[l]
            qh = b[..., 16:48].astype(np.int64)
            q = q + 16 * ((qh[:, :, None, :] >> np.arange(8).reshape(1, 1, 8, 1)) & 1)
        return d, sc, q, dmin, mn
    if gtype == Q2_K:
        d, dmin = _f16(b[..., 80:82]), _f16(b[..., 82:84])
        sc, mn = b[..., 0:16].astype(np.int64) & 15, b[..., 0:16].astype(np.int64) >> 4
        qs = b[..., 16:80].reshape(w, nb, 2, 1, 32).astype(np.int64)
        q = (qs >> np.array([0, 2, 4, 6]).reshape(1, 1, 1, 4, 1)) & 3            # [w, b, half, shift, 32]
        return d, sc, q.reshape(w, nb, 16, 16), dmin, mn
    if gtype == Q3_K:
        # value 128h + 32j + l: 2 low bits (qs[32h + l] >> 2j) & 3, minus 4 unless bit 4h + j of hmask[l] is set
        d = _f16(b[..., 108:110])
        sc = _q3k_scales(b[..., 96:108])
        qs = b[..., 32:96].reshape(w, nb, 2, 1, 32).astype(np.int64)
        low = (qs >> (2 * np.arange(4)).reshape(1, 1, 1, 4, 1)) & 3              # [w, b, h, j, l]
        hm = b[..., 0:32].astype(np.int64)[:, :, None, None, :]
        high = (hm >> np.arange(8).reshape(1, 1, 2, 4, 1)) & 1
        return d, sc, (low - 4 * (1 - high)).reshape(w, nb, 16, 16), None, None
    if gtype == Q6_K:
        # value 128h + 32k + l: 4 low bits from ql[64h + 32 (k % 2) + l] (low nibble for k < 2, high after),
        # 2 high bits (qh[32h + l] >> 2k) & 3; minus 32; scales are int8
        d = _f16(b[..., 208:210])
        sc = b[..., 192:208].view(np.int8).astype(np.int64)
        ql = b[..., 0:128].reshape(w, nb, 2, 2, 32).astype(np.int64)            # [w, b, h, k % 2, l]
        low = np.stack([ql[:, :, :, 0] & 15, ql[:, :, :, 1] & 15, ql[:, :, :, 0] >> 4, ql[:, :, :, 1] >> 4], 3)
        qh = b[..., 128:192].reshape(w, nb, 2, 1, 32).astype(np.int64)
        high = (qh >> (2 * np.arange(4)).reshape(1, 1, 1, 4, 1)) & 3
        # ggml sums the products with the unsigned 6-bit codes and subtracts 32 * scale * (16-value activation
        # sum) separately (in int32 lanes that are rounded to float, so the uncentred sums bound its error):
        # as a min, d * 32 * scale
        return d, sc, (low | (high << 4)).reshape(w, nb, 16, 16), d, 32 * sc
    if gtype == IQ4_XS:
        # sub-block j: 6-bit scale (4 bits in scales_l[j // 2], nibble j % 2; 2 bits at 2j of scales_h) - 32;
        # values kvalues_iq4nl[nibble] of qs[16j .. 16j + 16]: 16 low nibbles, then 16 high nibbles
        d = _f16(b[..., 0:2])
        sh = b[..., 2:4].copy().view("<u2")[..., 0].astype(np.int64)
        sl = b[..., 4:8].astype(np.int64)
        j = np.arange(8)
        sc = ((sl[..., j // 2] >> (4 * (j % 2))) & 15) | (((sh[..., None] >> (2 * j)) & 3) << 4)
        q = KVALUES_IQ4NL[_nibbles(b[..., 8:136].reshape(w, nb, 8, 16))].reshape(w, nb, 8, 32)
        return d, sc - 32, q, None, None
    raise ValueError(f"not a 256-value type: {gtype}")


def exact_dots(gtype: int, wq: np.ndarray, aq: np.ndarray):
    """ggml's dot-product formula in float64, decoded independently with numpy: the per-block integer sums
    times the block scales. Returns (exact [n_w, n_act], mass [n_w, n_act]): mass is the same sum with
    every product replaced by its magnitude (sum of |scale * q * y| and of |min * 16-value activation sum|),
    the classical bound that float rounding errors of any summation order are proportional to."""
    vdt = VEC_DOT_TYPE[gtype]
    yd, yq, ys = _activations(vdt, aq)
    b = _blocks(wq, gtype)
    if BLOCK[gtype][0] == 256:
        dx, sc, q, mx, mn = _kquant_blocks(gtype, b)
        y = yq.reshape(*yq.shape[:2], *q.shape[2:])                            # [a, b, sub-block, values]
        isum = np.einsum("wbj,wabj->wab", sc, np.einsum("wbjl,abjl->wabj", q, y))
        iabs = np.einsum("wbj,wabj->wab", np.abs(sc), np.einsum("wbjl,abjl->wabj", np.abs(q), np.abs(y)))
        scale = yd[None, :, :] * dx[:, None, :]
        if mx is None:
            return (scale * isum).sum(-1), (np.abs(scale) * iabs).sum(-1)
        bsums = yq.reshape(*y.shape[:3], -1, 16).sum(-1)                     # Q8_K's 16-value sums
        msum = np.einsum("wbj,abj->wab", mn, bsums.sum(-1))
        mabs = np.einsum("wbj,abj->wab", np.abs(mn), np.abs(bsums).sum(-1))
        mscale = yd[None, :, :] * mx[:, None, :]
        return ((scale * isum - mscale * msum).sum(-1),
                (np.abs(scale) * iabs + np.abs(mscale) * mabs).sum(-1))
    if gtype == MXFP4:
        dx = np.ldexp(1.0, b[..., 0].astype(np.int64) - 128)                  # E8M0 exponent, halved
        q = KVALUES_FP4[_nibbles(b[..., 1:17])].reshape(*b.shape[:2], 32)
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


def kernels_under_test(kern, emulated, gtype: int, whole: bool = False):
    """(label, kernel struct, module) for every instruction set this machine can run, and the AVX-512 kernels
    through SIMDe (so that AVX2-only machines test them too, and AVX-512 machines test the emulated build
    that AVX2-only machines use for the runtime tests). On a CPU with AVX512_VNNI the native "avx512" kernels
    are the VNNI ones (fm_kernel_get). `whole`: also the emulated VNNI kernel where it differs from the plain
    AVX-512 one, which is only in mm_tiled (its dot and dot_tiled are the same functions, tested as
    "avx512-emulated"): for the tests of whole products (fm_kernel_matmul, mm_tiled)."""
    out = []
    for isa in (1, 2, 3):
        k = kern.lib.fm_kernel_get(gtype, isa)
        if k != kern.ffi.NULL and all(k != o for _, o, _ in out):  # AVX-512 may hand out the AVX2 kernel
            out.append((ISA_NAMES[isa], k, kern))
    if emulated is not None:
        k = emulated.lib.fm_kernel_get_avx512(gtype, 0)
        if k != emulated.ffi.NULL:
            out.append(("avx512-emulated", k, emulated))
        kv = emulated.lib.fm_kernel_get_avx512(gtype, 1)
        if whole and kv != emulated.ffi.NULL and kv.mm_tiled != emulated.ffi.NULL:
            out.append(("avx512vnni-emulated", kv, emulated))
    return out


def expected_kernel_labels(emulated, gtype: int, whole: bool = False) -> list[str] | None:
    """the labels kernels_under_test must give for the type on this machine (None off x86 Linux)"""
    flags = cpu_flags()
    if not flags:
        return None
    want = ["scalar"]
    if {"avx2", "fma"} <= flags:
        want.append("avx2")
        if {"avx512f", "avx512bw", "avx512vl"} <= flags and gtype not in NO_AVX512_TYPES:
            want.append("avx512")
    if emulated is not None and gtype not in NO_AVX512_TYPES:
        want.append("avx512-emulated")
        if whole and gtype in TILED_TYPES:
            want.append("avx512vnni-emulated")
    return want


def required_kernels(kern, emulated, gtype: int, whole: bool = False):
    """kernels_under_test, failing (not passing vacuously) where the type lacks a kernel this machine runs"""
    kernels = kernels_under_test(kern, emulated, gtype, whole)
    labels = [lbl for lbl, _, _ in kernels]
    want = expected_kernel_labels(emulated, gtype, whole)
    assert labels and labels[0] == "scalar", f"no scalar kernel for {TYPE_NAMES[gtype]} (fm_kernel_get)"
    assert want is None or labels == want, f"{TYPE_NAMES[gtype]}: kernels {labels}, want {want}"
    return kernels


def mm_kernels(kern, emulated, gtype: int):
    """the kernels with a matrix-level tiled product (mm_tiled) this machine runs: the AVX-512 VNNI ones, native
    where the CPU has AVX512_VNNI, and emulated (SIMDe); failing where one of them is missing"""
    out = [(lbl, k, mod) for lbl, k, mod in kernels_under_test(kern, emulated, gtype, whole=True)
           if k.mm_tiled != mod.ffi.NULL]
    want = (["avx512"] if kern.lib.fm_kernel_best_isa() >= 3 and kern.lib.fm_kernel_has_vnni() else []) + \
        (["avx512vnni-emulated"] if emulated is not None else [])
    assert [lbl for lbl, _, _ in out] == want, (TYPE_NAMES[gtype], [lbl for lbl, _, _ in out], want)
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

# 256-value types at 1, 2, 8 and 16 super-blocks; 32-value types with an odd number of blocks too, except MXFP4,
# whose kernels take an even number (see test_mxfp4_odd_block_counts_are_left_to_ggml; 2880 is gpt-oss's hidden
# size)
CASES = [(t, n) for t in (Q4_K, Q2_K, Q6_K, Q5_K, Q3_K, IQ4_XS) for n in (256, 512, 2048, 4096)] + \
        [(t, n) for t in (Q4_0, Q4_1, Q8_0) for n in (32, 96, 2048)] + \
        [(MXFP4, n) for n in (64, 128, 2048, 2880, 4096)]
N_ACT = (1, 2, 3, 5, 8, 17)


@pytest.mark.parametrize("gtype,n", CASES, ids=[f"{TYPE_NAMES[t]}-{n}" for t, n in CASES])
def test_ggml_matches_exact_decoding(ggml, gtype, n):
    """Independently of our kernels: ggml's vec_dot agrees with the float64 numpy decoding of the blocks
    (exact_dots) within ggml's own float error, so the block layouts and the formula written there are ggml's."""
    _, _, wq, aq, ref = reference_case(ggml, gtype, n)
    assert ggml.traits(gtype).vec_dot_type == VEC_DOT_TYPE[gtype]
    assert wq.shape[1] == row_bytes(gtype, n) and aq.shape[1] == row_bytes(VEC_DOT_TYPE[gtype], n)
    assert np.all(np.isfinite(ref))
    exact, mass = exact_dots(gtype, wq, aq)
    err = float((np.abs(ref - exact) / mass).max())
    assert err <= GGML_ERROR_BOUND, f"{TYPE_NAMES[gtype]} n={n}: ggml vs exact {err:.3g} of the mass"
    assert float(np.abs(exact).max()) > 0


@pytest.mark.parametrize("gtype,n", CASES, ids=[f"{TYPE_NAMES[t]}-{n}" for t, n in CASES])
def test_matches_ggml_vec_dot(kern, emulated, ggml, gtype, n):
    """k.dot == ggml's vec_dot, bitwise, for varied rows (outliers, offsets, zeros, tiny and huge values)"""
    w, a, wq, aq, ref = reference_case(ggml, gtype, n)
    assert ggml.traits(gtype).vec_dot_type == VEC_DOT_TYPE[gtype] == kern.lib.fm_kernel_vec_dot_type(gtype)
    assert np.all(np.isfinite(ref))
    for label, k, mod in required_kernels(kern, emulated, gtype):
        for n_act in N_ACT:
            for i in range(wq.shape[0]):
                for pad, s_stride, mis in ((0, 1, 0), (5, 3, 1)) if n_act in (5, 17) else ((0, 1, 0),):
                    got = run_kernel(mod, k, n, wq[i], aq, n_act, pad=pad, s_stride=s_stride, misalign=mis)
                    assert same_bits(got, ref[i, :n_act]), (
                        f"{label} {TYPE_NAMES[gtype]} n={n} n_act={n_act} weight row {i}: "
                        f"got {got} want {ref[i, :n_act]}")


@pytest.mark.parametrize("gtype", TILED_TYPES, ids=[TYPE_NAMES[t] for t in TILED_TYPES])
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
    kernels = required_kernels(kern, emulated, gtype)
    for label, k, mod in kernels:
        assert k.dot_tiled != mod.ffi.NULL, f"{label} {TYPE_NAMES[gtype]}: no dot_tiled"
    for n_tok in (1, 5, 7, 8, 9, 33, 64):     # 8..16 rows: ggml's narrow tiled path, more: its standard one
        x = acts[:n_tok]
        ref = mmid(gtype, n, wq[None], x[:, None, :], np.zeros((n_tok, 1), np.int32))[:, 0, :]   # [n_tok, rows]
        aq = ggml.quantize_activations(gtype, x)
        tiled = n_tok >= 8
        if tiled:
            differ += int((ggml.dots(gtype, n, wq, aq).T != ref).sum())
        for label, k, mod in kernels:
            got = np.stack([run_kernel(mod, k, n, wq[r], aq, n_tok, tiled=tiled) for r in range(rows)], axis=1)
            assert same_bits(got, ref), f"{label} {TYPE_NAMES[gtype]} n={n} rows={n_tok} tiled={tiled}"
    assert differ > 0, "ggml's tiled path gave vec_dot's results: the test no longer tells them apart"


# offsets of the fp16 scale fields (d, and dmin / m) in a block
FP16_FIELDS = {Q4_0: (0,), Q4_1: (0, 2), Q8_0: (0,), Q2_K: (80, 82), Q3_K: (108,), Q4_K: (0, 2), Q5_K: (0, 2),
               Q6_K: (208,), IQ4_XS: (0,)}


def random_blocks(rng: np.random.Generator, gtype: int, n_rows: int, n: int, e_range=(104, 144)) -> np.ndarray:
    """weight rows of random bytes: every bit pattern of values and sub-block scales, including those ggml's
    quantizers never write (Q8_0's -128, Q6_K's scale -128, IQ4_XS's scale -32, ...), with finite fp16 scales
    of either sign (MXFP4: E8M0 exponents in e_range)"""
    blck, size = BLOCK[gtype]
    b = rng.integers(0, 256, (n_rows, n // blck, size), dtype=np.uint8)
    if gtype == MXFP4:
        b[..., 0] = rng.integers(*e_range, b.shape[:2])
    else:
        for off in FP16_FIELDS[gtype]:
            h = rng.uniform(0.5, 1.0, b.shape[:2]) * rng.choice([-1.0, 1.0], b.shape[:2]) * \
                np.exp2(rng.integers(-12, 1, b.shape[:2]).astype(np.float64))
            b[..., off:off + 2] = h.astype("<f2").view(np.uint8).reshape(*b.shape[:2], 2)
    return b.reshape(n_rows, -1)


_random_cases = {}


def random_case(ggml, gtype: int, n: int, variant: str = ""):
    """random weight blocks (20 rows), 20 activation rows quantized by ggml, and ggml's vec_dot for them"""
    key = (gtype, n, variant)
    if key not in _random_cases:
        rng = np.random.default_rng(7000 + 100 * gtype + n % 97)
        wq = random_blocks(rng, gtype, 20, n, e_range=(0, 200) if variant == "wide-e" else (104, 144))
        a = np.concatenate([activation_rows(rng, n, 10, large=1e2 if gtype == Q4_1 else 1e4),
                            rng.standard_normal((10, n)).astype(np.float32)])
        aq = ggml.quantize_activations(gtype, a)
        _random_cases[key] = (a, wq, aq, ggml.dots(gtype, n, wq, aq))
    return _random_cases[key]


RANDOM_CASES = [(t, 2048 if BLOCK[t][0] == 256 else 1088, "") for t in TYPE_NAMES] + [(MXFP4, 1088, "wide-e")]
RANDOM_IDS = [f"{TYPE_NAMES[t]}{'-' + v if v else ''}" for t, _, v in RANDOM_CASES]


@pytest.mark.parametrize("gtype,n,variant", RANDOM_CASES[:-1], ids=RANDOM_IDS[:-1])
def test_ggml_matches_exact_decoding_random_blocks(ggml, gtype, n, variant):
    """Independently of our kernels: on blocks of random bytes, which set every bit of the layout, ggml's
    vec_dot agrees with the numpy decoding (exact_dots) within ggml's float error"""
    _, wq, aq, ref = random_case(ggml, gtype, n, variant)
    assert np.all(np.isfinite(ref))
    exact, mass = exact_dots(gtype, wq, aq)
    err = float((np.abs(ref - exact) / mass).max())
    assert err <= GGML_ERROR_BOUND, f"{TYPE_NAMES[gtype]}: ggml vs exact {err:.3g} of the mass"


@pytest.mark.parametrize("gtype,n,variant", RANDOM_CASES, ids=RANDOM_IDS)
def test_random_blocks_match_ggml(kern, emulated, ggml, mmid, gtype, n, variant):
    """On blocks of random bytes (wide-e: MXFP4 exponents 0..199, subnormal block scales included), k.dot ==
    ggml's vec_dot bitwise, and for the tiled types k.dot_tiled == ggml's MUL_MAT_ID with 9 and 20 rows (its
    narrow and standard tiled paths)"""
    a, wq, aq, ref = random_case(ggml, gtype, n, variant)
    kernels = required_kernels(kern, emulated, gtype)
    for label, k, mod in kernels:
        for i in range(wq.shape[0]):
            got = run_kernel(mod, k, n, wq[i], aq, aq.shape[0])
            assert same_bits(got, ref[i]), f"{label} {TYPE_NAMES[gtype]} {variant} weight row {i}"
    if gtype not in TILED_TYPES:
        return
    for n_tok in (9, 20):
        mm = mmid(gtype, n, wq[None], a[:n_tok, None, :], np.zeros((n_tok, 1), np.int32))[:, 0, :]
        for label, k, mod in kernels:
            got = np.stack([run_kernel(mod, k, n, wq[r], aq, n_tok, tiled=True) for r in range(wq.shape[0])], 1)
            assert same_bits(got, mm), f"{label} {TYPE_NAMES[gtype]} tiled, {n_tok} rows"


def correlated_rows(rng: np.random.Generator, n: int, n_w: int, n_a: int):
    """weight rows (magnitudes uniform in [0, c]) and activation rows (near-constant magnitudes) that share one
    random sign pattern: every (weight, activation) pair has large per-block integer sums with random low bits,
    so that the float32 products of block scales and those sums are inexact (a fused multiply-add and a multiply
    then an add differ) and int32 lanes may pass 2^24 (their conversion to float rounds)"""
    sign = rng.choice([-1.0, 1.0], n)
    w = sign * rng.uniform(0.0, 1.0, (n_w, n)) * rng.uniform(0.5, 2.0, (n_w, 1))
    a = sign * rng.uniform(0.8, 1.0, (n_a, n)) * rng.uniform(0.1, 10.0, (n_a, 1))
    return w.astype(np.float32), a.astype(np.float32)


LARGE_SUM_CASES = [(t, 512 if BLOCK[t][0] == 256 else 128 if t == MXFP4 else 96) for t in TYPE_NAMES] + [(MXFP4, 2944)]


@pytest.mark.parametrize("gtype,n", LARGE_SUM_CASES, ids=[f"{TYPE_NAMES[t]}-{n}" for t, n in LARGE_SUM_CASES])
def test_large_block_sums_match_ggml(kern, emulated, ggml, mmid, gtype, n):
    """Rows whose every pair has near-maximal block sums (correlated_rows): ggml agrees with the exact
    decoding, k.dot with ggml's vec_dot bitwise, and for the tiled types k.dot_tiled with ggml's MUL_MAT_ID at 12 and 20 rows"""
    rng = np.random.default_rng(300 + gtype + n)
    w, a = correlated_rows(rng, n, 16, 20)
    wq = ggml.quantize_weights(gtype, w)
    aq = ggml.quantize_activations(gtype, a)
    ref = ggml.dots(gtype, n, wq, aq)
    exact, mass = exact_dots(gtype, wq, aq)
    assert float((np.abs(ref - exact) / mass).max()) <= GGML_ERROR_BOUND
    kernels = required_kernels(kern, emulated, gtype)
    for label, k, mod in kernels:
        got = np.stack([run_kernel(mod, k, n, wq[i], aq, aq.shape[0]) for i in range(wq.shape[0])])
        bad = np.argwhere(got.view(np.uint32) != ref.view(np.uint32))
        assert len(bad) == 0, f"{label} {TYPE_NAMES[gtype]}: {len(bad)} of {ref.size} differ, first {bad[:3].tolist()}"
    if gtype not in TILED_TYPES:
        return
    for n_tok in (12, 20):
        mm = mmid(gtype, n, wq[None], a[:n_tok, None, :], np.zeros((n_tok, 1), np.int32))[:, 0, :]
        for label, k, mod in kernels:
            got = np.stack([run_kernel(mod, k, n, wq[r], aq, n_tok, tiled=True) for r in range(wq.shape[0])], 1)
            assert same_bits(got, mm), f"{label} {TYPE_NAMES[gtype]} tiled, {n_tok} rows"


MATMUL_TYPES = [Q4_K, Q2_K, Q6_K, Q5_K, Q3_K, IQ4_XS, Q4_0, Q4_1, Q8_0, MXFP4]


@pytest.mark.parametrize("gtype", MATMUL_TYPES, ids=[TYPE_NAMES[t] for t in MATMUL_TYPES])
def test_matmul_as_the_runtime_feeds_it(kern, emulated, ggml, mmid, gtype):
    """fm_kernel_matmul used as ggml_ext/fm_matmul.c uses it equals ggml's MUL_MAT_ID on the whole routed product:
    tokens routed to experts (ids), each expert's activation rows gathered into a scratch buffer at an odd
    offset, its weight bytes in a cache slot at an odd offset, its rows split into chunks as between threads,
    the tiled procedure from 8 rows on; 1 to 512 activation rows per expert."""
    rng = np.random.default_rng(gtype)
    n = 512 if BLOCK[gtype][0] == 256 else 128 if gtype == MXFP4 else 96
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
        for label, k, mod in required_kernels(kern, emulated, gtype, whole=True):
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
                    kernel_matmul(kern, mod, k, gtype, len(pairs) >= 8 and gtype in TILED_TYPES, n, slot,
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
    n = 2048 if BLOCK[gtype][0] == 256 else 1088 if gtype == MXFP4 else 1024
    n_rows, n_act = 61, 19                       # more rows than a row tile, acts not a multiple of 4
    assert lib.fm_kernel_get(gtype, 1) != ffi.NULL, f"no scalar kernel for {TYPE_NAMES[gtype]}"
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


def run_mm(mod, k, n: int, wq: np.ndarray, aq: np.ndarray, *, w_off: int = 0, w_pad: int = 0, a_off: int = 0,
           a_pad: int = 0, d_off: int = 0, d_pad: int = 0) -> np.ndarray:
    """k.mm_tiled on weight rows wq [n_rows, row bytes] and activation rows aq [n_act, row bytes], each in its own
    buffer at an offset (unaligned) with padded strides (the padding filled with junk); returns float32
    [n_act, n_rows], after checking that nothing outside dst[j * d_stride + r] was written"""
    ffi = mod.ffi
    n_rows, n_act = wq.shape[0], aq.shape[0]
    ws, as_, ds = wq.shape[1] + w_pad, aq.shape[1] + a_pad, n_rows + d_pad
    wbuf = np.full(w_off + ws * n_rows + 64, 0xA5, np.uint8)
    wbuf[w_off: w_off + ws * n_rows].reshape(n_rows, ws)[:, :wq.shape[1]] = wq
    abuf = np.full(a_off + as_ * n_act + 64, 0x5A, np.uint8)
    abuf[a_off: a_off + as_ * n_act].reshape(n_act, as_)[:, :aq.shape[1]] = aq
    sentinel = np.float32(-12345.0)
    out = np.full(d_off + ds * n_act + 16, sentinel, np.float32)
    k.mm_tiled(n, ffi.from_buffer("char[]", wbuf) + w_off, ws, n_rows, ffi.from_buffer("char[]", abuf) + a_off, as_,
               n_act, ffi.from_buffer("float[]", out) + d_off, ds)
    res = out[d_off: d_off + ds * n_act].reshape(n_act, ds)
    assert np.all(out[:d_off] == sentinel) and np.all(out[d_off + ds * n_act:] == sentinel)
    assert np.all(res[:, n_rows:] == sentinel), "mm_tiled wrote outside dst[j * d_stride + r]"
    return res[:, :n_rows].copy()


def dot_tiled_matrix(kern, n: int, wq: np.ndarray, aq: np.ndarray) -> np.ndarray:
    """the scalar dot_tiled (the specification) for every pair: float32 [n_act, n_rows]"""
    ffi = kern.ffi
    k = kern.lib.fm_kernel_get(int(_mm_type[0]), 1)
    out = np.empty((aq.shape[0], wq.shape[0]), np.float32)
    pa = ffi.from_buffer("char[]", aq)
    col = np.empty(aq.shape[0], np.float32)
    for r in range(wq.shape[0]):
        k.dot_tiled(n, ffi.from_buffer("char[]", wq[r]), pa, aq.shape[1], aq.shape[0], ffi.from_buffer("float[]", col), 1)
        out[:, r] = col
    return out


_mm_type = [0]

# (n, weight rows, activation rows): rows around and past the 16- and 32-row tiles, activation rows around the
# 6-row register tiles, 1..7 (GGML_CPU_TILED_MM_FORCE) and past a pass of activation rows (8192: 42 rows a pass)
MM_SHAPES = [(256, 1, 1), (256, 5, 8), (512, 16, 8), (512, 17, 9), (256, 31, 13), (512, 32, 12), (256, 33, 7),
             (768, 48, 25), (512, 61, 19), (256, 100, 64), (512, 300, 11), (256, 8, 300), (2304, 40, 33),
             (8192, 20, 100), (256, 3, 2), (512, 47, 6)]


@pytest.mark.parametrize("gtype", TILED_TYPES, ids=[TYPE_NAMES[t] for t in TILED_TYPES])
def test_mm_tiled_is_dot_tiled(kern, emulated, ggml, gtype):
    """mm_tiled gives bitwise the scalar dot_tiled's result for every (weight row, activation row) pair, for
    1..300 weight rows and 1..300 activation rows (not multiples of the kernel's tiles too), weight rows of random
    bytes (every bit pattern of values, scales and mins) and of quantized data, unaligned buffers and padded
    strides, and writes nothing else"""
    kernels = mm_kernels(kern, emulated, gtype)
    if not kernels:
        pytest.skip("no mm_tiled on this machine (no AVX512_VNNI, no SIMDe)")
    _mm_type[0] = gtype
    rng = np.random.default_rng(40 + gtype)
    for i, (n, n_rows, n_act) in enumerate(MM_SHAPES):
        wq = random_blocks(rng, gtype, n_rows, n)
        quant = ggml.quantize_weights(gtype, np.concatenate([weight_rows(rng, n) for _ in range(n_rows // 9 + 1)]))
        wq[1::2] = quant[: n_rows // 2]
        a = np.concatenate([activation_rows(rng, n, 10) for _ in range(n_act // 10 + 1)])[:n_act]
        aq = ggml.quantize_activations(gtype, a)
        want = dot_tiled_matrix(kern, n, wq, aq)
        layout = dict(w_off=i % 5, w_pad=(0, 3, 17)[i % 3], a_off=(0, 1, 5)[i % 3], a_pad=(0, 7, 64)[(i + 1) % 3],
                      d_off=i % 3, d_pad=(0, 5)[i % 2])
        for label, k, mod in kernels:
            got = run_mm(mod, k, n, wq, aq, **layout)
            bad = np.argwhere(got.view(np.uint32) != want.view(np.uint32))
            assert len(bad) == 0, (f"{label} {TYPE_NAMES[gtype]} n={n} rows={n_rows} acts={n_act}: {len(bad)} differ, "
                                   f"first (act, row) {bad[:3].tolist()}")


@pytest.mark.parametrize("gtype", TILED_TYPES, ids=[TYPE_NAMES[t] for t in TILED_TYPES])
def test_mm_tiled_matches_ggml_mul_mat_id(kern, emulated, ggml, mmid, gtype):
    """mm_tiled == ggml's MUL_MAT_ID (its tiled path: 8..16 rows narrow, more standard) bitwise, on quantized
    rows of varied character, on random-byte blocks, and on rows whose every pair has near-maximal block sums
    (correlated_rows), through fm_kernel_matmul as the runtime calls it"""
    kernels = mm_kernels(kern, emulated, gtype)
    if not kernels:
        pytest.skip("no mm_tiled on this machine (no AVX512_VNNI, no SIMDe)")
    rng = np.random.default_rng(90 + gtype)
    n = 2048
    wq_plain = ggml.quantize_weights(gtype, np.concatenate([weight_rows(rng, n) for _ in range(5)])[:37])
    a_plain = np.concatenate([activation_rows(rng, n, 10) for _ in range(7)])
    a_rand, wq_rand, _, _ = random_case(ggml, gtype, n)
    w_big, a_big = correlated_rows(rng, 512, 16, 20)
    cases = [("quantized", n, wq_plain, a_plain, (8, 16, 17, 64)),
             ("random bytes", n, wq_rand, a_rand, (9, 20)),
             ("large sums", 512, ggml.quantize_weights(gtype, w_big), a_big, (12, 20))]
    for what, nn, wq, a, n_toks in cases:
        for n_tok in n_toks:
            ref = mmid(gtype, nn, wq[None], a[:n_tok, None, :], np.zeros((n_tok, 1), np.int32))[:, 0, :]
            aq = ggml.quantize_activations(gtype, a[:n_tok])
            for label, k, mod in kernels:
                got = run_mm(mod, k, nn, wq, aq, w_off=1, a_off=3, d_off=1, d_pad=2)
                assert same_bits(got, ref), f"{label} {TYPE_NAMES[gtype]} {what}, {n_tok} rows"


def test_ggml_tiled_types(ggml, mmid):
    """Independently of our kernels, the table TILED_TYPES is ggml's: for an expert with >= 8 activation rows
    ggml's MUL_MAT_ID gives other results than vec_dot for the types with a tiled path, and exactly vec_dot's
    for the others (Q4_0, Q4_1, Q8_0, MXFP4); below 8 rows it gives vec_dot's for every type."""
    rng = np.random.default_rng(5)
    for gtype, name in TYPE_NAMES.items():
        n = 512 if BLOCK[gtype][0] == 256 else 96
        wq = ggml.quantize_weights(gtype, rng.standard_normal((32, n)).astype(np.float32))
        x = rng.standard_normal((12, n)).astype(np.float32)
        for n_tok in (7, 12):
            ref = mmid(gtype, n, wq[None], x[:n_tok, None, :], np.zeros((n_tok, 1), np.int32))[:, 0, :]
            vd = ggml.dots(gtype, n, wq, ggml.quantize_activations(gtype, x[:n_tok])).T
            if n_tok >= 8 and gtype in TILED_TYPES:
                assert not same_bits(ref, vd), f"{name}: ggml's MUL_MAT_ID gave vec_dot's results"
                assert np.allclose(ref, vd, rtol=1e-3, atol=1e-3 * float(np.abs(vd).max()))
            else:
                assert same_bits(ref, vd), f"{name} {n_tok} rows: MUL_MAT_ID is not vec_dot"


def test_tiled_only_for_ggml_tiled_types(kern, emulated):
    """ggml's tiled path covers the K-quants and IQ4_XS (and other IQ types), not the 32-value block types
    (Q4_0, Q4_1, Q8_0, MXFP4): a dot_tiled exists exactly where ggml has one, on every instruction set, and an
    mm_tiled only there too (the AVX-512 VNNI kernels). A VNNI kernel is the plain AVX-512 one (the same dot and
    dot_tiled functions) plus mm_tiled, so a CPU with AVX-512 but without VNNI computes the same."""
    assert set(TILED_TYPES) == set(TYPE_NAMES) - {Q4_0, Q4_1, Q8_0, MXFP4}
    for gtype, name in TYPE_NAMES.items():
        assert kern.lib.fm_kernel_get(gtype, 1) != kern.ffi.NULL, f"no scalar kernel for {name}"
        for label, k, mod in kernels_under_test(kern, emulated, gtype, whole=True):
            assert (k.dot_tiled != mod.ffi.NULL) == (gtype in TILED_TYPES), (name, label)
            if k.mm_tiled != mod.ffi.NULL:
                assert gtype in TILED_TYPES and "avx512" in label, (name, label)
        if emulated is not None:
            lib, ffi = emulated.lib, emulated.ffi
            plain, vnni = lib.fm_kernel_get_avx512(gtype, 0), lib.fm_kernel_get_avx512(gtype, 1)
            if gtype in NO_AVX512_TYPES:
                assert plain == ffi.NULL and vnni == ffi.NULL, name
                continue
            assert plain.mm_tiled == ffi.NULL and ffi.string(plain.name).decode() == f"{name}_avx512"
            assert vnni.dot == plain.dot and vnni.dot_tiled == plain.dot_tiled
            assert (vnni.mm_tiled != ffi.NULL) == (gtype in TILED_TYPES)
            assert ffi.string(vnni.name).decode() == f"{name}_avx512" + ("vnni" if gtype in TILED_TYPES else "")


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
            if k.mm_tiled != kern.ffi.NULL:
                for n_rows, n_act in ((1, 0), (0, 1), (0, 0)):
                    k.mm_tiled(n, kern.ffi.from_buffer("char[]", w), w.size, n_rows, kern.ffi.NULL, 0, n_act,
                               kern.ffi.from_buffer("float[]", out), 1)
            assert np.all(out == 7.0)


def test_dispatch(kern):
    lib, ffi = kern.lib, kern.ffi
    flags = cpu_flags()
    has_avx2 = {"avx2", "fma"} <= flags
    has_avx512 = has_avx2 and {"avx512f", "avx512bw", "avx512vl"} <= flags
    expect = "avx512" if has_avx512 else "avx2" if has_avx2 else "scalar"
    if flags:  # on x86 Linux
        assert ISA_NAMES[lib.fm_kernel_best_isa()] == expect
        # VNNI: CPUID 7.0 ECX bit 11, used only with the AVX-512 kernels
        assert lib.fm_kernel_has_vnni() == int(has_avx512 and "avx512_vnni" in flags)
    vnni = lib.fm_kernel_best_isa() >= 3 and lib.fm_kernel_has_vnni()
    for gtype, name in TYPE_NAMES.items():
        best = lib.fm_kernel_get(gtype, 0)
        assert best != ffi.NULL, f"no kernel for {name}"
        # the VNNI kernels (tiled types) say so in their name; the types without an AVX-512 spelling run AVX2's
        isa_name = ISA_NAMES[min(lib.fm_kernel_best_isa(), 2 if gtype in NO_AVX512_TYPES else 3)] + \
            ("vnni" if vnni and gtype in TILED_TYPES else "")
        assert ffi.string(best.name).decode() == f"{name}_{isa_name}"
        assert (best.mm_tiled != ffi.NULL) == (vnni and gtype in TILED_TYPES)
        if lib.fm_kernel_best_isa() >= 3:
            assert lib.fm_kernel_get(gtype, 3) == best
            if gtype in NO_AVX512_TYPES:
                assert best == lib.fm_kernel_get(gtype, 2)
        assert ffi.string(lib.fm_kernel_get(gtype, 1).name).decode() == f"{name}_scalar"
        assert (lib.fm_kernel_get(gtype, 2) != ffi.NULL) == (lib.fm_kernel_best_isa() >= 2)
        assert (lib.fm_kernel_get(gtype, 3) != ffi.NULL) == (lib.fm_kernel_best_isa() >= 3)
        assert lib.fm_kernel_block_size(gtype) == BLOCK[gtype][0]
        assert lib.fm_kernel_type_size(gtype) == BLOCK[gtype][1]
    # types without kernels (F32, F16, Q5_0, Q5_1, the activation types Q8_1 and Q8_K, the other IQ types, BF16,
    # TQ1_0, TQ2_0, NVFP4, ...)
    for gtype in (0, 1, 6, 7, 9, 15, 16, 17, 18, 19, 20, 21, 22, 29, 30, 34, 35, 40, 41, 42, 99, -1):
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


def test_mxfp4_odd_block_counts_are_left_to_ggml(kern):
    """ggml's MXFP4 vec_dot adds an odd last block with `sumf += d * isum`, which GCC fuses into one FMA or not
    depending on the CPU it tunes for (the libggml-cpu built here for Zen: not fused; tuned for Intel: fused), so
    no kernel can promise ggml's bits there: the kernels require an even number of blocks, and the runtime
    (fm_matmul.c) and `inspect` (fm_has_kernel) leave other row lengths to ggml's own code"""
    assert kern.lib.fm_kernel_n_multiple(MXFP4) == 64
    for t in TYPE_NAMES:
        if t != MXFP4:
            assert kern.lib.fm_kernel_n_multiple(t) == BLOCK[t][0]
    from flashmoe_gguf import extension
    lib = extension.constants()
    assert lib.fm_has_kernel(MXFP4, 2880) > 0 and lib.fm_has_kernel(MXFP4, 2880 + 32) == 0
    assert lib.fm_has_kernel(Q4_K, 2048) > 0 and lib.fm_has_kernel(Q4_K, 2048 + 32) == 0
    assert lib.fm_has_kernel(0, 2048) == 0          # F32: no kernel of ours
