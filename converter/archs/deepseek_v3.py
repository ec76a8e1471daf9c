"""DeepSeek-V3 / R1 (and checkpoints built like them) -> llama.cpp `deepseek2`.

DeepSeek-V2's architecture (deepseek_v2.py: MLA, dense first layers, shared experts) with 256 routed experts
routed by sigmoid scores with a selection-only bias (`e_score_correction_bias`), group-limited top-k over
`n_group` groups ranked by their two best scores (`topk_method` "noaux_tc", llama.cpp's own group rule),
optional renormalisation and `routed_scaling_factor`.

What differs from DeepSeek-V2 here:
- `e_score_correction_bias` becomes `exp_probs_b.bias`; the gating function is always sigmoid, as in
  transformers' DeepseekV3 modeling, even when config.json has no `scoring_func` (transformers does not write it).
- Multi-token-prediction layers (`model.layers.61.*` in DeepSeek-V3) are skipped (deepseek_v2.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

import gguf
import numpy as np

from .base import TensorSpec
from .deepseek_v2 import DeepseekV2
from .facts import TestModel

def _deepseek_extras(model_dir: Path) -> None:
    """The tensors a DeepSeek-V3 release has beyond what transformers saves for a fresh model: a random
    `e_score_correction_bias` (a buffer, left at zero) and a multi-token-prediction layer after the last one
    (DeepSeek-V3 ships `model.layers.61.*`), which the converter must skip."""
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


class DeepseekV3(DeepseekV2):
    model_types = ("deepseek_v3",)
    scoring = "sigmoid"
    topk_methods = ()          # transformers' DeepseekV3 routes one way ("noaux_tc") whatever config.json says
    # MLA rows (kv_lora_rank, qk_nope_head_dim, ...) are narrower than 256: those fall back to Q8_0 for K-quants.
    test_models = {
        "deepseek_v3": TestModel("deepseek_v3", dict(
            hidden_size=256, intermediate_size=512, moe_intermediate_size=256, num_hidden_layers=3,
            first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=64, kv_lora_rank=64,
            qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=32, n_routed_experts=8, num_experts_per_tok=2,
            n_shared_experts=1, n_group=2, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True,
            scoring_func="sigmoid", topk_method="noaux_tc", max_position_embeddings=512, tie_word_embeddings=False),
            post_build=_deepseek_extras),
        # plain q_proj, half-split rope (rope_interleave false), YaRN, v_head_dim != qk_nope_head_dim, no
        # scoring_func
        "deepseek_v3_lite": TestModel("deepseek_v3", dict(
            hidden_size=256, intermediate_size=512, moe_intermediate_size=256, num_hidden_layers=3,
            first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None,
            kv_lora_rank=96, qk_nope_head_dim=48, qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=8,
            num_experts_per_tok=2, n_shared_experts=2, n_group=4, topk_group=2, routed_scaling_factor=1.5,
            norm_topk_prob=False, rope_interleave=False, max_position_embeddings=512, tie_word_embeddings=False,
            rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                                 original_max_position_embeddings=128, beta_fast=32.0, beta_slow=1.0, mscale=1.0,
                                 mscale_all_dim=1.0)),
            post_build=_deepseek_extras),
    }

    def add_routing(self, w: gguf.GGUFWriter) -> None:
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
        n_group, topk_group = self.optional("n_group"), self.optional("topk_group")
        if n_group is not None and topk_group is not None:
            self._add_groups(w, int(n_group), int(topk_group))

    def tensor(self, hf_name: str) -> Iterable[TensorSpec]:
        if hf_name.endswith(".e_score_correction_bias"):
            name = self.map_name(hf_name[: -len("_bias")] + ".bias")
            yield self.spec(name, self.weights.shape(hf_name), lambda: self.weights.get(hf_name), hf_name)
        else:
            yield from super().tensor(hf_name)

    def expected_shapes(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        yield from super().expected_shapes()
        yield r"blk\.\d+\.exp_probs_b\.bias", (self.n_experts,)
