"""DeepSeek-V2 / V2-Lite (and DeepSeek-V3, which builds on this module) -> llama.cpp `deepseek2`.

The family: multi-head latent attention (MLA), where queries go through a low-rank q_a -> norm -> q_b path (or a
plain q_proj when `q_lora_rank` is null, as in V2-Lite) and keys/values through one compressed latent
(`kv_a_proj_with_mqa`, `kv_lora_rank` wide plus a shared `qk_rope_head_dim` rotary key) that `kv_b_proj` expands
per head; the first `first_k_dense_replace` layers have a dense FFN, the rest routed experts plus shared experts.
DeepSeek-V2 routes by softmax scores, picks the top k over all experts (`topk_method` "greedy", V2-Lite) or
within the `topk_group` best of `n_group` expert groups ("group_limited_greedy", V2), and scales the chosen
weights by `routed_scaling_factor`.

What is non-trivial:
- llama.cpp runs MLA in its absorbed form, as multi-query attention over the latent: `kv_b_proj` is split per
  head into `attn_k_b` (the key half, transposed to [head, kv_lora_rank, qk_nope]) and `attn_v_b` (the value
  half, [head, v_head_dim, kv_lora_rank]); the GGUF says one KV head whose key is kv_lora_rank + rope wide and
  whose value is kv_lora_rank wide, with the real per-head sizes in the `*_length_mla` keys.
- llama.cpp's deepseek2 rotates adjacent pairs, which is DeepSeek's own interleaved layout (transformers'
  `rope_interleave`, the default). A checkpoint that says `rope_interleave: false` rotates half-split pairs, so
  the rotary rows of the query and of the shared key are reordered to adjacent pairs.
- llama.cpp reads `q_lora_rank` unconditionally for all but a few "lite" layer counts, so it is written as 0
  when the checkpoint has a plain q_proj.
- Group-limited routing: llama.cpp's deepseek2 ranks expert groups as DeepSeek-V3 does, by the sum of each
  group's two best scores; DeepSeek-V2 ranks them by the best score alone. The groups are kept (written as
  llama.cpp's own converter writes them) and the conversion summary says that a token whose two rankings differ
  is routed to other groups than in the reference. Greedy routing (V2-Lite) has no groups and is exact.
- Multi-token-prediction layers (past `num_hidden_layers`) are not part of the trunk and are skipped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import gguf
import numpy as np

from ..errors import CheckpointError, ConfigError, ConversionError
from ..pretokenizers import RULES
from ..weights import Weights
from .base import Array, ExpertSource, MoeArch, TensorSpec
from .facts import TestModel

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def interleave_rope_rows(w: Array, head_width: int, rope: int) -> Array:
    """Reorder the last `rope` rows of every `head_width`-row head from half-split pairs (i, i + rope/2) to
    adjacent pairs (2i, 2i + 1)."""
    heads = w.reshape(-1, head_width, w.shape[-1]).copy()
    tail = heads[:, head_width - rope:]
    heads[:, head_width - rope:] = tail.reshape(-1, 2, rope // 2, w.shape[-1]).transpose(0, 2, 1, 3).reshape(
        tail.shape)
    return heads.reshape(w.shape)


def _group_aligned_router(model_dir: Path) -> None:
    """Make each expert group's router rows close to one another (a shared row per group plus a small
    per-expert part), so that ranking groups by their best score (DeepSeek-V2) and by their two best
    (llama.cpp) agree on the test prompts and the test compares everything else exactly; experts within a group
    are still told apart by their own part."""
    from safetensors.numpy import load_file, save_file

    cfg = json.loads((model_dir / "config.json").read_text())
    E, n_group = cfg["n_routed_experts"], cfg["n_group"]
    path = model_dir / "model.safetensors"
    t = load_file(path)
    rng = np.random.default_rng(2)
    for k in t:
        if k.endswith(".mlp.gate.weight"):
            H = t[k].shape[1]
            shared = np.repeat(0.3 * rng.standard_normal((n_group, H)), E // n_group, axis=0)
            t[k] = (shared + 0.03 * rng.standard_normal((E, H))).astype(np.float32)
    save_file(t, str(path), metadata={"format": "pt"})


class DeepseekV2(MoeArch):
    model_types = ("deepseek_v2",)
    gguf_arch = gguf.MODEL_ARCH.DEEPSEEK2
    scoring = "softmax"                      # the routing scores transformers' modeling of the family uses
    topk_methods: tuple[str, ...] = ("greedy", "group_limited_greedy")
    # MLA rows (kv_lora_rank, qk_nope_head_dim, ...) are narrower than 256: those fall back to Q8_0 for K-quants.
    test_models = {
        # V2-Lite's structure: plain q_proj, greedy softmax routing, 2 shared experts, YaRN with DeepSeek-V2's
        # mscale 0.707, v_head_dim != qk_nope_head_dim
        "deepseek_v2_lite": TestModel("deepseek_v2", dict(
            hidden_size=256, intermediate_size=512, moe_intermediate_size=256, num_hidden_layers=3,
            first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None,
            kv_lora_rank=64, qk_nope_head_dim=48, qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=8,
            num_experts_per_tok=2, n_shared_experts=2, n_group=1, topk_group=1, topk_method="greedy",
            routed_scaling_factor=1.0, norm_topk_prob=False, max_position_embeddings=512,
            tie_word_embeddings=False,
            rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                                 original_max_position_embeddings=128, beta_fast=32.0, beta_slow=1.0,
                                 mscale=0.707, mscale_all_dim=0.707)),
            tokenizer="deepseek-llm", bpe_regex=RULES["deepseek-llm"]),
        # V2's structure: q_a/q_b, group-limited greedy over 4 groups of 2 (2 used), routed_scaling_factor 16
        "deepseek_v2": TestModel("deepseek_v2", dict(
            hidden_size=256, intermediate_size=512, moe_intermediate_size=256, num_hidden_layers=3,
            first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=64,
            kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=32, n_routed_experts=8,
            num_experts_per_tok=2, n_shared_experts=1, n_group=4, topk_group=2,
            topk_method="group_limited_greedy", routed_scaling_factor=16.0, norm_topk_prob=False,
            max_position_embeddings=512, tie_word_embeddings=False),
            tokenizer="deepseek-llm", bpe_regex=RULES["deepseek-llm"], post_build=_group_aligned_router),
    }

    @classmethod
    def validate_config(cls, hp: dict[str, Any]) -> None:
        family = cls.model_types[0]
        for k in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            if hp.get(k) is None:
                raise ConfigError(f"config.json lacks {k} ({family}'s latent attention sizes)")
        n_dense, n_layers = hp.get("first_k_dense_replace") or 0, hp["num_hidden_layers"]
        if n_dense >= n_layers:
            raise ConfigError(f"config.json: first_k_dense_replace is {n_dense}, but there are only {n_layers} "
                              f"layers: no layer would have routed experts")
        if hp.get("topk_method") == "group_limited_greedy" and (hp.get("n_group") is None
                                                                or hp.get("topk_group") is None):
            raise ConfigError(f"config.json: {family} topk_method group_limited_greedy without n_group / topk_group")

    def required_tensors(self, layer: int, moe: bool) -> tuple[str, ...]:
        """what llama.cpp's deepseek2 loader requires of a layer (validate.check_tensors)"""
        attn = ("attn_kv_a_mqa.weight", "attn_kv_a_norm.weight", "attn_k_b.weight", "attn_v_b.weight",
                "attn_output.weight", "ffn_norm.weight")
        query = ("attn_q_a.weight", "attn_q_a_norm.weight", "attn_q_b.weight") if self.q_lora_rank else \
            ("attn_q.weight",)
        if not moe:
            return attn + query + ("ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")
        shared = ("ffn_gate_shexp.weight", "ffn_up_shexp.weight", "ffn_down_shexp.weight") \
            if int(self.optional("n_shared_experts", default=0)) else ()
        return attn + query + shared

    def __init__(self, config: dict[str, Any], weights: Weights) -> None:
        super().__init__(config, weights)
        self.n_head = int(self.require("num_attention_heads"))
        q_lora = self.optional("q_lora_rank")
        self.q_lora_rank = int(q_lora) if q_lora else 0
        self.kv_lora_rank = int(self.require("kv_lora_rank"))
        self.qk_nope = int(self.require("qk_nope_head_dim"))
        self.qk_rope = int(self.require("qk_rope_head_dim"))
        self.v_head = int(self.require("v_head_dim"))
        self.n_dense_lead = int(self.optional("first_k_dense_replace", default=0))
        self.rope_interleaved = bool(self.optional("rope_interleave", default=True))
        family = self.model_types[0]
        if self.optional("attention_bias", default=False):
            raise ConversionError(f"{family} with attention_bias: llama.cpp's deepseek2 has no attention biases")
        if self.optional("mlp_bias", default=False):
            raise ConversionError(f"{family} with mlp_bias: llama.cpp's deepseek2 has no FFN biases")
        if int(self.optional("moe_layer_freq", default=1)) != 1:
            raise ConversionError(f"{family}: moe_layer_freq {self.hp['moe_layer_freq']}: llama.cpp's deepseek2 "
                                  f"has routed experts in every layer after the first dense ones")
        if self.qk_rope % 2:
            raise ConversionError(f"qk_rope_head_dim {self.qk_rope} is odd")
        scoring = self.optional("scoring_func", default=self.scoring)
        if scoring != self.scoring:
            raise ConversionError(f"{family} routes with {self.scoring} scores (as transformers' modeling does), "
                                  f"but config.json says scoring_func={scoring!r}")
        self.topk_method = str(self.optional("topk_method", default="greedy"))
        if self.topk_methods and self.topk_method not in self.topk_methods:
            raise ConversionError(f"{family}: topk_method {self.topk_method!r} is not supported "
                                  f"(known: {', '.join(self.topk_methods)})")
        # llama.cpp's absorbed MLA is multi-query attention over the latent: one KV head. transformers' config
        # also carries head_dim = qk_rope_head_dim, which is not the key length here (set in add_hparams).
        self.hp = {**self.hp, "num_key_value_heads": 1, "head_dim": None}

    # -- hyperparameters --------------------------------------------------------------------------------
    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        super().add_hparams(w)
        if (n_vocab := self.optional("vocab_size")) is not None:
            w.add_vocab_size(int(n_vocab))
        w.add_leading_dense_block_count(self.n_dense_lead)
        w.add_q_lora_rank(self.q_lora_rank)
        w.add_kv_lora_rank(self.kv_lora_rank)
        w.add_key_length(self.kv_lora_rank + self.qk_rope)
        w.add_value_length(self.kv_lora_rank)
        w.add_key_length_mla(self.qk_nope + self.qk_rope)
        w.add_value_length_mla(self.v_head)
        w.add_rope_dimension_count(self.qk_rope)
        w.add_expert_shared_count(int(self.optional("n_shared_experts", default=0)))
        if (scale := self.optional("routed_scaling_factor")) is not None:
            w.add_expert_weights_scale(float(scale))
        if self.optional("norm_topk_prob", default=False):
            w.add_expert_weights_norm(True)
        self.add_routing(w)
        self._add_rope_scaling(w)

    def add_routing(self, w: gguf.GGUFWriter) -> None:
        """gating function and expert groups"""
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SOFTMAX)
        if self.topk_method == "group_limited_greedy":
            n_group, topk_group = int(self.require("n_group")), int(self.require("topk_group"))
            self._add_groups(w, n_group, topk_group)
            if 1 < n_group and topk_group < n_group:
                self.notes.append(
                    f"group-limited routing: llama.cpp ranks the {n_group} expert groups by the sum of their two best "
                    f"scores, DeepSeek-V2 by the best one; where the two rankings differ a token goes to other "
                    f"groups than in the reference")

    def _add_groups(self, w: gguf.GGUFWriter, n_group: int, topk_group: int) -> None:
        if n_group < 1 or self.n_experts % n_group or not 1 <= topk_group <= n_group:
            raise ConversionError(f"{self.model_types[0]}: {self.n_experts} experts in n_group={n_group} groups, "
                                  f"topk_group={topk_group} of them")
        if n_group > 1 and self.n_experts // n_group < 2:
            raise ConversionError(f"{self.model_types[0]}: llama.cpp scores an expert group by its two best "
                                  f"experts; groups of {self.n_experts // n_group} are too small")
        w.add_expert_group_count(n_group)
        w.add_expert_group_used_count(topk_group)

    def _add_rope_scaling(self, w: gguf.GGUFWriter) -> None:
        rp = self.optional("rope_scaling", "rope_parameters", default={})
        kind = rp.get("rope_type", rp.get("type"))
        if kind in (None, "default"):
            return
        if kind != "yarn":
            raise ConversionError(f"{self.model_types[0]}: rope scaling {kind!r} is not supported (only yarn)")
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(rp["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(rp["original_max_position_embeddings"]))
        if (ext := rp.get("extrapolation_factor")) is not None:
            w.add_rope_scaling_yarn_ext_factor(float(ext))
        if (attn := rp.get("attention_factor", rp.get("attn_factor"))) is not None:
            w.add_rope_scaling_yarn_attn_factor(float(attn))
        if (fast := rp.get("beta_fast")) is not None:
            w.add_rope_scaling_yarn_beta_fast(float(fast))
        if (slow := rp.get("beta_slow")) is not None:
            w.add_rope_scaling_yarn_beta_slow(float(slow))
        if (mscale_all := rp.get("mscale_all_dim")) is not None:
            # llama.cpp's deepseek2 loader divides this key by 0.1 again (its converter stores 0.1 * mscale_all_dim)
            w.add_rope_scaling_yarn_log_mul(0.1 * float(mscale_all))

    # -- tensors ----------------------------------------------------------------------------------------
    def is_ignored(self, hf_name: str) -> bool:
        m = _LAYER.search(hf_name)
        if m and int(m.group(1)) >= self.n_layers:   # multi-token-prediction layers
            return True
        return super().is_ignored(hf_name)

    def tensor(self, hf_name: str) -> Iterable[TensorSpec]:
        if hf_name.endswith(".bias"):
            raise ConversionError(f"{hf_name}: llama.cpp's deepseek2 has no place for this bias")
        elif hf_name.endswith("kv_b_proj.weight"):
            yield from self._split_kv_b(hf_name)
        elif not self.rope_interleaved and hf_name.endswith(("q_b_proj.weight", "self_attn.q_proj.weight")):
            width = self.qk_nope + self.qk_rope
            yield self.spec(self.map_name(hf_name), self.weights.shape(hf_name),
                            lambda: interleave_rope_rows(self.weights.get(hf_name), width, self.qk_rope), hf_name)
        elif not self.rope_interleaved and hf_name.endswith("kv_a_proj_with_mqa.weight"):
            width = self.kv_lora_rank + self.qk_rope
            yield self.spec(self.map_name(hf_name), self.weights.shape(hf_name),
                            lambda: interleave_rope_rows(self.weights.get(hf_name), width, self.qk_rope), hf_name)
        else:
            yield from super().tensor(hf_name)

    def find_experts(self) -> dict[int, dict[str, ExpertSource]]:
        found = super().find_experts()
        want = set(range(self.n_dense_lead, self.n_layers))
        if set(found) != want:
            raise CheckpointError(f"routed experts in layers {sorted(found)}, but config.json implies layers "
                                  f"{self.n_dense_lead}..{self.n_layers - 1} (first_k_dense_replace)")
        return found

    def _split_kv_b(self, hf_name: str) -> Iterator[TensorSpec]:
        H, nope, v, r = self.n_head, self.qk_nope, self.v_head, self.kv_lora_rank
        shape = self.weights.shape(hf_name)
        if shape != (H * (nope + v), r):
            raise CheckpointError(f"{hf_name} has shape {list(shape)}, config.json implies {[H * (nope + v), r]}")

        def per_head() -> Array:
            return self.weights.get(hf_name).reshape(H, nope + v, r)

        k_name = self.map_name(hf_name.replace("kv_b_proj", "k_b_proj"))
        v_name = self.map_name(hf_name.replace("kv_b_proj", "v_b_proj"))
        yield self.spec(k_name, (H, r, nope), lambda: np.ascontiguousarray(per_head()[:, :nope].transpose(0, 2, 1)),
                        hf_name)
        yield self.spec(v_name, (H, v, r), lambda: np.ascontiguousarray(per_head()[:, nope:]), hf_name)

    def expected_shapes(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        yield from super().expected_shapes()
        H, n_embd, r, rope = self.n_head, self.n_embd, self.kv_lora_rank, self.qk_rope
        q_width = H * (self.qk_nope + rope)
        if self.q_lora_rank:
            yield r"blk\.\d+\.attn_q_a\.weight", (self.q_lora_rank, n_embd)
            yield r"blk\.\d+\.attn_q_b\.weight", (q_width, self.q_lora_rank)
        yield r"blk\.\d+\.attn_q\.weight", (q_width, n_embd)
        yield r"blk\.\d+\.attn_kv_a_mqa\.weight", (r + rope, n_embd)
        yield r"blk\.\d+\.attn_kv_a_norm\.weight", (r,)
        yield r"blk\.\d+\.attn_output\.weight", (n_embd, H * self.v_head)
        if (n_ff := self.optional("moe_intermediate_size")) is not None:
            n_sh = int(n_ff) * int(self.optional("n_shared_experts", default=0))
            yield r"blk\.\d+\.ffn_(gate|up)_shexp\.weight", (n_sh, n_embd)
            yield r"blk\.\d+\.ffn_down_shexp\.weight", (n_embd, n_sh)
