"""`flashmoe inspect`: what a GGUF holds, whether it streams, and how well it is laid out for streaming.

Works on any GGUF, single or split (from its first shard), through our own bounded reader (gguf_index.py:
every count, length and offset checked before use, so a corrupt header is a clear error, never a hang). It
says:
- the shards, types and sizes, what is streamed (routed experts) and what stays in RAM;
- whether the model streams at all (it does as soon as it has routed-expert tensors of the right shape) and
  which code computes each expert type (our kernels, or ggml's own MUL_MAT_ID);
- whether the layout is the best for streaming (each expert on an alignment boundary, gate and up fused where
  llama.cpp's loader accepts it, one file) and what would improve it;
- the state of the `flashmoe.*` index: none, consistent, or stale (a file rewritten by a tool that copied our
  keys without updating them). The runtime never needs the index: a stale one is reported, not an error.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType

from .experts import FUSED_GATE_UP_ARCHS, ExpertTableError, ExpertTensor, expert_tensors
from .gguf_index import GGUFIndexError, GGUFModel, read_model
from .layout import StreamingLayout


class InspectError(Exception):
    """The file is not a readable GGUF."""


@dataclass
class TensorRow:
    name: str
    gtype: str
    shape: list[int]       # ggml order (ne0 first), as llama.cpp prints it
    nbytes: int
    offset: int            # offset of the data in its file
    shard: int


@dataclass
class Inspection:
    paths: list[Path]
    arch: str
    alignment: int
    tensors: list[TensorRow]
    experts: list[ExpertTensor]
    layout: StreamingLayout | None
    expert_bytes: int
    resident_bytes: int
    expert_count: int
    expert_kernels: dict[str, str]                         # expert type -> who computes it
    index_problems: list[str] = field(default_factory=list)  # the flashmoe.* index disagrees with the file
    layout_notes: list[str] = field(default_factory=list)    # what keeps the layout from the best for streaming
    unaligned: list[str] = field(default_factory=list)       # expert slices off an alignment boundary

    @property
    def path(self) -> Path:
        return self.paths[0]

    @property
    def streams(self) -> bool:
        return bool(self.experts)

    @property
    def optimal(self) -> bool:
        return self.streams and not self.layout_notes

    @property
    def index_state(self) -> str:
        return "none" if self.layout is None and not self.index_problems else \
            "stale" if self.index_problems else "consistent"

    def type_counts(self) -> dict[str, tuple[int, int]]:
        c: Counter[str] = Counter()
        b: Counter[str] = Counter()
        for t in self.tensors:
            c[t.gtype] += 1
            b[t.gtype] += t.nbytes
        return {k: (c[k], b[k]) for k in sorted(c)}

    def render(self, verbose: bool = False) -> str:
        gb = lambda n: f"{n / 1e9:.3f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"  # noqa: E731
        lines = [f"file:          {self.path}"]
        if len(self.paths) > 1:
            lines.append(f"split into {len(self.paths)} files: " + ", ".join(p.name for p in self.paths))
        lines += [f"architecture:  {self.arch}",
                  f"alignment:     {self.alignment} bytes",
                  f"tensors:       {len(self.tensors)}",
                  f"expert bytes:  {gb(self.expert_bytes)} (routed experts, streamed from disk)",
                  f"resident:      {gb(self.resident_bytes)} (everything else, kept in RAM)",
                  "types:"]
        for k, (n, nb) in self.type_counts().items():
            lines.append(f"  {k:7s} {n:5d} tensors  {gb(nb)}")
        if self.streams:
            lines.append(f"routed experts: {len(self.experts)} tensors, {self.expert_count} experts each")
            for t, who in sorted(self.expert_kernels.items()):
                lines.append(f"  {t:7s} computed by {who}")
        if self.unaligned:
            lines.append(f"unaligned expert slices: {len(self.unaligned)} tensors (expert size or start not a "
                         f"multiple of the alignment; each expert is still contiguous)")
            lines += [f"  {u}" for u in (self.unaligned if verbose else self.unaligned[:5])]
        elif self.streams:
            lines.append("every expert slice starts on an alignment boundary")
        if self.layout is not None:
            lines.append(f"flashmoe index: version {self.layout.version}, {len(self.layout.tensors)} routed "
                         f"tensors, {self.layout.n_expert} experts each")
        lines.append(f"flashmoe index: {self.index_state}" + (
            " (the file was rewritten without updating the flashmoe.* keys; the runtime does not use them)"
            if self.index_state == "stale" else ""))
        lines += [f"  stale: {p}" for p in self.index_problems]
        lines.append("streams: " + ("yes" if self.streams else "no (no routed-expert tensors: not an MoE GGUF)"))
        if self.streams:
            lines.append("layout: " + ("optimal for streaming" if self.optimal else "streams, but could be better:"))
            lines += [f"  {n}" for n in self.layout_notes]
        if verbose:
            lines.append("tensors:")
            for t in self.tensors:
                lines.append(f"  {t.shard:3d} {t.offset:14d} {t.gtype:7s} {t.nbytes:12d}  {t.name} {t.shape}")
        return "\n".join(lines)


def _type_name(gtype: int) -> str:
    try:
        return GGMLQuantizationType(gtype).name
    except ValueError:
        return str(gtype)


_ISA_LABEL = {1: "scalar", 2: "AVX2", 3: "AVX-512"}


def _expert_kernels(experts: list[ExpertTensor]) -> dict[str, str]:
    """expert type -> our kernel (on the best instruction set this CPU has one for) or ggml's code; the extension
    knows which types and row lengths it has kernels for"""
    try:
        from . import extension
        lib = extension.constants()
    except Exception:  # noqa: BLE001 - inspect works without the extension built
        return {_type_name(e.gtype): "(the ggml extension is not built here)" for e in experts}
    out: dict[str, str] = {}
    for e in experts:
        isa = int(lib.fm_has_kernel(e.gtype, e.ne0))
        said = out.get(_type_name(e.gtype))
        text = (f"our kernel ({_ISA_LABEL.get(isa, isa)} on this CPU)" if isa else
                "ggml's own MUL_MAT_ID (no kernel of ours for this type and row length)")
        out[_type_name(e.gtype)] = text if said in (None, text) else "ours or ggml's, by row length"
    return out


def _index_problems(model: GGUFModel, layout: StreamingLayout, experts: list[ExpertTensor]) -> list[str]:
    out = []
    if model.is_split:
        return ["the index describes one file; this model is split (its offsets are not the shards')"]
    data_offset = model.files[0].data_offset
    by_name = {e.name: e for e in experts}
    if len(layout.tensors) != len(experts):
        out.append(f"lists {len(layout.tensors)} routed tensors, the file has {len(experts)}")
    for e in layout.tensors:
        t = by_name.get(e.name)
        if t is None:
            out.append(f"names {e.name}, which the file does not have")
            continue
        if data_offset + e.offset != t.offset:
            out.append(f"{e.name}: offset {e.offset}, the tensor is at data offset {t.offset - data_offset}")
        if e.stride * layout.n_expert != t.stride * t.n_expert:
            out.append(f"{e.name}: stride {e.stride} x {layout.n_expert} experts, the tensor has "
                       f"{t.stride * t.n_expert} bytes")
    if layout.expert_bytes != sum(t.stride * t.n_expert for t in experts):
        out.append(f"expert_bytes {layout.expert_bytes}, the file has {sum(t.stride * t.n_expert for t in experts)}")
    return out


def _layout_notes(model: GGUFModel, arch: str, experts: list[ExpertTensor], unaligned: list[str]) -> list[str]:
    notes = []
    if unaligned:
        notes.append(f"{len(unaligned)} expert tensors have experts off an alignment boundary (a read of one expert "
                     "then spans an extra block; O_DIRECT reads a little more)")
    if arch in FUSED_GATE_UP_ARCHS and any(e.kind == "gate" for e in experts):
        notes.append("gate and up are separate tensors: fused (ffn_gate_up_exps, which this architecture's loader "
                     "accepts) an expert is two reads instead of three")
    if model.is_split:
        notes.append(f"split into {len(model.files)} files: every file is one more descriptor to read from (fine; "
                     "one file is simpler to move)")
    return notes


def inspect_gguf(path: str | Path) -> Inspection:
    try:
        model = read_model(path)
        experts = expert_tensors(model)
    except (GGUFIndexError, ExpertTableError) as exc:
        raise InspectError(f"not a readable GGUF model: {exc}") from exc
    kv: dict[str, Any] = model.scalars
    arch = str(kv.get("general.architecture", "?"))
    first = model.files[0]
    rows = [TensorRow(t.name, _type_name(t.gtype), list(t.shape), t.nbytes, t.offset, t.shard) for t in model.tensors]
    unaligned = []
    for e in experts:
        align = model.files[e.shard].alignment
        if e.offset % align or e.stride % align:
            unaligned.append(f"{e.name}: {e.stride} bytes per expert, start {e.offset}")
    layout, index_problems = None, []
    try:
        layout = StreamingLayout.from_kv(kv)
    except (ValueError, KeyError, TypeError) as exc:
        index_problems = [f"unreadable: {exc}"]
    if layout is not None:
        index_problems = _index_problems(model, layout, experts)
    expert_bytes = sum(e.stride * e.n_expert for e in experts)
    n_expert = experts[0].n_expert if experts else 0
    return Inspection(list(model.paths), arch, first.alignment, rows, experts, layout, expert_bytes,
                      sum(t.nbytes for t in rows) - expert_bytes, n_expert, _expert_kernels(experts),
                      index_problems, _layout_notes(model, arch, experts, unaligned), unaligned)
