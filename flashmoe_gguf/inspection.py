"""`flashmoe inspect`: what a GGUF holds and whether it is laid out for expert streaming.

Works on any GGUF. For files with a `flashmoe.*` block it also checks that the block agrees with the tensor
table, and reports every expert slice that does not start on an alignment boundary.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from .experts import parse_expert_name
from .layout import StreamingLayout



class InspectError(Exception):
    """The file is not a readable GGUF."""


@dataclass
class TensorRow:
    name: str
    gtype: str
    shape: list[int]       # ggml order (ne0 first), as llama.cpp prints it
    nbytes: int
    offset: int            # absolute file offset of the data


@dataclass
class Inspection:
    path: Path
    arch: str
    alignment: int
    data_offset: int
    tensors: list[TensorRow]
    layout: StreamingLayout | None
    expert_bytes: int
    resident_bytes: int
    expert_count: int
    problems: list[str] = field(default_factory=list)     # makes the file not streaming-ready
    unaligned: list[str] = field(default_factory=list)    # expert slices off an alignment boundary

    @property
    def streaming_ready(self) -> bool:
        return self.layout is not None and not self.problems

    def type_counts(self) -> dict[str, tuple[int, int]]:
        c: Counter[str] = Counter()
        b: Counter[str] = Counter()
        for t in self.tensors:
            c[t.gtype] += 1
            b[t.gtype] += t.nbytes
        return {k: (c[k], b[k]) for k in sorted(c)}

    def render(self, verbose: bool = False) -> str:
        gb = lambda n: f"{n / 1e9:.3f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"  # noqa: E731
        lines = [f"file:          {self.path}",
                 f"architecture:  {self.arch}",
                 f"alignment:     {self.alignment} bytes",
                 f"tensors:       {len(self.tensors)}",
                 f"expert bytes:  {gb(self.expert_bytes)} (routed experts, streamed from disk)",
                 f"resident:      {gb(self.resident_bytes)} (everything else, kept in RAM)",
                 "types:"]
        for k, (n, nb) in self.type_counts().items():
            lines.append(f"  {k:6s} {n:5d} tensors  {gb(nb)}")
        if self.layout is None:
            lines.append("flashmoe layout: none (not written by flashmoe convert)")
        else:
            lines.append(f"flashmoe layout: version {self.layout.version}, {len(self.layout.tensors)} routed "
                         f"tensors, {self.layout.n_expert} experts each")
            kinds = Counter(t.kind for t in self.layout.tensors)
            lines.append("  kinds: " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())))
            strides = sorted({(t.kind, t.stride) for t in self.layout.tensors})
            lines.append("  bytes per expert: " + ", ".join(f"{k} {s}" for k, s in strides))
        if self.unaligned:
            lines.append(f"unaligned expert slices: {len(self.unaligned)} tensors (expert size not a multiple "
                         f"of the alignment; each expert is still contiguous)")
            lines += [f"  {u}" for u in (self.unaligned if verbose else self.unaligned[:5])]
        else:
            lines.append("every expert slice starts on an alignment boundary")
        lines += [f"problem: {p}" for p in self.problems]
        lines.append(f"streaming-ready: {'yes' if self.streaming_ready else 'no'}")
        if verbose:
            lines.append("tensors:")
            for t in self.tensors:
                lines.append(f"  {t.offset:14d} {t.gtype:6s} {t.nbytes:12d}  {t.name} {t.shape}")
        return "\n".join(lines)


def _field_value(f: Any) -> Any:
    return f.contents()


def inspect_gguf(path: str | Path) -> Inspection:
    path = Path(path)
    try:
        r = gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as exc:
        raise InspectError(f"{path}: not a readable GGUF: {exc}") from exc
    kv = {name: _field_value(f) for name, f in r.fields.items() if not name.startswith("GGUF.")}
    arch = str(kv.get("general.architecture", "?"))
    rows = [TensorRow(t.name, t.tensor_type.name, [int(x) for x in t.shape], int(t.n_bytes), int(t.data_offset))
            for t in r.tensors]
    data_offset = min((t.offset for t in rows), default=0)
    try:
        layout = StreamingLayout.from_kv(kv)
    except (ValueError, KeyError) as exc:
        layout = None
        problems = [f"flashmoe metadata unreadable: {exc}"]
    else:
        problems = []
    alignment = int(kv.get("general.alignment", 32))
    by_name = {t.name: t for t in rows}
    expert_rows = [t for t in rows if parse_expert_name(t.name)]
    expert_bytes = sum(t.nbytes for t in expert_rows)
    n_expert = int(kv.get(f"{arch}.expert_count", 0) or 0)
    unaligned: list[str] = []
    for t in expert_rows:
        n_e = t.shape[-1] if len(t.shape) == 3 else 1
        stride = t.nbytes // max(n_e, 1)
        if t.offset % alignment or stride % alignment:
            unaligned.append(f"{t.name}: {stride} bytes per expert, start {t.offset}")
    if layout is not None:
        if len(layout.tensors) != len(expert_rows):
            problems.append(f"layout lists {len(layout.tensors)} routed tensors, file has {len(expert_rows)}")
        for e in layout.tensors:
            t = by_name.get(e.name)
            if t is None:
                problems.append(f"layout names missing tensor {e.name}")
                continue
            if data_offset + e.offset != t.offset:
                problems.append(f"{e.name}: layout offset {e.offset} != tensor data offset {t.offset - data_offset}")
            if e.stride * layout.n_expert != t.nbytes:
                problems.append(f"{e.name}: layout stride {e.stride} x {layout.n_expert} != {t.nbytes} bytes")
        if layout.expert_bytes != expert_bytes:
            problems.append(f"layout expert_bytes {layout.expert_bytes} != {expert_bytes}")
    total = sum(t.nbytes for t in rows)
    return Inspection(path, arch, alignment, data_offset, rows, layout, expert_bytes, total - expert_bytes,
                      n_expert, problems, unaligned)
