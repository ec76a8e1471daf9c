"""MLX affine 4-bit checkpoints (what Flash-MoE runs): exact transcoding to Q4_1, checked against MLX itself.

The MLX checkpoint is made from the tiny Qwen3-MoE with `mlx.core.quantize` (group 64, 4 bits, bf16 scales and
biases, experts stacked as `switch_mlp`), the layout mlx-lm writes. The reference is `mlx.core.dequantize`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T, GGUFReader

from conftest import cache_root, checkpoint
from flashmoe_gguf.converter import convert
from flashmoe_gguf.ggml_lib import Ggml

mx = pytest.importorskip("mlx.core")

GROUP, BITS = 64, 4


def _load_f32(ckpt: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    return load_file(str(ckpt / "model.safetensors"))


def build_mlx_checkpoint() -> tuple[Path, dict[str, np.ndarray]]:
    """Returns the MLX checkpoint dir and, per logical weight name, MLX's own dequantized float32 values."""
    src = checkpoint("qwen3_moe")
    out = cache_root() / f"mlx-{src.name}"
    ref_path = out / "reference.npz"
    if ref_path.exists():
        return out, dict(np.load(ref_path))
    w = _load_f32(src)
    cfg = json.loads((src / "config.json").read_text())
    n_layers = cfg["num_hidden_layers"]
    n_exp = cfg.get("num_experts") or cfg["num_local_experts"]
    stacked: dict[str, np.ndarray] = {}
    for name, arr in w.items():
        if ".mlp.experts." in name:
            continue
        stacked[name] = arr
    for layer in range(n_layers):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            stacked[f"model.layers.{layer}.mlp.switch_mlp.{proj}.weight"] = np.stack(
                [w[f"model.layers.{layer}.mlp.experts.{e}.{proj}.weight"] for e in range(n_exp)])
    tensors: dict[str, object] = {}
    reference: dict[str, np.ndarray] = {}
    for name, arr in stacked.items():
        if arr.ndim >= 2 and not name.endswith("norm.weight"):
            q, s, b = mx.quantize(mx.array(arr), group_size=GROUP, bits=BITS)
            s, b = s.astype(mx.bfloat16), b.astype(mx.bfloat16)
            base = name[: -len(".weight")]
            tensors[name] = q
            tensors[base + ".scales"] = s
            tensors[base + ".biases"] = b
            reference[name] = np.array(mx.dequantize(q, s.astype(mx.float32), b.astype(mx.float32),
                                                     group_size=GROUP, bits=BITS))
        else:
            tensors[name] = mx.array(arr).astype(mx.bfloat16)
            reference[name] = np.array(tensors[name].astype(mx.float32))  # type: ignore[union-attr]
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mx.save_safetensors(str(tmp / "model.safetensors"), tensors, metadata={"format": "mlx"})
    cfg["quantization"] = {"group_size": GROUP, "bits": BITS}
    (tmp / "config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, tmp / f)
    np.savez(tmp / "reference.npz", **reference)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out, reference


def _tensor_bytes(path: Path) -> dict[str, tuple[str, np.ndarray, int]]:
    return {t.name: (t.tensor_type.name, np.asarray(t.data).view(np.uint8).reshape(-1), int(t.n_elements))
            for t in GGUFReader(path).tensors}


def test_mlx_experts_transcode_exactly_to_q4_1(tmp_path: Path) -> None:
    ckpt, ref = build_mlx_checkpoint()
    out = tmp_path / "mlx.gguf"
    report = convert(ckpt, out, dense="F32")
    assert report.expert_type == "Q4_1"
    assert report.transcoded_experts == 2 * 3 * 8
    assert report.transcode_max_error == 0.0
    g = Ggml.load()
    tensors = _tensor_bytes(out)
    for layer in range(2):
        for proj, kind in (("gate_proj", "gate"), ("up_proj", "up"), ("down_proj", "down")):
            gtype, data, n = tensors[f"blk.{layer}.ffn_{kind}_exps.weight"]
            assert gtype == "Q4_1"
            got = g.dequantize(T.Q4_1, data, n)
            want = ref[f"model.layers.{layer}.mlp.switch_mlp.{proj}.weight"].reshape(-1)
            np.testing.assert_array_equal(got, want)
    # dense weights (MLX-quantized too) dequantize to exactly MLX's values at F32
    gtype, data, n = tensors["blk.0.attn_q.weight"]
    assert gtype == "F32"
    np.testing.assert_array_equal(data.view(np.float32), ref["model.layers.0.self_attn.q_proj.weight"].reshape(-1))
    gtype, data, n = tensors["token_embd.weight"]
    np.testing.assert_array_equal(data.view(np.float32), ref["model.embed_tokens.weight"].reshape(-1))


def test_mlx_to_other_type_reports_error(tmp_path: Path) -> None:
    ckpt, _ = build_mlx_checkpoint()
    report = convert(ckpt, tmp_path / "k.gguf", experts="Q4_K")
    assert report.transcoded_experts == 0
    assert report.requantized_experts == 2 * 3 * 8
    assert 0.0 < report.requant_rms_error < 0.2
    assert "re-quantized 48 MLX experts to Q4_K" in report.summary()


def test_mlx_model_runs_in_llama_cpp(tmp_path: Path) -> None:
    """The transcoded file runs in stock llama.cpp and agrees with the same model converted from the
    dequantized MLX weights at F32 (the only difference left is llama.cpp's activation rounding)."""
    from reference import llama_logits
    ckpt, _ = build_mlx_checkpoint()
    q = tmp_path / "q.gguf"
    f = tmp_path / "f.gguf"
    convert(ckpt, q, dense="F32")
    convert(ckpt, f, experts="F32", dense="F32")
    prompt = [5, 99, 1000, 7, 2048, 31, 400, 12]
    a, b = llama_logits(q, prompt), llama_logits(f, prompt)
    assert np.abs(a - b).max() <= 2e-2 * np.abs(b).max()
