"""Huge pages for the resident weights of a flashmoe load (flashmoe_gguf/hugepages.py), checked against the kernel's
own account (/proc/self/smaps: AnonHugePages, Rss, VmFlags) and, for a model, against stock's logits."""

from __future__ import annotations

import ctypes
import mmap
import re
import sys
from typing import Any

import numpy as np
import pytest

from flashmoe_gguf import hugepages
from test_runtime import gguf_for

MiB = 1 << 20
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's THP")
ADVISES = hugepages.thp_mode() == "madvise"      # where there is something to ask for (see hugepages.py)


def smaps_of(lo: int, hi: int) -> dict[str, int]:
    """Rss and AnonHugePages (bytes) of the mappings inside [lo, hi) (madvise may have split the one we made)"""
    out = {"Rss": 0, "AnonHugePages": 0}
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                inside = lo <= int(m.group(1), 16) and int(m.group(2), 16) <= hi
            elif inside and line.split(":")[0] in out:
                out[line.split(":")[0]] += int(line.split()[1]) * 1024
    return out


def address(m: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(m))


def madvise(m: mmap.mmap, advice: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.madvise(address(m), len(m), advice) == 0


def separate(n_mib: int, guards: list[mmap.mmap]) -> mmap.mmap:
    """an anonymous mapping with an inaccessible page on each side (the kernel would merge adjacent ones into one)"""
    guards.append(mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=0))   # PROT_NONE
    m = mmap.mmap(-1, n_mib * MiB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    guards.append(mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=0))   # PROT_NONE
    return m


def test_only_new_unpopulated_unmarked_mappings_are_advised() -> None:
    """Made after LoadPages: an empty 32 MiB mapping (to be filled: advised, and filling it then takes huge pages),
    a filled one (not advised: it would need copying), one marked MADV_NOHUGEPAGE (our reservations: left alone)
    and a small one (under MIN_BYTES); one made before is not looked at."""
    guards: list[mmap.mmap] = []
    old = separate(32, guards)
    pages = hugepages.LoadPages()
    empty, filled, marked, small = (separate(n, guards) for n in (32, 32, 32, 2))
    filled[:] = b"\1" * (32 * MiB)
    madvise(marked, 15)                                   # MADV_NOHUGEPAGE
    pages.advise()
    if not ADVISES:
        assert pages.ranges == [] and pages.report().skipped
        pytest.skip(f"transparent huge pages are {hugepages.thp_mode() or 'not available'} here")
    lo = address(empty)
    assert len(pages.ranges) == 1 and lo <= pages.ranges[0][0] and pages.ranges[0][1] <= lo + 32 * MiB
    assert pages.ranges[0][1] - pages.ranges[0][0] >= 30 * MiB         # its 2 MiB-aligned interior
    pattern = np.random.default_rng(1).integers(0, 256, 32 * MiB, dtype=np.uint8).tobytes()
    empty[:] = pattern
    marked[:] = pattern
    old[:] = pattern
    assert empty[:] == pattern
    got = smaps_of(lo, lo + 32 * MiB)
    assert got["AnonHugePages"] >= 30 * MiB, got      # the kernel gave the advised range huge pages as it filled
    for m in (filled, marked, old):                   # not advised: 4 KiB pages (THP is madvise here)
        assert smaps_of(address(m), address(m) + len(m))["AnonHugePages"] == 0
    report = pages.report()
    assert report.advised_bytes == pages.ranges[0][1] - pages.ranges[0][0] and report.huge_bytes >= 30 * MiB
    pages.advise()                                    # once per load
    assert len(pages.ranges) == 1
    for m in (old, empty, filled, marked, small, *guards):
        m.close()


@pytest.fixture(autouse=True)
def switched_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """the feature is off by default (hugepages.py says why): these tests turn it on, here and in children"""
    monkeypatch.setenv(hugepages.ENV, "1")


@pytest.mark.parametrize("value", ["0", None])
def test_off_by_default_and_with_zero(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(hugepages.ENV)
    else:
        monkeypatch.setenv(hugepages.ENV, value)
    pages = hugepages.LoadPages()
    m = mmap.mmap(-1, 8 * MiB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    pages.advise()
    assert pages.ranges == [] and pages.report().skipped.startswith("off")
    m.close()


class Progress:
    """a caller's llama.cpp progress callback, installed in llama-cpp-python's default model params"""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answer: bool) -> None:
        import llama_cpp
        self.seen: list[float] = []
        self.cb = llama_cpp.llama_progress_callback(lambda p, _u: (self.seen.append(p), answer)[1])
        default = llama_cpp.llama_cpp.llama_model_default_params

        def params() -> Any:
            p = default()
            p.progress_callback = self.cb
            return p
        monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", params)


LOAD_CHILD = """
import ctypes, json, sys
import numpy as np
# buffers of a few MiB from mmap, as a real model's hundreds of MiB always are (glibc's threshold moves up to 32 MiB)
ctypes.CDLL(None).mallopt(-3, 1 << 20)                     # M_MMAP_THRESHOLD
sys.path.insert(0, sys.argv[2])
import llama_cpp
from flashmoe_gguf import Llama
from flashmoe_gguf.stock import no_extra_buffer_types
from test_runtime import BATCH, logits
kw = dict(n_ctx=256, n_batch=256, logits_all=True, verbose=False, seed=0, n_threads=2, type_k=0, type_v=0)
with no_extra_buffer_types():
    ref = llama_cpp.Llama(model_path=sys.argv[1], **kw)
want = logits(ref, BATCH, batch=True)
ref.close()
llm = Llama(model_path=sys.argv[1], ram_budget="64M", **kw)
got = logits(llm, BATCH, batch=True)
r = llm._fm.huge_pages
roll = open("/proc/self/smaps_rollup").read()
print("RESULT " + json.dumps({"mode": r.mode, "advised": r.advised_bytes, "huge": r.huge_bytes, "skipped": r.skipped,
      "stat": llm.flashmoe_stats()["huge_page_bytes"], "resident": llm._fm.model.size - llm._fm.expert_bytes,
      "anon_huge": int(roll.split("AnonHugePages:")[1].split()[0]) * 1024,
      "same": bool(got.shape == want.shape and np.array_equal(got.view(np.uint32), want.view(np.uint32)))}))
llm.close()
"""


def test_a_flashmoe_load_fills_the_resident_weights_in_huge_pages() -> None:
    """The resident weights' buffer of a flashmoe load is advised before llama.cpp fills it: the kernel then holds
    it in huge pages (AnonHugePages of those ranges, and of the process), and the logits are stock's (extra buffer
    types off) bit for bit. In a child process: glibc's mmap threshold fixed at 1 MiB there."""
    import json
    import subprocess
    from pathlib import Path
    path = gguf_for("qwen3_5_moe", "Q4_K")      # the test model with the most resident weights (5.3 MB)
    proc = subprocess.run([sys.executable, "-c", LOAD_CHILD, str(path), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert r["same"], "logits differ from stock's"
    if not ADVISES:
        assert r["advised"] == 0 and r["skipped"]
        pytest.skip(f"transparent huge pages are {r['mode'] or 'not available'} here")
    # the weights buffer's whole 2 MiB pieces in huge pages: at least one, all but the partial ones at its ends
    # (advised may also count buffers llama.cpp used during the load only, e.g. its upload staging, freed since)
    assert 2 * MiB <= r["huge"] <= r["advised"] and r["huge"] >= r["resident"] - 4 * MiB, r
    assert r["stat"] == r["huge"] and r["anon_huge"] >= r["huge"], r


def test_a_callers_progress_callback_sees_the_whole_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """flashmoe's loader hooks llama.cpp's progress callback (hugepages.py); one the caller set still gets every
    call, in order, up to 1.0, and the model works."""
    from flashmoe_gguf import Llama
    theirs = Progress(monkeypatch, True)
    llm = Llama(model_path=str(gguf_for("qwen3_moe", "Q4_K")), ram_budget="64M", n_ctx=64, verbose=False)
    try:
        assert len(theirs.seen) > 2 and theirs.seen[-1] == 1.0 and theirs.seen == sorted(theirs.seen)
        llm.eval([1, 2, 3])
    finally:
        llm.close()


def test_a_callers_progress_callback_can_still_cancel_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from flashmoe_gguf import FlashMoeError, Llama
    theirs = Progress(monkeypatch, False)
    with pytest.raises(FlashMoeError):
        Llama(model_path=str(gguf_for("qwen3_moe", "Q4_K")), ram_budget="64M", n_ctx=64, verbose=False)
    assert len(theirs.seen) == 1
