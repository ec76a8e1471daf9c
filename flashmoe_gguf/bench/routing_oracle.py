"""The generator's own selection probabilities (bench/routing.py): for a generated trace, P(expert selected at
token t in layer l | the tokens before t), from the model that drew it (popularity, reuse of the last tokens'
experts, topic changes), not from the draws. A cache ranking experts by it is an online policy that knows the
routing model exactly, a reference for how far any online policy can get on a generated trace.

Each of the K slots of a token reuses, with probability `sticky`, an expert of the token d back (d = 1 with
probability 1/2, else 1 + a geometric(0.35), capped at the history kept) uniformly among its K, else draws by
popularity; an expert's probability per slot is summed over those ways and combined over the K slots as if they
were independent (the generator draws without replacement: a close approximation for K much below the experts).
"""

from __future__ import annotations

import numpy as np

from . import routing as R

HISTORY = 8


def _distance_weights() -> np.ndarray:
    w = np.zeros(HISTORY + 1)
    w[1] = 0.5
    for j in range(1, 2000):
        w[min(HISTORY, 1 + j)] += 0.5 * 0.35 * 0.65 ** (j - 1)
    return w


def _probabilities(lay: R._Layer, sticky: float, k: int, n: int, w: np.ndarray) -> np.ndarray:
    pop = np.zeros(n)
    pop[lay.order] = lay.p
    per_slot = (1.0 - sticky) * pop
    h = len(lay.history)
    for d in range(1, min(h, HISTORY) + 1):
        weight = w[d] if d < h else w[d:].sum()    # the generator caps d at the history it has
        per_slot[lay.history[-d]] += sticky * weight / k
    return 1.0 - (1.0 - np.clip(per_slot, 0.0, 1.0)) ** k


def generate_with_probabilities(preset: str, tokens: int = 512, seed: int = 0) -> tuple[R.Trace, np.ndarray]:
    """generate(preset, tokens, seed) (the same trace) and P[token, layer, expert] for tokens 0..tokens (the last
    row: the token after the trace)."""
    p = R.PRESETS[preset]
    exponents = R._layer_exponents(p)
    sticky = R._sticky_for(p, exponents, seed)
    rng = np.random.default_rng(seed)        # the same draws, in the same order, as routing._generate
    n, k = p.n_expert, p.k
    layers = [R._Layer(p=R._zipf(n, s), order=rng.permutation(n)) for s in exponents]
    experts = np.zeros((tokens, p.layers, k), dtype=np.int16)
    prob = np.zeros((tokens + 1, p.layers, n))
    w = _distance_weights()
    for t in range(tokens):
        if t and rng.random() < 1.0 / p.topic_tokens:
            for lay in layers:
                idx = rng.choice(n, size=max(2, n // 3), replace=False)
                lay.order[idx] = lay.order[rng.permutation(idx)]
        for li, lay in enumerate(layers):
            prob[t, li] = _probabilities(lay, sticky, k, n, w)
            experts[t, li] = R._draw(rng, lay, k, sticky, n)
    for li, lay in enumerate(layers):
        prob[tokens, li] = _probabilities(lay, sticky, k, n, w)
    trace = R.Trace(name=f"gen:{p.name}", model=p.model, n_expert=n, experts=experts,
                    source=f"routing_oracle.generate_with_probabilities({p.name!r}, tokens={tokens}, seed={seed})")
    return trace, prob


class ModelOracle:
    """A cache policy (bench/store_model.py) ranking each expert by its probability at its layer's next visit (for
    the layer being acquired, at this visit if it has not been used in it yet); a miss displaces the victim only if
    more likely."""

    def __init__(self, prob: np.ndarray) -> None:
        self.prob = prob

    def create(self, n_keys: int, n_expert: int) -> None:
        self.n_expert = n_expert
        self.visits = np.zeros(self.prob.shape[1], dtype=np.int64)
        self.last = np.full(n_keys, -1, dtype=np.int64)
        self.cur = -1

    def on_acquire(self, tensor: int) -> None:
        self.cur = tensor
        self.visits[tensor] += 1

    def on_use(self, key: int) -> None:
        self.last[key] = self.visits[key // self.n_expert]

    def ranks(self, keys: np.ndarray) -> np.ndarray:
        layer, expert = keys // self.n_expert, keys % self.n_expert
        v = self.visits[layer]
        token = np.where((layer == self.cur) & (self.last[keys] < v), v - 1, v)   # 0-based token of that visit
        return self.prob[np.minimum(token, len(self.prob) - 1), layer, expert]

    def admit(self, key: int, victim: int) -> bool:
        r = self.ranks(np.array([key, victim]))
        return bool(r[0] > r[1])
