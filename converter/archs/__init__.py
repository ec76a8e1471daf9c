"""One module per Hugging Face MoE family, each a small subclass of `base.MoeArch`."""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedArchitectureError
from .base import MoeArch, TensorSpec
from .mixtral import Mixtral
from .olmoe import Olmoe
from .qwen2_moe import Qwen2Moe
from .qwen3_moe import Qwen3Moe
from .qwen3_5_moe import Qwen35Moe
from .deepseek_v2 import DeepseekV2
from .deepseek_v3 import DeepseekV3
from .gpt_oss import GptOss

ARCHITECTURES: tuple[type[MoeArch], ...] = (Qwen3Moe, Qwen2Moe, Mixtral, Olmoe, DeepseekV2, DeepseekV3, Qwen35Moe,
                                               GptOss)


def supported() -> list[tuple[str, str]]:
    """(Hugging Face model_type, llama.cpp architecture) for every module."""
    return [(mt, gguf_name) for a in ARCHITECTURES for mt in a.model_types
            for gguf_name in [__import__("gguf").MODEL_ARCH_NAMES[a.gguf_arch]]]


def arch_for(config: dict[str, Any]) -> type[MoeArch]:
    model_type = config.get("model_type")
    text = config.get("text_config") or {}
    candidates = [model_type, text.get("model_type")]
    for a in ARCHITECTURES:
        if any(c in a.model_types for c in candidates if c):
            return a
    names = ", ".join(f"{mt} ({g})" for mt, g in supported())
    shown = model_type or (config.get("architectures") or ["<none>"])[0]
    raise UnsupportedArchitectureError(f"unsupported architecture {shown!r}; supported: {names}")


__all__ = ["ARCHITECTURES", "MoeArch", "TensorSpec", "arch_for", "supported"]
