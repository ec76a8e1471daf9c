"""Which runs a benchmark makes, and the RAM budget flashmoe gets under a cap.

The budget rule (documented in the report):

    ram_budget = cap - resident (non-expert) weights - llama.cpp's context - headroom

`resident` is every tensor that is not a routed expert (from the GGUF tensor table); llama.cpp's context is what
it allocates when the context is created: the KV cache for n_ctx (f16 K and V on the attention layers, plus the
recurrent state of hybrid models), the compute buffers (they grow with n_ubatch, and without flash attention with
n_ctx x n_ubatch) and the output buffer, measured by the worker as the context is created (flashmoe_gguf/heap.py;
where it cannot be measured, the KV cache computed from the hparams stands in); `headroom` (--headroom) covers
the interpreter and libraries and the page cache the reads pass through. With no cap, flashmoe gets a budget that holds every expert (at most what fits in 90 %
of the RAM beside the rest), and the worker's memory group is limited to 90 % of the RAM only as a safety net.
"""

from __future__ import annotations

BUDGET_DOC = ("flashmoe ram_budget = cap - resident (non-expert) weights - llama.cpp's context (KV cache, compute and "
              "output buffers, measured when it is created) - headroom; with no cap, a budget that holds every "
              "expert, at most 90 % of the RAM - resident - KV cache - headroom")

from dataclasses import dataclass

from .model import ModelInfo
from .runner import RunPlan
from .worker import WorkerSpec, is_flashmoe


@dataclass(frozen=True)
class BenchPlanOptions:
    caps: tuple[int, ...]              # RAM caps, bytes (capped, cold runs)
    warm: bool                         # also the no-cap, warm setting
    ks: tuple[int | None, ...]         # None: the file's own K
    configs: tuple[str, ...]           # flashmoe configs first, then the ones compared against
    tokens: int
    prompt_tokens: int
    n_ctx: int
    threads: int
    headroom: int
    feed: str = "greedy"
    probe_pairs: int = 8
    ram_bytes: int | None = None       # this machine's RAM: the no-cap budget never exceeds what fits in it
    rounds: int = 1                    # every configuration this many times, in rounds (see make_plan)
    routing: str = "router"            # flashmoe runs: a routing trace replayed in place of the router's choice
    n_batch: int = 0                   # llama.cpp's n_batch / n_ubatch / flash_attn for every run (0: defaults)
    n_ubatch: int = 0
    flash_attn: bool = False
    gpu_layers: int = 0                # llama.cpp's n_gpu_layers for every run (GPU hybrid mode for flashmoe)
    op_offload: bool = True
    resident_repack: bool = False      # flashmoe runs: extra buffer types for the resident weights


def host_resident_bytes(info: ModelInfo, gpu_layers: int = 0) -> int:
    """The non-expert weights in host memory: all of them without GPU layers; with every layer on the GPU
    (gpu_layers -1) only those outside the layers (llama.cpp keeps the token embedding on the CPU; the output head
    goes to the GPU, counted anyway); a partial offload counts them all (conservative)."""
    return info.resident_fixed_bytes if gpu_layers == -1 else info.resident_bytes


def flashmoe_budget(cap: int, info: ModelInfo, n_ctx: int, headroom: int, resident: int | None = None) -> int:
    """ram_budget for a cap before llama.cpp's context is known: cap - resident weights (in host memory:
    host_resident_bytes) - KV cache - headroom (may be <= 0: the cap is too small). The worker then takes the whole
    context instead of the KV cache (`budget_before_context`)."""
    return cap - (info.resident_bytes if resident is None else resident) - info.kv_cache_bytes(n_ctx) - headroom


SAFETY = 0.9      # no-cap runs: flashmoe's budget and the worker's memory group stay within 90 % of the RAM


def nocap_budget(info: ModelInfo, n_ctx: int = 512, headroom: int = 0, ram_bytes: int | None = None) -> int:
    """Enough for every expert (and slack for the cache's own bookkeeping), but no more than fits in 90 % of the
    machine's RAM beside the resident weights, the KV cache and the headroom."""
    want = info.expert_bytes + 64 * info.bytes_per_expert
    if ram_bytes is None:
        return want
    return max(0, min(want, int(SAFETY * ram_bytes) - info.resident_bytes - info.kv_cache_bytes(n_ctx) - headroom))


def _label(cap: int) -> str:
    return f"cap {cap / 2**30:.2f}G"


def rotated(configs: tuple[str, ...], r: int) -> tuple[str, ...]:
    """The order of round r: the configurations rotated by r, so that none always runs first or after the same
    one (a machine whose speed drifts over minutes then favours none of them)."""
    n = len(configs)
    return tuple(configs[(i + r) % n] for i in range(n)) if n else configs


def make_plan(info: ModelInfo, opt: BenchPlanOptions) -> list[RunPlan]:
    """Capped (cold) runs first, for every K and cap, then the warm no-cap runs, which also run the fixed-part
    probe (see extrapolate.py). With rounds > 1 each (setting, K, cap) runs its configurations `rounds` times,
    one round after the other, each round in a rotated order; the report compares medians and same-round
    pairs."""
    if opt.rounds < 1:
        raise ValueError("rounds must be at least 1")
    runs: list[RunPlan] = []
    for setting in ("capped", "nocap"):
        caps: tuple[int | None, ...] = opt.caps if setting == "capped" else ((None,) if opt.warm else ())
        for k in opt.ks:
            k_eff = k or info.n_expert_used
            overrides = {f"{info.arch}.expert_used_count": int(k)} if k else {}
            for cap, rnd in ((c, r) for c in caps for r in range(opt.rounds)):
                for config in rotated(opt.configs, rnd):
                    fm = is_flashmoe(config)
                    resident = host_resident_bytes(info, opt.gpu_layers)
                    budget = (flashmoe_budget(cap, info, opt.n_ctx, opt.headroom, resident) if cap is not None
                              else nocap_budget(info, opt.n_ctx, opt.headroom, opt.ram_bytes)) if fm else 0
                    probe = opt.probe_pairs if setting == "nocap" else 0
                    before_ctx = cap - resident - opt.headroom if fm and cap is not None else 0
                    spec = WorkerSpec(config, info.path, opt.threads, opt.tokens, opt.prompt_tokens, opt.n_ctx,
                                      budget, warmup=setting == "nocap", feed=opt.feed, kv_overrides=overrides,
                                      probe_pairs=probe, routing=opt.routing if fm else "router",
                                      budget_before_context=max(before_ctx, 0), n_batch=opt.n_batch,
                                      n_ubatch=opt.n_ubatch, flash_attn=opt.flash_attn, gpu_layers=opt.gpu_layers,
                                      op_offload=opt.op_offload, resident_repack=opt.resident_repack and fm)
                    where = _label(cap) if cap is not None else "no cap, warm"
                    name = f"{where} / K={k_eff} / {config}" + (f" / round {rnd + 1}" if opt.rounds > 1 else "")
                    runs.append(RunPlan(name, config, setting, cap, k_eff, bool(k), spec, cold=setting == "capped",
                                        round=rnd))
    return runs
