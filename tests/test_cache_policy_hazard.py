"""The hazard cache policy (ggml_ext/fm_policy_hazard.c) replayed through the real store (bench/replay.py): traces
whose hits are counted by hand, and the stored real traces against lru, lfu (other code) and Belady's optimum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flashmoe_gguf.bench.replay import belady, replay_store, slots_for
from flashmoe_gguf.bench.routing import Trace, generate
from flashmoe_gguf.bench.traces import stored_traces


def test_two_layers_one_slot_by_hand(tmp_path: Path) -> None:
    """Two layers, every token selects expert 0 in both, one slot. Both experts always have the same history, so
    the same learned probability: the tie keeps the cached one (layer 0's), which hits at tokens 2..10: 9 hits of
    20 uses, Belady's optimum. LRU evicts each just before its next use: 0."""
    t = Trace("cycle", "hand", 4, np.zeros((10, 2, 1), dtype=np.int16))
    r = replay_store(t, "hazard", 1, tmp_path)
    assert (r.hits, r.uses) == (9, 20)
    assert belady(t, 1).hits == 9
    assert replay_store(t, "lru", 1, tmp_path).hits == 0


def test_learns_that_fresh_experts_are_not_reused(tmp_path: Path) -> None:
    """One layer, one slot, 40 tokens: expert 0 at every odd token, a fresh expert (1, 2, ..., 20) at every even
    one. LRU lets each fresh expert evict 0 two tokens before its use: 0 hits. Belady keeps 0: 19 hits (all its
    uses but the first). The policy: at token 2 nothing is learned yet, the fresh expert and 0 tie (both used once,
    one visit ago) and 0 stays; from then on every fresh expert seen at age 1 counts an exposure without an event,
    so a once-used expert's estimate at age 1 falls below that of 0's count bucket (0 is used every other visit,
    its count rises through the buckets), and no fresh expert displaces 0: 19 hits."""
    seq = [0 if i % 2 == 0 else i // 2 + 1 for i in range(40)]
    t = Trace("fresh", "hand", 32, np.asarray(seq, dtype=np.int16).reshape(-1, 1, 1))
    assert belady(t, 1).hits == 19
    assert replay_store(t, "lru", 1, tmp_path).hits == 0
    r = replay_store(t, "hazard", 1, tmp_path)
    assert (r.hits, r.uses) == (19, 40)


def test_does_not_thrash_when_a_token_exceeds_the_budget(tmp_path: Path) -> None:
    """A token needs layers x K = 64 experts; the cache holds 16. LRU gets nothing; hazard keeps hot experts."""
    t = generate("mixtral-8x7b", tokens=120, seed=7)
    lru = replay_store(t, "lru", 16, tmp_path).rate
    hz = replay_store(t, "hazard", 16, tmp_path).rate
    assert lru < 0.03
    assert 0.05 < hz <= belady(t, 16).rate, (lru, hz)


@pytest.mark.parametrize("share", [0.05, 0.1, 0.2, 0.35, 0.5])
def test_real_traces_against_lru_lfu_and_belady(share: float, tmp_path: Path) -> None:
    """On every stored real trace: never above Belady; at 5-20 % of the experts at least the better of lru and lfu;
    at 35-50 % within one point of it (measured: qwen3 at 35 % is 0.5 below lfu/lru, README table)."""
    for t in stored_traces():
        slots = slots_for(t, share)
        rate = {c: replay_store(t, c, slots, tmp_path).rate for c in ("lru", "lfu", "hazard")}
        assert rate["hazard"] <= belady(t, slots).rate + 1e-9, (t.name, share, rate)
        floor = max(rate["lru"], rate["lfu"]) - (0.0 if share <= 0.2 else 0.01)
        assert rate["hazard"] >= floor, (t.name, share, rate)
