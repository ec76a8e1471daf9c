"""Replaying a routing trace through the expert cache: our real store (StreamedModel.access) for its policies, and
two references computed here, Belady's offline optimum and a model of the OS page cache.

The store is replayed on a GGUF that holds only expert tensors, one per MoE layer (`experts_only_gguf`): every
tensor of a layer (gate, up, down) sees the same experts with the same popularity, so one tensor per layer gives
the hit rate of all of them at the same share of the experts, at a third of the calls. Each step is what the
MUL_MAT_IDs of one token (or of a prompt batch: the union of its tokens' experts) do: for every layer in order, one
access with its experts. Hit rates count the decode steps only; a prompt warms the cache.

A cache of `slots` experts: budget = slots x bytes per expert, `slots = round(share x layers x experts)`.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .routing import Trace

ROW = 64     # F32 values per expert in the replay GGUF: 256 bytes per expert
STRIDE = ROW * 4


@dataclass(frozen=True)
class HitRate:
    hits: int
    uses: int

    @property
    def rate(self) -> float:
        return self.hits / self.uses if self.uses else 0.0


def requests(trace: Trace) -> tuple[list[tuple[int, int]], int]:
    """The (layer, expert) uses in order, and how many of them come before decode (the prompt batch)."""
    out: list[tuple[int, int]] = []
    warm = 0
    for is_prompt, step in trace.steps():
        for layer in range(step.shape[0]):
            out.extend((layer, int(e)) for e in step[layer] if e >= 0)
        if is_prompt:
            warm = len(out)
    return out, warm


def belady(trace: Trace, slots: int) -> HitRate:
    """Belady's MIN, exact for experts of one size: on a miss with the cache full, of the cached experts and the
    missed one, the one whose next use is farthest is not kept (so a missed expert used later than everything
    cached is read and dropped, as our store may do)."""
    reqs, warm = requests(trace)
    n = len(reqs)
    nxt = [n] * n
    seen: dict[tuple[int, int], int] = {}
    for i in range(n - 1, -1, -1):
        nxt[i] = seen.get(reqs[i], n + i)   # never again: farther than anything, later ones farther still
        seen[reqs[i]] = i
    cached: dict[tuple[int, int], int] = {}     # key -> its next use
    heap: list[tuple[int, tuple[int, int]]] = []  # (-next use, key), stale entries skipped
    hits = 0
    for i, key in enumerate(reqs):
        if key in cached:
            if i >= warm:
                hits += 1
            cached[key] = nxt[i]
            heapq.heappush(heap, (-nxt[i], key))
            continue
        if slots <= 0:
            continue
        if len(cached) < slots:
            cached[key] = nxt[i]
            heapq.heappush(heap, (-nxt[i], key))
            continue
        while -heap[0][0] != cached.get(heap[0][1], -1):
            heapq.heappop(heap)
        far, victim = -heap[0][0], heap[0][1]
        if nxt[i] < far:
            heapq.heappop(heap)
            del cached[victim]
            cached[key] = nxt[i]
            heapq.heappush(heap, (-nxt[i], key))
    return HitRate(hits, n - warm)


def page_cache_lru(trace: Trace, slots: int) -> HitRate:
    """What an LRU page cache of the same bytes would hit (a model: cache="os" keeps nothing itself, and Linux's
    active/inactive lists are an approximation of LRU that this does not reproduce)."""
    reqs, warm = requests(trace)
    lru: OrderedDict[tuple[int, int], None] = OrderedDict()
    hits = 0
    for i, key in enumerate(reqs):
        if key in lru:
            lru.move_to_end(key)
            if i >= warm:
                hits += 1
        elif slots > 0:
            lru[key] = None
            if len(lru) > slots:
                lru.popitem(last=False)
    return HitRate(hits, len(reqs) - warm)


def experts_only_gguf(path: Path, layers: int, n_expert: int, k: int) -> Path:
    """A GGUF holding one F32 expert tensor per layer (blk.N.ffn_down_exps.weight), written once."""
    if path.exists():
        return path
    import gguf
    tmp = path.with_suffix(".part")
    w = gguf.GGUFWriter(str(tmp), "qwen3moe")
    w.add_expert_count(n_expert)
    w.add_expert_used_count(k)
    rng = np.random.default_rng(0)
    for layer in range(layers):
        w.add_tensor(f"blk.{layer}.ffn_down_exps.weight", rng.standard_normal((n_expert, 1, ROW)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.rename(path)
    return path


def replay_store(trace: Trace, cache: str, slots: int, workdir: Path) -> HitRate:
    """The store's own hit count for the decode steps, replaying the trace through StreamedModel.access."""
    from ..streamed import StreamedModel
    path = experts_only_gguf(workdir / f"experts-{trace.layers}x{trace.n_expert}.gguf", trace.layers,
                             trace.n_expert, trace.k)
    names = [f"blk.{layer}.ffn_down_exps.weight" for layer in range(trace.layers)]
    m = StreamedModel(path, slots * STRIDE, io_threads=2, cache=cache, direct_io=False)
    try:
        base = (0, 0)
        for is_prompt, step in trace.steps():
            for layer in range(step.shape[0]):
                ids = [int(e) for e in step[layer] if e >= 0]
                if ids:
                    m.access(names[layer], ids)
            if is_prompt:
                st = m.stats()
                base = (st["cache_hits"], st["cache_hits"] + st["cache_misses"])
        st = m.stats()
        return HitRate(st["cache_hits"] - base[0], st["cache_hits"] + st["cache_misses"] - base[1])
    finally:
        m.close()


def slots_for(trace: Trace, share: float) -> int:
    return max(1, round(share * trace.layers * trace.n_expert))
