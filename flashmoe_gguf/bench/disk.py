"""The disk: cold random-read bandwidth for expert-sized reads, and the decode bound it implies.

    decode tok/s <= bandwidth / (layers x K x bytes per expert x (1 - hit rate))

Measured the way flashmoe reads experts (ggml_ext/fm_io.c): one pread per expert of its 4096-byte-aligned cover,
O_DIRECT into an aligned buffer, `threads` reads in flight (flashmoe's io_threads, 8 by default), random experts
of the real expert tensors. With root the page cache is dropped first as well (`echo 3 >
/proc/sys/vm/drop_caches`); O_DIRECT bypasses it either way. Where the file system refuses O_DIRECT (flashmoe then
reads buffered too), the preads are buffered with POSIX_FADV_RANDOM after the drop, and without root they may be
warm: the result says so.
"""

from __future__ import annotations

import mmap
import os
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def can_drop_caches() -> bool:
    return os.geteuid() == 0 and os.access(DROP_CACHES, os.W_OK)


def model_files(path: str | Path) -> tuple[Path, ...]:
    """every file of the model whose (first) file is path"""
    from ..gguf_index import read_model
    return read_model(path).paths


def drop_caches(path: str | Path | None = None) -> None:
    """Drop the page cache. Only clean pages are dropped, so `path` (the model, all its files) is flushed first;
    a global sync is avoided when a path is given: on a shared machine it can wait for other processes'
    gigabytes."""
    if path is None:
        os.sync()
    else:
        for p in model_files(path):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    DROP_CACHES.write_text("3\n")


def warm_file(path: str | Path) -> float:
    """Read the whole model (every file) into the page cache; returns seconds."""
    t0 = time.monotonic()
    buf = bytearray(8 << 20)
    for p in model_files(path):
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.monotonic() - t0


def expert_slices(path: str | Path) -> list[tuple[int, int, int]]:
    """(file index, offset, length) of every expert of every routed tensor: what one expert read is."""
    from ..experts import expert_tensors
    return [(t.shard, t.offset + e * t.stride, t.stride) for t in expert_tensors(path) for e in range(t.n_expert)]


DIRECT_ALIGN = 4096          # ggml_ext/fm_io.c's FM_DIRECT_ALIGN


def bandwidth(path: str | Path, n_reads: int, threads: int, seed: int, drop: bool) -> dict[str, Any]:
    """Random expert reads of the real expert tensors, `threads` at a time, cold, as flashmoe reads them."""
    slices = expert_slices(path)
    rng = random.Random(seed)
    picks = rng.sample(slices, min(n_reads, len(slices)))
    if drop:
        drop_caches(path)
    direct = bool(getattr(os, "O_DIRECT", 0))
    fds: list[int] = []
    try:
        for p in model_files(path):
            try:
                fds.append(os.open(p, os.O_RDONLY | (os.O_DIRECT if direct else 0)))
            except OSError:
                fds.append(os.open(p, os.O_RDONLY))
                direct = False
        if not direct:      # every file the same way
            for fd in fds:
                os.close(fd)
            fds = [os.open(p, os.O_RDONLY) for p in model_files(path)]
            for fd in fds:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        biggest = max(p[2] for p in picks) + 2 * DIRECT_ALIGN
        bufs: list[mmap.mmap] = []
        mine = threading.local()

        def one(pick: tuple[int, int, int]) -> int:
            buf = getattr(mine, "buf", None)
            if buf is None:                   # page-aligned, one per reader thread, as fm_io's slot buffers
                buf = mine.buf = mmap.mmap(-1, biggest)
                bufs.append(buf)
            return _read(fds[pick[0]], pick[1], pick[2], direct, buf)

        try:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                total = sum(pool.map(one, picks))
            secs = time.perf_counter() - t0
        finally:
            for b in bufs:
                b.close()
    finally:
        for fd in fds:
            os.close(fd)
    if direct:
        method = f"O_DIRECT pread of each expert's {DIRECT_ALIGN}-byte-aligned cover, {threads} in flight (as " \
                 "flashmoe reads)" + ("; page cache dropped too" if drop else "")
    else:
        method = "buffered pread, " + ("dropped page cache" if drop else "page cache NOT dropped (may be warm)") + \
                 " (O_DIRECT refused)"
    return {"threads": threads, "reads": len(picks), "bytes": total, "seconds": secs,
            "gb_s": total / secs / 1e9 if secs > 0 else 0.0, "read_sizes": sorted({p[2] for p in picks}),
            "direct": direct, "method": method}


def _read(fd: int, off: int, n: int, direct: bool, buf: mmap.mmap) -> int:
    """One expert: one pread (continued if short) of [off, off + n), of its aligned cover with O_DIRECT, as
    fm_io.c's do_read. The expert's bytes count, not the cover's."""
    start, end = (off // DIRECT_ALIGN * DIRECT_ALIGN, -(-(off + n) // DIRECT_ALIGN) * DIRECT_ALIGN) if direct \
        else (off, off + n)
    view = memoryview(buf)
    pos = start
    while pos < end:
        got = os.preadv(fd, [view[pos - start:end - start]], pos)
        if got <= 0:
            if direct and pos >= off + n:       # the aligned tail past the end of the file
                break
            raise OSError(f"short read at {pos}")
        pos += got
    view.release()
    return n


def measure_round(path: str | Path, label: str, reads: int, threads: int, repeats: int, seed: int,
                  drop: bool) -> dict[str, Any]:
    """`repeats` multi-threaded measurements, then one with a single thread."""
    runs = [bandwidth(path, reads, threads, seed + i, drop) for i in range(repeats)]
    single = bandwidth(path, min(reads, 100), 1, seed + repeats, drop)
    return {"label": label, "repeats": [r["gb_s"] for r in runs], "single_thread_gb_s": single["gb_s"],
            "runs": runs + [single]}


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The bandwidth for the bound: the median of every multi-threaded measurement of every round."""
    values = [x for r in rounds for x in r["repeats"]]
    if not values:
        return {}
    first = rounds[0]["runs"][0]
    return {"gb_s": statistics.median(values), "min_gb_s": min(values), "max_gb_s": max(values),
            "threads": first["threads"], "read_sizes": first["read_sizes"], "method": first["method"],
            "rounds": rounds}


def decode_bound(gb_s: float, bytes_per_token: float, hit_rate: float) -> float:
    """tok/s the disk allows when a token needs `bytes_per_token` expert bytes and `hit_rate` of them are cached."""
    need = bytes_per_token * (1.0 - hit_rate)
    return float("inf") if need <= 0 else gb_s * 1e9 / need
