"""The disk: cold random-read bandwidth for expert-sized reads, and the decode bound it implies.

    decode tok/s <= bandwidth / (layers x K x bytes per expert x (1 - hit rate))

Measured by flashmoe's own reader (ggml_ext/fm_io.c, through `StreamedModel.access` with a cache too small to
hit): batches of a layer's worth of reads (K experts x the layer's expert tensors, e.g. 24 for Qwen3-30B-A3B)
queued at once, of random experts of a random expert tensor, `threads` I/O threads (flashmoe's io_threads, 8 by
default), O_DIRECT where the file system allows it (as direct_io="auto"), one pread per expert of its
4096-byte-aligned cover. A Python thread pool issuing the same preads measured less than flashmoe's runs then
read (their "% of the bound" reached 128-151 %): its threads need the GIL and, on a loaded machine, keep fewer
reads in flight. Where the extension cannot be loaded, that Python measurement is used (`python_bandwidth`: the
same preads into aligned buffers, `threads` in flight, random experts of the real expert tensors). With root the page cache is dropped first as well (`echo 3 >
/proc/sys/vm/drop_caches`); O_DIRECT bypasses it either way. Where the file system refuses O_DIRECT (flashmoe then
reads buffered too), the reads are buffered (the Python ones with POSIX_FADV_RANDOM) after the drop, and without root they may be
warm: the result says so.
"""

from __future__ import annotations

import errno
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
    """About n_reads random expert reads, cold, by flashmoe's reader with `threads` I/O threads (the Python
    measurement where the extension cannot be loaded)."""
    try:
        return flashmoe_bandwidth(path, n_reads, threads, seed, drop)
    except ImportError:
        return python_bandwidth(path, n_reads, threads, seed, drop)


def flashmoe_bandwidth(path: str | Path, n_reads: int, threads: int, seed: int, drop: bool) -> dict[str, Any]:
    """Batches of a layer's worth of random experts of one random expert tensor, through StreamedModel.access
    (acquire, wait for every read, release) with a 1-byte budget: every expert is read (a repeat of the previous
    batch's could hit; the bytes count what was read)."""
    from ..runtime_errors import FlashMoeError
    from ..streamed import StreamedModel
    from .model import model_info
    info = model_info(path)
    per_batch = info.n_expert_used * info.expert_tensors_per_layer
    if drop:
        drop_caches(path)
    try:
        m = StreamedModel(path, 1, io_threads=threads, cache="lru", direct_io="auto")
    except FlashMoeError as exc:
        raise ImportError(str(exc)) from exc
    try:
        rng = random.Random(seed)
        batches = []
        for _ in range(max(1, -(-n_reads // per_batch))):
            t = rng.choice(m.experts)
            batches.append((t.name, rng.sample(range(t.n_expert), min(per_batch, t.n_expert))))
        before = m.stats()
        t0 = time.perf_counter()
        for name, experts in batches:
            m.access(name, experts)
        secs = time.perf_counter() - t0
        after = m.stats()
        direct = m.direct_io
        sizes = sorted({e.stride for e in m.experts})
    finally:
        m.close()
    total = after["expert_bytes_read"] - before["expert_bytes_read"]
    return {"threads": threads, "reads": after["reads"] - before["reads"], "bytes": total, "seconds": secs,
            "gb_s": total / secs / 1e9 if secs > 0 else 0.0, "read_sizes": sizes, "direct": direct,
            "batch": per_batch,
            "method": f"flashmoe's reader ({threads} I/O threads, " + ("O_DIRECT" if direct else "buffered") +
                      f"), {per_batch} random experts of one tensor queued at once (a layer's K x tensors)" +
                      ("; page cache dropped" if drop else "")}


def python_bandwidth(path: str | Path, n_reads: int, threads: int, seed: int, drop: bool) -> dict[str, Any]:
    """Random expert reads of the real expert tensors, `threads` at a time from a Python thread pool, cold."""
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


def sequential_cold(path: str | Path, nbytes: int, drop: bool, block: int = 8 << 20) -> dict[str, Any]:
    """One sequential read of the first nbytes of the (first) file, O_DIRECT where the file system allows it, from
    a cold page cache when drop: the disk's best case for the non-expert weights, which a cold load should reach
    (issue 14: at least 80 %). The block is the loader's chunk (FM_CHUNK in ggml_ext/fm_api.c)."""
    first = model_files(path)[0]
    if drop:
        drop_caches(path)
    nbytes = min(nbytes, first.stat().st_size)
    flags = os.O_RDONLY | getattr(os, "O_DIRECT", 0)
    try:
        fd = os.open(first, flags)
        direct = True
    except OSError:
        fd = os.open(first, os.O_RDONLY)
        direct = False
    buf = mmap.mmap(-1, block)
    try:
        t0 = time.perf_counter()
        done = 0
        while done < nbytes:
            try:
                got = os.preadv(fd, [buf], done)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not direct:
                    raise
                os.close(fd)
                fd = os.open(first, os.O_RDONLY)
                direct = False
                continue
            if got <= 0:
                break
            done += got
        secs = time.perf_counter() - t0
    finally:
        os.close(fd)
        buf.close()
    return {"gb_s": done / secs / 1e9 if secs > 0 else 0.0, "bytes": done, "seconds": secs, "block": block,
            "direct": direct, "cold": drop}


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
