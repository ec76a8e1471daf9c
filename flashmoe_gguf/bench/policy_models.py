"""Python models of the store's cache policies, for bench/store_model.py: lru and lfu as ggml_ext/fm_policy_lru.c
and fm_policy_lfu.c, hazard as fm_policy_hazard.c (same constants; see that file for the policy), and hazard with
knowledge it cannot have online (a probability table given in advance, or a count feature given per expert), for
the bounds of bench/cache_bounds.py."""

from __future__ import annotations

import numpy as np

AGE_EDGES = np.array([1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 64])
COUNT_EDGES = np.array([1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 11.0, 16.0])
HALF_LIFE = 32.0
PRIOR = (1.0, 4.0)       # events, exposures of a cell not seen yet
H_SCALE = 2.0 ** 20      # the C policy's ranks are floor(h x 2^20) x 2^11 + a tie-break below 2^11
TIE_MAX = 2047


def isotonic(events: np.ndarray, exposures: np.ndarray) -> np.ndarray:
    """The non-increasing fit of events / exposures (capped at 1), each cell weighted by its exposures: pool adjacent
    violators, in the order of operations of refresh() in fm_policy_hazard.c, so that the ranks are the same."""
    blocks: list[list[float]] = []      # [events, exposures, cells]
    for e, x in zip(events.tolist(), exposures.tolist()):
        blocks.append([e, x, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            e2, x2, n2 = blocks.pop()
            blocks[-1][0] += e2
            blocks[-1][1] += x2
            blocks[-1][2] += n2
    return np.array([min(e / x, 1.0) for e, x, n in blocks for _ in range(int(n))])


class LRU:
    def create(self, n_keys: int, n_expert: int) -> None:
        pass

    def on_acquire(self, tensor: int) -> None:
        pass

    def on_use(self, key: int) -> None:
        pass

    def ranks(self, keys: np.ndarray) -> np.ndarray:
        return np.zeros(len(keys))

    def admit(self, key: int, victim: int) -> bool:
        return True


class LFU:
    def create(self, n_keys: int, n_expert: int) -> None:
        self.count = np.zeros(n_keys, dtype=np.int64)
        self.uses = 0
        self.period = 8 * n_keys

    def on_acquire(self, tensor: int) -> None:
        pass

    def on_use(self, key: int) -> None:
        self.count[key] = min(255, self.count[key] + 1)
        self.uses += 1
        if self.uses >= self.period:
            self.count >>= 1
            self.uses = 0

    def ranks(self, keys: np.ndarray) -> np.ndarray:
        return self.count[keys]

    def admit(self, key: int, victim: int) -> bool:
        return bool(self.count[key] >= self.count[victim])


class Hazard:
    """fm_policy_hazard.c. `table`: (events, exposures) to use instead of the ones learned so far (a table learned
    on the whole trace beforehand); `count_of`: a fixed count per key (e.g. its true number of uses in the trace)
    in place of the decayed count, with `count_edges` its buckets."""

    def __init__(self, table: tuple[np.ndarray, np.ndarray] | None = None, count_of: np.ndarray | None = None,
                 count_edges: np.ndarray = COUNT_EDGES) -> None:
        self.table = table
        self.count_of = count_of
        self.count_edges = count_edges

    def create(self, n_keys: int, n_expert: int) -> None:
        self.tensor = np.full(n_keys, -1, dtype=np.int64)
        self.last = np.zeros(n_keys, dtype=np.int64)
        self.count = np.zeros(n_keys) if self.count_of is None else self.count_of.astype(float).copy()
        self.visits: dict[int, int] = {}
        self.keys_of: dict[int, list[int]] = {}
        shape = (len(AGE_EDGES), len(self.count_edges))
        self.events, self.exposures = np.zeros(shape), np.zeros(shape)
        self.cur = -1
        self.acquires = 0
        self.seen_at: dict[int, int] = {}

    def _age(self, n: np.ndarray | int) -> np.ndarray:
        return np.searchsorted(AGE_EDGES, n, side="right") - 1

    def _cnt(self, c: np.ndarray | float) -> np.ndarray:
        return np.searchsorted(self.count_edges, c, side="right") - 1

    def h(self) -> np.ndarray:
        ev, ex = self.table if self.table is not None else (self.events, self.exposures)
        return np.stack([isotonic(ev[:, k] + PRIOR[0], ex[:, k] + PRIOR[1]) for k in range(ev.shape[1])], axis=1)

    def on_acquire(self, tensor: int) -> None:
        self.cur = tensor
        self.acquires += 1
        self.seen_at[tensor] = self.acquires
        v = self.visits[tensor] = self.visits.get(tensor, 0) + 1
        keys = self.keys_of.get(tensor)
        if keys:
            k = np.asarray(keys)
            np.add.at(self.exposures, (self._age(v - self.last[k]), self._cnt(self.count[k])), 1.0)

    def on_use(self, key: int) -> None:
        v = self.visits[self.cur]
        if self.tensor[key] < 0:
            self.tensor[key] = self.cur
            self.keys_of.setdefault(self.cur, []).append(key)
            if self.count_of is None:
                self.count[key] = 1.0
        elif self.last[key] < v:
            n = v - self.last[key]
            self.events[self._age(n), self._cnt(self.count[key])] += 1.0
            if self.count_of is None:
                self.count[key] = self.count[key] * 2.0 ** (-n / HALF_LIFE) + 1.0
        self.last[key] = v

    def _h_next(self, keys: np.ndarray) -> np.ndarray:
        """h at each key's tensor's next visit (this one for the tensor in progress if not used in it yet)"""
        t = self.tensor[keys]
        v = np.array([self.visits.get(int(x), 0) for x in t])
        last = self.last[keys]
        n = np.where((t == self.cur) & (last < v), v - last, v + 1 - last)
        return self.h()[self._age(np.maximum(n, 1)), self._cnt(self.count[keys])]

    def ranks(self, keys: np.ndarray) -> np.ndarray:
        t = self.tensor[keys]
        cycle = len(self.seen_at)
        d = np.array([self.seen_at.get(int(x), 0) for x in t]) + cycle - self.acquires
        d = np.clip(d, 1, max(cycle, 1))
        tie = TIE_MAX - (d * TIE_MAX) // max(cycle, 1)
        out = np.floor(self._h_next(keys) * H_SCALE) * (TIE_MAX + 1) + tie
        return np.where(t >= 0, out, 0.0)

    def admit(self, key: int, victim: int) -> bool:
        mine = np.floor(self._h_next(np.array([key]))[0] * H_SCALE) * (TIE_MAX + 1)   # tie-break 0: comes back last
        return bool(mine > self.ranks(np.array([victim]))[0])
