"""Our Q4_K quantizer (ggml_ext/fm_quant.c) gives exactly ggml's bytes (ggml_quantize_chunk, no imatrix)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from flashmoe_gguf.ggml_lib import Ggml

ext = pytest.importorskip("flashmoe_gguf._fmext")
ISAS = [ext.lib.FM_QUANT_ISA_SCALAR] + ([ext.lib.FM_QUANT_ISA_AVX2]
                                       if ext.lib.fm_quant_best_isa() == ext.lib.FM_QUANT_ISA_AVX2 else [])


def ours(x: np.ndarray, isa: int) -> tuple[int, np.ndarray]:
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros((x.shape[0], x.shape[1] // 256 * 144), np.uint8)
    rc = ext.lib.fm_quantize_q4_K(ext.ffi.from_buffer("float[]", x), ext.ffi.from_buffer("char[]", out),
                                  x.shape[0], x.shape[1], isa)
    return rc, out


def ggml(x: np.ndarray) -> np.ndarray:
    g = Ggml.load()
    return g._quantize(T.Q4_K, np.ascontiguousarray(x, dtype=np.float32), 1, None)  # ggml's own, never ours


def bf16(x: np.ndarray) -> np.ndarray:
    u = x.astype(np.float32).view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> 16) & 1)) & np.uint32(0xFFFF0000)).view(np.float32)


def rows(kind: str, rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    shape = (n, length)
    scale = (10.0 ** rng.uniform(-8, 4, (n, 1))).astype(np.float32)
    if kind == "normal":
        x = rng.standard_normal(shape) * scale
    elif kind == "uniform":
        x = rng.uniform(-1, 1, shape) * scale
    elif kind == "uniform-shifted":
        x = (rng.uniform(0, 1, shape) + rng.uniform(-2, 2, (n, 1))) * scale
    elif kind == "heavy":
        x = rng.standard_t(1.5, shape) * scale
    elif kind == "cubed":
        x = rng.standard_normal(shape) ** 3 * scale
    elif kind == "outlier":
        x = rng.standard_normal(shape) * scale
        x[np.arange(n), rng.integers(0, length, n)] *= rng.choice([-1e4, -100, 100, 1e4], n)
    elif kind == "negative":
        x = -np.abs(rng.standard_normal(shape)) * scale
    elif kind == "positive":
        x = np.abs(rng.standard_normal(shape)) * scale
    elif kind == "sparse":
        x = rng.standard_normal(shape) * (rng.uniform(size=shape) < 0.05) * scale
    elif kind == "constant":
        x = np.repeat(rng.standard_normal((n, length // 32)), 32, axis=1) * scale
        x[: n // 2] = rng.standard_normal((n // 2, 1))
    elif kind == "zeros":
        x = np.zeros(shape)
        x[::2] = -0.0
        x[1::3, ::7] = -0.0
    elif kind == "denormal":
        x = rng.standard_normal(shape) * np.float32(1e-39)
        x[::2] *= 1e3
    elif kind == "tiny":
        x = rng.standard_normal(shape) * (10.0 ** rng.uniform(-37, -20, (n, 1)))
    elif kind == "few-levels":
        x = rng.integers(-3, 4, shape) * scale
    elif kind == "large":
        x = rng.standard_normal(shape) * (10.0 ** rng.uniform(4, 30, (n, 1)))
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


KINDS = ["normal", "uniform", "uniform-shifted", "heavy", "cubed", "outlier", "negative", "positive", "sparse",
         "constant", "zeros", "denormal", "tiny", "few-levels", "large"]


@pytest.mark.parametrize("isa", ISAS, ids=lambda i: "avx2" if i else "scalar")
@pytest.mark.parametrize("kind", KINDS)
def test_bytes_equal_ggml(kind: str, isa: int) -> None:
    rng = np.random.default_rng(abs(hash(kind)) % 2**32)
    for length in (256, 512, 768, 2048, 8192):
        n = max(2, 32768 // length)
        for x in (rows(kind, rng, n, length), bf16(rows(kind, rng, n, length))):
            rc, q = ours(x, isa)
            assert rc == 0
            ref = ggml(x)
            bad = np.nonzero((q != ref).any(axis=1))[0]
            assert bad.size == 0, f"{kind}, rows of {length}: {bad.size} of {n} rows differ (first: row {bad[:1]})"


@pytest.mark.parametrize("isa", ISAS, ids=lambda i: "avx2" if i else "scalar")
def test_odd_block_counts(isa: int) -> None:
    # the AVX2 path quantizes super-blocks in pairs: 1, 3, 5... blocks take its single-block tail
    rng = np.random.default_rng(7)
    for nblocks in (1, 3, 5, 7):
        x = bf16(rng.standard_normal((3, 256 * nblocks)) * 0.02)
        rc, q = ours(x, isa)
        assert rc == 0 and np.array_equal(q, ggml(x))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_goes_to_ggml(bad: float) -> None:
    x = np.random.default_rng(1).standard_normal((4, 512)).astype(np.float32)
    x[2, 300] = bad
    for isa in ISAS:
        assert ours(x, isa)[0] == 1
    g = Ggml.load()
    assert np.array_equal(g.quantize_rows(T.Q4_K, x), ggml(x))


def test_bad_arguments() -> None:
    x = np.zeros((2, 300), np.float32)
    assert ours(np.zeros((2, 256), np.float32), 7)[0] == -1
    out = np.zeros(1024, np.uint8)
    assert ext.lib.fm_quantize_q4_K(ext.ffi.from_buffer("float[]", x), ext.ffi.from_buffer("char[]", out),
                                    2, 300, -1) == -1


def test_converter_path_uses_it_and_matches() -> None:
    g = Ggml.load()
    assert g.fast_q4_K() is not None
    x = bf16(np.random.default_rng(3).standard_normal((64, 2048)) * 0.05)
    assert np.array_equal(g.quantize_rows(T.Q4_K, x, threads=2), ggml(x))


def test_forced_ggml_and_self_check(monkeypatch: pytest.MonkeyPatch) -> None:
    import flashmoe_gguf.ggml_lib as gl
    g = Ggml(Ggml.load().path)
    monkeypatch.setenv("FLASHMOE_GGML_QUANT", "1")
    assert g.fast_q4_K() is None
    # a quantizer that disagrees with ggml is refused by the self-check, with a warning
    monkeypatch.delenv("FLASHMOE_GGML_QUANT")
    g = Ggml(Ggml.load().path)

    def wrong(ext_, rows, out=None):
        q = np.zeros((rows.shape[0], rows.shape[1] // 256 * 144), np.uint8)
        return q
    monkeypatch.setattr(gl, "_fast_q4_K", wrong)
    with pytest.warns(RuntimeWarning, match="disagrees"):
        assert g.fast_q4_K() is None
