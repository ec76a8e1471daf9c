"""OLMoE (allenai/OLMoE-1B-7B) -> llama.cpp `olmoe`.

Full-width q/k RMS norms (over all heads), softmax routing without renormalisation, GPT-NeoX byte-level
tokenizer (llama.cpp pre-tokenizer "olmo"). llama.cpp's olmoe graph fixes the RMS epsilon at 1e-5.
"""

from __future__ import annotations

from typing import Any, Iterator

import gguf

from ..errors import ConfigError
from ..validate import attention_shapes, head_dim
from .base import MoeArch
from .facts import TestModel


class Olmoe(MoeArch):
    model_types = ("olmoe",)
    gguf_arch = gguf.MODEL_ARCH.OLMOE
    vocab_pre_default = "olmo"
    test_models = {"olmoe": TestModel("olmoe", dict(
        hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
        max_position_embeddings=512, tie_word_embeddings=False),
        tokenizer="gpt-2", bpe_regex="")}

    required_top = ("output.weight",)   # llama.cpp's olmoe loader has no tied-embedding fallback

    @classmethod
    def validate_config(cls, hp: dict[str, Any]) -> None:
        head_dim(hp, hidden_is_heads=True)
        nh, nkv = hp["num_attention_heads"], hp.get("num_key_value_heads")
        if nkv is not None and nkv != nh:   # llama.cpp's olmoe k_norm is hidden_size wide
            raise ConfigError(f"config.json: olmoe with num_key_value_heads {nkv} != num_attention_heads {nh}: "
                              f"llama.cpp's olmoe has no grouped key/value heads")

    def required_tensors(self, layer: int, moe: bool) -> tuple[str, ...]:
        return ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight", "attn_q_norm.weight",
                "attn_k_norm.weight", "ffn_norm.weight")

    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        super().add_hparams(w)
        if self.optional("rms_norm_eps") is None:
            w.add_layer_norm_rms_eps(1e-5)

    def expected_shapes(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        yield from super().expected_shapes()
        yield from attention_shapes(self.hp, hidden_is_heads=True)
        yield r"blk\.\d+\.attn_(q|k)_norm\.weight", (self.n_embd,)
        n_ff = int(self.require("intermediate_size"))
        H, E = self.n_embd, self.n_experts
        yield r"blk\.\d+\.ffn_down_exps\.weight", (E, H, n_ff)
        yield r"blk\.\d+\.ffn_(gate|up)_exps\.weight", (E, n_ff, H)
