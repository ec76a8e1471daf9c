"""`flashmoe repack`: any MoE GGUF (one file or a split one, ours, llama.cpp's, the hub's) rewritten in the streaming
layout without re-quantizing a single byte.

- every tensor's bytes are copied unchanged; gate and up experts are fused into one `ffn_gate_up_exps` tensor
  where llama.cpp's loader accepts it (experts.FUSED_GATE_UP_ARCHS) and both have the same type and shape (a
  byte-level concatenation: expert e's gate rows, then its up rows), so an expert is two reads instead of three;
- every tensor starts on an `align` boundary (so every expert does when its size is a multiple of it);
- the first file's metadata is copied byte for byte (keys `split.*`, `flashmoe.*` and `general.alignment`
  replaced), the `flashmoe.*` index of the new layout written;
- one output file, or shards of at most `split_max_size` bytes named as llama.cpp names them.

Memory stays bounded (one copy buffer); output goes to temporary files that are renamed only when every one is
complete and flushed, so a failed or interrupted repack leaves nothing under the output names.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .experts import FUSED_GATE_UP_ARCHS, ExpertTensor, expert_tensor_name, expert_tensors
from .gguf_index import SPLIT_KEYS, GGUFIndexError, GGUFModel, TensorInfo, read_model
from .layout import FORMAT_VERSION, IndexEntry, StreamingLayout

COPY_CHUNK = 8 << 20
DEFAULT_ALIGN = 16 << 10
_DROP_KEYS = SPLIT_KEYS + ("general.alignment",)


class RepackError(Exception):
    """The input cannot be repacked (not a GGUF model, inconsistent), or writing failed."""


@dataclass
class OutTensor:
    """A tensor of the output: its header entry, and where its bytes come from (ranges of the input files)."""
    name: str
    gtype: int
    shape: tuple[int, ...]                      # ggml order
    nbytes: int
    sources: list[tuple[int, int, int]]         # (input file, offset, length), concatenated in order
    expert: ExpertTensor | None = None          # the routed-expert tensor it is (layer, kind), if one
    offset: int = 0                             # in its output file's data section
    shard: int = 0


@dataclass
class RepackReport:
    inputs: list[Path]
    outputs: list[Path]
    tensors: int
    fused: int                                  # gate + up pairs fused into gate_up
    bytes_out: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        outs = ", ".join(str(p) for p in self.outputs)
        lines = [f"wrote {outs} ({self.tensors} tensors, {self.bytes_out / 1e9:.3f} GB) in {self.seconds:.1f} s from "
                 f"{len(self.inputs)} input file{'s' if len(self.inputs) > 1 else ''}; no tensor re-quantized"]
        if self.fused:
            lines.append(f"fused gate and up experts in {self.fused} layers (ffn_gate_up_exps)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _fused(gate: TensorInfo, up: TensorInfo, eg: ExpertTensor, eu: ExpertTensor, layer: int) -> OutTensor:
    sources = []
    for e in range(eg.n_expert):
        sources.append((gate.shard, eg.offset + e * eg.stride, eg.stride))
        sources.append((up.shard, eu.offset + e * eu.stride, eu.stride))
    ex = ExpertTensor(expert_tensor_name(layer, "gate_up"), layer, "gate_up", 0, 2 * eg.stride, eg.n_expert,
                      eg.gtype, eg.ne0, 2 * eg.ne1)
    return OutTensor(ex.name, gate.gtype, (gate.shape[0], 2 * gate.shape[1], gate.shape[2]), 2 * gate.nbytes,
                     sources, ex)


def plan_tensors(model: GGUFModel, fuse: bool) -> tuple[list[OutTensor], int]:
    """The output tensors in order (the input's, a fused gate_up in place of each fusable gate), and how many
    layers were fused."""
    experts = {e.name: e for e in expert_tensors(model)}
    by_name = {t.name: t for t in model.tensors}
    out, fused, skip = [], 0, set()
    for t in model.tensors:
        if t.name in skip:
            continue
        e = experts.get(t.name)
        if fuse and e is not None and e.kind == "gate":
            up_name = expert_tensor_name(e.layer, "up")
            up, eu = by_name.get(up_name), experts.get(up_name)
            if up is not None and eu is not None and up.gtype == t.gtype and up.shape == t.shape:
                out.append(_fused(t, up, e, eu, e.layer))
                skip.add(up_name)
                fused += 1
                continue
        out.append(OutTensor(t.name, t.gtype, t.shape, t.nbytes, [(t.shard, t.offset, t.nbytes)], e))
    return out, fused


def _kv_blob(model: GGUFModel) -> tuple[bytes, int]:
    """the first file's key-value pairs, byte for byte, without split.*, flashmoe.* and general.alignment"""
    first = model.files[0]
    keep = [(b, e) for k, b, e in first.kv_spans if k not in _DROP_KEYS and not k.startswith("flashmoe.")]
    parts = []
    with open(first.path, "rb") as f:
        for b, e in keep:
            f.seek(b)
            chunk = f.read(e - b)
            if len(chunk) != e - b:
                raise RepackError(f"{first.path} changed while it was read")
            parts.append(chunk)
    return b"".join(parts), len(keep)


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", vtype) + payload


def _u32(key: str, v: int) -> bytes:
    return _kv(key, 4, struct.pack("<I", v))


def _layout_kv(layout: StreamingLayout) -> list[bytes]:
    out = []
    for key, (value, kind) in layout.to_kv().items():
        if kind == "u32":
            out.append(_u32(key, int(value)))
        elif kind == "u64":
            out.append(_kv(key, 10, struct.pack("<Q", int(value))))
        elif kind == "str[]":
            body = b"".join(struct.pack("<Q", len(s.encode())) + s.encode() for s in value)
            out.append(_kv(key, 9, struct.pack("<IQ", 8, len(value)) + body))
        elif kind in ("u32[]", "u64[]"):
            fmt, et = ("<I", 4) if kind == "u32[]" else ("<Q", 10)
            out.append(_kv(key, 9, struct.pack("<IQ", et, len(value)) + b"".join(struct.pack(fmt, int(v)) for v in value)))
        else:
            raise ValueError(kind)
    return out


def _tensor_info(t: OutTensor) -> bytes:
    n = t.name.encode()
    return (struct.pack("<Q", len(n)) + n + struct.pack("<I", len(t.shape)) +
            b"".join(struct.pack("<Q", d) for d in t.shape) + struct.pack("<IQ", t.gtype, t.offset))


def _shards(tensors: list[OutTensor], split_max_size: int | None, align: int) -> list[list[OutTensor]]:
    if not split_max_size:
        return [tensors]
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > split_max_size:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += _align(t.nbytes, align)
    return shards


def _headers(model: GGUFModel, shards: list[list[OutTensor]], align: int, layout: StreamingLayout) -> list[bytes]:
    kv_blob, n_kv = _kv_blob(model)
    n = len(shards)
    heads = []
    for i, tensors in enumerate(shards):
        extra = [_u32("general.alignment", align)]
        if n > 1:
            extra += [_kv("split.no", 2, struct.pack("<H", i)), _kv("split.count", 2, struct.pack("<H", n)),
                      _kv("split.tensors.count", 5, struct.pack("<i", sum(len(s) for s in shards)))]
        if i == 0:
            extra += _layout_kv(layout) if n == 1 else []   # the index describes one file
            body = kv_blob + b"".join(extra)
            count = n_kv + len(extra)
        else:
            body = b"".join(extra)
            count = len(extra)
        head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), count) + body + b"".join(_tensor_info(t) for t in tensors)
        heads.append(head + b"\0" * (_align(len(head), align) - len(head)))
    return heads


def _copy(src_fds: list[int], src_paths: list[Path], dst: Any, t: OutTensor, buf: bytearray,
          progress: Callable[[int], None] | None) -> None:
    mv = memoryview(buf)
    for file, off, length in t.sources:
        done = 0
        while done < length:
            try:
                n = os.preadv(src_fds[file], [mv[: min(len(buf), length - done)]], off + done)
            except OSError as exc:       # not the output's error: said apart from the writes' OSErrors
                raise RepackError(f"cannot read {src_paths[file]}: {exc.strerror or exc} "
                                  "(nothing was left behind)") from exc
            if n <= 0:
                raise RepackError(f"{src_paths[file]} is shorter than its tensor table says ({t.name}): truncated "
                                  "while repacking? (nothing was left behind)")
            dst.write(mv[:n])
            done += n
            if progress:
                progress(n)


def repack(src: str | Path, out: str | Path, align: int = DEFAULT_ALIGN, split_max_size: int | None = None,
           progress: bool = False) -> RepackReport:
    """Rewrite the MoE GGUF at `src` (a split one: its first shard) into the streaming layout at `out`."""
    t0 = time.monotonic()
    if align <= 0 or align & (align - 1):
        raise RepackError(f"--align must be a power of two, not {align}")
    try:
        model = read_model(src)
        arch = str(model.scalars.get("general.architecture", ""))
        tensors, fused = plan_tensors(model, arch in FUSED_GATE_UP_ARCHS)
    except (GGUFIndexError, ValueError) as exc:
        raise RepackError(str(exc)) from exc
    if not any(t.expert for t in tensors):
        raise RepackError(f"{src}: no routed-expert tensors (blk.N.ffn_*_exps.weight): not an MoE GGUF")
    shards = _shards(tensors, split_max_size, align)
    for s in shards:
        off = 0
        for t in s:
            t.offset = off
            off += _align(t.nbytes, align)
    experts = [t for t in tensors if t.expert]
    n_expert = experts[0].expert.n_expert if experts[0].expert else 0
    layout = StreamingLayout(FORMAT_VERSION, n_expert, tuple(
        IndexEntry(t.name, t.expert.layer, t.expert.kind, t.offset, t.nbytes // t.shape[2])
        for t in experts if t.expert), sum(t.nbytes for t in experts),
        sum(t.nbytes for t in tensors) - sum(t.nbytes for t in experts))
    heads = _headers(model, shards, align, layout)
    out = Path(out)
    outs = [out] if len(shards) == 1 else \
        [out.with_name(f"{out.stem}-{i:05d}-of-{len(shards):05d}.gguf") for i in range(1, len(shards) + 1)]
    if any(p.resolve() in {q.resolve() for q in model.paths} for p in outs):
        raise RepackError("the output would overwrite an input file")
    total = sum(t.nbytes for t in tensors)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="repack")
    tmps = [p.with_name(f".{p.name}.partial-{os.getpid()}") for p in outs]
    fds = [os.open(p, os.O_RDONLY) for p in model.paths]
    buf = bytearray(COPY_CHUNK)
    written = 0
    try:
        for tmp, head, shard in zip(tmps, heads, shards):
            tmp.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(head)
                for t in shard:
                    _copy(fds, list(model.paths), f, t, buf, bar.update if bar else None)
                    f.write(b"\0" * (_align(t.nbytes, align) - t.nbytes))
                f.flush()
                os.fsync(f.fileno())
                written += f.tell()
        for tmp, p in zip(tmps, outs):
            os.replace(tmp, p)
    except BaseException as exc:
        for tmp in tmps:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        if isinstance(exc, OSError):
            raise RepackError(f"cannot write {out}: {exc.strerror or exc} (nothing was left behind)") from exc
        raise
    finally:
        for fd in fds:
            os.close(fd)
        if bar:
            bar.close()
    notes = []
    unaligned = [t.name for t in experts if t.expert and (t.nbytes // t.shape[2]) % align]
    if unaligned:
        notes.append(f"{len(unaligned)} expert tensors have experts whose size is not a multiple of {align} bytes: "
                     "each tensor starts aligned, its experts follow back to back")
    if len(shards) > 1:
        notes.append("split output: the flashmoe.* index (which describes one file) is not written")
    return RepackReport(list(model.paths), outs, len(tensors), fused, written, time.monotonic() - t0, notes)
