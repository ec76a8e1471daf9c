"""Mixtral (8x7B, 8x22B) -> llama.cpp `llama` with routed experts.

Non-trivial: llama.cpp's `llama` graph applies rotary embeddings to interleaved pairs, while Hugging Face's
Mistral code rotates the two halves of each head, so q_proj and k_proj rows are permuted within each head
(k with the key/value head count). Experts are `block_sparse_moe.experts.E.w1/w3/w2` (gate/up/down).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import gguf
import numpy as np

from ..errors import ConfigError
from ..validate import attention_shapes, head_dim
from .base import MoeArch, TensorSpec, plain_release_tensors
from .facts import Release, TensorInit, TestModel

MIXTRAL_8X7B: dict[str, Any] = {
    # mistralai/Mixtral-8x7B-v0.1 config.json
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "num_local_experts": 8, "num_experts_per_tok": 2, "rms_norm_eps": 1e-5, "rope_theta": 1000000.0,
    "max_position_embeddings": 32768, "sliding_window": None, "tie_word_embeddings": False,
    "hidden_act": "silu", "vocab_size": 32000, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
}


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows [n_head * head_dim, ...]: within each head, (first half, second half) -> interleaved pairs."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class Mixtral(MoeArch):
    model_types = ("mixtral",)
    gguf_arch = gguf.MODEL_ARCH.LLAMA
    releases = (
        Release("mixtral-8x7b", "Mixtral-8x7B: 32 layers, 8 experts (2 used), hidden 4096, SPM tokenizer",
                MIXTRAL_8X7B, "llama-spm", "spm",
                tiny=dict(hidden_size=256, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=1)),
    )
    test_models = {"mixtral": TestModel("mixtral", dict(
        hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=512,
        rope_theta=1000000.0, tie_word_embeddings=False, sliding_window=None),
        tokenizer="llama-spm", tokenizer_kind="spm")}

    @classmethod
    def validate_config(cls, hp: dict[str, Any]) -> None:
        if head_dim(hp) % 2:   # rope_permute pairs the two halves of each head
            raise ConfigError(f"config.json: mixtral head size {head_dim(hp)} is odd (rotary pairs need it even)")
        if hp.get("intermediate_size") is None:
            raise ConfigError("config.json lacks intermediate_size (mixtral's expert width)")

    def required_tensors(self, layer: int, moe: bool) -> tuple[str, ...]:
        return ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight", "ffn_norm.weight")

    @classmethod
    def release_tensors(cls, config: dict[str, Any]) -> Iterator[tuple[str, tuple[int, ...], TensorInit]]:
        return plain_release_tensors(config, "block_sparse_moe", ("w1", "w3", "w2"), qk_norm=False)

    @classmethod
    def release_router(cls, config: dict[str, Any], layer: int) -> str:
        return f"model.layers.{layer}.block_sparse_moe.gate.weight"

    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        super().add_hparams(w)
        n_head = int(self.require("num_attention_heads"))
        head_dim = int(self.optional("head_dim", default=self.n_embd // n_head))
        w.add_rope_dimension_count(head_dim)
        w.add_vocab_size(int(self.require("vocab_size")))
        # Mixtral's experts use intermediate_size; llama.cpp reads it as feed_forward_length

    def tensor(self, hf_name: str) -> Iterable[TensorSpec]:
        name = self.map_name(hf_name)
        n_head = int(self.require("num_attention_heads"))
        n_kv = int(self.optional("num_key_value_heads", default=n_head))
        heads = n_head if ".attn_q." in name else n_kv if ".attn_k." in name else 0
        if heads:
            yield self.spec(name, self.weights.shape(hf_name),
                            lambda: rope_permute(self.weights.get(hf_name), heads), hf_name)
        else:
            yield from super().tensor(hf_name)

    def expected_shapes(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        yield from super().expected_shapes()
        yield from attention_shapes(self.hp)
        n_ff = int(self.require("intermediate_size"))
        H, E = self.n_embd, self.n_experts
        yield r"blk\.\d+\.ffn_down_exps\.weight", (E, H, n_ff)
        yield r"blk\.\d+\.ffn_(gate|up)_exps\.weight", (E, n_ff, H)
