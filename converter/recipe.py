"""The quantization recipe: which GGUF type each tensor gets, from its role.

Roles: routed experts (`--experts`), dense weights (attention, shared experts, embeddings, output: `--dense`),
routers and shared-expert gates (`--router`, never below F16: routing is what low-bit quantization breaks
first), and norms / 1-D tensors, which always stay F32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from .errors import RecipeError
from .mixes import ExpertMix

SUPPORTED_TYPES: tuple[T, ...] = (T.F32, T.F16, T.BF16, T.Q8_0, T.Q6_K, T.Q5_K, T.Q5_0, T.Q5_1, T.Q4_K,
                                  T.Q4_1, T.Q4_0, T.Q3_K, T.Q2_K, T.MXFP4)
ROUTER_TYPES: tuple[T, ...] = (T.F32, T.F16, T.BF16)
# When a row length is not a multiple of the chosen type's block size (e.g. 576-wide MLA tensors for a
# K-quant), the tensor gets the first type of this chain that fits; the conversion summary lists each case.
FALLBACK_CHAIN: tuple[T, ...] = (T.Q8_0, T.F16)


class Role(Enum):
    EXPERT = "expert"     # routed experts: ffn_{gate,up,gate_up,down}_exps
    DENSE = "dense"       # attention, shared experts, dense FFNs, token embedding, output
    ROUTER = "router"     # ffn_gate_inp, ffn_gate_inp_shexp
    F32 = "f32"           # norms, biases, 1-D tensors and anything the runtime needs in F32


def parse_type(name: str, allowed: tuple[T, ...] = SUPPORTED_TYPES, what: str = "tensor type") -> T:
    key = name.strip().upper()
    try:
        t = T[key]
    except KeyError:
        t = None
    if t is None or t not in allowed:
        raise RecipeError(f"unknown {what} {name!r}; choose one of: {', '.join(x.name for x in allowed)}")
    return t


@dataclass(frozen=True)
class Recipe:
    experts: T = T.Q4_K
    dense: T = T.Q8_0
    router: T = T.F32
    fallbacks: list[str] = field(default_factory=list, compare=False, hash=False)
    mix: ExpertMix | None = None          # llama.cpp's per-layer expert types (experts is then its base type)
    n_layer: int = 0                      # the model's layers, for the mix

    def __post_init__(self) -> None:
        for t in (self.experts, self.dense):
            if t not in SUPPORTED_TYPES:
                raise RecipeError(f"type {t.name} is not supported; choose one of: "
                                  f"{', '.join(x.name for x in SUPPORTED_TYPES)}")
        if self.router not in ROUTER_TYPES:
            raise RecipeError(f"router type {self.router.name} is below F16; choose one of: "
                              f"{', '.join(x.name for x in ROUTER_TYPES)}")

    def type_for(self, name: str, role: Role, shape: tuple[int, ...]) -> T:
        if role is Role.F32 or len(shape) < 2:
            return T.F32
        wanted = {Role.EXPERT: self.experts, Role.DENSE: self.dense, Role.ROUTER: self.router}[role]
        if role is Role.EXPERT and self.mix is not None:
            wanted = self.mix.type_for(name, self.n_layer)
        row = shape[-1]
        if row % GGML_QUANT_SIZES[wanted][0] == 0:
            return wanted
        for t in FALLBACK_CHAIN:
            if row % GGML_QUANT_SIZES[t][0] == 0:
                self.fallbacks.append(f"{name}: rows of {row} do not fit {wanted.name} blocks, using {t.name}")
                return t
        self.fallbacks.append(f"{name}: rows of {row} fit no quantized type, using F32")
        return T.F32


def tensor_nbytes(gtype: T, shape: tuple[int, ...]) -> int:
    blck, size = GGML_QUANT_SIZES[gtype]
    n = 1
    for d in shape[:-1]:
        n *= d
    return n * (shape[-1] // blck) * size
