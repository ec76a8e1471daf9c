"""A fast, bounds-checked reader of a GGUF's tensor table (names, types, shapes, absolute data offsets).

gguf-py's GGUFReader builds a numpy object per metadata element, which takes seconds for a 150k-token
vocabulary; the runtime needs only the tensor table and a few scalar keys, so this skips array values by
their byte lengths. Every length and offset read from the file is checked against the file size.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

GGUF_MAGIC = b"GGUF"
# GGUF value types -> fixed size in bytes (strings and arrays are variable)
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_SCALAR_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


class GGUFIndexError(ValueError):
    """Not a GGUF, or a corrupt or truncated one."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    gtype: int
    shape: tuple[int, ...]   # ggml order: ne0 first
    offset: int              # absolute file offset of the data
    nbytes: int


@dataclass(frozen=True)
class GGUFIndex:
    path: Path
    size: int
    alignment: int
    data_offset: int
    scalars: dict[str, Any]   # scalar and string metadata values (arrays are skipped)
    tensors: tuple[TensorInfo, ...]


class _Reader:
    """Cursor over a read-only mapping of the file: header parsing without a syscall per field."""

    def __init__(self, buf: mmap.mmap, size: int, path: Path) -> None:
        self.buf, self.size, self.path, self.pos = buf, size, path, 0

    def _take(self, n: int) -> int:
        if n < 0 or self.pos + n > self.size:
            raise GGUFIndexError(f"{self.path}: truncated or corrupt GGUF header")
        p = self.pos
        self.pos += n
        return p

    def read(self, n: int) -> bytes:
        p = self._take(n)
        return self.buf[p:p + n]

    def unpack(self, fmt: str, n: int) -> Any:
        return struct.unpack_from(fmt, self.buf, self._take(n))[0]

    def u32(self) -> int:
        return int(self.unpack("<I", 4))

    def u64(self) -> int:
        return int(self.unpack("<Q", 8))

    def string(self) -> str:
        n = self.u64()
        if n > 1 << 24:
            raise GGUFIndexError(f"{self.path}: implausible string length {n}")
        return self.read(n).decode("utf-8", errors="replace")

    def skip(self, n: int) -> None:
        self._take(n)


def read_index(path: str | Path) -> GGUFIndex:
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise GGUFIndexError(f"{path}: {exc.strerror}") from exc
    with f:
        size = path.stat().st_size
        if size < 24:
            raise GGUFIndexError(f"{path}: not a GGUF file (too short)")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        r = _Reader(buf, size, path)
        if r.read(4) != GGUF_MAGIC:
            raise GGUFIndexError(f"{path}: not a GGUF file")
        version = r.u32()
        if version not in (2, 3):
            raise GGUFIndexError(f"{path}: GGUF version {version} is not supported")
        n_tensors, n_kv = r.u64(), r.u64()
        if n_tensors > 1 << 20 or n_kv > 1 << 20:
            raise GGUFIndexError(f"{path}: implausible counts ({n_tensors} tensors, {n_kv} keys)")
        scalars: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            vtype = r.u32()
            if vtype in _SCALAR_FMT:
                scalars[key] = r.unpack(_SCALAR_FMT[vtype], _FIXED[vtype])
            elif vtype == STRING:
                scalars[key] = r.string()
            elif vtype == ARRAY:
                etype, count = r.u32(), r.u64()
                if etype in _FIXED:
                    r.skip(_FIXED[etype] * count)
                elif etype == STRING:
                    for _ in range(count):
                        r.skip(r.u64())
                else:
                    raise GGUFIndexError(f"{path}: unsupported array element type {etype} in {key}")
            else:
                raise GGUFIndexError(f"{path}: unknown value type {vtype} for {key}")
        raw = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.u32()
            if not 1 <= n_dims <= 4:
                raise GGUFIndexError(f"{path}: tensor {name} has {n_dims} dimensions")
            shape = tuple(r.u64() for _ in range(n_dims))
            gtype, rel = r.u32(), r.u64()
            raw.append((name, gtype, shape, rel))
        alignment = int(scalars.get("general.alignment", 32))
        if alignment <= 0 or alignment & (alignment - 1):
            raise GGUFIndexError(f"{path}: bad general.alignment {alignment}")
        data_offset = (r.pos + alignment - 1) // alignment * alignment
        buf.close()
    tensors = []
    for name, gtype, shape, rel in raw:
        try:
            blck, tsize = GGML_QUANT_SIZES[GGMLQuantizationType(gtype)]
        except (ValueError, KeyError):
            raise GGUFIndexError(f"{path}: tensor {name} has unknown type {gtype}") from None
        n = 1
        for d in shape:
            n *= d
        if shape[0] % blck:
            raise GGUFIndexError(f"{path}: tensor {name}: rows of {shape[0]} do not fit type {gtype}")
        nbytes = n // blck * tsize
        offset = data_offset + rel
        if offset + nbytes > size:
            raise GGUFIndexError(f"{path}: tensor {name} ends at byte {offset + nbytes}, file has {size} "
                                 f"(truncated?)")
        tensors.append(TensorInfo(name, gtype, shape, offset, nbytes))
    return GGUFIndex(path, size, alignment, data_offset, scalars, tuple(tensors))
