"""The disk: cold random-read bandwidth for expert-sized reads, and the decode bound it implies.

    decode tok/s <= bandwidth / (layers x K x bytes per expert x (1 - hit rate))

Cold reads: with root the page cache is dropped first (`sync; echo 3 > /proc/sys/vm/drop_caches`) and the
preads are buffered with POSIX_FADV_RANDOM (as the runtime reads); without root they use O_DIRECT, which
bypasses the page cache without dropping it (if the file system refuses O_DIRECT, the reads may be warm and the
result says so).
"""

from __future__ import annotations

import mmap
import os
import random
import statistics
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


def bandwidth(path: str | Path, n_reads: int, threads: int, seed: int, drop: bool) -> dict[str, Any]:
    """Random preads of whole expert slices of the real expert tensors, `threads` at a time, cold."""
    slices = expert_slices(path)
    rng = random.Random(seed)
    picks = rng.sample(slices, min(n_reads, len(slices)))
    direct = not drop
    if drop:
        drop_caches(path)
    flags = os.O_RDONLY | (getattr(os, "O_DIRECT", 0) if direct else 0)
    fds: list[int] = []
    try:
        for p in model_files(path):
            try:
                fds.append(os.open(p, flags))
            except OSError:
                fds.append(os.open(p, os.O_RDONLY))
                direct = False
        for fd in fds:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            total = sum(pool.map(lambda p: _read(fds[p[0]], p[1], p[2], direct), picks))
        secs = time.perf_counter() - t0
    finally:
        for fd in fds:
            os.close(fd)
    return {"threads": threads, "reads": len(picks), "bytes": total, "seconds": secs,
            "gb_s": total / secs / 1e9 if secs > 0 else 0.0, "read_sizes": sorted({p[2] for p in picks}),
            "method": "dropped page cache, buffered pread" if drop else
            ("O_DIRECT pread (page cache not dropped)" if direct else "buffered pread, page cache NOT dropped "
             "(may be warm)")}


def _read(fd: int, off: int, n: int, direct: bool) -> int:
    if direct:   # O_DIRECT wants aligned offsets, lengths and buffers: read the aligned cover of the range
        a = 4096
        start, end = off // a * a, -(-(off + n) // a) * a
        buf = mmap.mmap(-1, min(end - start, 4 << 20))
        try:
            pos = start
            while pos < end:
                want = min(end - pos, len(buf))
                got = os.preadv(fd, [memoryview(buf)[:want]], pos)
                if got <= 0:
                    break
                pos += got
        finally:
            buf.close()
        return n
    got = 0
    while got < n:
        b = os.pread(fd, min(n - got, 4 << 20), off + got)
        if not b:
            raise OSError(f"short read at {off + got}")
        got += len(b)
    return got


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
