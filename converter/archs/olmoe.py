"""OLMoE (allenai/OLMoE-1B-7B) -> llama.cpp `olmoe`.

Full-width q/k RMS norms (over all heads), softmax routing without renormalisation, GPT-NeoX byte-level
tokenizer (llama.cpp pre-tokenizer "olmo"). llama.cpp's olmoe graph fixes the RMS epsilon at 1e-5.
"""

from __future__ import annotations

import gguf

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

    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        super().add_hparams(w)
        if self.optional("rms_norm_eps") is None:
            w.add_layer_norm_rms_eps(1e-5)

    def expected_shapes(self):  # type: ignore[no-untyped-def]
        yield from super().expected_shapes()
        n_ff = int(self.require("intermediate_size"))
        H, E = self.n_embd, self.n_experts
        yield r"blk\.\d+\.ffn_down_exps\.weight", (E, H, n_ff)
        yield r"blk\.\d+\.ffn_(gate|up)_exps\.weight", (E, n_ff, H)
