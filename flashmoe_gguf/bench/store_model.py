"""A Python model of the expert store's caching (ggml_ext/fm_store.c) for replaying routing traces through policies
that exist only here: bounds that use knowledge no online policy has (bench/cache_bounds.py).

The model follows the store call for call, one access per layer as bench/replay.py drives it: the policy is told
the tensor (on_acquire), then each expert's use (on_use) before the cache is looked up; a miss is cached while it
fits; otherwise the victim is the cached, unpinned expert of lowest rank (least recently used among equals) and the
policy decides whether the miss displaces it (admit; the eviction then frees until the miss fits). A miss not
admitted is read into a transient buffer that counts against the budget until the access ends. Experts of one
access stay pinned until it ends, then anything over budget is evicted. tests/test_cache_policy_model.py checks
that lru, lfu and hazard give the store's own hit counts.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .replay import HitRate
from .routing import Trace


class Policy(Protocol):
    def create(self, n_keys: int, n_expert: int) -> None: ...
    def on_acquire(self, tensor: int) -> None: ...
    def on_use(self, key: int) -> None: ...
    def ranks(self, keys: np.ndarray) -> np.ndarray: ...
    def admit(self, key: int, victim: int) -> bool: ...


class _Cache:
    def __init__(self, n_keys: int, slots: int, policy: Policy) -> None:
        self.slots = slots
        self.policy = policy
        self.last_use = np.zeros(n_keys, dtype=np.int64)
        self.cached: dict[int, None] = {}
        self.used = 0

    def victim(self, pinned: set[int]) -> int:
        cand = np.fromiter((k for k in self.cached if k not in pinned), dtype=np.int64)
        if not len(cand):
            return -1
        r = self.policy.ranks(cand)
        low = cand[r == r.min()]
        return int(low[np.argmin(self.last_use[low])])

    def evict(self, need: int, pinned: set[int]) -> None:
        while self.used + need > self.slots:
            v = self.victim(pinned)
            if v < 0:
                return
            del self.cached[v]
            self.used -= 1


def run(trace: Trace, slots: int, policy: Policy) -> HitRate:
    """Hits over the decode steps (the prompt warms the cache), as replay.replay_store counts them."""
    n_expert = trace.n_expert
    n_keys = trace.layers * n_expert
    policy.create(n_keys, n_expert)
    c = _Cache(n_keys, slots, policy)
    clock = hits = uses = 0
    for is_prompt, step in trace.steps():
        for layer in range(step.shape[0]):
            ids = [int(e) for e in step[layer] if e >= 0]
            if not ids:
                continue
            policy.on_acquire(layer)
            pinned: set[int] = set()
            transient = 0
            for e in ids:
                key = layer * n_expert + e
                clock += 1
                policy.on_use(key)
                uses += not is_prompt
                pinned.add(key)
                c.last_use[key] = clock
                if key in c.cached:
                    hits += not is_prompt
                    continue
                keep = True
                if c.used + 1 > slots:
                    v = c.victim(pinned)
                    if v >= 0:
                        keep = policy.admit(key, v)
                        if keep:
                            del c.cached[v]
                            c.used -= 1
                            c.evict(1, pinned)
                c.used += 1
                if keep:
                    c.cached[key] = None
                else:
                    transient += 1
            c.used -= transient
            c.evict(0, set())
    return HitRate(hits, uses)
