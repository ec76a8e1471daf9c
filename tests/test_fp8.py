"""FP8 block-scaled checkpoints (DeepSeek-V3's release format) convert to exactly torch's own dequantization.

The tiny deepseek_v3 checkpoint is rewritten the way DeepSeek stores its FP8 release: every linear projection as
float8_e4m3fn with a float32 `weight_scale_inv` of shape [ceil(out/B), ceil(in/B)], w = fp8 * scale_inv per
BxB block; norms, routers, the correction bias and embeddings stay float. B = 64 here (128 in the real model),
so `kv_a_proj_with_mqa` (96 rows) has a partial block. The same weights dequantized by torch go into a plain
float32 checkpoint; both are converted at F32 and every GGUF tensor must be bit-identical.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from conftest import checkpoint

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

BLOCK = 64
FP8_MAX = 448.0   # largest finite float8_e4m3fn


def quantize_fp8(w: "torch.Tensor", block: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(fp8 weight, scale_inv [ceil(rows/B), ceil(cols/B)]) with each block's absmax mapped to FP8_MAX."""
    rows, cols = w.shape
    br, bc = -(-rows // block), -(-cols // block)
    padded = torch.zeros(br * block, bc * block, dtype=torch.float32)
    padded[:rows, :cols] = w
    blocks = padded.view(br, block, bc, block)
    scale_inv = (blocks.abs().amax(dim=(1, 3)) / FP8_MAX).clamp(min=1e-12)
    q = (blocks / scale_inv[:, None, :, None]).view(br * block, bc * block)[:rows, :cols]
    return q.to(torch.float8_e4m3fn), scale_inv.float()


def dequantize_fp8(q: "torch.Tensor", scale_inv: "torch.Tensor", block: int) -> "torch.Tensor":
    rows, cols = q.shape
    full = scale_inv.repeat_interleave(block, 0).repeat_interleave(block, 1)[:rows, :cols]
    return q.to(torch.float32) * full


def is_quantized(name: str, t: "torch.Tensor") -> bool:
    """Linear projections only: not norms (1-D), the router (mlp.gate), the embedding or lm_head."""
    return t.ndim == 2 and name.endswith(".weight") and not name.endswith(
        ("embed_tokens.weight", "lm_head.weight", "mlp.gate.weight"))


def _copy_model_dir(src: Path, dst: Path, tensors: dict[str, "torch.Tensor"], quant: dict | None) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy(f, dst / f.name)
    cfg = json.loads((dst / "config.json").read_text())
    if quant is not None:
        cfg["quantization_config"] = quant
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    safetensors_torch.save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data) for t in GGUFReader(path).tensors}


def test_fp8_block_scaled_checkpoint_converts_to_torch_dequantization(tmp_path: Path) -> None:
    from flashmoe_gguf.converter import convert

    src = checkpoint("deepseek_v3")
    original = safetensors_torch.load_file(str(src / "model.safetensors"))
    fp8: dict[str, torch.Tensor] = {}
    dequant: dict[str, torch.Tensor] = {}
    for name, t in original.items():
        if is_quantized(name, t):
            q, s = quantize_fp8(t.float(), BLOCK)
            fp8[name], fp8[name.removesuffix(".weight") + ".weight_scale_inv"] = q, s
            dequant[name] = dequantize_fp8(q, s, BLOCK)
        else:
            fp8[name] = dequant[name] = t
    kv_a = "model.layers.1.self_attn.kv_a_proj_with_mqa.weight"
    assert original[kv_a].shape[0] % BLOCK and fp8[kv_a.replace(".weight", ".weight_scale_inv")].shape == (2, 4)
    assert sum(t.dtype == torch.float8_e4m3fn for t in fp8.values()) > 50

    quant = {"quant_method": "fp8", "weight_block_size": [BLOCK, BLOCK], "fmt": "e4m3", "activation_scheme": "dynamic"}
    fp8_dir = _copy_model_dir(src, tmp_path / "fp8", fp8, quant)
    ref_dir = _copy_model_dir(src, tmp_path / "dequantized", dequant, None)
    f32 = dict(experts="F32", dense="F32", router="F32")
    got = _tensors(convert(fp8_dir, tmp_path / "fp8.gguf", **f32).output)
    want = _tensors(convert(ref_dir, tmp_path / "dequantized.gguf", **f32).output)

    assert got.keys() == want.keys()
    differing = [n for n in got if got[n].shape != want[n].shape or not np.array_equal(got[n], want[n])]
    assert not differing, differing
    # and directly, for the partial-block tensor and one fused expert (gate | up of expert 3)
    assert np.array_equal(got["blk.1.attn_kv_a_mqa.weight"], dequant[kv_a].numpy())
    gate_up = torch.cat([dequant[f"model.layers.2.mlp.experts.3.{p}_proj.weight"] for p in ("gate", "up")])
    assert np.array_equal(got["blk.2.ffn_gate_up_exps.weight"][3], gate_up.numpy())
    # the FP8 values really are coarse: the dequantized weights differ from the float originals
    assert not torch.equal(dequant[kv_a], original[kv_a])
