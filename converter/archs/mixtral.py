"""Mixtral (8x7B, 8x22B) -> llama.cpp `llama` with routed experts.

Non-trivial: llama.cpp's `llama` graph applies rotary embeddings to interleaved pairs, while Hugging Face's
Mistral code rotates the two halves of each head, so q_proj and k_proj rows are permuted within each head
(k with the key/value head count). Experts are `block_sparse_moe.experts.E.w1/w3/w2` (gate/up/down).
"""

from __future__ import annotations

from typing import Iterable

import gguf
import numpy as np

from .base import MoeArch, TensorSpec


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows [n_head * head_dim, ...]: within each head, (first half, second half) -> interleaved pairs."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class Mixtral(MoeArch):
    model_types = ("mixtral",)
    gguf_arch = gguf.MODEL_ARCH.LLAMA

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

    def expected_shapes(self):  # type: ignore[no-untyped-def]
        yield from super().expected_shapes()
        n_ff = int(self.require("intermediate_size"))
        H, E = self.n_embd, self.n_experts
        yield r"blk\.\d+\.ffn_down_exps\.weight", (E, H, n_ff)
        yield r"blk\.\d+\.ffn_(gate|up)_exps\.weight", (E, n_ff, H)
