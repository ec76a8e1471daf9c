"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B) -> llama.cpp `qwen3moe`.

Plain attention with per-head q/k RMS norms, softmax routing over 128 experts, no shared expert. Every tensor
maps one to one through gguf-py's name map; llama.cpp's loader has no fused gate|up for this architecture.
"""

import gguf

from .base import MoeArch


class Qwen3Moe(MoeArch):
    model_types = ("qwen3_moe",)
    gguf_arch = gguf.MODEL_ARCH.QWEN3MOE
