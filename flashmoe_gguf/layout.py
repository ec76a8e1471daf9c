"""The `flashmoe.*` metadata block: where each routed-expert tensor starts and how many bytes one expert has.

Written by the converter, read by `inspect` and by the streaming runtime. Other GGUF readers ignore it.
Offsets are relative to the start of the GGUF data section (as GGUF tensor offsets are), so the block does not
depend on the header's own size.

Keys (format version 1):
  flashmoe.format_version      u32
  flashmoe.expert_count        u32    experts per routed tensor
  flashmoe.expert.tensors      [str]  routed-expert tensor names, in file order
  flashmoe.expert.layers       [u32]  layer of each
  flashmoe.expert.kinds        [str]  gate_up | gate | up | down
  flashmoe.expert.offsets      [u64]  data-section offset of each tensor
  flashmoe.expert.stride       [u64]  bytes per expert in each tensor
  flashmoe.expert_bytes        u64    all routed-expert bytes
  flashmoe.resident_bytes      u64    everything else (what must stay in RAM)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FORMAT_VERSION = 1
PREFIX = "flashmoe."


@dataclass(frozen=True)
class IndexEntry:
    """One routed-expert tensor in the flashmoe.* block (the full table, with shapes and absolute offsets, is
    flashmoe_gguf.experts.ExpertTensor, read from the tensor table)."""
    name: str
    layer: int
    kind: str
    offset: int   # relative to the data section
    stride: int   # bytes per expert


@dataclass(frozen=True)
class StreamingLayout:
    version: int
    n_expert: int
    tensors: tuple[IndexEntry, ...]
    expert_bytes: int
    resident_bytes: int

    def to_kv(self) -> dict[str, tuple[Any, str]]:
        """key -> (value, gguf value kind) for the writer."""
        return {
            "flashmoe.format_version": (self.version, "u32"),
            "flashmoe.expert_count": (self.n_expert, "u32"),
            "flashmoe.expert.tensors": ([t.name for t in self.tensors], "str[]"),
            "flashmoe.expert.layers": ([t.layer for t in self.tensors], "u32[]"),
            "flashmoe.expert.kinds": ([t.kind for t in self.tensors], "str[]"),
            "flashmoe.expert.offsets": ([t.offset for t in self.tensors], "u64[]"),
            "flashmoe.expert.stride": ([t.stride for t in self.tensors], "u64[]"),
            "flashmoe.expert_bytes": (self.expert_bytes, "u64"),
            "flashmoe.resident_bytes": (self.resident_bytes, "u64"),
        }

    @classmethod
    def from_kv(cls, kv: dict[str, Any]) -> "StreamingLayout | None":
        """From a {key: python value} dict (e.g. read back with gguf-py); None if the file has no block. A value
        of the wrong type (a float, a string, a scalar where an array belongs) is a ValueError naming the key."""
        if "flashmoe.format_version" not in kv:
            return None
        version = _int(kv, "flashmoe.format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"flashmoe layout version {version} is not supported (expected {FORMAT_VERSION})")
        cols = [_list(kv, f"flashmoe.expert.{k}", t) for k, t in (("tensors", str), ("layers", int), ("kinds", str),
                                                                   ("offsets", int), ("stride", int))]
        if len({len(c) for c in cols}) != 1:
            raise ValueError("flashmoe.expert.* arrays have different lengths")
        tensors = tuple(IndexEntry(n, layer, k, o, s) for n, layer, k, o, s in zip(*cols))
        return cls(version, _int(kv, "flashmoe.expert_count"), tensors, _int(kv, "flashmoe.expert_bytes"),
                   _int(kv, "flashmoe.resident_bytes"))


def _int(kv: dict[str, Any], key: str) -> int:
    v = kv.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{key} is {v!r:.60}, not an integer")
    return v


def _list(kv: dict[str, Any], key: str, kind: type) -> list[Any]:
    v = kv.get(key)
    if not isinstance(v, list) or not all(isinstance(x, kind) and not isinstance(x, bool) for x in v):
        raise ValueError(f"{key} is {v!r:.60}, not a list of {kind.__name__}")
    return v
