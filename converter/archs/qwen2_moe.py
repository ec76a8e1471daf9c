"""Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B) -> llama.cpp `qwen2moe`.

Attention with q/k/v biases; routed experts plus one shared expert whose output is scaled by a sigmoid gate
(`mlp.shared_expert_gate`, [1, hidden]). That gate is routing, so it takes the router type (F32 by default).
"""

from __future__ import annotations

import gguf

from .base import MoeArch
from .facts import TestModel


class Qwen2Moe(MoeArch):
    model_types = ("qwen2_moe",)
    gguf_arch = gguf.MODEL_ARCH.QWEN2MOE
    test_models = {"qwen2_moe": TestModel("qwen2_moe", dict(
        hidden_size=256, intermediate_size=512, moe_intermediate_size=256, shared_expert_intermediate_size=512,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=False, max_position_embeddings=512, tie_word_embeddings=False, use_sliding_window=False,
        decoder_sparse_step=1, mlp_only_layers=[]))}

    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        super().add_hparams(w)
        if (n := self.optional("shared_expert_intermediate_size")) is not None:
            w.add_expert_shared_feed_forward_length(int(n))
