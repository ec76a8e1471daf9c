"""`flashmoe synth`: random-weight streaming GGUFs at real models' shapes, through the real converter.

Real-size presets are checked without writing data (tensor shapes and parameter counts against the published
models); files are written from each preset's tiny variant (same structure, small dimensions), then loaded and
run in stock llama-cpp-python, inspected, and checked for the expert pool's byte repetition.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from flashmoe_gguf.cli import main
from flashmoe_gguf.converter.archs import arch_for
from flashmoe_gguf.inspection import inspect_gguf
from flashmoe_gguf.layout import StreamingLayout
from flashmoe_gguf.synth import (PRESETS, SyntheticWeights, _param_counts, observe_routing, routing_spread,
                                  synth)

POOL = 4


def _specs(preset: str, layers: int | None = None, tiny: bool = False) -> dict[str, tuple[int, ...]]:
    p = PRESETS[preset]
    cfg = p.config(layers, tiny=tiny)
    arch = arch_for(cfg)(cfg, SyntheticWeights(p.arch, cfg))  # type: ignore[arg-type]
    return {s.name: s.shape for s in arch.specs()}


# -- real sizes, no data --------------------------------------------------------------------------------------

def test_qwen3_30b_shapes() -> None:
    s = _specs("qwen3-30b-a3b")
    assert max(int(n.split(".")[1]) for n in s if n.startswith("blk.")) == 47
    assert s["token_embd.weight"] == s["output.weight"] == (151936, 2048)
    assert s["blk.0.attn_q.weight"] == (32 * 128, 2048)
    assert s["blk.0.attn_k.weight"] == s["blk.0.attn_v.weight"] == (4 * 128, 2048)
    assert s["blk.0.attn_output.weight"] == (2048, 32 * 128)
    assert s["blk.0.attn_q_norm.weight"] == (128,)
    assert s["blk.47.ffn_gate_inp.weight"] == (128, 2048)
    assert s["blk.47.ffn_gate_exps.weight"] == s["blk.47.ffn_up_exps.weight"] == (128, 768, 2048)
    assert s["blk.47.ffn_down_exps.weight"] == (128, 2048, 768)


def test_qwen35_397b_shapes() -> None:
    s = _specs("qwen35-397b-a17b")
    assert s["token_embd.weight"] == s["output.weight"] == (248320, 4096)
    linear = {int(n.split(".")[1]) for n in s if n.endswith(".ssm_a")}
    full = {int(n.split(".")[1]) for n in s if n.endswith(".attn_q.weight")}
    assert linear == {i for i in range(60) if i % 4 != 3} and full == {3 + 4 * i for i in range(15)}
    conv = 2 * 16 * 128 + 64 * 128
    assert s["blk.0.attn_qkv.weight"] == (conv, 4096)
    assert s["blk.0.attn_gate.weight"] == (64 * 128, 4096)
    assert s["blk.0.ssm_conv1d.weight"] == (conv, 4)
    assert s["blk.0.ssm_alpha.weight"] == s["blk.0.ssm_beta.weight"] == (64, 4096)
    assert s["blk.0.ssm_a"] == s["blk.0.ssm_dt.bias"] == (64,)
    assert s["blk.0.ssm_norm.weight"] == (128,)
    assert s["blk.0.ssm_out.weight"] == (4096, 64 * 128)
    assert s["blk.3.attn_q.weight"] == (2 * 32 * 256, 4096)     # query + output gate
    assert s["blk.3.attn_k.weight"] == s["blk.3.attn_v.weight"] == (2 * 256, 4096)
    assert s["blk.3.attn_output.weight"] == (4096, 32 * 256)
    assert s["blk.3.attn_q_norm.weight"] == (256,)
    assert s["blk.59.ffn_gate_inp.weight"] == (512, 4096)
    assert s["blk.59.ffn_gate_up_exps.weight"] == (512, 2 * 1024, 4096)
    assert s["blk.59.ffn_down_exps.weight"] == (512, 4096, 1024)
    assert s["blk.59.ffn_gate_shexp.weight"] == s["blk.59.ffn_up_shexp.weight"] == (1024, 4096)
    assert s["blk.59.ffn_down_shexp.weight"] == (4096, 1024)
    assert s["blk.59.ffn_gate_inp_shexp.weight"] == (1, 4096)


def test_mixtral_8x7b_shapes() -> None:
    s = _specs("mixtral-8x7b")
    assert max(int(n.split(".")[1]) for n in s if n.startswith("blk.")) == 31
    assert s["token_embd.weight"] == s["output.weight"] == (32000, 4096)
    assert s["blk.0.attn_q.weight"] == (4096, 4096)
    assert s["blk.0.attn_k.weight"] == s["blk.0.attn_v.weight"] == (1024, 4096)
    assert s["blk.0.ffn_gate_inp.weight"] == (8, 4096)
    assert s["blk.0.ffn_gate_exps.weight"] == s["blk.0.ffn_up_exps.weight"] == (8, 14336, 4096)
    assert s["blk.0.ffn_down_exps.weight"] == (8, 4096, 14336)


@pytest.mark.parametrize("preset,total,active", [("qwen3-30b-a3b", 30.5, 3.3), ("qwen35-397b-a17b", 396.3, 17.3),
                                                 ("mixtral-8x7b", 46.7, 12.9)])
def test_parameter_counts_match_the_published_models(preset: str, total: float, active: float) -> None:
    # Qwen3-30B-A3B: 30.5B / 3.3B active; Mixtral 8x7B: 46.7B / 12.9B; Qwen3.5-397B-A17B: 397B / 17B, of which
    # the text model without the vision tower and the MTP head is what a GGUF gets
    p = PRESETS[preset]
    t, a = _param_counts(p.arch, p.config())
    assert t / 1e9 == pytest.approx(total, abs=0.06) and a / 1e9 == pytest.approx(active, abs=0.06)


def test_layers_slice_keeps_the_hybrid_pattern() -> None:
    p = PRESETS["qwen35-397b-a17b"]
    types = p.config(6)["text_config"]["layer_types"]
    assert types == ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 2
    s = _specs("qwen35-397b-a17b", 6)
    assert {int(n.split(".")[1]) for n in s if n.endswith(".attn_q.weight")} == {3}
    assert max(int(n.split(".")[1]) for n in s if n.startswith("blk.")) == 5
    for bad in (0, 3, 61):      # 3: no full-attention layer, which llama.cpp cannot run
        with pytest.raises(ValueError, match="--layers"):
            p.config(bad)
    assert PRESETS["qwen3-30b-a3b"].config(1)["num_hidden_layers"] == 1


def test_synthetic_weights_are_deterministic_slices() -> None:
    p = PRESETS["qwen35-397b-a17b"]
    cfg = p.config(4, tiny=True)
    w = SyntheticWeights(p.arch, cfg, seed=3)
    w.ROW_BLOCK_ELEMENTS = 1000          # several row blocks per matrix
    name = "model.language_model.embed_tokens.weight"
    full = w.get(name)
    assert full.shape == w.shape(name) and full.dtype == np.float32
    for r0, r1 in ((0, 1), (3, 17), (5, 4096), (4095, 4096)):
        assert np.array_equal(w.get_rows(name, r0, r1), full[r0:r1])
    other = SyntheticWeights(p.arch, cfg, seed=3)
    other.ROW_BLOCK_ELEMENTS = 1000      # (the block size is part of what the values are)
    assert np.array_equal(other.get(name), full)
    assert not np.array_equal(SyntheticWeights(p.arch, cfg, seed=4).get(name), full)
    assert abs(float(full.std()) - 1.0) < 0.01
    gu = "model.language_model.layers.0.mlp.experts.gate_up_proj"
    e0, e1 = w.get(gu, 0), w.get(gu, 1)
    assert e0.shape == w.shape(gu)[1:] and not np.array_equal(e0, e1)
    assert np.array_equal(w.get(gu)[1], e1)
    a = -np.exp(w.get("model.language_model.layers.0.linear_attn.A_log"))
    assert (a < 0).all() and (a >= -16).all()


def test_routing_spread_flags_a_degenerate_router() -> None:
    rng = np.random.default_rng(0)
    good = routing_spread(rng.standard_normal((64, 1024)).astype(np.float32) / 32, 4, 8192)
    assert good.never_chosen == 0 and 0.75 < good.min / good.mean and good.max / good.mean < 1.3
    assert good.mean == pytest.approx(4 / 64)
    bad = rng.standard_normal((64, 1024)).astype(np.float32) / 32
    bad[:8] *= 3.0                       # eight loud experts take half of all selections
    worse = routing_spread(bad, 4, 8192)
    assert worse.min / worse.mean < 0.6 and worse.max / worse.mean > 3


# -- tiny variants, written and run --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthesized(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> dict[str, tuple[Path, object]]:
    out = {}
    d = tmp_path_factory.mktemp("synth")
    for name in PRESETS:
        path = d / f"{name}.gguf"
        # 16 experts (8 for Mixtral) with a pool of 4: experts 4.. repeat the bytes of experts 0..3
        out[name] = (path, synth(name, path, tiny=True, pool=POOL, seed=1, threads=2, cache_dir=cache,
                                 routing_tokens=4096))
    return out


@pytest.mark.parametrize("preset", list(PRESETS))
def test_tiny_file_matches_the_preset_and_is_streaming_ready(synthesized: dict, preset: str) -> None:
    path, report = synthesized[preset]
    r = gguf.GGUFReader(path)
    shapes = {t.name: tuple(int(x) for x in reversed(t.shape)) for t in r.tensors}
    assert shapes == _specs(preset, tiny=True)
    kv = {k: f.contents() for k, f in r.fields.items()}
    assert json.loads(kv["flashmoe.synthetic"]) == {"preset": preset, "layers": 4 if preset != "qwen35-397b-a17b"
                                                    else 8, "seed": 1, "expert_pool": POOL, "tiny": True}
    info = inspect_gguf(path)
    assert info.streams and info.index_state == "consistent"   # tiny experts are smaller than the 16K alignment
    hp = PRESETS[preset].config(tiny=True)
    hp = hp.get("text_config") or hp
    assert info.layout is not None and info.layout.n_expert == (hp.get("num_experts") or hp["num_local_experts"])
    assert "streams: yes" in info.render() and "flashmoe index: consistent" in info.render()
    assert report.routing.never_chosen == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_expert_bytes_repeat_the_pool_and_routers_do_not(synthesized: dict, preset: str) -> None:
    path, _ = synthesized[preset]
    r = gguf.GGUFReader(path)
    kv = {k: f.contents() for k, f in r.fields.items()}
    layout = StreamingLayout.from_kv(kv)
    assert layout is not None and layout.tensors
    E = layout.n_expert
    by_name = {t.name: t for t in r.tensors}
    for e in layout.tensors:
        raw = np.asarray(by_name[e.name].data).reshape(-1).view(np.uint8)
        assert raw.size == E * e.stride
        experts = raw.reshape(E, e.stride)
        for i in range(E):
            assert np.array_equal(experts[i], experts[i % POOL]), (e.name, i)
        for i in range(POOL):           # the pool itself is real, distinct data
            for j in range(i):
                assert not np.array_equal(experts[i], experts[j]), (e.name, i, j)
    routers = [t for t in r.tensors if t.name.endswith("ffn_gate_inp.weight")]
    assert routers and all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in routers)
    for t in routers:
        w = np.asarray(t.data).reshape(E, -1)
        assert len({row.tobytes() for row in w}) == E        # every expert has its own router row


@pytest.mark.parametrize("preset", list(PRESETS))
def test_stock_llama_cpp_runs_it_with_finite_logits(synthesized: dict, preset: str) -> None:
    import llama_cpp
    path, _ = synthesized[preset]
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2)
    try:
        toks = llm.tokenize(b"The quick brown fox jumps over the lazy dog")
        assert len(toks) >= 6
        llm.eval(toks)
        logits = np.asarray(llm.scores[:len(toks)])
        assert logits.shape == (len(toks), llm.n_vocab())
        assert np.isfinite(logits).all()
        assert float(logits.std(axis=1).min()) > 0.1                  # not a constant output
        assert len(set(logits.argmax(axis=1).tolist())) > len(toks) // 2
    finally:
        llm.close()


@pytest.mark.parametrize("preset", list(PRESETS))
def test_routing_spread_of_the_synthesized_router(synthesized: dict, preset: str) -> None:
    _, report = synthesized[preset]
    rs = report.routing  # type: ignore[attr-defined]
    assert rs.tokens == 4096 and rs.mean == pytest.approx(rs.top_k / rs.n_expert)
    assert rs.never_chosen == 0
    assert 0.8 < rs.min / rs.mean and rs.max / rs.mean < 1.2
    assert 1.0 / rs.n_expert < rs.top1_prob < 0.8
    assert "routing spread" in report.summary()  # type: ignore[attr-defined]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_routing_inside_the_model_is_spread(synthesized: dict, preset: str) -> None:
    # what llama.cpp's own graph selects (ffn_moe_topk-L), token by token, through every layer
    path, report = synthesized[preset]
    counts = observe_routing(path, n_tokens=64, seed=2)
    hp = PRESETS[preset].config(tiny=True)
    hp = hp.get("text_config") or hp
    assert sorted(counts) == list(range(hp["num_hidden_layers"]))
    k = hp["num_experts_per_tok"]
    for layer, c in counts.items():
        assert c.sum() == 64 * k
        assert (c > 0).all(), (layer, c)                     # every expert is used somewhere
        assert c.max() <= 0.5 * 64, (layer, c)               # no expert takes most tokens


def test_cli_synth(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHMOE_CACHE", str(cache))
    out = tmp_path / "m.gguf"
    assert main(["synth", "mixtral-8x7b", "--tiny", "--layers", "2", "--pool", "0", "--seed", "5",
                 "--experts", "Q4_0", "-q", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "synthetic mixtral-8x7b: 2 of 4 layers, seed 5, no expert pool" in text
    assert "46.7 B, 12.9 B active" in text and "routing spread" in text
    r = gguf.GGUFReader(out)
    exps = [t for t in r.tensors if "_exps." in t.name]
    assert len(exps) == 2 * 3 and all(t.tensor_type == gguf.GGMLQuantizationType.Q4_0 for t in exps)
    raw = np.asarray(exps[0].data).reshape(8, -1)                 # no pool: all 8 experts differ
    assert len({row.tobytes() for row in raw}) == 8
    assert main(["synth", "--list"]) == 0
    assert "qwen35-397b-a17b" in capsys.readouterr().out
    assert main(["synth", "nope", "-o", str(tmp_path / "x.gguf")]) == 1
    assert main(["synth", "mixtral-8x7b", "--layers", "33", "-o", str(tmp_path / "x.gguf")]) == 1
    assert not (tmp_path / "x.gguf").exists()
