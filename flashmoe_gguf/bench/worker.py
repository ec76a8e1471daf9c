"""One benchmark configuration, in a fresh process: `python -m flashmoe_gguf.bench.worker SPEC_JSON`.

Reports JSON events on stdout, one a line, prefixed with `EVENT` (llama.cpp may write to stderr freely):
start (RSS before the model loads: interpreter + libraries), loaded, prompt, token (one per decode step),
done (everything the parent needs), probe (the fixed-part probe, optional).

Sequence: prompt of `prompt_tokens` tokens in one eval (time to first token = that eval + the argmax); decode =
`tokens` single-token evals, each feeding the argmax of the previous one (greedy) or a seeded random token id
(feed="random"). With `warmup`, the whole sequence runs once untimed first (warm caches).

The fixed-part probe (`probe_pairs` > 0) alternates decode steps that produce logits with steps that produce
none (a llama_batch whose only token has logits=False): llama.cpp then skips the output norm, the output head
over the vocabulary, the logits copy, and the last layer's FFN (its rows are selected with the output ids
first). See `extrapolate.py` for how the difference is used.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..offload import experts_to_cpu
from ..stock import no_extra_buffer_types, tensor_overrides
from .machine import proc_io, proc_status
from .traces import routing_trace

EVENT = "FLASHMOE_BENCH_EVENT "
PROMPT_TEXT = ("The quick brown fox jumps over the lazy dog. Mixture-of-experts language models route every token "
               "through a few of many feed-forward experts, so most of their weights are idle at any moment, and "
               "a runtime can keep those weights on disk until a token asks for them.")
# stock-exps-cpu: extra buffer types off and the routed experts overridden to the CPU (llama.cpp's `-ot exps=CPU`):
# with --gpu-layers, stock's GPU offload with experts in host memory, the configuration flashmoe's GPU hybrid mode
# reproduces bit for bit (offload.py). stock-exps-cpu-repack: the same with extra buffer types on (llama.cpp's
# default), the configuration flashmoe with --resident-repack reproduces bit for bit where CPU_REPACK leaves the
# expert type alone (it repacks experts of the types it takes, overridden to the CPU or not)
STOCK_CONFIGS = ("stock", "stock-norepack", "stock-exps-cpu", "stock-exps-cpu-repack")


def is_flashmoe(config: str) -> bool:
    """"flashmoe-<cache mode>" (any mode flashmoe_gguf.Llama accepts; O_DIRECT as the runtime decides),
    "flashmoe-<mode>-direct" (O_DIRECT forced) or "flashmoe-<mode>-buffered" (page-cache reads forced)."""
    return config.startswith("flashmoe-")


def flashmoe_cache_modes() -> tuple[str, ...]:
    """The cache modes the installed runtime accepts."""
    from ..streamed import CACHE_POLICIES
    return CACHE_POLICIES


def default_cache_mode() -> str:
    """flashmoe_gguf.Llama's default `cache`."""
    import inspect

    from ..runtime import Llama
    return str(inspect.signature(Llama.__init__).parameters["cache"].default)


@dataclass(frozen=True)
class WorkerSpec:
    config: str                     # flashmoe-<cache>[-direct], stock or stock-norepack
    model: str
    threads: int
    tokens: int
    prompt_tokens: int
    n_ctx: int
    budget: int                     # flashmoe ram_budget, bytes (ignored by stock)
    warmup: bool = False
    feed: str = "greedy"            # "greedy" | "random"
    kv_overrides: dict[str, int] = field(default_factory=dict)
    probe_pairs: int = 0
    routing: str = "router"          # flashmoe only: a trace replayed in place of the router (traces.routing_trace)
    # flashmoe under a cap: cap - resident weights - headroom; the worker takes llama.cpp's context (KV cache,
    # compute and output buffers, measured as it is created) from it for the ram_budget. 0: `budget` as given
    budget_before_context: int = 0
    n_batch: int = 0                 # llama.cpp's n_batch / n_ubatch (0: llama-cpp-python's default, 512)
    n_ubatch: int = 0
    flash_attn: bool = False
    gpu_layers: int = 0              # llama.cpp's n_gpu_layers (-1: all), for every configuration
    op_offload: bool = True          # llama.cpp's op_offload (False: host-weight ops of big batches stay on the CPU)
    resident_repack: bool = False    # flashmoe only: extra buffer types for the resident weights (Llama's option)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkerSpec":
        return cls(**json.loads(text))

    def command(self) -> list[str]:
        return [sys.executable, "-m", "flashmoe_gguf.bench.worker", self.to_json()]


def emit(kind: str, **data: Any) -> None:
    print(EVENT + json.dumps({"event": kind, **data}), flush=True)


def make_llama(spec: WorkerSpec) -> Any:
    from ..rpc import connect_from_env
    connect_from_env()          # FLASHMOE_RPC: llama.cpp's RPC backend as the GPU (machines without one)
    kw: dict[str, Any] = dict(n_ctx=spec.n_ctx, n_threads=spec.threads, n_threads_batch=spec.threads,
                              verbose=False)
    if spec.n_batch:
        kw["n_batch"] = spec.n_batch
    if spec.n_ubatch:
        kw["n_ubatch"] = spec.n_ubatch
    if spec.flash_attn:
        kw["flash_attn"] = True
    if spec.kv_overrides:
        kw["kv_overrides"] = dict(spec.kv_overrides)
    if spec.gpu_layers:
        kw["n_gpu_layers"] = spec.gpu_layers
    if not spec.op_offload:
        kw["op_offload"] = False
    if is_flashmoe(spec.config):
        from flashmoe_gguf import Llama
        mode = spec.config.split("-", 1)[1]
        # MODE: the runtime's choice of O_DIRECT ("auto"); MODE-direct / MODE-buffered force it on / off
        direct: bool | str = True if mode.endswith("-direct") else False if mode.endswith("-buffered") else "auto"
        llm = Llama(spec.model, ram_budget=spec.budget, cache=mode.removesuffix("-direct").removesuffix("-buffered"),
                    direct_io=direct, resident_repack=spec.resident_repack, **kw)
        size_for_context(llm, spec)
        trace = routing_trace(spec.routing)
        if trace is not None:
            llm._fm.set_routing(trace.experts)
        return llm
    import llama_cpp
    if spec.config == "stock-norepack":
        with no_extra_buffer_types():
            return llama_cpp.Llama(spec.model, **kw)
    if spec.config == "stock":
        return llama_cpp.Llama(spec.model, **kw)
    if spec.config == "stock-exps-cpu":
        with no_extra_buffer_types(), tensor_overrides(experts_to_cpu()):
            return llama_cpp.Llama(spec.model, **kw)
    if spec.config == "stock-exps-cpu-repack":
        with tensor_overrides(experts_to_cpu()):
            return llama_cpp.Llama(spec.model, **kw)
    raise ValueError(f"unknown configuration {spec.config!r}")


def size_for_context(llm: Any, spec: WorkerSpec) -> None:
    """Under a cap: ram_budget = cap - resident - headroom - llama.cpp's context (nothing is read before this)."""
    if spec.budget_before_context <= 0:
        return
    ctx = llm._fm.context_bytes
    if ctx is None:             # not measurable here: the plan's budget (it subtracts the KV cache only)
        return
    budget = spec.budget_before_context - ctx
    if budget <= 0:
        raise SystemExit(f"cap too small: llama.cpp's context takes {ctx / 1e6:.0f} MB, leaving no expert cache")
    llm._fm.set_budget(budget)


def prompt_ids(llm: Any, n: int) -> list[int]:
    ids = llm.tokenize(PROMPT_TEXT.encode(), add_bos=False)
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def argmax_last(llm: Any) -> int:
    import numpy as np
    logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
    return int(np.argmax(logits))


def fm_stats(llm: Any) -> dict[str, float] | None:
    return llm.flashmoe_stats() if hasattr(llm, "flashmoe_stats") else None


def snapshot(llm: Any) -> dict[str, Any]:
    return {"t": time.perf_counter(), "io": proc_io(), "fm": fm_stats(llm), "status": proc_status()}


def feed_ids(llm: Any, n: int, feed: str) -> list[int] | None:
    if feed == "greedy":
        return None
    rng = random.Random(1234)
    lo, hi = min(1000, llm.n_vocab() // 4), max(llm.n_vocab() - 1000, llm.n_vocab() * 3 // 4)
    return [rng.randrange(lo, hi) for _ in range(n)]


def run_sequence(llm: Any, prompt: list[int], n: int, timed: bool, feed: list[int] | None) -> dict[str, Any]:
    llm.reset()
    s0 = snapshot(llm)
    llm.eval(prompt)
    tok = argmax_last(llm)
    s1 = snapshot(llm)
    out, step_s = [tok], []
    if timed:
        emit("prompt", seconds=s1["t"] - s0["t"], read_bytes=s1["io"]["read_bytes"] - s0["io"]["read_bytes"])
    for i in range(n):
        t0 = time.perf_counter()
        llm.eval([tok if feed is None else feed[i]])
        tok = argmax_last(llm)
        step_s.append(time.perf_counter() - t0)
        out.append(tok)
        if timed:
            emit("token", i=i, seconds=step_s[-1], read_bytes=proc_io()["read_bytes"])
    s2 = snapshot(llm)
    return {"before": s0, "after_prompt": s1, "after_decode": s2, "step_seconds": step_s, "tokens": out}


def fixed_part_probe(llm: Any, pairs: int, first_token: int) -> dict[str, Any]:
    """Alternate `pairs` decode steps with logits (and the argmax) and without; per kind: seconds and flashmoe
    expert seconds (io_wait + expert compute) and bytes. Positions continue after the decoded sequence."""
    import llama_cpp
    import numpy as np
    ctx = llm._ctx.ctx
    n_vocab = llm.n_vocab()
    pos = llm.n_tokens
    batch = llama_cpp.llama_batch_init(1, 0, 1)
    kinds: dict[str, dict[str, Any]] = {k: {"seconds": [], "expert_seconds": 0.0, "expert_bytes": 0}
                                        for k in ("with_output", "no_output")}
    tok = first_token
    try:
        for i in range(2 * pairs):
            kind = "with_output" if i % 2 == 0 else "no_output"
            batch.token[0], batch.pos[0], batch.n_seq_id[0] = tok, pos, 1
            batch.seq_id[0][0] = 0
            batch.logits[0] = kind == "with_output"
            batch.n_tokens = 1
            f0 = fm_stats(llm)
            t0 = time.perf_counter()
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} in the fixed-part probe")
            if kind == "with_output":
                ptr = llama_cpp.llama_get_logits_ith(ctx, 0)
                tok = int(np.argmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,))))
            dt = time.perf_counter() - t0
            f1 = fm_stats(llm)
            k = kinds[kind]
            k["seconds"].append(dt)
            if f0 is not None and f1 is not None:
                k["expert_seconds"] += sum(f1.get(x, 0.0) - f0.get(x, 0.0)
                                           for x in ("io_wait_seconds", "expert_compute_seconds"))
                k["expert_bytes"] += int(f1.get("expert_bytes_read", 0) - f0.get("expert_bytes_read", 0))
            pos += 1
    finally:
        llama_cpp.llama_batch_free(batch)
    return kinds


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = WorkerSpec.from_json(args[0])
    import llama_cpp  # noqa: F401  (libraries loaded before the baseline RSS)
    if is_flashmoe(spec.config):
        import flashmoe_gguf.runtime  # noqa: F401
    gpus: list[str] = []
    if spec.gpu_layers:
        # the GPU runtime's own host memory (the CUDA context) into the baseline, not into flashmoe's memory check
        from ..ggml_devices import open_gpu_devices
        from ..rpc import connect_from_env
        connect_from_env()
        gpus = open_gpu_devices()
    emit("start", pid=os.getpid(), io=proc_io(), status=proc_status(), gpus_opened=gpus)
    t0 = time.perf_counter()
    llm = make_llama(spec)
    load_s = time.perf_counter() - t0
    emit("loaded", seconds=load_s, io=proc_io(), status=proc_status(), fm=fm_stats(llm))
    prompt = prompt_ids(llm, spec.prompt_tokens)
    feed = feed_ids(llm, spec.tokens, spec.feed)
    if spec.warmup:
        run_sequence(llm, prompt, spec.tokens, timed=False, feed=feed)
        emit("warm", io=proc_io(), fm=fm_stats(llm))
    seq = run_sequence(llm, prompt, spec.tokens, timed=True, feed=feed)
    emit("done", load_seconds=load_s, prompt=prompt, **seq, final_status=proc_status())
    if spec.probe_pairs > 0:
        emit("probe", **fixed_part_probe(llm, spec.probe_pairs, seq["tokens"][-1]))
    llm.close()
    emit("closed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
