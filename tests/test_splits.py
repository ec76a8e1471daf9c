"""Where a decode step crosses between llama.cpp's CPU backend and ours (CPU only): what the scheduler copies.

Our backend's compute buffers are of the buffer type the CPU backend's are (ggml_ext/fm_backend.c, compute_buft),
so the scheduler lets each read the other's results in place: no split of the step has inputs to copy. Read from
ggml's own account of the splits (GGML_SCHED_DEBUG=1 prints each split and its inputs through llama.cpp's log).
Before, the CPU split after our gate and up products copied both, and the one after down copied its result.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from test_runtime import gguf_for

CHILD = """
import sys
from flashmoe_gguf import Llama
llm = Llama(model_path=sys.argv[1], ram_budget="64M", n_ctx=64, n_threads=2, verbose=True)
llm.eval([1, 2, 3, 4])
print("==== DECODE STEP", file=sys.stderr, flush=True)
llm.eval([5])
print("==== END", file=sys.stderr, flush=True)
llm.close()
"""

SPLIT = re.compile(r"## SPLIT #(\d+): (\S+) # (\d+) inputs(?::(.*))?")


@pytest.mark.parametrize("arch,experts", [("qwen3_moe", "Q4_K"), ("gpt_oss", "MXFP4")])
def test_decode_step_copies_nothing(arch: str, experts: str) -> None:
    env = dict(os.environ, GGML_SCHED_DEBUG="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(gguf_for(arch, experts))], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    step = proc.stderr.split("==== DECODE STEP", 1)[1].split("==== END", 1)[0]
    splits = [(m.group(2), int(m.group(3)), (m.group(4) or "").strip()) for m in SPLIT.finditer(step)]
    ours = [s for s in splits if s[0] == "FLASHMOE"]
    assert ours, f"no split ran on our backend:\n{step[-2000:]}"
    copied = [s for s in splits if s[1] != 0]
    assert not copied, f"splits with inputs copied from another backend: {copied}"


TIMELINE_CHILD = """
import json, sys, time
from flashmoe_gguf import Llama
llm = Llama(model_path=sys.argv[1], ram_budget="64M", n_ctx=64, n_threads=2, verbose=True)
llm.eval([1, 2, 3, 4])
llm._fm.timeline()
print("==== DECODE STEP", file=sys.stderr, flush=True)
t0 = time.monotonic()
llm.eval([5])
t1 = time.monotonic()
print("==== END", file=sys.stderr, flush=True)
print("RESULT " + json.dumps({"t0": t0, "t1": t1, "timeline": llm._fm.timeline(), "again": llm._fm.timeline()}))
llm.close()
"""


def test_timeline_has_one_entry_per_split_of_ours() -> None:
    """fm_model_timeline (the diagnostic of tools/step_timeline.py): one (entry, exit) pair per graph compute of our
    backend in a decode step, as many as ggml's own split account gives our backend, in order, inside the step's
    wall time; reading it forgets it."""
    import json
    env = dict(os.environ, GGML_SCHED_DEBUG="1")
    proc = subprocess.run([sys.executable, "-c", TIMELINE_CHILD, str(gguf_for("qwen3_moe", "Q4_K"))],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    step = proc.stderr.split("==== DECODE STEP", 1)[1].split("==== END", 1)[0]
    ours = [m for m in SPLIT.finditer(step) if m.group(2) == "FLASHMOE"]
    res = json.loads(proc.stdout.split("RESULT ", 1)[1])
    tl = res["timeline"]
    assert len(ours) >= 2 and len(tl) == len(ours), (len(tl), len(ours))
    flat = [t for pair in tl for t in pair]
    assert flat == sorted(flat) and res["t0"] <= flat[0] and flat[-1] <= res["t1"]
    assert res["again"] == []


def test_the_products_time_accounts() -> None:
    """Decode steps' times nest: our backend's graph computes (its timeline, timed in fm_backend.c) hold the expert
    products (flashmoe_stats, timed in fm_matmul.c: compute + I/O wait), which hold the part the calling thread
    runs alone (expert_serial_seconds), which is not zero (routing, the cache's bookkeeping); the parallel regions'
    thread time holds the threads' time in the products."""
    from test_runtime import streamed
    llm = streamed(gguf_for("qwen3_moe", "Q4_K"), "64M")
    try:
        llm.eval([1, 2, 3, 4])
        llm._fm.timeline()
        s0 = llm.flashmoe_stats()
        for t in (5, 6, 7, 8):
            llm.eval([t])
        s1 = llm.flashmoe_stats()
        in_backend = sum(x - e for e, x in llm._fm.timeline())
        d = {k: s1[k] - s0[k] for k in ("expert_compute_seconds", "io_wait_seconds", "expert_serial_seconds",
                                         "expert_region_thread_seconds", "expert_busy_thread_seconds")}
        products = d["expert_compute_seconds"] + d["io_wait_seconds"]
        assert 0 < d["expert_serial_seconds"] < products <= in_backend, (d, in_backend)
        # the regions' thread time holds the threads' time in the products, and is the regions' wall time (the
        # products' less the serial part, at most) times the threads
        in_regions = products - d["expert_serial_seconds"]
        assert 0 < d["expert_busy_thread_seconds"] <= d["expert_region_thread_seconds"], d
        assert d["expert_region_thread_seconds"] <= in_regions * llm.n_threads * 1.001, (d, llm.n_threads)
    finally:
        llm.close()
