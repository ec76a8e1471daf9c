"""Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B) -> llama.cpp `qwen2moe`.

Attention with q/k/v biases; routed experts plus one shared expert whose output is scaled by a sigmoid gate
(`mlp.shared_expert_gate`, [1, hidden]). That gate is routing, so it takes the router type (F32 by default).
"""

from __future__ import annotations

from typing import Any, Iterator

import gguf

from ..validate import attention_shapes, head_dim
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

    required_top = ("output.weight",)   # llama.cpp's qwen2moe loader has no tied-embedding fallback

    @classmethod
    def validate_config(cls, hp: dict[str, Any]) -> None:
        head_dim(hp, hidden_is_heads=True)

    def required_tensors(self, layer: int, moe: bool) -> tuple[str, ...]:
        attn = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight", "ffn_norm.weight")
        if moe and self.optional("shared_expert_intermediate_size") is not None:
            return attn + ("ffn_gate_inp_shexp.weight", "ffn_gate_shexp.weight", "ffn_up_shexp.weight",
                           "ffn_down_shexp.weight")
        return attn

    def expected_shapes(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        yield from super().expected_shapes()
        yield from attention_shapes(self.hp, hidden_is_heads=True)
        if (n := self.optional("shared_expert_intermediate_size")) is not None:
            yield r"blk\.\d+\.ffn_gate_inp_shexp\.weight", (1, self.n_embd)
            yield r"blk\.\d+\.ffn_(gate|up)_shexp\.weight", (int(n), self.n_embd)
            yield r"blk\.\d+\.ffn_down_shexp\.weight", (self.n_embd, int(n))

    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        super().add_hparams(w)
        if (n := self.optional("shared_expert_intermediate_size")) is not None:
            w.add_expert_shared_feed_forward_length(int(n))
