"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B) -> llama.cpp `qwen3moe`.

Plain attention with per-head q/k RMS norms, softmax routing over 128 experts, no shared expert. Every tensor
maps one to one through gguf-py's name map; llama.cpp's loader has no fused gate|up for this architecture.
"""

from __future__ import annotations

from typing import Any, Iterator

import gguf

from ..validate import attention_shapes, head_dim
from .base import MoeArch, plain_release_tensors
from .facts import Release, TensorInit, TestModel

QWEN3_30B_A3B: dict[str, Any] = {
    # Qwen/Qwen3-30B-A3B config.json
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
    "intermediate_size": 6144, "moe_intermediate_size": 768, "num_hidden_layers": 48, "num_attention_heads": 32,
    "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
    "norm_topk_prob": True, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 40960,
    "tie_word_embeddings": False, "hidden_act": "silu", "decoder_sparse_step": 1, "mlp_only_layers": [],
    "vocab_size": 151936, "torch_dtype": "bfloat16",
}


class Qwen3Moe(MoeArch):
    model_types = ("qwen3_moe",)
    gguf_arch = gguf.MODEL_ARCH.QWEN3MOE
    releases = (
        Release("qwen3-30b-a3b", "Qwen3-30B-A3B: 48 layers, 128 experts (8 used), hidden 2048",
                QWEN3_30B_A3B, "qwen2", "bpe",
                tiny=dict(hidden_size=256, intermediate_size=512, moe_intermediate_size=256, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_experts=16,
                          num_experts_per_tok=4, vocab_size=4096)),
    )
    # Dimensions are multiples of 256 where a K-quant needs whole rows of 256.
    test_models = {"qwen3_moe": TestModel("qwen3_moe", dict(
        hidden_size=256, intermediate_size=512, moe_intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, max_position_embeddings=512, rope_theta=1000000.0, tie_word_embeddings=False))}

    # what llama.cpp's qwen3moe loader requires of every layer (validate.check_tensors)
    layer_tensors = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight", "attn_q_norm.weight",
                     "attn_k_norm.weight", "ffn_norm.weight")

    @classmethod
    def validate_config(cls, hp: dict[str, Any]) -> None:
        head_dim(hp)

    def required_tensors(self, layer: int, moe: bool) -> tuple[str, ...]:
        return self.layer_tensors

    def expected_shapes(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        yield from super().expected_shapes()
        yield from attention_shapes(self.hp)
        yield r"blk\.\d+\.attn_(q|k)_norm\.weight", (head_dim(self.hp),)

    @classmethod
    def release_tensors(cls, config: dict[str, Any]) -> Iterator[tuple[str, tuple[int, ...], TensorInit]]:
        return plain_release_tensors(config, "mlp", ("gate_proj", "up_proj", "down_proj"), qk_norm=True)

    @classmethod
    def release_router(cls, config: dict[str, Any], layer: int) -> str:
        return f"model.layers.{layer}.mlp.gate.weight"
