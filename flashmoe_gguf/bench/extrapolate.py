"""From a slice of a model (its first L of Lf layers) to the full model's decode speed.

A decode step's time is a per-layer part and a fixed part:

    t(L) = F + L x p

F: the token embedding lookup, the output norm, the output head over the whole vocabulary, copying the logits
out and the argmax (sampling). p: one layer (attention or Gated DeltaNet, router, routed experts incl. their
I/O, shared expert). Scaling the whole token time by Lf / L would multiply F too; instead F is measured, then

    p = (t - F) / L,    t_full = F + Lf x p,    tok/s_full = 1 / t_full.

How F is measured (one file): the fixed-part probe alternates decode steps with logits and steps without
(a batch whose token requests no output). llama.cpp then skips the output norm and head, the logits copy and,
because the last layer keeps only the output rows before its FFN, that layer's FFN too. So

    t_with - t_without = F + (last layer's FFN)

and flashmoe_stats() gives the last layer's routed-expert time directly (its io_wait + expert compute in the
two kinds of steps); its router and shared expert (small next to a vocabulary-sized output head) stay in F, so
F is slightly overestimated (and the extrapolated speed slightly optimistic by at most that one layer's router
and shared expert per token). The probe runs in every warm, no-cap run, so each configuration gets its own F
(stock may run the output head with other kernels, e.g. CPU_REPACK's); stock has no flashmoe_stats(), so its
last-layer expert time is taken from the flashmoe warm run at the same K. A capped run uses the F of its
configuration's warm run (the output head is resident in both). When F is not below a run's token time (a slice
dominated by its output head, plus noise), the per-layer part cannot be resolved and no figure is given.

With two slices of the same model (two layer counts), `fit_two_slices` solves t = F + L p exactly instead.

Assumption (stated in the report): every layer of the full model behaves like the slice's layers on average,
including the cache hit rate, i.e. the full model is given the same expert cache per layer. The RAM that takes
is reported with the figure (`full_model_ram`).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from .model import ModelInfo


@dataclass(frozen=True)
class FixedPart:
    seconds: float                  # F, per token
    method: str
    with_output_s: float | None = None
    without_output_s: float | None = None
    last_layer_expert_s: float | None = None
    pairs: int = 0
    per_layer_s: float | None = None           # two slices: p
    slices: list[dict[str, Any]] | None = None  # two slices: [{"path", "layers", "seconds_per_token"}, ...]


def fixed_from_probe(probe: dict[str, Any], last_layer_expert_s: float | None = None) -> FixedPart | None:
    """F from the probe's two kinds of steps (medians of the step times; mean expert seconds per step). The last
    layer's routed-expert time comes from the probe's own flashmoe_stats() deltas, or `last_layer_expert_s`
    (stock: from flashmoe's run)."""
    w, n = probe.get("with_output"), probe.get("no_output")
    if not w or not n or not w.get("seconds") or not n.get("seconds"):
        return None
    tw, tn = statistics.median(w["seconds"]), statistics.median(n["seconds"])
    if last_layer_expert_s is None:
        ew = w.get("expert_seconds", 0.0) / len(w["seconds"])
        en = n.get("expert_seconds", 0.0) / len(n["seconds"])
        last, source = max(0.0, ew - en), "flashmoe_stats() of the same run"
    else:
        last, source = last_layer_expert_s, "flashmoe's warm run at the same K"
    return FixedPart(max(0.0, tw - tn - last), "probe: decode steps with vs without output (llama.cpp skips the "
                     f"output head and the last layer's FFN), minus the last layer's routed-expert time from {source}",
                     tw, tn, last, len(w["seconds"]))


def fit_two_slices(layers_a: int, t_a: float, layers_b: int, t_b: float) -> tuple[float, float]:
    """(F, p) from decode seconds per token of two slices with different layer counts: t = F + L p."""
    if layers_a == layers_b:
        raise ValueError("two slices need different layer counts")
    p = (t_b - t_a) / (layers_b - layers_a)
    return t_a - layers_a * p, p


def fixed_from_two_slices(config: str, a: tuple[str, int, float], b: tuple[str, int, float]) -> FixedPart:
    """F from one configuration's decode seconds per token on two slices: (path, layers, seconds) each."""
    f, p = fit_two_slices(a[1], a[2], b[1], b[2])
    return FixedPart(max(0.0, f), f"two slices of the same model: t = F + L p solved from the warm {config} runs "
                     f"of both ({a[1]} and {b[1]} layers)", per_layer_s=p,
                     slices=[{"config": config, "path": x[0], "layers": x[1], "seconds_per_token": x[2]}
                             for x in (a, b)])


def extrapolate_time(t_token: float, layers: int, full_layers: int, fixed: float) -> float:
    """Seconds per token of the full model: F + Lf x (t - F) / L."""
    if layers <= 0:
        raise ValueError("layers must be positive")
    per_layer = max(0.0, t_token - fixed) / layers
    return fixed + full_layers * per_layer


@dataclass(frozen=True)
class Extrapolation:
    run: str
    slice_layers: int
    full_layers: int
    slice_decode_tok_s: float
    fixed_s: float
    per_layer_s: float | None             # None: unresolved (F >= the token time)
    full_decode_tok_s: float | None
    naive_full_decode_tok_s: float        # whole token time x Lf / L (what ignoring F would give)
    full_disk_bound_tok_s: float | None   # at this run's hit rate
    full_disk_bound_0_hit_tok_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def extrapolate_run(name: str, decode_tok_s: float, info: ModelInfo, fixed: float, k: int,
                    gb_s: float | None, hit_rate: float | None) -> Extrapolation:
    from .disk import decode_bound
    assert info.full_layers
    t = 1.0 / decode_tok_s
    L = info.block_count
    resolved = t > fixed
    full_t = extrapolate_time(t, L, info.full_layers, fixed) if resolved else None
    per_full = info.layers * info.full_layers / L * k * info.bytes_per_expert     # expert layers scale alike
    bound = decode_bound(gb_s, per_full, max(0.0, hit_rate or 0.0)) if gb_s else None
    bound0 = decode_bound(gb_s, per_full, 0.0) if gb_s else None
    return Extrapolation(name, L, info.full_layers, decode_tok_s, fixed, (t - fixed) / L if resolved else None,
                         1.0 / full_t if full_t else None, decode_tok_s * L / info.full_layers, bound, bound0)


def full_model_ram(info: ModelInfo, budget: int, n_ctx: int, headroom: int) -> dict[str, int]:
    """RAM the full model needs for the same expert cache per layer: the resident weights outside the layers
    once, those inside scaled by Lf / L, the budget and the KV cache scaled by Lf / L."""
    assert info.full_layers
    scale = info.full_layers / info.block_count
    resident = info.resident_fixed_bytes + int((info.resident_bytes - info.resident_fixed_bytes) * scale)
    kv = int(info.kv_cache_bytes(n_ctx) * scale)
    b = int(max(budget, 0) * scale)
    return {"resident_bytes": resident, "kv_cache_bytes": kv, "ram_budget_bytes": b, "headroom_bytes": headroom,
            "total_bytes": resident + kv + b + headroom}
