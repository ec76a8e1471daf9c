"""Our quantized bytes equal llama.cpp's own quantizer (`llama_model_quantize`, what llama-quantize runs)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T, GGUFReader, LlamaFileType as F

from conftest import checkpoint, converted
from flashmoe_gguf.converter import convert
from flashmoe_gguf.ggml_lib import Ggml

# our type -> the llama.cpp file type whose "pure" mode uses it for every quantizable tensor
FTYPES = {T.Q8_0: F.MOSTLY_Q8_0, T.Q6_K: F.MOSTLY_Q6_K, T.Q5_K: F.MOSTLY_Q5_K_M, T.Q4_K: F.MOSTLY_Q4_K_M,
          T.Q4_1: F.MOSTLY_Q4_1, T.Q4_0: F.MOSTLY_Q4_0, T.Q3_K: F.MOSTLY_Q3_K_M, T.Q2_K: F.MOSTLY_Q2_K,
          T.F16: F.MOSTLY_F16, T.BF16: F.MOSTLY_BF16, T.Q5_0: F.MOSTLY_Q5_0}


def llama_quantize(src: Path, dst: Path, ftype: int) -> None:
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.pure = True
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize failed with {rc}"


def tensors(path: Path) -> dict[str, tuple[str, bytes]]:
    return {t.name: (t.tensor_type.name, bytes(np.asarray(t.data).view(np.uint8).reshape(-1)))
            for t in GGUFReader(path).tensors}


@pytest.mark.parametrize("gtype", list(FTYPES), ids=lambda t: t.name)
def test_bytes_equal_llama_quantize(gtype: T, tmp_path: Path) -> None:
    # llama.cpp's quantizer copies general.alignment but pads to 32 bytes, so its input must use 32
    f32 = converted("qwen3_moe", "f32-align32")
    ref_path = tmp_path / "ref.gguf"
    llama_quantize(f32, ref_path, int(FTYPES[gtype]))
    ours_path = tmp_path / "ours.gguf"
    convert(checkpoint("qwen3_moe"), ours_path, experts=gtype, dense=gtype, router="F32")
    ref, ours = tensors(ref_path), tensors(ours_path)
    compared = 0
    for name, (rtype, rbytes) in ref.items():
        otype, obytes = ours[name]
        if rtype == gtype.name:
            assert otype == rtype, name
            assert obytes == rbytes, f"{name}: {rtype} bytes differ from llama_model_quantize"
            compared += 1
    # every expert tensor and every attention matrix must have been compared
    assert compared >= sum(1 for n in ours if "_exps." in n or ".attn_" in n and n.endswith("weight")
                           and ours[n][0] == gtype.name)
    assert any("_exps." in n for n, (t, _) in ref.items() if t == gtype.name)


@pytest.mark.parametrize("gtype", [T.Q4_K, T.Q8_0, T.Q4_0, T.Q2_K, T.Q6_K])
def test_dequantize_roundtrip_close(gtype: T) -> None:
    """ggml's to_float of our quantized rows is close to the input (sanity of the binding itself)."""
    g = Ggml.load()
    x = np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32)
    q = g.quantize_rows(gtype, x)
    y = g.dequantize(gtype, q, x.size).reshape(x.shape)
    tol = {T.Q8_0: 0.01, T.Q6_K: 0.03, T.Q4_K: 0.12, T.Q4_0: 0.15, T.Q2_K: 0.5}[gtype]
    assert np.sqrt(((x - y) ** 2).mean()) / x.std() < tol


def test_quantize_rejects_bad_rows() -> None:
    g = Ggml.load()
    with pytest.raises(ValueError, match="block size"):
        g.quantize_rows(T.Q4_K, np.zeros((2, 100), np.float32))
