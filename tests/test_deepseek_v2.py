"""DeepSeek-V2 specifics beyond the per-architecture tests (test_convert_archs, test_runtime): how its two routing
methods are written, the known deviation of group-limited routing, and configurations llama.cpp cannot run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from gguf import GGUFReader

from conftest import checkpoint, converted
from flashmoe_gguf.converter import convert
from flashmoe_gguf.converter.errors import ConversionError


def keys(path: Path) -> dict[str, object]:
    r = GGUFReader(path)
    return {k: r.fields[k].contents() for k in r.fields if k.startswith("deepseek2.")}


def test_group_limited_greedy_keeps_groups_and_says_how_llama_cpp_ranks_them(tmp_path: Path) -> None:
    report = convert(checkpoint("deepseek_v2"), tmp_path / "m.gguf", experts="Q8_0")
    kv = keys(tmp_path / "m.gguf")
    assert kv["deepseek2.expert_group_count"] == 4 and kv["deepseek2.expert_group_used_count"] == 2
    assert kv["deepseek2.expert_gating_func"] == 1            # softmax
    assert kv["deepseek2.expert_weights_scale"] == 16.0
    assert "deepseek2.expert_weights_norm" not in kv
    assert any("by the sum of their two best scores, DeepSeek-V2 by the best one" in n for n in report.fallbacks)
    assert "note: group-limited routing" in report.summary()


def test_greedy_routing_has_no_groups() -> None:
    """V2-Lite routes greedily over all experts: no group keys (its config's n_group 1 / topk_group 1 say none)."""
    kv = keys(converted("deepseek_v2_lite", "f32"))
    assert "deepseek2.expert_group_count" not in kv and kv["deepseek2.expert_gating_func"] == 1
    assert kv["deepseek2.attention.q_lora_rank"] == 0 and kv["deepseek2.leading_dense_block_count"] == 1


@pytest.mark.parametrize("change,message", [
    ({"topk_method": "noaux_tc"}, "topk_method 'noaux_tc' is not supported"),
    ({"scoring_func": "sigmoid"}, "routes with softmax scores"),
    ({"attention_bias": True}, "no attention biases"),
    ({"moe_layer_freq": 2}, "moe_layer_freq 2"),
    ({"n_group": 8, "topk_group": 2}, "groups of 1 are too small"),
])
def test_configurations_llama_cpp_cannot_run_are_refused(change: dict, message: str, tmp_path: Path) -> None:
    src = tmp_path / "ckpt"
    shutil.copytree(checkpoint("deepseek_v2"), src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ConversionError, match=message):
        convert(src, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
