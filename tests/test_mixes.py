"""`--experts Q4_K_M` (and Q3_K_M, Q5_K_M): the routed experts get, layer by layer, the types llama.cpp's own
quantizer gives them for that file type (converter/mixes.py restates llama-quant.cpp's rule); checked against
llama_model_quantize's output for the same tiny models (test_hub_gguf.hub_like), and the mixed file runs in
flashmoe bit for bit as stock."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as T

from conftest import checkpoint
from test_hub_gguf import hub_like

ARCHS = ["qwen3_moe", "qwen2_moe", "olmoe", "deepseek_v3", "qwen3_5_moe"]


def expert_types(path: Path) -> dict[tuple[int, str], str]:
    """(layer, gate|up|down) -> type name; a fused gate_up counts as both gate and up"""
    from flashmoe_gguf.experts import expert_tensors
    out = {}
    for e in expert_tensors(path):
        for kind in (("gate", "up") if e.kind == "gate_up" else (e.kind,)):
            out[(e.layer, kind)] = T(e.gtype).name
    return out


@pytest.mark.parametrize("mix", ["Q4_K_M", "Q3_K_M", "Q5_K_M"])
@pytest.mark.parametrize("arch", ARCHS)
def test_mix_is_llama_cpp_quantizer_choice(tmp_path: Path, arch: str, mix: str) -> None:
    from flashmoe_gguf.converter import convert
    ours = tmp_path / "m.gguf"
    report = convert(checkpoint(arch), ours, experts=mix, dense="Q8_0", align=4096)
    assert report.expert_type == mix
    want = expert_types(hub_like(arch, mix)[0])
    got = expert_types(ours)
    assert got == want
    assert len(set(got.values())) >= 1


def test_mix_on_a_real_depth() -> None:
    """At Qwen3-30B-A3B's 48 layers, Q4_K_M gives half the layers Q6_K down experts (layers 0-5, 42-47 and every
    third from 8 to 41), as the hub's Q4_K_M files of it have"""
    from flashmoe_gguf.converter.mixes import MIXES
    m = MIXES["Q4_K_M"]
    q6 = [i for i in range(48) if m.type_for(f"blk.{i}.ffn_down_exps.weight", 48) == T.Q6_K]
    assert q6 == [*range(6), *range(8, 42, 3), *range(42, 48)]
    assert all(m.type_for(f"blk.{i}.ffn_{k}_exps.weight", 48) == T.Q4_K for i in range(48) for k in ("gate", "up"))


def test_unknown_mix_names_the_choices() -> None:
    from flashmoe_gguf.converter import convert
    from flashmoe_gguf.converter.errors import RecipeError
    with pytest.raises(RecipeError, match="Q4_K_M"):
        convert(checkpoint("qwen3_moe"), "/nonexistent/x.gguf", experts="Q4_K_X")
