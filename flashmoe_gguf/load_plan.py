"""What the loader reads: one GGUF byte stream, served to llama.cpp through a FILE* that never reads expert bytes.

llama.cpp's `llama_model_load_from_file_ptr` parses one GGUF from a FILE* (and ignores `split.count`: it would
load the first shard alone). So a model is presented as one stream of `segments`, each a byte range of the
stream taken from somewhere:
- a single file: its header in memory, then the file itself, with the routed-expert ranges skipped (never read;
  llama.cpp drops their bytes);
- a split model: a merged header in memory (the first shard's keys without `split.*`, the tensor infos of every
  shard with offsets in one data section) followed by every tensor's bytes from its shard, expert ranges
  skipped, zero padding between tensors.
ggml_ext/fm_api.c (`fm_open_segments`) implements the FILE*.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from .gguf_index import SPLIT_KEYS, GGUFModel, TensorInfo

from . import extension

_C = extension.constants()
# segment kinds (ggml_ext/fm_types.h, enum fm_segment_kind)
SEG_BLOB, SEG_FILE, SEG_ZERO, SEG_SKIP = _C.FM_SEG_BLOB, _C.FM_SEG_FILE, _C.FM_SEG_ZERO, _C.FM_SEG_SKIP


@dataclass(frozen=True)
class LoadPlan:
    blob: bytes                                        # the header (a split model's merged one)
    # (stream start, length, kind, file, offset, read order), in stream order
    segments: tuple[tuple[int, int, int, int, int, int], ...]
    size: int                                          # bytes in the stream


_LAYER = re.compile(r"blk\.(\d+)\.")
MAX_RANK = 1 << 20      # the largest rank (C takes them as uint64)


def read_order(name: str) -> int:
    """When llama.cpp is expected to read a tensor, as a rank: it creates (and then reads, in creation order) the
    model's own tensors (embeddings, output norm and head) before layer 0's, then the layers in order; a file may
    hold them in another order (the output head last). Only a hint for reading ahead (fm_api.c): a wrong one costs
    time and chunks read twice, never wrong bytes."""
    m = _LAYER.match(name)
    if not m:
        return 0
    # the name comes from the file: a layer number of any length (llama.cpp refuses such a model) stays a small rank
    layer = int(m.group(1)) if len(m.group(1)) <= 7 else MAX_RANK
    return min(layer + 1, MAX_RANK)


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _file_segments(model: GGUFModel, skip: set[str]) -> LoadPlan:
    """The file as it is, its header served from memory (llama.cpp parses it in many tiny reads; the FILE* is
    unbuffered, so that tensor reads reach fm_api.c whole), the expert ranges skipped."""
    f = model.files[0]
    with open(f.path, "rb") as fh:
        head = fh.read(f.data_offset)
    if len(head) != f.data_offset:
        from .gguf_index import GGUFIndexError
        raise GGUFIndexError(f"{f.path}: the file is shorter than its header (truncated or rewritten on disk?)")
    segs: list[tuple[int, int, int, int, int, int]] = [(0, len(head), SEG_BLOB, 0, 0, 0)]
    pos = len(head)
    order = 0
    # one segment per tensor: the reader never reads past the tensor llama.cpp asked for (fm_api.c's chunks
    # stay within a segment), the padding between tensors apart
    for t in sorted(f.tensors, key=lambda t: t.offset):
        if t.offset > pos:      # padding: read with the tensor before it
            segs.append((pos, t.offset - pos, SEG_FILE, 0, pos, order))
        order = read_order(t.name)
        if t.nbytes:
            segs.append((t.offset, t.nbytes, SEG_SKIP if t.name in skip else SEG_FILE, 0, t.offset, order))
        pos = max(pos, t.offset + t.nbytes)
    if f.size > pos:
        segs.append((pos, f.size - pos, SEG_FILE, 0, pos, order))
    return LoadPlan(head, tuple(segs), f.size)


def _gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def merged_header(model: GGUFModel, offsets: list[int]) -> bytes:
    """A GGUF header for all the model's tensors, with data offsets `offsets` (relative to the data section)."""
    first = model.files[0]
    kv = [(k, b, e) for k, b, e in first.kv_spans if k not in SPLIT_KEYS]
    with open(first.path, "rb") as f:
        raw = b""
        for _, b, e in kv:
            f.seek(b)
            chunk = f.read(e - b)
            if len(chunk) != e - b:
                from .gguf_index import GGUFIndexError
                raise GGUFIndexError(f"{first.path}: changed while it was read")
            raw += chunk
    out = [b"GGUF", struct.pack("<IQQ", first.version, len(model.tensors), len(kv)), raw]
    for t, off in zip(model.tensors, offsets):
        out.append(_gguf_string(t.name) + struct.pack("<I", len(t.shape)) +
                   b"".join(struct.pack("<Q", d) for d in t.shape) + struct.pack("<IQ", t.gtype, off))
    head = b"".join(out)
    return head + b"\0" * (_align(len(head), first.alignment) - len(head))


def _split_segments(model: GGUFModel, skip: set[str]) -> LoadPlan:
    align = model.files[0].alignment
    offsets, pos = [], 0
    for t in model.tensors:
        offsets.append(pos)
        pos = _align(pos + t.nbytes, align)
    blob = merged_header(model, offsets)
    base = len(blob)
    segs: list[tuple[int, int, int, int, int, int]] = [(0, base, SEG_BLOB, 0, 0, 0)]
    end = base
    t: TensorInfo
    for t, off in zip(model.tensors, offsets):
        start = base + off
        if start > end:
            segs.append((end, start - end, SEG_ZERO, 0, 0, 0))
        segs.append((start, t.nbytes, SEG_SKIP if t.name in skip else SEG_FILE, t.shard, t.offset,
                     read_order(t.name)))
        end = start + t.nbytes
    return LoadPlan(blob, tuple(segs), end)


def load_plan(model: GGUFModel, skip: set[str]) -> LoadPlan:
    """The stream llama.cpp reads for `model`, the tensors named in `skip` (routed experts) never read."""
    return _split_segments(model, skip) if model.is_split else _file_segments(model, skip)
