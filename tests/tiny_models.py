"""Tiny random checkpoints of every supported architecture, built with transformers (a test-only dependency).

Each entry gives the transformers config of a small model of that family and the tokenizer it gets. Norm
weights and biases are randomised too, so a wrong norm convention (w vs 1 + w) or a dropped bias shows up in
the logits. Checkpoints are built once and cached (see conftest.py); bump BUILDER_VERSION when a builder
changes.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from flashmoe_gguf.tiny import bpe_tokenizer, spm_tokenizer, vocab_gguf, write_tokenizer

BUILDER_VERSION = 3
N_VOCAB_KEEP = 4000


@dataclass(frozen=True)
class TinyModel:
    model_type: str
    config: dict[str, Any]
    tokenizer: str = "qwen2"          # vocab GGUF name in the llama.cpp sdist
    tokenizer_kind: str = "bpe"       # "bpe" (byte-level) or "spm" (sentencepiece-style BPE)
    bpe_regex: str | None = None
    dtype: str = "float32"
    post_build: Callable[[Path], None] | None = field(default=None, compare=False)


# Dimensions are multiples of 256 where a K-quant needs whole rows of 256.
TINY: dict[str, TinyModel] = {
    "qwen3_moe": TinyModel("qwen3_moe", dict(
        hidden_size=256, intermediate_size=512, moe_intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, max_position_embeddings=512, rope_theta=1000000.0, tie_word_embeddings=False)),
    "mixtral": TinyModel("mixtral", dict(
        hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=512,
        rope_theta=1000000.0, tie_word_embeddings=False, sliding_window=None),
        tokenizer="llama-spm", tokenizer_kind="spm"),
    "qwen2_moe": TinyModel("qwen2_moe", dict(
        hidden_size=256, intermediate_size=512, moe_intermediate_size=256, shared_expert_intermediate_size=512,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=False, max_position_embeddings=512, tie_word_embeddings=False, use_sliding_window=False,
        decoder_sparse_step=1, mlp_only_layers=[])),
    "olmoe": TinyModel("olmoe", dict(
        hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
        max_position_embeddings=512, tie_word_embeddings=False),
        tokenizer="gpt-2", bpe_regex=""),
}


def build_checkpoint(name: str, out: Path, seed: int = 0) -> Path:
    """Build TINY[name] into `out` (atomically) with random weights and a real tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = TINY[name]
    cache = Path(os.environ.get("FLASHMOE_TEST_CACHE", out.parent))
    if spec.tokenizer_kind == "spm":
        tj, tcfg, n_vocab = spm_tokenizer(vocab_gguf(cache, spec.tokenizer), N_VOCAB_KEEP)
    else:
        kw = {} if spec.bpe_regex is None else {"regex": spec.bpe_regex}
        tj, tcfg, n_vocab = bpe_tokenizer(vocab_gguf(cache, spec.tokenizer), N_VOCAB_KEEP, **kw)
        if spec.bpe_regex == "":   # plain GPT-2 byte-level pre-tokenizer, no Split
            tj["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                   "use_regex": True}
    cfg_kw = dict(spec.config, vocab_size=n_vocab)
    ids = {k: json.loads(json.dumps(tj["model"]["vocab"])).get(v) if isinstance(v, str) else None
           for k, v in tcfg.items() if k in ("bos_token", "eos_token", "pad_token")}
    for t in tj["added_tokens"]:
        for k, v in tcfg.items():
            if k in ("bos_token", "eos_token", "pad_token") and v == t["content"]:
                ids[k] = t["id"]
    cfg_kw.update({f"{k[:-6]}_token_id": v for k, v in ids.items() if v is not None})
    config = AutoConfig.for_model(spec.model_type, **cfg_kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in pname or "layernorm" in pname):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif pname.endswith(".bias") or p.ndim == 1:
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.08)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    write_tokenizer(tmp, tj, tcfg)
    if spec.post_build:
        spec.post_build(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
