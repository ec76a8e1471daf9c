"""Tiny random checkpoints of every supported architecture, built with transformers (a test-only dependency).

Each entry gives the transformers config of a small model of that family and the tokenizer it gets. Norm
weights and biases are randomised too, so a wrong norm convention (w vs 1 + w) or a dropped bias shows up in
the logits. Checkpoints are built once and cached (see conftest.py); bump BUILDER_VERSION when a builder
changes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from flashmoe_gguf.converter.vocab import _QWEN35 as QWEN35_REGEX
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
    weight_std: float = 0.08          # std of random matrices
    expert_std: float | None = None   # std of routed-expert matrices, if different
    post_build: Callable[[Path], None] | None = field(default=None, compare=False)


def _deepseek_extras(model_dir: Path) -> None:
    """DeepSeek-V3 post-build: a random `e_score_correction_bias` (a buffer, so the builder leaves it at zero) and
    a multi-token-prediction layer after the last one, as DeepSeek-V3 ships `model.layers.61.*`."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    cfg = json.loads((model_dir / "config.json").read_text())
    n, H, E = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["n_routed_experts"]
    path = model_dir / "model.safetensors"
    t = load_file(path)
    rng = np.random.default_rng(1)
    for k in t:
        if k.endswith("e_score_correction_bias"):
            t[k] = (0.1 * rng.standard_normal(t[k].shape)).astype(np.float32)
    mtp = {"eh_proj.weight": (H, 2 * H), "enorm.weight": (H,), "hnorm.weight": (H,), "mlp.gate.weight": (E, H),
           "mlp.gate.e_score_correction_bias": (E,), "mlp.experts.0.down_proj.weight": (H, 64),
           "self_attn.kv_b_proj.weight": (64, 64), "shared_head.norm.weight": (H,)}
    for k, shp in mtp.items():
        t[f"model.layers.{n}.{k}"] = rng.standard_normal(shp).astype(np.float32)
    save_file(t, str(path), metadata={"format": "pt"})


def _qwen35_release_layout(model_dir: Path) -> None:
    """Qwen3.5-MoE post-build: rewrite what Qwen3_5MoeForCausalLM saved into the layout Qwen publishes (a VLM
    config nesting `text_config`, tensors under `model.language_model.`, experts stacked as
    `experts.gate_up_proj` / `experts.down_proj`) plus vision-tower and MTP tensors the converter must skip.
    transformers still loads it as Qwen3_5MoeForCausalLM, so the reference forward is unchanged."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    text = json.loads((model_dir / "config.json").read_text())
    text.pop("architectures", None)
    n, H, E = text["num_hidden_layers"], text["hidden_size"], text["num_experts"]
    cfg = {"architectures": ["Qwen3_5MoeForConditionalGeneration"], "model_type": "qwen3_5_moe",
           "text_config": text, "tie_word_embeddings": False,
           "vision_config": {"model_type": "qwen3_5_moe_vision", "depth": 1, "hidden_size": 64,
                             "intermediate_size": 128, "num_heads": 2, "out_hidden_size": H,
                             "num_position_embeddings": 64}}
    (model_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    path = model_dir / "model.safetensors"
    t = load_file(path)
    out = {("model.language_model." + k[len("model."):] if k.startswith("model.") else k): v for k, v in t.items()
           if ".experts." not in k}
    for i in range(n):
        e = f"model.layers.{i}.mlp.experts"
        out[f"model.language_model.layers.{i}.mlp.experts.gate_up_proj"] = np.stack(
            [np.concatenate([t[f"{e}.{j}.gate_proj.weight"], t[f"{e}.{j}.up_proj.weight"]]) for j in range(E)])
        out[f"model.language_model.layers.{i}.mlp.experts.down_proj"] = np.stack(
            [t[f"{e}.{j}.down_proj.weight"] for j in range(E)])
    rng = np.random.default_rng(1)
    extra = {"mtp.fc.weight": (H, 2 * H), "mtp.pre_fc_norm_embedding.weight": (H,), "mtp.norm.weight": (H,),
             "mtp.layers.0.input_layernorm.weight": (H,), "mtp.layers.0.mlp.gate.weight": (E, H),
             "mtp.layers.0.mlp.experts.0.gate_proj.weight": (64, H),
             "model.visual.blocks.0.attn.qkv.weight": (192, 64), "model.visual.merger.linear_fc2.weight": (H, 256)}
    out.update({k: rng.standard_normal(shp).astype(np.float32) for k, shp in extra.items()})
    save_file(out, str(path), metadata={"format": "pt"})


# Dimensions are multiples of 256 where a K-quant needs whole rows of 256.
TINY: dict[str, TinyModel] = {
    "qwen3_moe": TinyModel("qwen3_moe", dict(
        hidden_size=256, intermediate_size=512, moe_intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, max_position_embeddings=512, rope_theta=1000000.0, tie_word_embeddings=False)),
    # 3 Gated DeltaNet layers + 1 gated full-attention layer; 2 key heads for 4 value heads (V-head reordering);
    # built as the text model, then rewritten into the published VLM layout (see _qwen35_release_layout).
    # Smaller routed experts: at 0.08 this random hybrid model is chaotic under 4-bit experts (transformers
    # itself, run on Q4_K-rounded experts, agreed with its own F32 argmax on under half the positions).
    "qwen3_5_moe": TinyModel("qwen3_5_moe_text", dict(
        hidden_size=256, moe_intermediate_size=256, shared_expert_intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_experts=8, num_experts_per_tok=2,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=64, linear_value_head_dim=64,
        linear_conv_kernel_dim=4, max_position_embeddings=512, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="default", rope_theta=10000000.0, partial_rotary_factor=0.25,
                             mrope_section=[3, 3, 2], mrope_interleaved=True)),
        tokenizer="qwen35", bpe_regex=QWEN35_REGEX, post_build=_qwen35_release_layout, expert_std=0.04),
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
    # MLA rows (kv_lora_rank, qk_nope_head_dim, ...) are narrower than 256: those fall back to Q8_0 for K-quants.
    "deepseek_v3": TinyModel("deepseek_v3", dict(
        hidden_size=256, intermediate_size=512, moe_intermediate_size=256, num_hidden_layers=3,
        first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=64, kv_lora_rank=64,
        qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=32, n_routed_experts=8, num_experts_per_tok=2,
        n_shared_experts=1, n_group=2, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True,
        scoring_func="sigmoid", topk_method="noaux_tc", max_position_embeddings=512, tie_word_embeddings=False),
        post_build=_deepseek_extras),
    # plain q_proj, half-split rope (rope_interleave false), YaRN, v_head_dim != qk_nope_head_dim, no scoring_func
    "deepseek_v3_lite": TinyModel("deepseek_v3", dict(
        hidden_size=256, intermediate_size=512, moe_intermediate_size=256, num_hidden_layers=3,
        first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=96,
        qk_nope_head_dim=48, qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=8, num_experts_per_tok=2,
        n_shared_experts=2, n_group=4, topk_group=2, routed_scaling_factor=1.5, norm_topk_prob=False,
        rope_interleave=False, max_position_embeddings=512, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=128,
                             beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0)),
        post_build=_deepseek_extras),
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
            elif spec.expert_std is not None and re.search(r"\.experts\.", pname):
                p.normal_(0.0, spec.expert_std)
            else:
                p.normal_(0.0, spec.weight_std)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    write_tokenizer(tmp, tj, tcfg)
    if spec.post_build:
        spec.post_build(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
