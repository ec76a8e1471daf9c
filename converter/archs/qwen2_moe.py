"""Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B) -> llama.cpp `qwen2moe`.

Attention with q/k/v biases; routed experts plus one shared expert whose output is scaled by a sigmoid gate
(`mlp.shared_expert_gate`, [1, hidden]). That gate is routing, so it takes the router type (F32 by default).
"""

from __future__ import annotations

import gguf

from .base import MoeArch


class Qwen2Moe(MoeArch):
    model_types = ("qwen2_moe",)
    gguf_arch = gguf.MODEL_ARCH.QWEN2MOE

    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        super().add_hparams(w)
        if (n := self.optional("shared_expert_intermediate_size")) is not None:
            w.add_expert_shared_feed_forward_length(int(n))
