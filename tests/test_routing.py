"""Routing traces (flashmoe_gguf/bench/routing.py, traces.py) and their replay (bench/replay.py): the generator
reproduces its calibration targets, Belady and the page-cache model on hand-checked cases, the real store on a
trace whose hit counts are worked out by hand, and the lrfu policy against lru and lfu on the stored real traces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flashmoe_gguf.bench.replay import belady, page_cache_lru, replay_store, requests, slots_for
from flashmoe_gguf.bench.routing import PRESETS, Trace, generate, trace_stats
from flashmoe_gguf.bench.traces import load_trace, save_trace, stored_traces


def one_layer(seq: list[int], n_expert: int = 4) -> Trace:
    return Trace("hand", "hand", n_expert, np.asarray(seq, dtype=np.int16).reshape(-1, 1, 1))


@pytest.mark.parametrize("preset", ["mixtral-8x7b", "olmoe-1b-7b"])
def test_generator_hits_its_calibration_targets(preset: str) -> None:
    p = PRESETS[preset]
    st = trace_stats(generate(p, tokens=300, seed=1))
    assert abs(st.overlap - p.overlap) <= 0.05, st
    assert abs(st.top10 - p.top10) <= 0.06, st
    assert st.top10_min < st.top10 < st.top10_max            # skew differs by layer
    assert 1 <= st.median_reuse <= 3, st                      # published: about 2 tokens
    assert st.reuse_within_8 >= 0.7, st                       # published: about 80 %


def test_every_preset_targets_the_published_ranges() -> None:
    for p in PRESETS.values():
        assert 0.08 <= p.overlap <= 0.45 and 0.20 <= p.top10 <= 0.60, p


def test_stored_real_traces_match_what_their_source_reports() -> None:
    """The converted BigMoeOnEdge traces give the consecutive-token overlaps its findings.md states (38.0 %,
    35.7 %, 17.9 % for Qwen3-30B-A3B, Gemma-4-26B-A4B, gpt-oss-120b)."""
    want = {"bmoe-qwen3-30b-a3b-k6": 0.380, "bmoe-gemma4-26b-a4b-k6": 0.357, "bmoe-gpt-oss-120b-k2": 0.179}
    got = {t.name: trace_stats(t).overlap for t in stored_traces()}
    assert set(want) <= set(got)
    for name, overlap in want.items():
        assert abs(got[name] - overlap) < 0.005, (name, got[name])


def test_trace_round_trip_and_route(tmp_path: Path) -> None:
    t = generate("mixtral-8x7b", tokens=12, seed=3)
    save_trace(t, tmp_path / "t.npz")
    u = load_trace(tmp_path / "t.npz")
    assert u.name == t.name and u.n_expert == 8 and np.array_equal(u.experts, t.experts)
    assert u.route(12 + 5, 3) == u.route(5, 3) == [int(x) for x in t.experts[5, 3]]


def test_prompt_is_one_batch_of_the_union() -> None:
    e = np.array([[[0, 1]], [[1, 2]], [[-1, -1]], [[3, 0]]], dtype=np.int16)  # 3 prompt tokens, one skipped layer
    t = Trace("p", "p", 4, e, prompt_tokens=3)
    reqs, warm = requests(t)
    assert reqs == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 0)] and warm == 3


def test_belady_by_hand() -> None:
    seq = [0, 1, 2, 0, 1, 3, 0, 1]
    # 2 slots: 0, 1 cached; 2 and 3 are used later than both (never again): read and dropped; 0, 1 hit twice each
    assert belady(one_layer(seq), 2).hits == 4
    # LRU thrashes on the cycle 0 1 2: every use misses
    assert page_cache_lru(one_layer(seq), 2).hits == 0
    # 1 slot: keep 0 (next use 3) over 1 (next use 4): hits at 3 and 6
    assert belady(one_layer(seq), 1).hits == 2
    # classic: 1 2 3 4 1 2 5 1 2 3 4 5 with 3 slots: 7 misses, 5 hits
    assert belady(one_layer([1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5], 6), 3).hits == 5
    assert belady(one_layer(seq), 0).hits == 0


def test_belady_is_an_upper_bound_of_lru() -> None:
    t = generate("mixtral-8x7b", tokens=60, seed=2)
    for slots in (4, 16, 64, 128):
        assert belady(t, slots).hits >= page_cache_lru(t, slots).hits


def test_store_replay_by_hand(tmp_path: Path) -> None:
    """Two layers, every token selects expert 0 in both, one slot. LRU evicts each layer's expert just before its
    next use: 0 hits. lrfu keeps one of them (a tie keeps the cached expert): 9 hits in 10 tokens, which is Belady's
    optimum. (lfu admits on a tie, so its two equal counts displace each other: 0 hits here too.)"""
    e = np.zeros((10, 2, 1), dtype=np.int16)
    t = Trace("cycle", "hand", 4, e)
    assert belady(t, 1).hits == 9
    assert replay_store(t, "lru", 1, tmp_path).hits == 0
    assert page_cache_lru(t, 1).hits == 0
    r = replay_store(t, "lrfu", 1, tmp_path)
    assert (r.hits, r.uses) == (9, 20)


def test_store_lru_equals_the_lru_model(tmp_path: Path) -> None:
    """The store's lru and the page-cache model are the same algorithm on one access per layer of distinct
    experts (K=1: no pinning effects)."""
    t = generate("mixtral-8x7b", tokens=40, seed=5)
    t1 = Trace("k1", t.model, t.n_expert, t.experts[:, :, :1].copy())
    for slots in (8, 40, 100):
        assert replay_store(t1, "lru", slots, tmp_path).hits == page_cache_lru(t1, slots).hits


def test_os_policy_keeps_nothing(tmp_path: Path) -> None:
    t = generate("mixtral-8x7b", tokens=10, seed=6)
    assert replay_store(t, "os", 64, tmp_path).hits == 0


@pytest.mark.parametrize("share", [0.05, 0.1, 0.2, 0.35])
def test_lrfu_not_below_lru_and_lfu_on_real_traces(share: float, tmp_path: Path) -> None:
    for t in stored_traces():
        slots = slots_for(t, share)
        rate = {c: replay_store(t, c, slots, tmp_path).rate for c in ("lru", "lfu", "lrfu")}
        best = belady(t, slots).rate
        # within one point of the better of lru and lfu (at 5 % of Qwen3-30B-A3B it is 0.3-0.6 below lru)
        assert rate["lrfu"] >= max(rate["lru"], rate["lfu"]) - 0.01, (t.name, share, rate)
        assert rate["lrfu"] <= best + 1e-9, (t.name, share, rate, best)


def test_lrfu_does_not_thrash_when_a_token_exceeds_the_budget(tmp_path: Path) -> None:
    """A token needs layers x K = 64 experts; the cache holds 16. LRU gets nothing, lrfu keeps hot experts."""
    t = generate("mixtral-8x7b", tokens=120, seed=7)
    lru = replay_store(t, "lru", 16, tmp_path).rate
    lrfu = replay_store(t, "lrfu", 16, tmp_path).rate
    assert lru < 0.03
    assert lrfu > 0.05 and belady(t, 16).rate >= lrfu, (lru, lrfu)
