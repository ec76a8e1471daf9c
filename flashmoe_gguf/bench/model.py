"""What the benchmark needs to know about a GGUF: expert bytes, resident bytes, K, KV-cache size, slice depth.

Everything comes from the tensor tables and scalar metadata (`gguf_index.read_model`: every shard of a split
model; fast even for a 150k vocab).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..gguf_index import read_model
from ..experts import expert_tensors

FULL_LAYERS_KEY = "flashmoe.synth.full_layers"


@dataclass(frozen=True)
class ModelInfo:
    path: str                        # the model (its first shard if split)
    file_bytes: int                  # all its files
    paths: tuple[str, ...]           # every file of the model
    arch: str
    block_count: int                 # layers in this file
    layers: int                      # layers with routed experts
    n_expert: int
    n_expert_used: int               # K in the file's metadata
    expert_bytes: int                # all routed-expert bytes
    resident_bytes: int              # every other tensor (what stays in RAM)
    resident_fixed_bytes: int        # ... of which outside the layers (embedding, output head, final norm)
    bytes_per_expert: int            # one expert of one layer, all its projections (gate+up+down or gate_up+down)
    expert_tensors_per_layer: int    # 3 (gate, up, down) or 2 (gate_up, down)
    expert_types: list[str]
    kv_bytes_per_ctx: float          # KV cache bytes per context position (f16 K and V, attention layers)
    recurrent_state_bytes: int       # per-sequence recurrent state (Gated DeltaNet / SSM layers), f32
    full_layers: int | None          # layer count of the model this file is a slice of, if known
    full_layers_source: str          # where full_layers came from
    synthetic: dict[str, Any] | None # flashmoe synth's record, if any

    def expert_bytes_per_token(self, k: int | None = None) -> int:
        """The routed-expert bytes one token needs: layers x K x bytes per expert."""
        return self.layers * (k or self.n_expert_used) * self.bytes_per_expert

    def kv_cache_bytes(self, n_ctx: int) -> int:
        """llama.cpp's KV cache for n_ctx positions (n_ctx rounded up to 256 as llama.cpp pads it) plus the
        recurrent state of one sequence."""
        padded = -(-n_ctx // 256) * 256
        return int(self.kv_bytes_per_ctx * padded) + self.recurrent_state_bytes

    @property
    def is_slice(self) -> bool:
        return self.full_layers is not None and self.full_layers > self.block_count


def _int(v: Any, default: int = 0) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def model_info(path: str | Path, full_layers: int | None = None) -> ModelInfo:
    """Facts about the GGUF at `path`. `full_layers` (e.g. from --full-layers) overrides what the file says."""
    p = Path(path).resolve()
    idx = read_model(p)
    kv = idx.scalars
    arch = str(kv.get("general.architecture", ""))
    experts = expert_tensors(idx)
    if not experts:
        raise ValueError(f"{p}: no routed-expert tensors (blk.N.ffn_*_exps.weight): not an MoE GGUF")
    names = {e.name for e in experts}
    layer_ids = sorted({e.layer for e in experts})
    per_layer = [sum(e.stride for e in experts if e.layer == layer) for layer in layer_ids]
    resident = sum(t.nbytes for t in idx.tensors if t.name not in names)
    fixed = sum(t.nbytes for t in idx.tensors if not t.name.startswith("blk."))
    from gguf import GGMLQuantizationType
    types = sorted({GGMLQuantizationType(e.gtype).name for e in experts})
    blocks = _int(kv.get(f"{arch}.block_count"), len(layer_ids))
    used = _int(kv.get(f"{arch}.expert_used_count"))
    if used <= 0:
        raise ValueError(f"{p}: no {arch}.expert_used_count in the metadata")
    kv_per_ctx, recurrent = _cache_sizes(kv, arch, blocks)
    synthetic = None
    if isinstance(kv.get("flashmoe.synthetic"), str):
        try:
            synthetic = json.loads(kv["flashmoe.synthetic"])
        except ValueError:
            synthetic = None
    source = "none"
    full = None
    if full_layers:
        full, source = int(full_layers), "--full-layers"
    elif _int(kv.get(FULL_LAYERS_KEY)) > 0:
        full, source = _int(kv.get(FULL_LAYERS_KEY)), f"metadata {FULL_LAYERS_KEY}"
    elif synthetic and synthetic.get("preset"):
        from ..synth import PRESETS
        preset = PRESETS.get(str(synthetic["preset"]))
        if preset is not None:
            cfg = preset.config(tiny=bool(synthetic.get("tiny")))
            full = int((cfg.get("text_config") or cfg)["num_hidden_layers"])
            source = f"flashmoe.synthetic preset {preset.name}"
    return ModelInfo(str(p), idx.size, tuple(str(x) for x in idx.paths), arch, blocks, len(layer_ids), experts[0].n_expert, used,
                     sum(e.stride * e.n_expert for e in experts), resident, fixed, max(per_layer),
                     round(len(experts) / len(layer_ids)), types,
                     kv_per_ctx, recurrent, full, source, synthetic)


def _cache_sizes(kv: dict[str, Any], arch: str, blocks: int) -> tuple[float, int]:
    """(KV bytes per context position, recurrent-state bytes) as llama.cpp allocates them by default (f16 K/V).

    Hybrid models (`{arch}.full_attention_interval`): only every interval-th layer has a KV cache; the others
    keep a Gated DeltaNet state: conv (kernel - 1) x (inner + 2 x groups x state) and ssm state x inner, f32.
    Per-layer head counts stored as arrays are not read (the index skips arrays): head_count is used then.
    """
    g = lambda key, d=0: _int(kv.get(f"{arch}.{key}"), d)  # noqa: E731
    n_embd, n_head = g("embedding_length"), g("attention.head_count", 1) or 1
    n_kv = g("attention.head_count_kv", n_head) or n_head
    k_len = g("attention.key_length", n_embd // n_head)
    v_len = g("attention.value_length", n_embd // n_head)
    interval = g("full_attention_interval")
    attn_layers = blocks // interval if interval > 0 else blocks
    per_ctx = attn_layers * n_kv * (k_len + v_len) * 2.0
    recurrent = 0
    if interval > 0 and g("ssm.inner_size") > 0:
        d_conv, d_state, groups, inner = g("ssm.conv_kernel"), g("ssm.state_size"), g("ssm.group_count"), \
            g("ssm.inner_size")
        per_layer = (max(d_conv - 1, 0) * (inner + 2 * groups * d_state) + d_state * inner) * 4
        recurrent = (blocks - attn_layers) * per_layer
    return per_ctx, recurrent
