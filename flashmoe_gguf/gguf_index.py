"""A fast, bounds-checked reader of GGUF tensor tables (names, types, shapes, data offsets), for single files and
for models split into shards by llama.cpp's convention.

gguf-py's GGUFReader builds a numpy object per metadata element, which takes seconds for a 150k-token
vocabulary; the runtime needs only the tensor table and a few scalar keys, so this skips array values by
their byte lengths. Every length, count and offset read from the file is checked against the file size and
against fixed limits before it is used, and the header is read with ordinary reads (not a mapping), so a file
that is truncated or rewritten while it is parsed gives GGUFIndexError, never a crash.

Split models (`<prefix>-00001-of-00003.gguf` ...; llama.cpp's llama_split_prefix / llama_split_path, keys
`split.no`, `split.count`, `split.tensors.count`): `read_model` reads every shard from the first one's name,
checks that they belong together, and gives one tensor table whose entries say which shard holds them.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

GGUF_MAGIC = b"GGUF"
# GGUF value types -> fixed size in bytes (strings and arrays are variable)
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_SCALAR_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
MAX_COUNT = 1 << 20          # tensors or keys in one file
MAX_STRING = 1 << 24         # bytes of one string
MAX_HEADER = 1 << 31         # bytes of a header (a 256k vocabulary takes a few MB)
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
_SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


class GGUFIndexError(ValueError):
    """Not a GGUF, or a corrupt or truncated one, or a split model whose shards do not belong together."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    gtype: int
    shape: tuple[int, ...]   # ggml order: ne0 first
    offset: int              # absolute file offset of the data (in its shard)
    nbytes: int
    shard: int = 0           # which file of the model holds it


@dataclass(frozen=True)
class FileIdentity:
    """which file was read, as fstat saw it when its header was read: the C store checks the file it opens is this
    one (a file replaced or rewritten in between is an error, not a mix of two files)"""
    dev: int
    ino: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class GGUFIndex:
    path: Path
    size: int
    version: int
    alignment: int
    data_offset: int
    scalars: dict[str, Any]  # scalar and string metadata values, and the arrays of `flashmoe.*` keys (others skipped)
    tensors: tuple[TensorInfo, ...]
    kv_spans: tuple[tuple[str, int, int], ...]  # each key's bytes in the header: (key, start, end)
    header_end: int          # end of the tensor infos (the data section starts at the next alignment)
    identity: FileIdentity | None = None


_U64 = struct.Struct("<Q")


class _Reader:
    """Cursor over the file's header, read in chunks on demand."""

    CHUNK = 1 << 20

    def __init__(self, f: BinaryIO, size: int, path: Path) -> None:
        self.f, self.size, self.path = f, size, path
        self.buf = b""
        self.pos = 0

    def _take(self, n: int) -> int:
        if n < 0 or self.pos + n > self.size or self.pos + n > MAX_HEADER:
            raise GGUFIndexError(f"{self.path}: truncated or corrupt GGUF header")
        while self.pos + n > len(self.buf):
            want = max(self.CHUNK, self.pos + n - len(self.buf))
            try:
                more = self.f.read(want)
            except OSError as exc:
                raise GGUFIndexError(f"{self.path}: read error: {exc.strerror}") from exc
            if not more:
                raise GGUFIndexError(f"{self.path}: the file ended inside its header (truncated while reading?)")
            self.buf += more
        p = self.pos
        self.pos += n
        return p

    def read(self, n: int) -> bytes:
        p = self._take(n)
        return self.buf[p:p + n]

    def unpack(self, fmt: str, n: int) -> Any:
        p = self._take(n)            # first: it may replace self.buf with a longer one
        return struct.unpack_from(fmt, self.buf, p)[0]

    def u32(self) -> int:
        return int(self.unpack("<I", 4))

    def u64(self) -> int:
        return int(self.unpack("<Q", 8))

    def string(self) -> str:
        n = self.u64()
        if n > MAX_STRING:
            raise GGUFIndexError(f"{self.path}: implausible string length {n}")
        return self.read(n).decode("utf-8", errors="replace")

    def skip(self, n: int) -> None:
        self._take(n)

    def skip_strings(self, count: int, key: str) -> None:
        """count strings (u64 length, bytes) skipped: a vocabulary array is ~150k of them, passed in C
        (ggml_ext/fm_strings.c: 0.24 s of every load in a Python loop) over what is read so far, then more is read"""
        from .extension import unbound
        ext = unbound()
        end = ext.ffi.new("uint64_t *")
        while count > 0:
            view = memoryview(self.buf)[self.pos:]
            n = ext.lib.fm_skip_strings(ext.ffi.from_buffer("uint8_t[]", view), len(view), count, MAX_STRING, end)
            self.pos += int(end[0])
            if n < 0:
                (bad,) = _U64.unpack_from(self.buf, self.pos)
                raise GGUFIndexError(f"{self.path}: implausible string length {bad} in {key}")
            count -= n
            if count > 0:          # the next string is not read yet: its length, then its bytes
                at = self.pos
                n_next = self.u64()
                if n_next > MAX_STRING:
                    raise GGUFIndexError(f"{self.path}: implausible string length {n_next} in {key}")
                self._take(n_next)
                self.pos = at


ARRAY_PREFIXES = ("flashmoe.",)   # keys whose arrays are read (the flashmoe.* index is small), not skipped


def _read_array(r: _Reader, path: Path, key: str, keep: bool) -> list[Any] | None:
    etype, count = r.u32(), r.u64()
    out: list[Any] | None = [] if keep else None
    if etype in _FIXED:
        if count > MAX_HEADER // _FIXED[etype]:
            raise GGUFIndexError(f"{path}: implausible array length {count} in {key}")
        if out is None:
            r.skip(_FIXED[etype] * count)
        else:
            out = [r.unpack(_SCALAR_FMT[etype], _FIXED[etype]) for _ in range(count)]
    elif etype == STRING:
        if count > MAX_HEADER // 8:
            raise GGUFIndexError(f"{path}: implausible array length {count} in {key}")
        if out is None:
            r.skip_strings(count, key)
            return None
        for _ in range(count):
            n = r.u64()
            if n > MAX_STRING:
                raise GGUFIndexError(f"{path}: implausible string length {n} in {key}")
            out.append(r.read(n).decode("utf-8", errors="replace"))
    else:
        raise GGUFIndexError(f"{path}: unsupported array element type {etype} in {key}")
    return out


def _read_kv(r: _Reader, path: Path, scalars: dict[str, Any]) -> str:
    key = r.string()
    vtype = r.u32()
    if key in scalars:
        raise GGUFIndexError(f"{path}: key {key} appears twice")
    if vtype in _SCALAR_FMT:
        scalars[key] = r.unpack(_SCALAR_FMT[vtype], _FIXED[vtype])
    elif vtype == STRING:
        scalars[key] = r.string()
    elif vtype == ARRAY:
        arr = _read_array(r, path, key, key.startswith(ARRAY_PREFIXES))
        if arr is not None:
            scalars[key] = arr
    else:
        raise GGUFIndexError(f"{path}: unknown value type {vtype} for {key}")
    return key


def _int_key(scalars: dict[str, Any], key: str, default: int, path: Path) -> int:
    v = scalars.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise GGUFIndexError(f"{path}: {key} is {v!r}, not an integer")
    return v


def _tensor(path: Path, name: str, gtype: int, shape: tuple[int, ...], offset: int, size: int,
            shard: int) -> TensorInfo:
    try:
        blck, tsize = GGML_QUANT_SIZES[GGMLQuantizationType(gtype)]
    except (ValueError, KeyError):
        raise GGUFIndexError(f"{path}: tensor {name} has unknown type {gtype}") from None
    n = 1
    for d in shape:
        if d <= 0:
            raise GGUFIndexError(f"{path}: tensor {name} has shape {list(shape)}")
        n *= d
    if shape[0] % blck:
        raise GGUFIndexError(f"{path}: tensor {name}: rows of {shape[0]} do not fit type {gtype}")
    nbytes = n // blck * tsize
    if offset + nbytes > size:
        raise GGUFIndexError(f"{path}: tensor {name} ends at byte {offset + nbytes}, file has {size} "
                             f"(truncated?)")
    return TensorInfo(name, gtype, shape, offset, nbytes, shard)


def read_index(path: str | Path, shard: int = 0) -> GGUFIndex:
    """The tensor table and scalar metadata of one GGUF file (one shard of a split model: its own tensors)."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise GGUFIndexError(f"{path}: {exc.strerror}") from exc
    with f:
        st = os.fstat(f.fileno())
        size = st.st_size
        identity = FileIdentity(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if size < 24:
            raise GGUFIndexError(f"{path}: not a GGUF file (too short)")
        r = _Reader(f, size, path)
        if r.read(4) != GGUF_MAGIC:
            raise GGUFIndexError(f"{path}: not a GGUF file")
        version = r.u32()
        if version not in (2, 3):
            raise GGUFIndexError(f"{path}: GGUF version {version} is not supported")
        n_tensors, n_kv = r.u64(), r.u64()
        if n_tensors > MAX_COUNT or n_kv > MAX_COUNT:
            raise GGUFIndexError(f"{path}: implausible counts ({n_tensors} tensors, {n_kv} keys)")
        scalars: dict[str, Any] = {}
        spans = []
        for _ in range(n_kv):
            start = r.pos
            key = _read_kv(r, path, scalars)
            spans.append((key, start, r.pos))
        raw = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.u32()
            if not 1 <= n_dims <= 4:
                raise GGUFIndexError(f"{path}: tensor {name} has {n_dims} dimensions")
            shape = tuple(r.u64() for _ in range(n_dims))
            gtype, rel = r.u32(), r.u64()
            raw.append((name, gtype, shape, rel))
        header_end = r.pos
    alignment = _int_key(scalars, "general.alignment", 32, path)
    if alignment <= 0 or alignment & (alignment - 1):
        raise GGUFIndexError(f"{path}: bad general.alignment {alignment}")
    data_offset = (header_end + alignment - 1) // alignment * alignment
    names = set()
    tensors = []
    for name, gtype, shape, rel in raw:
        if name in names:
            raise GGUFIndexError(f"{path}: tensor {name} appears twice")
        names.add(name)
        if rel % alignment:
            raise GGUFIndexError(f"{path}: tensor {name} at data offset {rel}, not a multiple of {alignment}")
        tensors.append(_tensor(path, name, gtype, shape, data_offset + rel, size, shard))
    return GGUFIndex(path, size, version, alignment, data_offset, scalars, tuple(tensors), tuple(spans), header_end,
                     identity)


# -- split models ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GGUFModel:
    """A model: one GGUF file, or the shards of a split one (files[0] holds the metadata)."""
    files: tuple[GGUFIndex, ...]
    tensors: tuple[TensorInfo, ...]     # all of them, each with its shard

    @property
    def path(self) -> Path:
        return self.files[0].path

    @property
    def scalars(self) -> dict[str, Any]:
        return self.files[0].scalars

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(f.path for f in self.files)

    @property
    def is_split(self) -> bool:
        return len(self.files) > 1

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def split_paths(path: str | Path, count: int) -> list[Path]:
    """The shard names of a model split into `count` files, from the first shard's name (llama.cpp's
    llama_split_prefix + llama_split_path: `<prefix>-%05d-of-%05d.gguf`)."""
    p = Path(path)
    m = _SPLIT_NAME.match(p.name)
    if not m or int(m.group("no")) != 1 or int(m.group("count")) != count:
        raise GGUFIndexError(f"{p}: the file says it is the first of {count} shards, but its name is not "
                             f"<name>-00001-of-{count:05d}.gguf (llama.cpp finds the other shards by that name)")
    return [p.with_name(f"{m.group('prefix')}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def read_model(path: str | Path) -> GGUFModel:
    """The whole model whose (first) file is `path`: a single GGUF, or every shard of a split one."""
    first = read_index(path)
    count = _int_key(first.scalars, "split.count", 0, first.path)
    if count <= 1:
        return GGUFModel((first,), first.tensors)
    if _int_key(first.scalars, "split.no", 0, first.path) != 0:
        raise GGUFIndexError(f"{first.path}: shard {first.scalars.get('split.no')} of a split model: load the "
                             "model from its first shard (…-00001-of-…)")
    if count > 1024:
        raise GGUFIndexError(f"{first.path}: implausible split.count {count}")
    files = [first]
    for i, p in enumerate(split_paths(first.path, count)[1:], start=1):
        if not p.exists():
            raise GGUFIndexError(f"{first.path}: the model is split into {count} files, {p.name} is missing")
        f = read_index(p, shard=i)
        if _int_key(f.scalars, "split.no", -1, p) != i or _int_key(f.scalars, "split.count", -1, p) != count:
            raise GGUFIndexError(f"{p}: says it is shard {f.scalars.get('split.no')} of {f.scalars.get('split.count')}, "
                                 f"expected shard {i} of {count}: not the same model's shards")
        files.append(f)
    tensors = tuple(t for f in files for t in f.tensors)
    want = _int_key(first.scalars, "split.tensors.count", len(tensors), first.path)
    if want != len(tensors):
        raise GGUFIndexError(f"{first.path}: the shards hold {len(tensors)} tensors, split.tensors.count says {want}")
    if len({t.name for t in tensors}) != len(tensors):
        raise GGUFIndexError(f"{first.path}: a tensor appears in two shards")
    return GGUFModel(tuple(files), tensors)
