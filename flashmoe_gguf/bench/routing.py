"""Routing traces: which experts each token selects in each MoE layer, real or generated to match real models.

A `Trace` is an int16 array `experts[token, layer, slot]` (the K experts a token's router selected in a layer,
for every MoE layer, tokens in decode order), optionally led by a prompt: its first `prompt_tokens` tokens are one
prefill batch. `Trace.route(token, layer)` is what a benchmark feeds in place of the router's choice.

`generate(preset, tokens, seed)` draws a trace whose statistics match those published for real models. What a
cache sees of real routing, and the figures the presets are calibrated to (also in ../shared/notes/prior-art.md):

- Popularity is skewed per layer, more in deeper layers: the hottest 10 % of experts take 20-60 % of the
  selections (llama.cpp #24524: on Qwen3.5-397B 10 % of experts take ~80 % of LRU hits; llama.cpp #27861: a static
  top 10 % gives ~53 % there; kekzl/imp #1359: Qwen3-30B-A3B's hottest 40 % take ~85 %; Helldez/BigMoeOnEdge
  docs/bench-data/2026-07-15-route-trace/findings.md: Qwen3-30B-A3B's layer 0 near uniform, its 8 hottest of 128
  taking 21.5 % there, 43 % at layer 5, 44.5 % on average).
- Consecutive tokens share experts in the same layer: Qwen3-30B-A3B 38-45 %, Mixtral 37 %, OLMoE 40-42 %,
  gpt-oss-120b 18 %, Qwen3.5-397B 8-34 % (kekzl/imp #1359; BigMoeOnEdge's route traces: Qwen 38.0 %, Gemma-4
  35.7 %, gpt-oss 17.9 %; the Flash-MoE CUDA port: 26.6 %).
- Reuse is short-range: the median reuse distance (same layer, same expert) is about 2 tokens for Qwen3-30B-A3B
  and Mixtral, about 80 % of reuses within 8 tokens (kekzl/imp #1359).
- Popularity drifts with the topic (BigMoeOnEdge: a hot list learned on the prompt predicts decode at 17.9 %
  against 37.6 % for one learned on the decode itself).

The generator: per layer a Zipf popularity over a random permutation of the experts (exponent chosen per layer
from a ramp of top-10 % shares around the preset's), each of a token's K slots reuses, with probability `sticky`,
an expert of one of the last 8 tokens of that layer (distance 1 with probability 1/2, then geometric), the other
slots drawn by popularity without replacement; a topic change every ~`topic_tokens` tokens reshuffles part of every
layer's ranking. `sticky` is solved so that the consecutive-token overlap hits the preset's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Trace:
    name: str
    model: str
    n_expert: int
    experts: np.ndarray          # int16 [tokens, layers, k]; -1 only in the prompt (a skipped layer)
    prompt_tokens: int = 0       # the first prompt_tokens tokens are one prefill batch
    source: str = ""

    def __post_init__(self) -> None:
        e = self.experts
        if e.ndim != 3 or e.shape[0] == 0 or e.shape[1] == 0 or e.shape[2] == 0:
            raise ValueError(f"trace {self.name}: experts must be [tokens, layers, k], got {e.shape}")
        if not 0 <= self.prompt_tokens < e.shape[0]:
            raise ValueError(f"trace {self.name}: prompt_tokens {self.prompt_tokens} of {e.shape[0]} tokens")
        # -1: a layer a prompt token skipped (llama.cpp skips the last layer's FFN for tokens without output)
        if e[self.prompt_tokens:].min() < 0 or e.min() < -1 or e.max() >= self.n_expert:
            raise ValueError(f"trace {self.name}: expert ids outside 0..{self.n_expert - 1}")

    @property
    def tokens(self) -> int:
        return int(self.experts.shape[0])

    @property
    def layers(self) -> int:
        return int(self.experts.shape[1])

    @property
    def k(self) -> int:
        return int(self.experts.shape[2])

    def route(self, token: int, layer: int) -> list[int]:
        """The experts `token` selects in MoE layer `layer` (tokens past the end wrap to the decode part)."""
        if token >= self.tokens:
            decode = self.tokens - self.prompt_tokens
            token = self.prompt_tokens + (token - self.prompt_tokens) % decode
        return [int(x) for x in self.experts[token, layer]]

    def steps(self) -> list[tuple[bool, np.ndarray]]:
        """What the MUL_MAT_IDs see, in order: (is_prompt, experts [layers, n]) per step; the prompt is one step
        whose experts per layer are the sorted union of its tokens' selections (one read per expert and batch)."""
        out: list[tuple[bool, np.ndarray]] = []
        if self.prompt_tokens:
            prompt = self.experts[: self.prompt_tokens]
            union = [np.unique(prompt[:, layer][prompt[:, layer] >= 0]) for layer in range(self.layers)]
            width = max(len(u) for u in union)
            pad = np.full((self.layers, width), -1, dtype=np.int32)
            for layer, u in enumerate(union):
                pad[layer, : len(u)] = u
            out.append((True, pad))
        for t in range(self.prompt_tokens, self.tokens):
            out.append((False, self.experts[t].astype(np.int32)))
        return out


@dataclass(frozen=True)
class RoutingPreset:
    name: str
    model: str
    n_expert: int
    k: int
    layers: int
    overlap: float        # consecutive-token overlap in a layer (fraction of K)
    top10: float          # mean share of selections taken by a layer's hottest 10 % (at least one expert)
    top10_spread: float = 0.15   # the first layer's share is top10 - spread, the last's top10 + spread
    topic_tokens: int = 256
    cite: str = ""


PRESETS: dict[str, RoutingPreset] = {p.name: p for p in (
    RoutingPreset("mixtral-8x7b", "Mixtral-8x7B", 8, 2, 32, overlap=0.37, top10=0.24, top10_spread=0.04,
                  cite="overlap 37 % (kekzl/imp #1359); one hot expert of 8 per layer"),
    RoutingPreset("deepseek-v2-lite", "DeepSeek-V2-Lite", 64, 6, 26, overlap=0.35, top10=0.30,
                  cite="64 routed experts top-6; skew as the 64-expert OLMoE (top half 75-78 %)"),
    RoutingPreset("qwen3-30b-a3b", "Qwen3-30B-A3B", 128, 8, 48, overlap=0.41, top10=0.35,
                  cite="overlap 38-45 %, hottest 40 % ~85 % (kekzl/imp #1359; BigMoeOnEdge route trace)"),
    RoutingPreset("olmoe-1b-7b", "OLMoE-1B-7B", 64, 8, 16, overlap=0.41, top10=0.30,
                  cite="overlap 40-42 %, top half 75-78 % (kekzl/imp #1359)"),
    RoutingPreset("gpt-oss-120b", "gpt-oss-120b", 128, 4, 36, overlap=0.18, top10=0.30,
                  cite="overlap 18 % (kekzl/imp #1359; BigMoeOnEdge: 17.9 % at top-2)"),
    RoutingPreset("qwen35-397b-a17b", "Qwen3.5-397B-A17B", 512, 10, 60, overlap=0.22, top10=0.25,
                  top10_spread=0.08,
                  cite="overlap 8-34 %, 'no exploitable static skew' (llama.cpp #27861)"),
)}


# ---- statistics --------------------------------------------------------------------------------------------


def consecutive_overlap(experts: np.ndarray) -> np.ndarray:
    """Per layer: the mean fraction of a token's K experts that the previous token also selected."""
    t, layers, k = experts.shape
    out = np.zeros(layers)
    for layer in range(layers):
        a = experts[:, layer, :]
        same = (a[1:, :, None] == a[:-1, None, :]).any(axis=2).sum()
        out[layer] = same / ((t - 1) * k)
    return out


def top10_share(experts: np.ndarray, n_expert: int) -> np.ndarray:
    """Per layer: the share of selections taken by the hottest max(1, round(10 %)) experts of that layer."""
    hot = max(1, round(0.1 * n_expert))
    out = np.zeros(experts.shape[1])
    for layer in range(experts.shape[1]):
        counts = np.bincount(experts[:, layer, :].ravel(), minlength=n_expert)
        out[layer] = np.sort(counts)[::-1][:hot].sum() / counts.sum()
    return out


def reuse_distances(experts: np.ndarray, n_expert: int) -> np.ndarray:
    """Every reuse's distance in tokens since the same layer last selected the same expert."""
    t, layers, _ = experts.shape
    last = np.full((layers, n_expert), -1, dtype=np.int64)
    out: list[int] = []
    for tok in range(t):
        for layer in range(layers):
            ids = experts[tok, layer]
            prev = last[layer, ids]
            out.extend((tok - prev[prev >= 0]).tolist())
            last[layer, ids] = tok
    return np.asarray(out, dtype=np.int64)


@dataclass(frozen=True)
class TraceStats:
    overlap: float
    top10: float
    top10_min: float
    top10_max: float
    median_reuse: float
    reuse_within_8: float


def trace_stats(trace: Trace) -> TraceStats:
    e = trace.experts[trace.prompt_tokens:] if trace.tokens - trace.prompt_tokens > 1 else trace.experts
    share = top10_share(e, trace.n_expert)
    d = reuse_distances(e, trace.n_expert)
    return TraceStats(overlap=float(consecutive_overlap(e).mean()), top10=float(share.mean()),
                      top10_min=float(share.min()), top10_max=float(share.max()),
                      median_reuse=float(np.median(d)) if len(d) else math.inf,
                      reuse_within_8=float((d <= 8).mean()) if len(d) else 0.0)


# ---- the generator -----------------------------------------------------------------------------------------


def _zipf(n: int, s: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** s
    return p / p.sum()


def _selection_top_share(n: int, k: int, s: float, hot: int) -> float:
    """Expected share of selections the `hot` most popular experts take when K are drawn without replacement
    from Zipf(s) (successive draws renormalized over what is left: numpy's Generator.choice)."""
    rng = np.random.default_rng(12345)
    p = _zipf(n, s)
    draws = 400
    counts = np.zeros(n)
    for _ in range(draws):
        counts[rng.choice(n, size=k, replace=False, p=p)] += 1
    return float(counts[:hot].sum() / counts.sum())


def _exponent_for(n: int, k: int, share: float) -> float:
    """The Zipf exponent whose selections give the hottest 10 % `share` (bisection)."""
    hot = max(1, round(0.1 * n))
    uniform = hot / n
    if share <= uniform + 1e-3:
        return 0.0
    lo, hi = 0.0, 4.0
    for _ in range(18):
        mid = (lo + hi) / 2
        if _selection_top_share(n, k, mid, hot) < share:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass
class _Layer:
    p: np.ndarray                      # popularity by rank
    order: np.ndarray                  # rank -> expert id
    history: list[np.ndarray] = field(default_factory=list)   # the last tokens' selections, newest last


def _draw(rng: np.random.Generator, lay: _Layer, k: int, sticky: float, n: int) -> np.ndarray:
    chosen: list[int] = []
    if lay.history:
        for _ in range(k):
            if rng.random() >= sticky:
                continue
            d = min(len(lay.history), 1 if rng.random() < 0.5 else 1 + int(rng.geometric(0.35)))
            cand = [int(x) for x in lay.history[-d] if int(x) not in chosen]
            if cand:
                chosen.append(cand[int(rng.integers(len(cand)))])
    if len(chosen) < k:
        p = lay.p.copy()
        ranks_taken = np.isin(lay.order, chosen)
        p[ranks_taken] = 0.0
        p /= p.sum()
        ranks = rng.choice(n, size=k - len(chosen), replace=False, p=p)
        chosen.extend(int(lay.order[r]) for r in ranks)
    out = np.asarray(chosen, dtype=np.int16)
    lay.history.append(out)
    if len(lay.history) > 8:
        lay.history.pop(0)
    return out


def _generate(preset: RoutingPreset, tokens: int, seed: int, sticky: float,
              exponents: list[float]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n, k = preset.n_expert, preset.k
    layers = [_Layer(p=_zipf(n, s), order=rng.permutation(n)) for s in exponents]
    out = np.zeros((tokens, preset.layers, k), dtype=np.int16)
    for t in range(tokens):
        if t and rng.random() < 1.0 / preset.topic_tokens:
            for lay in layers:      # a topic change: a third of each layer's ranking reshuffled
                idx = rng.choice(n, size=max(2, n // 3), replace=False)
                lay.order[idx] = lay.order[rng.permutation(idx)]
        for li, lay in enumerate(layers):
            out[t, li] = _draw(rng, lay, k, sticky, n)
    return out


def _layer_exponents(preset: RoutingPreset) -> list[float]:
    lo, hi = preset.top10 - preset.top10_spread, preset.top10 + preset.top10_spread
    shares = np.linspace(lo, hi, preset.layers) if preset.layers > 1 else np.array([preset.top10])
    cache: dict[float, float] = {}
    out = []
    for s in shares:
        key = round(float(s), 2)
        if key not in cache:
            cache[key] = _exponent_for(preset.n_expert, preset.k, key)
        out.append(cache[key])
    return out


def _sticky_for(preset: RoutingPreset, exponents: list[float], seed: int) -> float:
    """The reuse probability that gives the preset's consecutive-token overlap (bisection on short samples)."""
    probe = RoutingPreset(**{**preset.__dict__, "layers": min(preset.layers, 6)})
    ex = exponents[:: max(1, preset.layers // probe.layers)][: probe.layers]
    lo, hi = 0.0, 1.0
    for _ in range(10):
        mid = (lo + hi) / 2
        e = _generate(probe, 160, seed + 7, mid, ex)
        if consecutive_overlap(e).mean() < preset.overlap:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def generate(preset: RoutingPreset | str, tokens: int = 512, seed: int = 0) -> Trace:
    """A decode trace of `tokens` tokens with the preset's statistics (see the module docstring)."""
    p = PRESETS[preset] if isinstance(preset, str) else preset
    exponents = _layer_exponents(p)
    sticky = _sticky_for(p, exponents, seed)
    experts = _generate(p, tokens, seed, sticky, exponents)
    return Trace(name=f"gen:{p.name}", model=p.model, n_expert=p.n_expert, experts=experts,
                 source=f"flashmoe_gguf.bench.routing.generate({p.name!r}, tokens={tokens}, seed={seed}): {p.cite}")
