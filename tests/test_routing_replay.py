"""The benchmark-only routing override (StreamedModel.set_routing, ggml_ext/fm_routing.c): a trace's experts are
what the streamed MUL_MAT_IDs read, token by token and layer by layer.

Expectations come from the trace itself: with a budget that holds every expert nothing is evicted, so the bytes
read are exactly (distinct experts the trace names for a layer in the rows consumed) x (the layer's expert bytes)
summed over the expert tensors; the router's own choice reads something else."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import converted

from flashmoe_gguf import FlashMoeError, Llama
from flashmoe_gguf.experts import expert_tensors
from flashmoe_gguf.gguf_index import read_model

ARCH = "qwen3_moe"


def model_facts(path) -> tuple[int, int, int, dict[int, int]]:  # type: ignore[no-untyped-def]
    """(layers, experts, experts per token, expert bytes per layer summed over its tensors) from the file"""
    model = read_model(path)
    experts = expert_tensors(model)
    arch = model.scalars["general.architecture"]
    per_layer: dict[int, int] = {}
    for e in experts:
        per_layer[e.layer] = per_layer.get(e.layer, 0) + e.stride
    return (max(per_layer) + 1, experts[0].n_expert, int(model.scalars[f"{arch}.expert_used_count"]), per_layer)


def decode(llm: Llama, n: int) -> None:
    """n single-token evaluations (each MUL_MAT_ID sees one token in every layer)"""
    tok = llm.tokenize(b"The", add_bos=False)[0]
    for _ in range(n):
        llm.eval([tok])


def expected_bytes(trace: np.ndarray, rows: int, per_layer: dict[int, int]) -> int:
    return sum(len(set(trace[:rows, layer].ravel().tolist())) * nbytes for layer, nbytes in per_layer.items())


@pytest.mark.parametrize("isa", ["auto", "ggml"])
def test_reads_follow_the_trace(isa: str) -> None:
    path = converted(ARCH, "default")
    n_layer, n_expert, k, per_layer = model_facts(path)
    rng = np.random.default_rng(1)
    trace = np.stack([np.stack([rng.choice(n_expert, k, replace=False) for _ in range(n_layer)])
                      for _ in range(6)]).astype(np.int32)           # [6 tokens, layers, k]
    llm = Llama(model_path=str(path), ram_budget="1G", n_ctx=64, verbose=False, isa=isa)
    try:
        llm._fm.set_routing(trace)
        decode(llm, 4)
        assert llm.flashmoe_stats()["expert_bytes_read"] == expected_bytes(trace, 4, per_layer)
        decode(llm, 4)                      # rows 4, 5, then the trace wraps to rows 0, 1
        assert llm.flashmoe_stats()["expert_bytes_read"] == expected_bytes(trace, 6, per_layer)
    finally:
        llm.close()


def test_one_expert_set_is_read_once_and_the_router_reads_others() -> None:
    path = converted(ARCH, "default")
    n_layer, n_expert, k, per_layer = model_facts(path)
    same = np.broadcast_to(np.arange(k, dtype=np.int32), (1, n_layer, k))
    llm = Llama(model_path=str(path), ram_budget="1G", n_ctx=64, verbose=False)
    try:
        llm._fm.set_routing(same)
        decode(llm, 5)
        s = llm.flashmoe_stats()
        assert s["expert_bytes_read"] == k * sum(per_layer.values())
        llm._fm.set_routing(None)            # the router's own choice again: it picks other experts too
        llm.reset()
        decode(llm, 5)
        assert llm.flashmoe_stats()["expert_bytes_read"] > s["expert_bytes_read"]
    finally:
        llm.close()


def test_minus_one_keeps_the_routers_choice() -> None:
    path = converted(ARCH, "default")
    n_layer, n_expert, k, per_layer = model_facts(path)
    llm = Llama(model_path=str(path), ram_budget="1G", n_ctx=64, verbose=False, logits_all=True)
    ref = Llama(model_path=str(path), ram_budget="1G", n_ctx=64, verbose=False, logits_all=True)
    try:
        llm._fm.set_routing(np.full((3, n_layer, k), -1, np.int32))
        decode(llm, 3)
        decode(ref, 3)
        assert llm.flashmoe_stats()["expert_bytes_read"] == ref.flashmoe_stats()["expert_bytes_read"]
        np.testing.assert_array_equal(llm.scores[llm.n_tokens - 1], ref.scores[ref.n_tokens - 1])
    finally:
        llm.close()
        ref.close()


def test_bad_traces_are_errors() -> None:
    path = converted(ARCH, "default")
    n_layer, n_expert, k, _ = model_facts(path)
    llm = Llama(model_path=str(path), ram_budget="1G", n_ctx=64, verbose=False)
    try:
        with pytest.raises(FlashMoeError, match=f"expert {n_expert} in layer 0, but the tensor has {n_expert}"):
            llm._fm.set_routing(np.full((2, n_layer, k), n_expert, np.int32))
        with pytest.raises(FlashMoeError, match="layers"):
            llm._fm.set_routing(np.zeros((2, n_layer - 1, k), np.int32))
        with pytest.raises(ValueError, match="tokens, layers, k"):
            llm._fm.set_routing(np.zeros((2, n_layer), np.int32))
        llm._fm.set_routing(np.zeros((2, n_layer, k + 1), np.int32) + np.arange(k + 1, dtype=np.int32))
        with pytest.raises(FlashMoeError, match=f"the routing trace has {k + 1} experts per token, the model uses {k}"):
            decode(llm, 1)
    finally:
        llm.close()
