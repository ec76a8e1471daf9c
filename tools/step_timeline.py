"""Where one warm decode step's time goes between flashmoe's backend and the CPU backend's splits.

    python tools/step_timeline.py MODEL.gguf [--threads T] [--steps N] [--resident-repack] [--expert-block 0|1]

Our backend records when each of its graph computes starts and ends (fm_model_timeline); between two of them the
scheduler runs the CPU backend's split (attention, router, the SwiGLU between gate/up and down, ...). Prints per
position in the step (median over the steps): the CPU split before it and our compute, and the totals.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def memory_facts() -> str:
    """this process's huge pages and NUMA spread (the output head is a memory-bound product)"""
    import re
    try:
        roll = open("/proc/self/smaps_rollup").read()
        facts = {k: int(v) // 1024 for k, v in re.findall(r"^(Rss|Anonymous|AnonHugePages|FilePmdMapped):\s+(\d+) kB",
                                                              roll, re.M)}
        nodes: dict[str, int] = {}
        for m in re.finditer(r"\bN(\d+)=(\d+)", open("/proc/self/numa_maps").read()):
            nodes[m.group(1)] = nodes.get(m.group(1), 0) + int(m.group(2))
        return f"memory MB {facts}; pages per NUMA node {nodes}"
    except OSError as exc:
        return f"memory facts unavailable: {exc}"


def steps_of(llm, steps: int) -> list[float]:  # type: ignore[no-untyped-def]
    prompt, decode = list(range(10, 42)), list(range(100, 100 + steps))
    out = []
    for timed in (False, True):
        llm.reset()
        llm.eval(prompt)
        for tok in decode:
            t0 = time.monotonic()
            llm.eval([tok])
            if timed:
                out.append(time.monotonic() - t0)
    return out


def stock_steps(a: argparse.Namespace) -> int:
    import contextlib

    import llama_cpp

    from flashmoe_gguf.stock import no_extra_buffer_types
    with no_extra_buffer_types() if a.stock == "norepack" else contextlib.nullcontext():
        llm = llama_cpp.Llama(model_path=a.model, n_ctx=512, n_threads=a.threads, n_threads_batch=a.threads,
                              verbose=False)
    t = steps_of(llm, a.steps)
    print(f"stock {a.stock}, threads {a.threads}: step {statistics.median(t)*1e3:.3f} ms (min {min(t)*1e3:.3f}); "
          + memory_facts())
    llm.close()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--resident-repack", action="store_true")
    ap.add_argument("--expert-block", choices=("0", "1"))
    ap.add_argument("--stock", choices=("norepack", "repack"),
                    help="time stock's steps the same way instead (without / with extra buffer types)")
    ap.add_argument("--ram-budget", default="64G", help="flashmoe ram_budget (default: more than the experts)")
    a = ap.parse_args()
    if a.expert_block is not None:
        os.environ["FLASHMOE_EXPERT_BLOCK"] = a.expert_block
    if a.stock:
        return stock_steps(a)
    from flashmoe_gguf import Llama
    llm = Llama(model_path=a.model, n_ctx=512, n_threads=a.threads, n_threads_batch=a.threads, verbose=False,
                resident_repack=a.resident_repack, ram_budget=a.ram_budget)
    fm = llm._fm
    prompt, decode = list(range(10, 42)), list(range(100, 100 + a.steps))
    llm.eval(prompt)                         # warm pass: the same tokens, so the timed pass reads nothing
    for tok in decode:                       # one by one, as timed (a batch's arithmetic can route differently)
        llm.eval([tok])
    llm.reset()
    llm.eval(prompt)
    fm.timeline()
    s0 = llm.flashmoe_stats()
    steps = []
    for tok in decode:
        t0 = time.monotonic()
        llm.eval([tok])
        t1 = time.monotonic()
        steps.append((t0, t1, fm.timeline()))
    s1 = llm.flashmoe_stats()
    print("during the steps:", {k: round(s1[k] - s0[k], 4) for k in ("cache_misses", "expert_bytes_read", "expert_serial_seconds",
                                                                  "io_wait_seconds", "expert_compute_seconds",
                                                                  "expert_region_thread_seconds",
                                                                  "expert_busy_thread_seconds")})
    region = s1["expert_region_thread_seconds"] - s0["expert_region_thread_seconds"]
    busy = s1["expert_busy_thread_seconds"] - s0["expert_busy_thread_seconds"]
    if region > 0:
        print(f"threads busy in the products {busy / region:.1%} of the regions' thread time "
              f"({busy / len(steps) * 1e3:.3f} of {region / len(steps) * 1e3:.3f} thread-ms per step)")
    n_calls = {len(s[2]) for s in steps}
    if len(n_calls) != 1:
        print("calls per step differ:", n_calls)
    n = min(n_calls)
    cpu = [[] for _ in range(n + 1)]
    ours = [[] for _ in range(n)]
    total, in_ours = [], []
    for t0, t1, tl in steps:
        prev = t0
        for i, (e, x) in enumerate(tl[:n]):
            cpu[i].append(e - prev)
            ours[i].append(x - e)
            prev = x
        cpu[n].append(t1 - prev)
        total.append(t1 - t0)
        in_ours.append(sum(x - e for e, x in tl))
    med = statistics.median
    ms = 1e3
    print(f"threads {a.threads} resident_repack {a.resident_repack} expert_block {a.expert_block} calls/step {n}")
    print(f"step {med(total)*ms:.3f} ms (min {min(total)*ms:.3f}); in our backend {med(in_ours)*ms:.3f} ms; "
          f"outside {med([t - o for t, o in zip(total, in_ours)])*ms:.3f} ms")
    print("position: cpu split before (ms) | ours (ms)")
    for i in range(n):
        print(f"  {i:3d}: {med(cpu[i])*ms:8.3f} | {med(ours[i])*ms:8.3f}")
    print(f"  end: {med(cpu[n])*ms:8.3f} (after the last of ours: rest of the last layer, output head, logits)")
    print(memory_facts())
    llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
