"""A/B of a load-time setting on warm decode steps, paired within one process (noisy machines).

    python tools/paired_steps.py MODEL.gguf --env FLASHMOE_HUGEPAGES=0,1 [--threads T] [--steps N] [--resident-repack]
    python tools/paired_steps.py MODEL.gguf --against stock [--resident-repack] ...   # A: stock, B: flashmoe
    python tools/paired_steps.py MODEL.gguf --against stock-exps-cpu --gpu-layers -1 ...  # GPU hybrid: (b) vs (c)

Loads the model twice with flashmoe_gguf.Llama, the environment variable set to the first value for A and the
second for B during each load (ram_budget large enough for every expert), evaluates the same prompt and the same
decode tokens on both once to warm them (every expert read), then again alternating one decode step of A and one
of B (order swapped every step) and reports the median step time of each and the median of the per-step ratios
B / A. Needs RAM for two models. With --gpu-layers both run that many layers on the GPU (flashmoe keeps the routed
experts streamed); `--against stock-exps-cpu` is stock with them overridden to the CPU, llama.cpp's `-ot exps=CPU`
with extra buffer types off (the GPU section's (b)).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--env", help="NAME=A,B: the variable's value during A's and B's load")
    ap.add_argument("--against", choices=("stock", "stock-norepack", "stock-exps-cpu"),
                    help="A is stock llama_cpp.Llama (extra buffer types on / off; off and the routed experts on the "
                         "CPU) instead, B flashmoe")
    ap.add_argument("--gpu-layers", type=int, default=0, help="n_gpu_layers of both (needs a GPU build)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--resident-repack", action="store_true")
    ap.add_argument("--ram-budget", default="64G")
    a = ap.parse_args(argv)
    name, _, values = (a.env or "FLASHMOE_UNUSED=,").partition("=")
    va, _, vb = values.partition(",")
    if bool(a.env) == bool(a.against) or (a.env and (not name or not vb)):
        ap.error("one of --env NAME=A,B or --against")
    from flashmoe_gguf import Llama

    def load(value: str) -> Any:
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            return Llama(model_path=a.model, n_ctx=512, n_threads=a.threads, n_threads_batch=a.threads,
                         verbose=False, ram_budget=a.ram_budget, resident_repack=a.resident_repack,
                         n_gpu_layers=a.gpu_layers)
        finally:
            if old is None:
                del os.environ[name]
            else:
                os.environ[name] = old
    if a.against:
        import contextlib

        import llama_cpp

        from flashmoe_gguf.offload import experts_to_cpu
        from flashmoe_gguf.stock import no_extra_buffer_types, tensor_overrides
        with contextlib.ExitStack() as ctx:
            if a.against != "stock":
                ctx.enter_context(no_extra_buffer_types())
            if a.against == "stock-exps-cpu":
                ctx.enter_context(tensor_overrides(experts_to_cpu()))
            llm_a = llama_cpp.Llama(model_path=a.model, n_ctx=512, n_threads=a.threads, n_threads_batch=a.threads,
                                    verbose=False, n_gpu_layers=a.gpu_layers)
        name, va, vb = "model", a.against, "flashmoe"
        llm_b = load("")
    else:
        llm_a, llm_b = load(va), load(vb)
    prompt, decode = list(range(10, 42)), list(range(100, 100 + a.steps))
    times: dict[int, list[float]] = {}
    for timed in (False, True):
        for llm in (llm_a, llm_b):
            llm.reset()
            llm.eval(prompt)
        times = {id(llm_a): [], id(llm_b): []}
        for i, tok in enumerate(decode):
            for llm in ((llm_a, llm_b) if i % 2 == 0 else (llm_b, llm_a)):
                t0 = time.perf_counter()
                llm.eval([tok])
                times[id(llm)].append(time.perf_counter() - t0)
    ta, tb = times[id(llm_a)], times[id(llm_b)]
    med = statistics.median
    print(f"{a.model} threads {a.threads} resident_repack {a.resident_repack} gpu_layers {a.gpu_layers}: A ({name}={va}) {med(ta) * 1e3:.2f} ms, "
          f"B ({name}={vb}) {med(tb) * 1e3:.2f} ms per step; B / A per step, median {med(y / x for x, y in zip(ta, tb)):.3f}"
          f" over {len(ta)} steps")
    for tag, llm in (("A", llm_a), ("B", llm_b)):
        if not hasattr(llm, "flashmoe_stats"):
            llm.close()
            continue
        st = llm.flashmoe_stats()
        print(f"  {tag}: huge_page_bytes {st['huge_page_bytes'] >> 20} MiB, cache_misses {st['cache_misses']}")
        llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
