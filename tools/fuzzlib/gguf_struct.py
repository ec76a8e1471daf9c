"""A GGUF file as an editable structure (metadata, tensor table, data) and back to bytes, for structure-aware
mutation: a mutated field is serialized as the file format encodes it, so most inputs get past the magic and the
counts into the code that interprets offsets and sizes."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


@dataclass
class KV:
    key: str
    vtype: int
    value: Any                      # scalar, str, or (etype, list) for arrays
    count: int | None = None        # an array count to write instead of len(list)


@dataclass
class Tensor:
    name: str
    dims: list[int]
    gtype: int
    offset: int


@dataclass
class GGUF:
    version: int
    kvs: list[KV]
    tensors: list[Tensor]
    data: bytes
    alignment: int = 32
    n_tensors: int | None = None    # header counts to write instead of the real ones
    n_kv: int | None = None
    pad: bool = True
    extra: bytes = b""               # bytes between the tensor table and the padding
    tail: bytes = field(default=b"", repr=False)


class _R:
    def __init__(self, b: bytes) -> None:
        self.b, self.p = b, 0

    def take(self, fmt: str) -> Any:
        v = struct.unpack_from(fmt, self.b, self.p)[0]
        self.p += struct.calcsize(fmt)
        return v

    def string(self) -> str:
        n = self.take("<Q")
        s = self.b[self.p:self.p + n].decode("utf-8", errors="surrogateescape")
        self.p += n
        return s

    def value(self, vtype: int) -> Any:
        if vtype in FIXED:
            return self.take(FIXED[vtype])
        if vtype == STRING:
            return self.string()
        etype, n = self.take("<I"), self.take("<Q")
        return etype, [self.value(etype) for _ in range(n)]


def parse(b: bytes) -> GGUF:
    """A well-formed GGUF (a seed) as a structure."""
    r = _R(b)
    assert r.b[:4] == b"GGUF"
    r.p = 4
    version, nt, nkv = r.take("<I"), r.take("<Q"), r.take("<Q")
    kvs = []
    for _ in range(nkv):
        key = r.string()
        vtype = r.take("<I")
        kvs.append(KV(key, vtype, r.value(vtype)))
    tensors = []
    for _ in range(nt):
        name = r.string()
        nd = r.take("<I")
        dims = [r.take("<Q") for _ in range(nd)]
        tensors.append(Tensor(name, dims, r.take("<I"), r.take("<Q")))
    align = next((kv.value for kv in kvs if kv.key == "general.alignment"), 32)
    start = (r.p + align - 1) // align * align
    return GGUF(version, kvs, tensors, b[start:], align)


def _s(s: str) -> bytes:
    e = s.encode("utf-8", errors="surrogateescape")
    return struct.pack("<Q", len(e)) + e


def _pack(vtype: int, v: Any, count: int | None = None) -> bytes:
    if vtype in FIXED:
        fmt = FIXED[vtype]
        try:
            return struct.pack(fmt, v)
        except (struct.error, TypeError):
            return struct.pack(fmt, 0) if fmt != "<f" and fmt != "<d" else struct.pack(fmt, 0.0)
    if vtype == STRING:
        return _s(v if isinstance(v, str) else str(v))
    if vtype == ARRAY:
        etype, items = v if isinstance(v, tuple) else (4, [])
        n = len(items) if count is None else count
        return struct.pack("<IQ", etype & 0xFFFFFFFF, n & (2**64 - 1)) + b"".join(_pack(etype, i) for i in items)
    return b""                      # an unknown type: no payload (the reader must refuse the type)


def serialize(g: GGUF) -> bytes:
    out = [b"GGUF", struct.pack("<I", g.version & 0xFFFFFFFF),
           struct.pack("<QQ", (len(g.tensors) if g.n_tensors is None else g.n_tensors) & (2**64 - 1),
                       (len(g.kvs) if g.n_kv is None else g.n_kv) & (2**64 - 1))]
    for kv in g.kvs:
        out.append(_s(kv.key) + struct.pack("<I", kv.vtype & 0xFFFFFFFF) + _pack(kv.vtype, kv.value, kv.count))
    for t in g.tensors:
        out.append(_s(t.name) + struct.pack("<I", len(t.dims)) +
                   b"".join(struct.pack("<Q", d & (2**64 - 1)) for d in t.dims) +
                   struct.pack("<IQ", t.gtype & 0xFFFFFFFF, t.offset & (2**64 - 1)))
    out.append(g.extra)
    head = b"".join(out)
    if g.pad:
        head += b"\0" * (-len(head) % max(1, g.alignment if isinstance(g.alignment, int) and g.alignment > 0
                                           and g.alignment < 1 << 20 else 32))
    return head + g.data + g.tail
