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
    uses but the first). The policy (a cell's estimate: (events + 1) / (exposures + 4), made non-increasing in age
    by pooling adjacent cells): at token 1 the fresh expert and 0 tie (both used once, one visit ago) and 0 stays.
    At token 3 the fresh expert 2 displaces 0: learned for experts used once, at age 1 no event in 2 exposures, at
    age 2 one (0's own reuse) in 2: 1/6 < 2/6, pooled to 3/12 = 1/4; 0, used twice, has one exposure at age 1
    without event, 1/5, pooled with the prior of its 11 cells not seen yet to 12/49 < 1/4. So 0 misses at token 4
    and is cached again (its count's cells not seen yet: 1/4 against 2's 13/54). From then on every fresh expert
    counts exposures at ages 1 and 2 without events, so once-used experts stay below 0's count (0.232 against 0.245
    at token 5, 0.0625 against 0.368 at the end) and none displaces 0 again: 18 hits."""
    seq = [0 if i % 2 == 0 else i // 2 + 1 for i in range(40)]
    t = Trace("fresh", "hand", 32, np.asarray(seq, dtype=np.int16).reshape(-1, 1, 1))
    assert belady(t, 1).hits == 19
    assert replay_store(t, "lru", 1, tmp_path).hits == 0
    r = replay_store(t, "hazard", 1, tmp_path)
    assert (r.hits, r.uses) == (18, 40)


def test_learns_reuse_two_visits_later(tmp_path: Path) -> None:
    """One layer, one slot, 12 periods of three tokens: a fresh expert x, a fresh expert y, x again (x = 2r, y =
    2r + 1 in period r). Belady keeps each x through y: 12 hits of 36 uses. LRU and LFU (count 1 >= 1) let y evict
    x: 0. The policy keeps x at y's visit whatever it has learned (both once used, one visit ago: a tie keeps the
    cached one), so it hits x's second use if the next period's x displaces the stale one. Learned for experts used
    once (after r periods): at age 1, 2r exposures and no event; at age 2, 2r exposures (x's second use, y at the
    next period's first token) and r events (x). With the prior (1 event in 4 exposures per cell) that is 1/(2r+4)
    at age 1 below (r+1)/(2r+4) at age 2: the non-increasing fit pools the two, (r+2)/(4r+8) = 1/4. The stale x
    (used twice) at age 1 has r exposures and no event; its fit is the largest mean of a prefix of its cells, of
    which the first is 1/(r+4) and the rest at most the prior 1/4: below 1/4, so the new x is cached: 12 hits. A
    running minimum in age (the fit before) made once used experts 1/(2r+4) at every age, below the stale x's
    1/(r+4): it kept the first x for good, 1 hit."""
    seq = [e for r in range(12) for e in (2 * r, 2 * r + 1, 2 * r)]
    t = Trace("reuse-at-2", "hand", 32, np.asarray(seq, dtype=np.int16).reshape(-1, 1, 1))
    assert belady(t, 1).hits == 12
    assert replay_store(t, "lru", 1, tmp_path).hits == 0
    assert replay_store(t, "lfu", 1, tmp_path).hits == 0
    r = replay_store(t, "hazard", 1, tmp_path)
    assert (r.hits, r.uses) == (12, 36)


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
    at 35-50 % within a tenth of a point of it (measured: qwen3 at 35 % is 0.04 below lru, 15 hits of 36,864)."""
    for t in stored_traces():
        slots = slots_for(t, share)
        rate = {c: replay_store(t, c, slots, tmp_path).rate for c in ("lru", "lfu", "hazard")}
        assert rate["hazard"] <= belady(t, slots).rate + 1e-9, (t.name, share, rate)
        floor = max(rate["lru"], rate["lfu"]) - (0.0 if share <= 0.2 else 0.001)
        assert rate["hazard"] >= floor, (t.name, share, rate)


@pytest.mark.parametrize("share", [0.126, 0.226])
def test_prompt_batch_then_short_decode_on_few_layers(share: float, tmp_path: Path) -> None:
    """The runtime case of `flashmoe bench --routing bmoe-qwen3-30b-a3b-k6` on an 8-layer slice: the trace's first
    32 decode rows as one prompt batch, the next 64 as decode, gate, up and down of each layer (three tensors that
    see the same experts). hazard was below lfu here (0.663 against 0.703 at 22.6 %, 0.495 against 0.505 at
    12.6 %): the batch leaves most experts of a tensor in one state at once, so a cell of the learned table gets
    many exposures from one token's draws, and a low young cell capped every older age of its count. Measured
    now: 0.705 and 0.516."""
    real = next(t for t in stored_traces() if t.name == "bmoe-qwen3-30b-a3b-k6")
    e = np.repeat(real.experts[real.prompt_tokens:][:96, :8], 3, axis=1)
    t = Trace("slice", real.model, real.n_expert, e, prompt_tokens=32)
    slots = round(share * t.layers * t.n_expert)
    rate = {c: replay_store(t, c, slots, tmp_path).rate for c in ("lru", "lfu", "hazard")}
    assert rate["hazard"] >= max(rate["lru"], rate["lfu"]), rate
