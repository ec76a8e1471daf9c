"""Writes a streaming GGUF from tensor specs, in one pass and bounded memory.

The header (metadata, tensor infos, the `flashmoe.*` layout) is computed from the specs before any data is
read; then each tensor is produced, quantized and appended, routed experts one expert at a time. Output goes
to a temporary file beside the target and is renamed only once complete and flushed, so a failed or interrupted
conversion never leaves a partial file under the target name.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from functools import partial
from typing import BinaryIO, Callable, Iterator

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

from flashmoe_gguf import seams
from flashmoe_gguf.ggml_lib import Ggml
from flashmoe_gguf.layout import FORMAT_VERSION, IndexEntry, StreamingLayout
from .archs.base import TensorSpec
from .errors import ConversionError
from .recipe import Recipe, tensor_nbytes
from .transcode import transcode_mxfp4, transcode_q4_1


@dataclass
class PlannedTensor:
    spec: TensorSpec
    gtype: T
    nbytes: int
    offset: int = 0   # in the data section


@dataclass
class WriteStats:
    bytes_out: int = 0
    seconds: float = 0.0
    tensors: int = 0
    transcoded_experts: int = 0
    transcode_max_error: float = 0.0
    mxfp4_experts: int = 0                # MXFP4 experts copied into ggml's MXFP4 blocks bit for bit
    requantized_experts: int = 0          # MLX experts that had no exact mapping to the chosen type
    requant_rms_error: float = 0.0        # worst per-expert RMS error / RMS of the MLX weights
    fallbacks: list[str] = field(default_factory=list)


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def plan_tensors(specs: list[TensorSpec], recipe: Recipe, alignment: int) -> list[PlannedTensor]:
    out = []
    off = 0
    for s in specs:
        gtype = recipe.type_for(s.name, s.role, s.shape)
        p = PlannedTensor(s, gtype, tensor_nbytes(gtype, s.shape), off)
        off += _pad(p.nbytes, alignment)
        out.append(p)
    return out


def streaming_layout(planned: list[PlannedTensor], n_expert: int) -> StreamingLayout:
    experts = [p for p in planned if p.spec.is_expert]
    tensors = tuple(IndexEntry(p.spec.name, p.spec.layer or 0, p.spec.expert_kind or "", p.offset,
                               p.nbytes // p.spec.shape[0]) for p in experts)
    expert_bytes = sum(p.nbytes for p in experts)
    return StreamingLayout(FORMAT_VERSION, n_expert, tensors, expert_bytes,
                           sum(p.nbytes for p in planned) - expert_bytes)


def _add_kv(w: gguf.GGUFWriter, key: str, value: object, kind: str) -> None:
    vt = gguf.GGUFValueType
    if kind == "u32":
        w.add_uint32(key, int(value))  # type: ignore[arg-type]
    elif kind == "u64":
        w.add_uint64(key, int(value))  # type: ignore[arg-type]
    elif kind == "str[]":
        w.add_key_value(key, list(value), vt.ARRAY, sub_type=vt.STRING)  # type: ignore[call-overload]
    elif kind == "u32[]":
        w.add_key_value(key, [int(v) for v in value], vt.ARRAY, sub_type=vt.UINT32)  # type: ignore[attr-defined]
    elif kind == "u64[]":
        w.add_key_value(key, [int(v) for v in value], vt.ARRAY, sub_type=vt.UINT64)  # type: ignore[attr-defined]
    else:
        raise ValueError(kind)


class StreamingWriter:
    """Produces and quantizes chunks (one expert, or a block of rows) on a thread pool, writes them in order.

    At most `2 x threads` chunks are in flight, so memory stays bounded by a few experts or row blocks.
    ggml's quantizer and numpy's conversions release the GIL, so the chunks really run in parallel.
    """

    ROW_BLOCK_ELEMENTS = 1 << 21

    def __init__(self, ggml: Ggml, threads: int, expert_pool: int | None = None) -> None:
        """expert_pool (synthetic weights only, off by default): in each routed-expert tensor encode only experts
        0..pool-1 and write expert i as the bytes of expert i % pool. Every expert is still a valid, distinct
        byte range of real quantized blocks; only the content repeats. Quantizing tens of GB of random experts
        would otherwise dominate the time to make a benchmark file."""
        if expert_pool is not None and expert_pool < 1:
            raise ConversionError(f"expert pool must be at least 1, got {expert_pool}")
        self.ggml = ggml
        self.threads = max(1, threads)
        self.expert_pool = expert_pool
        self._lock = threading.Lock()
        self._pause_at = seams.pause_at(seams.WRITE_AT)     # tests/test_interrupts.py only

    def encode(self, data: np.ndarray, gtype: T) -> np.ndarray:
        data = np.ascontiguousarray(data, dtype=np.float32)
        if gtype == T.F32:
            return data.reshape(-1).view(np.uint8)
        rows = data.reshape(-1, data.shape[-1])
        return self.ggml.quantize_rows(gtype, rows, 1).reshape(-1)

    def write(self, out: Path, arch_name: str, add_metadata: Callable[[gguf.GGUFWriter], None],
              planned: list[PlannedTensor], layout: StreamingLayout, alignment: int,
              progress: Callable[[int], None] | None = None) -> WriteStats:
        stats = WriteStats()
        t0 = time.monotonic()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
        w = gguf.GGUFWriter(tmp, arch_name)
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="flashmoe-quant")
        try:
            w.add_custom_alignment(alignment)
            add_metadata(w)
            for key, (value, kind) in layout.to_kv().items():
                _add_kv(w, key, value, kind)
            for p in planned:
                w.add_tensor_info(p.spec.name, p.spec.shape, np.dtype(np.float32), p.nbytes, raw_dtype=p.gtype)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            assert w.fout is not None
            f = w.fout[0]
            f.write(b"\0" * (_pad(f.tell(), alignment) - f.tell()))
            data_start = f.tell()
            for p in planned:
                if f.tell() - data_start != p.offset:
                    raise ConversionError(f"internal error: {p.spec.name} at {f.tell() - data_start}, "
                                          f"planned {p.offset}")
                written = self._write_tensor(pool, f, p, stats, progress)
                if written != p.nbytes:
                    raise ConversionError(f"internal error: {p.spec.name}: wrote {written} bytes, planned {p.nbytes}")
                f.write(b"\0" * (_pad(written, alignment) - written))
                stats.tensors += 1
            f.flush()
            os.fsync(f.fileno())
            stats.bytes_out = f.tell()
            w.close()
            os.replace(tmp, out)
        except BaseException as exc:
            pool.shutdown(wait=True, cancel_futures=True)
            try:
                w.close()
            except OSError:
                pass            # the same error again (a full disk): the partial file goes all the same
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise ConversionError(f"cannot write {out}: {exc.strerror or exc} (nothing was left behind)") from exc
            raise
        pool.shutdown()
        stats.seconds = time.monotonic() - t0
        return stats

    def _write_tensor(self, pool: ThreadPoolExecutor, f: BinaryIO, p: PlannedTensor, stats: WriteStats,
                      progress: Callable[[int], None] | None) -> int:
        window: deque[Future[np.ndarray]] = deque()
        written = 0

        def drain_one() -> None:
            nonlocal written
            data = window.popleft().result()
            f.write(memoryview(data))
            written += data.nbytes
            if progress:
                progress(data.nbytes)
            if self._pause_at and f.tell() >= self._pause_at:
                self._pause_at = 0
                f.flush()                       # the test waits to see these bytes, then signals
                seams.wait_for_a_signal()

        pooled: list[Future[np.ndarray]] = []   # expert_pool: the encoded experts whose bytes repeat
        use_pool = self.expert_pool is not None and p.spec.is_expert
        for i, job in enumerate(self._jobs(p, stats)):
            if use_pool and len(pooled) == self.expert_pool:
                window.append(pooled[i % len(pooled)])
            else:
                window.append(pool.submit(job))
                if use_pool:
                    pooled.append(window[-1])
            while len(window) > 2 * self.threads:
                drain_one()
        while window:
            drain_one()
        return written

    def _jobs(self, p: PlannedTensor, stats: WriteStats) -> Iterator[Callable[[], np.ndarray]]:
        s = p.spec
        if s.is_expert:
            for i in range(s.shape[0]):
                yield partial(self._encode_expert, p, i, stats)
            return
        if s.load_rows is not None and len(s.shape) == 2:
            # row blocks read and encoded by the workers: the whole tensor is never in memory
            step = max(1, self.ROW_BLOCK_ELEMENTS // max(s.shape[1], 1))
            for r in range(0, s.shape[0], step):
                yield partial(self._encode_rows, p, r, min(r + step, s.shape[0]))
            return
        assert s.load is not None
        arr = s.load()
        if tuple(arr.shape) != s.shape:
            raise ConversionError(f"{s.name}: produced shape {list(arr.shape)}, expected {list(s.shape)}")
        if not np.isfinite(arr).all():
            raise ConversionError(f"{s.name} ({s.source}): contains NaN or infinity")
        rows = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1, s.shape[-1] if s.shape else 1)
        step = max(1, self.ROW_BLOCK_ELEMENTS // max(rows.shape[1], 1))
        for r in range(0, rows.shape[0], step):
            yield partial(self.encode, rows[r:r + step], p.gtype)

    def _encode_rows(self, p: PlannedTensor, r0: int, r1: int) -> np.ndarray:
        s = p.spec
        assert s.load_rows is not None
        arr = s.load_rows(r0, r1)
        if tuple(arr.shape) != (r1 - r0, *s.shape[1:]):
            raise ConversionError(f"{s.name}: rows {r0}..{r1} have shape {list(arr.shape)}")
        if not np.isfinite(arr).all():
            raise ConversionError(f"{s.name} ({s.source}): contains NaN or infinity")
        return self.encode(arr, p.gtype)

    def _encode_expert(self, p: PlannedTensor, i: int, stats: WriteStats) -> np.ndarray:
        s = p.spec
        assert s.load_expert is not None
        if p.gtype == T.MXFP4 and s.load_expert_mxfp4 is not None:
            data = transcode_mxfp4(s.load_expert_mxfp4(i))
            if data.shape != (s.shape[1], s.shape[2] // 32 * 17):
                raise ConversionError(f"{s.name}: MXFP4 expert {i} has shape {list(data.shape)}")
            with self._lock:
                stats.mxfp4_experts += 1
            return data.reshape(-1)
        if p.gtype == T.Q4_1 and s.load_expert_mlx is not None:
            m = s.load_expert_mlx(i)
            if m.bits == 4 and m.group % 32 == 0:
                data, err = transcode_q4_1(m)
                if data.shape[0] != s.shape[1] or data.shape[1] * 32 // 20 != s.shape[2]:
                    raise ConversionError(f"{s.name}: MLX expert {i} has shape {data.shape}")
                with self._lock:
                    stats.transcoded_experts += 1
                    stats.transcode_max_error = max(stats.transcode_max_error, err)
                return data.reshape(-1)
        arr = s.load_expert(i)
        if arr.shape != s.shape[1:]:
            raise ConversionError(f"{s.name}: expert {i} has shape {list(arr.shape)}, expected {list(s.shape[1:])}")
        if not np.isfinite(arr).all():
            raise ConversionError(f"{s.name}: expert {i} contains NaN or infinity")
        enc = self.encode(arr, p.gtype)
        if s.load_expert_mlx is not None and p.gtype != T.F32:
            # no exact mapping from MLX to this type: measure what re-quantizing cost
            back = self.ggml.dequantize(p.gtype, enc, arr.size).reshape(arr.shape)
            rms = float(np.sqrt(np.mean((back - arr) ** 2)) / max(float(np.sqrt(np.mean(arr ** 2))), 1e-30))
            with self._lock:
                stats.requantized_experts += 1
                stats.requant_rms_error = max(stats.requant_rms_error, rms)
        return enc
