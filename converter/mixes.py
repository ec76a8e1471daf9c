"""llama.cpp's quant mixes for routed experts: the per-layer expert types that `llama-quantize` gives a model
for the Q3_K_M, Q4_K_M and Q5_K_M file types (src/llama-quant.cpp of the pinned llama.cpp, its choice of
type per tensor for architectures other than Falcon), so that `--experts Q4_K_M` writes the experts of the
files people download (Q4_K_M: Q4_K gate and up, Q6_K down in half the layers) in the streaming layout.

Only the routed experts follow the mix; the dense tensors keep `--dense`. tests/test_convert_archs.py checks the
choice against what llama.cpp's own quantizer writes for the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from gguf import GGMLQuantizationType as T

from flashmoe_gguf.experts import parse_expert_name


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's layers that get more bits: the first and last eighth, and every third in between"""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


@dataclass(frozen=True)
class ExpertMix:
    name: str
    base: T                                    # gate and up (and fused gate_up) experts
    down: Callable[[int, int], T]              # (layer, n_layer) -> the down experts' type

    def type_for(self, tensor_name: str, n_layer: int) -> T:
        parsed = parse_expert_name(tensor_name)
        if parsed is None:
            return self.base
        layer, kind = parsed
        return self.down(layer, n_layer) if kind == "down" else self.base


MIXES: dict[str, ExpertMix] = {m.name: m for m in (
    ExpertMix("Q3_K_M", T.Q3_K, lambda i, n: T.Q5_K if i < n // 16 else T.Q4_K),
    ExpertMix("Q4_K_M", T.Q4_K, lambda i, n: T.Q6_K if use_more_bits(i, n) else T.Q4_K),
    ExpertMix("Q5_K_M", T.Q5_K, lambda i, n: T.Q6_K if use_more_bits(i, n) else T.Q5_K),
)}


def parse_mix(name: str | None) -> ExpertMix | None:
    return MIXES.get(name.strip().upper()) if isinstance(name, str) else None
