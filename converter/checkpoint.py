"""Lazy, bounds-checked access to a Hugging Face safetensors checkpoint (one file or sharded with an index).

Why not `safetensors.safe_open`: with numpy it cannot return bf16 or fp8 tensors (numpy has neither type), and
the torch framework is not a runtime dependency here. The safetensors format is a u64 header length, a JSON
header and a flat data block, so we parse the header, validate every offset against the file size, and read
a tensor (or one expert's slice of a stacked tensor) with pread only when asked for.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import CheckpointError

# safetensors dtype -> (numpy storage dtype, bytes per element)
_STORAGE = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F64": np.dtype("<f8"),
    "F8_E4M3": np.dtype("u1"), "F8_E5M2": np.dtype("u1"),
    "I8": np.dtype("i1"), "U8": np.dtype("u1"), "I16": np.dtype("<i2"), "U16": np.dtype("<u2"),
    "I32": np.dtype("<i4"), "U32": np.dtype("<u4"), "I64": np.dtype("<i8"), "U64": np.dtype("<u8"),
    "BOOL": np.dtype("u1"),
}
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
_MAX_HEADER = 100 * 1024 * 1024
_MAX_DIM = 1 << 48   # per dimension, and for the product of the non-zero ones (numpy refuses far larger shapes even
                     # when a zero dimension makes them empty)


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    u = raw.astype(np.uint32)
    u <<= 16
    return u.view(np.float32)


def _fp8_e4m3_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.uint32)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp = (codes >> 3) & 0xF
    man = (codes & 0x7).astype(np.float64)
    val = np.where(exp == 0, man / 8.0 * 2.0 ** -6, (1.0 + man / 8.0) * 2.0 ** (exp.astype(np.float64) - 7))
    val = np.where((exp == 0xF) & (man == 7), np.nan, val)  # e4m3fn: only S.1111.111 is NaN, no infinities
    return (sign * val).astype(np.float32)


def _fp8_e5m2_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.uint16)
    return (codes << 8).astype(np.uint16).view(np.float16).astype(np.float32)


FP8_E4M3 = _fp8_e4m3_table()
FP8_E5M2 = _fp8_e5m2_table()


def decode_float(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Storage array of a safetensors float dtype -> float32."""
    if dtype == "F32":
        return np.asarray(raw, dtype=np.float32)
    if dtype == "BF16":
        return bf16_to_f32(np.asarray(raw))
    if dtype in ("F16", "F64"):
        return np.asarray(raw).astype(np.float32)
    if dtype == "F8_E4M3":
        return FP8_E4M3[np.asarray(raw)]
    if dtype == "F8_E5M2":
        return FP8_E5M2[np.asarray(raw)]
    raise CheckpointError(f"tensor dtype {dtype} is not a float type")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    begin: int  # absolute file offset
    end: int


def _short(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_json(raw: bytes, what: str) -> object:
    """JSON from a checkpoint file: any malformed, deeply nested or oversized document is a CheckpointError."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise CheckpointError(f"{what}: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:   # JSONDecodeError, and int() digit limits, are ValueErrors
        raise CheckpointError(f"{what}: {exc}") from None


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _entry(path: Path, name: str, info: object, data_start: int, size: int) -> TensorEntry:
    """One header entry, every field type- and bounds-checked with Python ints (no numpy wrap-around)."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: header entry is {_short(info)}, not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _STORAGE:
        raise CheckpointError(f"{where} has unsupported dtype {_short(dtype)}")
    if not isinstance(shape, list) or len(shape) > 8 or not all(_is_int(d) and 0 <= d <= _MAX_DIM for d in shape):
        raise CheckpointError(f"{where}: bad shape {_short(shape)} (a list of at most 8 integers in 0..2^48)")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(x) and x >= 0 for x in offsets):
        raise CheckpointError(f"{where}: bad data_offsets {_short(offsets)}")
    b, e = offsets
    nbytes = math.prod(shape) * _STORAGE[dtype].itemsize
    if math.prod(d for d in shape if d) * _STORAGE[dtype].itemsize > _MAX_DIM:   # numpy's limit counts these
        raise CheckpointError(f"{where}: bad shape {_short(shape)}: implausibly large")
    if e - b != nbytes:
        raise CheckpointError(f"{where}: offsets {b}..{e} do not match {dtype}{shape}")
    if data_start + e > size:
        raise CheckpointError(f"{path}: truncated: tensor {name!r} ends at byte {data_start + e}, file has {size}")
    return TensorEntry(name, dtype, tuple(shape), path, data_start + b, data_start + e)


class SafetensorsFile:
    """One .safetensors file: its header, validated, and a read-only mapping of its data."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise CheckpointError(f"cannot open {path}: {exc.strerror}") from exc
        with fh:
            size = path.stat().st_size
            head = fh.read(8)
            if len(head) != 8:
                raise CheckpointError(f"{path}: truncated safetensors file (no header)")
            (hlen,) = struct.unpack("<Q", head)
            if hlen > _MAX_HEADER or 8 + hlen > size:
                raise CheckpointError(f"{path}: corrupt or truncated safetensors header (length {hlen}, file {size})")
            header = _parse_json(fh.read(hlen), f"{path}: corrupt safetensors header")
            if not isinstance(header, dict):
                raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
            data_start = 8 + hlen
            meta = header.pop("__metadata__", None) or {}
            if not isinstance(meta, dict):
                raise CheckpointError(f"{path}: corrupt safetensors header: __metadata__ is {_short(meta)}")
            self.metadata: dict[str, str] = meta
            self.entries: dict[str, TensorEntry] = {}
            for name, info in header.items():
                self.entries[name] = _entry(path, name, info, data_start, size)
            self._size = size

    def raw(self, entry: TensorEntry, index: int | None = None,
            rows: tuple[int, int] | None = None) -> np.ndarray:
        """The tensor's storage, read with pread into a new array: all of it, its `index`-th slice along the
        first axis, and/or the rows [r0, r1) along the (then) first axis.

        Reads rather than maps, so the process holds only what it is converting right now.
        """
        dt = _STORAGE[entry.dtype]
        shape = entry.shape
        begin, end = entry.begin, entry.end
        if index is not None:
            if not shape or not 0 <= index < shape[0]:
                raise CheckpointError(f"{self.path}: {entry.name}: index {index} out of range for {list(shape)}")
            step = (end - begin) // shape[0]
            begin, end, shape = begin + index * step, begin + (index + 1) * step, shape[1:]
        if rows is not None:
            r0, r1 = rows
            if not shape or not 0 <= r0 <= r1 <= shape[0]:
                raise CheckpointError(f"{self.path}: {entry.name}: rows {r0}..{r1} out of range for {list(shape)}")
            step = (end - begin) // shape[0] if shape[0] else 0
            begin, end, shape = begin + r0 * step, begin + r1 * step, (r1 - r0, *shape[1:])
        out = np.empty(shape, dtype=dt)
        buf = memoryview(out.reshape(-1).view(np.uint8))
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise CheckpointError(f"cannot open {self.path}: {exc.strerror}") from exc
        try:
            if os.fstat(fd).st_size != self._size:
                raise CheckpointError(f"{self.path}: file changed size while converting")
            done = 0
            while done < end - begin:
                n = os.preadv(fd, [buf[done:]], begin + done)
                if n <= 0:
                    raise CheckpointError(f"{self.path}: truncated while reading {entry.name}")
                done += n
        except OSError as exc:
            raise CheckpointError(f"{self.path}: read error in {entry.name}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        return out

    def close(self) -> None:
        pass


_MAX_INDEX = 64 * 1024 * 1024


def _read_weight_map(index: Path) -> dict[str, str]:
    """model.safetensors.index.json's weight_map: tensor name -> shard file name (a plain name in the directory)."""
    try:
        with open(index, "rb") as fh:
            raw = fh.read(_MAX_INDEX + 1)
    except OSError as exc:
        raise CheckpointError(f"cannot read {index}: {exc.strerror}") from exc
    if len(raw) > _MAX_INDEX:
        raise CheckpointError(f"{index}: implausibly large safetensors index (over {_MAX_INDEX} bytes)")
    doc = _parse_json(raw, f"{index}: not a valid safetensors index")
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: not a valid safetensors index: weight_map is "
                              f"{_short(weight_map)}, not an object of tensor name -> shard file")
    for name, shard in weight_map.items():
        if (not isinstance(shard, str) or not shard or "\0" in shard or "/" in shard or "\\" in shard
                or shard in (".", "..")):
            raise CheckpointError(f"{index}: tensor {name!r} maps to shard {_short(shard)}, "
                                  f"not a file name in the model directory")
    return weight_map


class Checkpoint:
    """All safetensors shards of a model directory, addressed by tensor name."""

    def __init__(self, model_dir: Path) -> None:
        self.dir = model_dir
        index = model_dir / "model.safetensors.index.json"
        files: list[Path]
        expected: dict[str, str] = {}
        if index.exists():
            expected = _read_weight_map(index)
            names = sorted(set(expected.values()))
            missing = [n for n in names if not (model_dir / n).is_file()]
            if missing:
                raise CheckpointError(f"{model_dir}: missing shard(s) listed in the index: {', '.join(missing)}")
            files = [model_dir / n for n in names]
        else:
            files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{model_dir}: no .safetensors files")
        self.files = [SafetensorsFile(f) for f in files]
        self.entries: dict[str, tuple[SafetensorsFile, TensorEntry]] = {}
        for sf in self.files:
            for name, entry in sf.entries.items():
                if name in self.entries:
                    raise CheckpointError(f"tensor {name!r} appears in two shards")
                self.entries[name] = (sf, entry)
        for name, shard in expected.items():
            if name not in self.entries:
                raise CheckpointError(f"tensor {name!r} is listed in the index (shard {shard}) but absent")

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> Iterator[str]:
        return iter(self.entries)

    def entry(self, name: str) -> TensorEntry:
        try:
            return self.entries[name][1]
        except KeyError:
            raise CheckpointError(f"checkpoint has no tensor {name!r}") from None

    def raw(self, name: str, index: int | None = None, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Storage array of a tensor, of its `index`-th slice along the first axis, and/or of some rows."""
        self.entry(name)  # a clear error for an unknown name
        sf, entry = self.entries[name]
        return sf.raw(entry, index, rows)

    def total_bytes(self) -> int:
        return sum(e.end - e.begin for _, e in self.entries.values())

    def close(self) -> None:
        for f in self.files:
            f.close()
