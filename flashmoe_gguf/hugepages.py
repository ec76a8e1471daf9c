"""Transparent huge pages for the resident weights llama.cpp reads during a flashmoe load.

flashmoe loads a model without mmap (ggml_ext/DESIGN.md, "No expert bytes at load"), so llama.cpp reads the
resident weights (attention, router, output head, ...) into buffers of anonymous memory, which with the kernel's
usual THP setting (`madvise`) are 4 KiB pages; stock llama.cpp maps the file, and the page cache may serve it in
large folios mapped 2 MiB at a time. A decode step reads every resident weight once (the output head alone is
hundreds of MB), memory-bound products where small pages cost TLB misses.

`LoadPages` is made before a load and `advise()` is called from llama.cpp's progress callback, whose first call
comes after llama.cpp allocated the model's buffers and before it reads the first tensor into them: every
anonymous mapping that appeared meanwhile, is at least `MIN_BYTES` and is still unpopulated, gets
MADV_HUGEPAGE, so the load's own page faults take 2 MiB pages (no copying afterwards, unlike MADV_COLLAPSE).
Our expert buffer, a reservation that is never touched, is marked MADV_NOHUGEPAGE by the extension
(fm_backend.c) and left out. `report()` then reads the kernel's account (AnonHugePages of those ranges).

Off unless FLASHMOE_HUGEPAGES=1: measured on the 2-core EPYC (8-layer Qwen3-30B-A3B slice, 0.84 GB resident), the
load's faults on advised ranges took 0.6-1.8 s longer (THP `defrag` = `madvise` makes them compact memory for
2 MiB pages: loads of 1.9-4.2 s against 1.3-2.5 s), for decode steps 0-4 % faster (README, "Huge pages"); a
long-running server may want the trade, a cold start does not. Nothing is advised where THP is `never` or
`always` (nothing to ask for), or outside Linux.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MIN_BYTES = 4 << 20
HUGE = 2 << 20
UNPOPULATED = 0.1             # a 2 MiB piece with less than this share of its pages present is still to be filled
MADV_HUGEPAGE = 14
ENV = "FLASHMOE_HUGEPAGES"

_MAPS_LINE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) rw-p [0-9a-f]+ 00:00 0\s*$")
_SMAPS_HEAD = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) ")


@dataclass(frozen=True)
class HugePageReport:
    mode: str                 # the kernel's THP mode ("always", "madvise", "never", "" where unknown)
    advised_bytes: int = 0    # advised MADV_HUGEPAGE before llama.cpp filled them (with buffers it used during the
                              # load only, e.g. upload staging, freed since)
    huge_bytes: int = 0       # of those, in huge pages after the load (the kernel's AnonHugePages)
    skipped: str = ""         # why nothing was advised, if so


def thp_mode(path: Path = Path("/sys/kernel/mm/transparent_hugepage/enabled")) -> str:
    """The bracketed choice of the kernel's THP setting, "" if it cannot be read."""
    try:
        m = re.search(r"\[(\w+)\]", path.read_text())
    except OSError:
        return ""
    return m.group(1) if m else ""


def anonymous_mappings() -> set[tuple[int, int]]:
    """(start, end) of this process's private read-write anonymous mappings (no file, not heap or stack)."""
    out = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                m = _MAPS_LINE.match(line)
                if m:
                    out.add((int(m.group(1), 16), int(m.group(2), 16)))
    except OSError:
        pass
    return out


def smaps(keep: Callable[[int, int], bool]) -> dict[tuple[int, int], dict[str, object]]:
    """Rss, AnonHugePages (bytes) and VmFlags of the mappings (start, end) for which keep(start, end) is true."""
    out: dict[tuple[int, int], dict[str, object]] = {}
    current: dict[str, object] | None = None
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = _SMAPS_HEAD.match(line)
                if head:
                    key = (int(head.group(1), 16), int(head.group(2), 16))
                    current = out.setdefault(key, {"Rss": 0, "AnonHugePages": 0, "VmFlags": ()}) \
                        if keep(*key) else None
                elif current is not None:
                    name, _, value = line.partition(":")
                    if name in ("Rss", "AnonHugePages"):
                        current[name] = int(value.split()[0]) * 1024
                    elif name == "VmFlags":
                        current[name] = tuple(value.split())
    except OSError:
        pass
    return out


def subtract(ranges: set[tuple[int, int]], minus: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """The addresses in `ranges` and not in `minus`, as sorted disjoint (start, end) intervals."""
    out = []
    cuts = sorted(minus)
    for lo, hi in sorted(ranges):
        for a, b in cuts:
            if b <= lo or a >= hi:
                continue
            if a > lo:
                out.append((lo, a))
            lo = max(lo, b)
            if lo >= hi:
                break
        if lo < hi:
            out.append((lo, hi))
    return out


class LoadPages:
    """Huge pages for the buffers one load allocates (see the module's docstring)."""

    def __init__(self) -> None:
        self.mode = thp_mode()
        self.skipped = ("not Linux" if not sys.platform.startswith("linux") else
                        f"off ({ENV}=1 turns it on)" if os.environ.get(ENV, "0") != "1" else
                        f"transparent huge pages are {self.mode or 'not available'}"
                        if self.mode in ("never", "") else
                        "transparent huge pages are always on" if self.mode == "always" else "")
        self.before = anonymous_mappings() if not self.skipped else set()
        self.ranges: list[tuple[int, int]] = []
        self.done = bool(self.skipped)

    def advise(self) -> None:
        """Once: MADV_HUGEPAGE on the address ranges that became anonymous mappings since __init__ (adjacent
        mappings merge, so by address, not by mapping), except mappings marked MADV_NOHUGEPAGE (ours) and ranges
        already populated (mincore)."""
        if self.done:
            return
        self.done = True
        after = anonymous_mappings()
        fresh = subtract(after, self.before)
        touches = lambda lo, hi: any(a < hi and lo < b for a, b in fresh)   # noqa: E731
        marked = {r for r, info in smaps(touches).items() if "nh" in info["VmFlags"]}  # type: ignore[operator]
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.madvise.restype = ctypes.c_int
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        libc.mincore.restype = ctypes.c_int
        page = os.sysconf("SC_PAGE_SIZE")
        for lo, hi in subtract(set(fresh), marked):
            a, b = (lo + HUGE - 1) // HUGE * HUGE, hi // HUGE * HUGE
            if hi - lo < MIN_BYTES or b <= a:
                continue
            present = ctypes.create_string_buffer((b - a) // page)
            if libc.mincore(a, b - a, present) != 0:
                continue
            # runs of 2 MiB pieces still (almost) empty: what llama.cpp is about to fill
            per = HUGE // page
            raw = present.raw           # one byte per page, bit 0: resident (the others are reserved, 0)
            empty = [per - raw.count(0, i * per, (i + 1) * per) < UNPOPULATED * per for i in range((b - a) // HUGE)]
            i = 0
            for is_empty, run in itertools.groupby(empty):
                n = len(list(run))
                start, end = a + i * HUGE, a + (i + n) * HUGE
                i += n
                if is_empty and libc.madvise(start, end - start, MADV_HUGEPAGE) == 0:
                    self.ranges.append((start, end))

    def report(self) -> HugePageReport:
        """What was advised and how much of it the kernel holds in huge pages now."""
        inside = lambda lo, hi: any(a <= lo and hi <= b for a, b in self.ranges)   # noqa: E731
        huge = sum(int(i["AnonHugePages"]) for i in smaps(inside).values()) if self.ranges else 0  # type: ignore[arg-type]
        return HugePageReport(self.mode, sum(b - a for a, b in self.ranges), huge, self.skipped)
