"""How many bytes the C heap holds right now (glibc's malloc: its arenas' used chunks plus its mmapped blocks),
or None where that cannot be known (another C library, or a malloc replaced by a sanitizer).

Used around llama.cpp's context creation: the difference is what the context allocated (KV cache, compute and
output buffers, the scheduler's graphs), which ram_budget="auto" leaves out of the expert cache. Allocated is
counted, touched or not: a compute buffer is planned for the largest micro-batch and a long prompt touches it.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any, Callable


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@functools.lru_cache(maxsize=1)
def _mallinfo2() -> Callable[[], Any] | None:
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _Mallinfo2
    fn.argtypes = []
    return fn   # type: ignore[no-any-return]


def heap_bytes() -> int | None:
    fn = _mallinfo2()
    if fn is None:
        return None
    m = fn()
    return int(m.hblkhd) + int(m.uordblks)


def allocated_during(call: Callable[[], Any]) -> tuple[Any, int | None]:
    """call()'s result and the bytes the C heap grew by while it ran (None: unknown, or it did not grow, as when a
    sanitizer's malloc hides the allocations from glibc's counters)."""
    before = heap_bytes()
    out = call()
    after = heap_bytes()
    if before is None or after is None or after <= before:
        return out, None
    return out, after - before
