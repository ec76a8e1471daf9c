"""Routed-expert tensors: the one definition of which GGUF tensors hold routed experts, and their table.

A routed-expert tensor is named `blk.<layer>.ffn_<kind>_exps.weight` (kind: gate_up, gate, up or down; the
names llama.cpp's loaders use) and has the ggml shape [cols, rows, n_expert], so that expert e is the byte range
[offset + e * stride, offset + (e + 1) * stride). The converter names the tensors it writes with
`expert_tensor_name`; the runtime, `inspect` and the benchmark find them with `expert_tensors`; the ggml
extension takes over exactly the tensors the runtime registers with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .gguf_index import GGUFIndex, GGUFModel, read_model

EXPERT_KINDS = ("gate_up", "gate", "up", "down")
# llama.cpp architectures whose loader accepts one fused ffn_gate_up_exps tensor (gate rows, then up rows, per
# expert) instead of ffn_gate_exps + ffn_up_exps (src/llama-model.cpp, create_tensor_gate_up_exps)
FUSED_GATE_UP_ARCHS = ("qwen35moe", "qwen3next", "deepseek2")
EXPERT_NAME = re.compile(r"^blk\.(\d+)\.ffn_(gate_up|gate|up|down)_exps\.weight$")


def expert_tensor_name(layer: int, kind: str) -> str:
    if kind not in EXPERT_KINDS:
        raise ValueError(f"unknown routed-expert kind {kind!r} (one of {', '.join(EXPERT_KINDS)})")
    return f"blk.{layer}.ffn_{kind}_exps.weight"


def parse_expert_name(name: str) -> tuple[int, str] | None:
    """(layer, kind) of a routed-expert tensor name, or None for any other tensor"""
    m = EXPERT_NAME.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


MAX_LAYER = 1 << 16


class ExpertTableError(ValueError):
    """A tensor named as a routed expert does not have a routed expert's shape."""


@dataclass(frozen=True)
class ExpertTensor:
    name: str
    layer: int
    kind: str
    offset: int      # absolute offset of expert 0 in its file
    stride: int      # bytes per expert
    n_expert: int
    gtype: int       # ggml type
    ne0: int         # values per row
    ne1: int         # rows per expert
    shard: int = 0   # the file of the model that holds it (split models)

    def expert_range(self, e: int) -> tuple[int, int]:
        return self.offset + e * self.stride, self.offset + (e + 1) * self.stride


def expert_tensors(model: GGUFModel | GGUFIndex | str | Path) -> list[ExpertTensor]:
    """The routed-expert tensors of any GGUF (ours or not; a split one from its first shard), in file order."""
    idx = model if isinstance(model, (GGUFModel, GGUFIndex)) else read_model(model)
    out = []
    for t in idx.tensors:
        parsed = parse_expert_name(t.name)
        if parsed is None:
            continue
        if len(t.shape) != 3 or t.shape[2] <= 0 or t.nbytes % t.shape[2]:
            raise ExpertTableError(f"{idx.path}: {t.name} has shape {list(t.shape)}, not [cols, rows, experts]")
        if parsed[0] >= MAX_LAYER:   # the index stores layers as u32; llama.cpp allows 512
            raise ExpertTableError(f"{idx.path}: {t.name}: layer {parsed[0]} is implausible")
        out.append(ExpertTensor(t.name, parsed[0], parsed[1], t.offset, t.nbytes // t.shape[2], t.shape[2], t.gtype,
                                t.shape[0], t.shape[1], t.shard))
    return out
