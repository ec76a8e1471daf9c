"""Qwen3.5-MoE (Qwen3.5-35B-A3B, -122B-A10B, -397B-A17B) -> llama.cpp `qwen35moe`.

A hybrid stack: three of every four layers are Gated DeltaNet linear attention (`linear_attn.*`, a recurrent
state instead of a KV cache), the fourth is gated full attention (q_proj yields query and a sigmoid output gate
per head, partial interleaved M-RoPE on a quarter of each head). Every layer has 256-512 routed experts plus a
shared expert scaled by sigmoid(shared_expert_gate . x). The release checkpoints are vision-language models:
config.json nests the text model under `text_config`, tensors live under `model.language_model.`, and the
vision tower (`model.visual.*`) and the multi-token-prediction head (`mtp.*`) are left out, as llama.cpp's
`--no-mtp` does. transformers' `Qwen3_5MoeForCausalLM` writes the same tensors under plain `model.`.

What is not a plain rename (llama.cpp's own converter is the reference):
- RMSNorms compute x * (1 + w) and store w; llama.cpp multiplies by its weight, so we store 1 + w. The gated
  norm inside linear attention (`linear_attn.norm`) is a plain x * w and is stored as is.
- `A_log` becomes `ssm_a` = -exp(A_log); `dt_bias` becomes `ssm_dt.bias`; the depthwise conv1d kernel
  [channels, 1, kernel] becomes [channels, kernel] and stays F32.
- With fewer key heads than value heads, the checkpoint orders value heads grouped by key head
  (k0v0 k0v1 k1v0 k1v1); llama.cpp broadcasts key heads tiled (k0v0 k1v0 k0v1 k1v1), so every value-head axis
  (V rows of in_proj_qkv and the conv kernel, in_proj_z, in_proj_a/b, A_log, dt_bias, out_proj columns) is
  permuted to tiled order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import gguf
import numpy as np

from ..errors import CheckpointError, ConfigError, ConversionError
from ..validate import attention_shapes, head_dim
from ..recipe import Role
from ..vocab import SPLIT_REGEX
from ..weights import Weights
from .base import Array, MoeArch, TensorSpec
from .facts import Release, TensorInit, TestModel

_DEFAULT_MROPE_SECTIONS = (11, 11, 10)   # transformers' default when rope_parameters has no mrope_section

QWEN35_397B_TEXT: dict[str, Any] = {
    # Qwen/Qwen3.5-397B-A17B text_config. Field names are transformers' Qwen3_5MoeTextConfig (whose defaults
    # are the 35B-A3B: hidden 2048, 40 layers, 256 experts, 8 used, 16 heads, 32 linear value heads, expert
    # and shared-expert intermediate 512). The 397B values: hidden 4096, 60 layers, 512 experts / 10 used,
    # expert intermediate 1024, 32 heads / 2 kv heads / head_dim 256, linear attention 16 key / 64 value heads
    # of 128, vocab 248320 are stated on the model cards (e.g. mlx-community/Qwen3.5-397B-A17B-4bit).
    # Not verified against the release config.json itself (no hub here): shared_expert_intermediate_size 1024
    # (two public copies of the config say 1024, one test fixture says 4096; with 1024 the text model counts
    # 396.3 B parameters and 17.3 B active, matching "397B-A17B" with the vision tower and MTP head left
    # out, with 4096 it would be 19.6 B active), max_position_embeddings, rope_theta 1e7 and mrope_section
    # [11, 11, 10] (transformers' default).
    "model_type": "qwen3_5_moe_text", "hidden_size": 4096, "num_hidden_layers": 60,
    "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 256, "hidden_act": "silu",
    "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
    "linear_num_key_heads": 16, "linear_num_value_heads": 64, "moe_intermediate_size": 1024,
    "shared_expert_intermediate_size": 1024, "num_experts": 512, "num_experts_per_tok": 10,
    "full_attention_interval": 4, "attn_output_gate": True, "vocab_size": 248320, "rms_norm_eps": 1e-6,
    "max_position_embeddings": 262144, "tie_word_embeddings": False, "mlp_only_layers": [],
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                        "mrope_section": [11, 11, 10], "mrope_interleaved": True},
}


def _qwen35_release_layout(model_dir: Path) -> None:
    """Rewrite what transformers' Qwen3_5MoeForCausalLM saved into the layout Qwen publishes: a VLM config
    nesting `text_config`, tensors under `model.language_model.`, experts stacked as `experts.gate_up_proj` /
    `experts.down_proj`, plus vision-tower and MTP tensors the converter must skip. transformers still loads it
    as Qwen3_5MoeForCausalLM, so a reference forward pass is unchanged."""
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


def tile_v_heads(x: Array, axis: int, n_k: int, v_per_k: int, head_dim: int) -> Array:
    """Reorder value heads along `axis` from grouped by key head to tiled: [K, V/K, d] -> [V/K, K, d]."""
    if v_per_k == 1:
        return x
    x = np.moveaxis(x, axis, 0)
    rest = x.shape[1:]
    x = x.reshape(n_k, v_per_k, head_dim, *rest).swapaxes(0, 1).reshape(n_k * v_per_k * head_dim, *rest)
    return np.ascontiguousarray(np.moveaxis(x, 0, axis))


class Qwen35Moe(MoeArch):
    model_types = ("qwen3_5_moe", "qwen3_5_moe_text")
    gguf_arch = gguf.MODEL_ARCH.QWEN35MOE
    ignore_patterns = MoeArch.ignore_patterns + (
        r"^(model\.)?mtp\.",                         # multi-token-prediction head
        r"^(model\.)?visual\.", r"^model\.vision",    # vision tower
    )
    releases = (
        Release("qwen35-397b-a17b",
                "Qwen3.5-397B-A17B: 60 hybrid layers (3 Gated DeltaNet + 1 attention), 512 experts (10 used) + shared",
                QWEN35_397B_TEXT, "qwen35", "bpe",
                tiny=dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=64, linear_key_head_dim=64, linear_value_head_dim=64, linear_num_key_heads=2,
                          linear_num_value_heads=8, moe_intermediate_size=256, shared_expert_intermediate_size=256,
                          num_experts=16, num_experts_per_tok=4, vocab_size=4096,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000000.0,
                                           "partial_rotary_factor": 0.25, "mrope_section": [3, 3, 2],
                                           "mrope_interleaved": True})),
    )
    # 3 Gated DeltaNet layers + 1 gated full-attention layer; 2 key heads for 4 value heads (V-head reordering);
    # built as the text model, then rewritten into the published VLM layout (_qwen35_release_layout). Smaller
    # routed experts: at 0.08 this random hybrid model is chaotic under 4-bit experts (transformers itself, run
    # on Q4_K-rounded experts, agreed with its own F32 argmax on under half the positions).
    test_models = {"qwen3_5_moe": TestModel("qwen3_5_moe_text", dict(
        hidden_size=256, moe_intermediate_size=256, shared_expert_intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_experts=8, num_experts_per_tok=2,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=64, linear_value_head_dim=64,
        linear_conv_kernel_dim=4, max_position_embeddings=512, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="default", rope_theta=10000000.0, partial_rotary_factor=0.25,
                             mrope_section=[3, 3, 2], mrope_interleaved=True)),
        tokenizer="qwen35", bpe_regex=SPLIT_REGEX["qwen35"], post_build=_qwen35_release_layout, expert_std=0.04)}

    @classmethod
    def wrap_release_config(cls, release: Release, text: dict[str, Any]) -> dict[str, Any]:
        """the VLM wrapper, and the first n layers' types of the full stack, so a slice keeps the hybrid pattern"""
        n, interval = int(text["num_hidden_layers"]), int(text["full_attention_interval"])
        text["layer_types"] = ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n)]
        if "full_attention" not in text["layer_types"]:
            # llama.cpp's hybrid memory aborts in decode (GGML_ASSERT(buffer) in the KV cache's input) when no
            # layer has a KV cache, stock llama.cpp included
            raise ValueError(f"--layers must be at least {interval} for {release.name}: llama.cpp cannot run a "
                             f"qwen3_5_moe model without a full-attention layer (the first is layer {interval - 1})")
        return {"architectures": ["Qwen3_5MoeForConditionalGeneration"], "model_type": "qwen3_5_moe",
                "text_config": text, "tie_word_embeddings": False}

    @classmethod
    def release_router(cls, config: dict[str, Any], layer: int) -> str:
        return f"model.language_model.layers.{layer}.mlp.gate.weight"

    @classmethod
    def release_tensors(cls, config: dict[str, Any]) -> Iterator[tuple[str, tuple[int, ...], TensorInit]]:
        hp = config.get("text_config") or config
        H, V, L = int(hp["hidden_size"]), int(hp["vocab_size"]), int(hp["num_hidden_layers"])
        nh, nkv, hd, E = (int(hp["num_attention_heads"]), int(hp["num_key_value_heads"]), int(hp["head_dim"]),
                          int(hp["num_experts"]))
        I, Ish = int(hp["moe_intermediate_size"]), int(hp["shared_expert_intermediate_size"])
        nk, nv = int(hp["linear_num_key_heads"]), int(hp["linear_num_value_heads"])
        dk, dv, K = int(hp["linear_key_head_dim"]), int(hp["linear_value_head_dim"]), int(hp["linear_conv_kernel_dim"])
        proj = lambda fan_in: TensorInit(std=fan_in ** -0.5)           # noqa: E731
        out = lambda fan_in: TensorInit(std=0.5 * fan_in ** -0.5)      # noqa: E731
        one, zero = TensorInit(mean=1.0), TensorInit(mean=0.0)         # norms: x * (1 + w) stores w = 0
        root = "model.language_model."
        yield root + "embed_tokens.weight", (V, H), TensorInit(std=1.0)
        for i in range(L):
            p = f"{root}layers.{i}."
            yield p + "input_layernorm.weight", (H,), zero
            yield p + "post_attention_layernorm.weight", (H,), zero
            if hp["layer_types"][i] == "linear_attention":
                a = p + "linear_attn."
                conv = 2 * nk * dk + nv * dv
                yield a + "in_proj_qkv.weight", (conv, H), proj(H)
                yield a + "in_proj_z.weight", (nv * dv, H), proj(H)
                yield a + "in_proj_b.weight", (nv, H), proj(H)
                yield a + "in_proj_a.weight", (nv, H), proj(H)
                yield a + "conv1d.weight", (conv, 1, K), proj(K)
                yield a + "dt_bias", (nv,), one
                yield a + "A_log", (nv,), TensorInit(log_uniform=(1.0, 16.0))
                yield a + "norm.weight", (dv,), one          # gated RMSNorm: plain x * w
                yield a + "out_proj.weight", (H, nv * dv), out(nv * dv)
            else:
                a = p + "self_attn."
                yield a + "q_proj.weight", (2 * nh * hd, H), proj(H)   # query and output gate per head
                yield a + "k_proj.weight", (nkv * hd, H), proj(H)
                yield a + "v_proj.weight", (nkv * hd, H), proj(H)
                yield a + "o_proj.weight", (H, nh * hd), out(nh * hd)
                yield a + "q_norm.weight", (hd,), zero
                yield a + "k_norm.weight", (hd,), zero
            m = p + "mlp."
            yield m + "gate.weight", (E, H), proj(H)
            yield m + "experts.gate_up_proj", (E, 2 * I, H), proj(H)
            yield m + "experts.down_proj", (E, H, I), out(I)
            yield m + "shared_expert.gate_proj.weight", (Ish, H), proj(H)
            yield m + "shared_expert.up_proj.weight", (Ish, H), proj(H)
            yield m + "shared_expert.down_proj.weight", (H, Ish), out(Ish)
            yield m + "shared_expert_gate.weight", (1, H), proj(H)
        yield root + "norm.weight", (H,), zero
        yield "lm_head.weight", (V, H), proj(H)

    @classmethod
    def validate_config(cls, hp: dict[str, Any]) -> None:
        for k in ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
                  "linear_conv_kernel_dim"):
            if hp.get(k) is None:
                raise ConfigError(f"config.json lacks {k} (qwen3_5_moe's linear attention)")
        head_dim(hp)
        n = hp["num_hidden_layers"]
        types = hp.get("layer_types")
        if types is not None:
            bad = [t for t in types if t not in ("linear_attention", "full_attention")]
            if bad:
                raise ConfigError(f"config.json: layer_types holds {bad[0]!r} (linear_attention or full_attention)")
            full = "full_attention" in types[:n]
        else:
            full = (hp.get("full_attention_interval") or 4) <= n
        if not full:
            # llama.cpp's hybrid memory aborts in decode (GGML_ASSERT(buffer)) when no layer has a KV cache
            raise ConfigError("config.json: qwen3_5_moe without a full-attention layer (layer_types / "
                              "full_attention_interval): llama.cpp cannot run it")

    def is_full_attention(self, layer: int) -> bool:
        if self.layer_types is not None:
            return self.layer_types[layer] == "full_attention"
        return (layer + 1) % int(self.optional("full_attention_interval", default=4)) == 0

    def required_tensors(self, layer: int, moe: bool) -> tuple[str, ...]:
        """what llama.cpp's qwen35moe loader requires of a layer (validate.check_tensors)"""
        common = ("post_attention_norm.weight",)
        if self.optional("shared_expert_intermediate_size") is not None:
            common += ("ffn_gate_inp_shexp.weight", "ffn_gate_shexp.weight", "ffn_up_shexp.weight",
                       "ffn_down_shexp.weight")
        if self.is_full_attention(layer):
            return common + ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                             "attn_q_norm.weight", "attn_k_norm.weight")
        return common + ("attn_qkv.weight", "attn_gate.weight", "ssm_a", "ssm_alpha.weight", "ssm_beta.weight",
                         "ssm_conv1d.weight", "ssm_dt.bias", "ssm_norm.weight", "ssm_out.weight")

    def __init__(self, config: dict[str, Any], weights: Weights) -> None:
        super().__init__(config, weights)
        if weights.mlx_bits is not None:
            # mlx-lm rewrites norms (1 + w) and the conv1d layout when it converts Qwen3.5; not verified here
            raise ConversionError("qwen3_5_moe: MLX-quantized checkpoints are not supported; "
                                  "convert the original Hugging Face release")
        self.n_k = int(self.require("linear_num_key_heads"))
        self.n_v = int(self.require("linear_num_value_heads"))
        self.d_k = int(self.require("linear_key_head_dim"))
        self.d_v = int(self.require("linear_value_head_dim"))
        self.d_conv = int(self.require("linear_conv_kernel_dim"))
        if self.n_v % self.n_k:
            raise ConversionError(f"qwen3_5_moe: {self.n_v} linear-attention value heads are not a multiple "
                                  f"of {self.n_k} key heads")
        if self.d_k != self.d_v:
            raise ConversionError(f"qwen3_5_moe: llama.cpp needs equal linear-attention key and value head "
                                  f"dims, config.json has {self.d_k} and {self.d_v}")
        self.v_per_k = self.n_v // self.n_k
        self.layer_types: list[str] | None = self.optional("layer_types")
        if self.layer_types is not None and len(self.layer_types) != self.n_layers:
            raise ConversionError(f"qwen3_5_moe: layer_types has {len(self.layer_types)} entries for "
                                  f"{self.n_layers} layers")

    # -- hyperparameters --------------------------------------------------------------------------------
    @property
    def rope_parameters(self) -> dict[str, Any]:
        return self.hp.get("rope_parameters") or self.hp.get("rope_scaling") or {}

    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        super().add_hparams(w)
        if (n_ff_sh := self.optional("shared_expert_intermediate_size")) is not None:
            w.add_expert_shared_feed_forward_length(int(n_ff_sh))
        w.add_ssm_conv_kernel(self.d_conv)
        w.add_ssm_state_size(self.d_k)
        w.add_ssm_group_count(self.n_k)
        w.add_ssm_time_step_rank(self.n_v)
        w.add_ssm_inner_size(self.d_v * self.n_v)
        if self.layer_types is not None:
            # gguf-py 0.19 has no add_recurrent_layers; llama.cpp reads this bool array (else the interval)
            w.add_array(f"{self.arch_name}.attention.recurrent_layers",
                        [t == "linear_attention" for t in self.layer_types])
        w.add_full_attention_interval(int(self.optional("full_attention_interval", default=4)))
        rp = self.rope_parameters
        head_dim = int(self.optional("head_dim", default=self.n_embd // int(self.require("num_attention_heads"))))
        partial = float(rp.get("partial_rotary_factor", self.optional("partial_rotary_factor", default=0.25)))
        w.add_rope_dimension_count(int(head_dim * partial))
        sections = list(rp.get("mrope_section") or _DEFAULT_MROPE_SECTIONS)[:4]
        w.add_rope_dimension_sections(sections + [0] * (4 - len(sections)))
        self._add_rope_scaling(w, rp)

    def _add_rope_scaling(self, w: gguf.GGUFWriter, rp: dict[str, Any]) -> None:
        kind = rp.get("rope_type") or rp.get("type")
        factor = rp.get("factor")
        if kind in (None, "default") or factor is None:
            return
        if kind == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(factor))
        elif kind == "yarn":
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(factor))
            orig = rp.get("original_max_position_embeddings")
            if orig is None:
                raise ConversionError("qwen3_5_moe: YaRN rope scaling without original_max_position_embeddings")
            w.add_rope_scaling_orig_ctx_len(int(orig))
            attn = rp.get("attention_factor", rp.get("attn_factor"))
            for value, add in ((rp.get("extrapolation_factor"), w.add_rope_scaling_yarn_ext_factor),
                               (attn, w.add_rope_scaling_yarn_attn_factor),
                               (rp.get("beta_fast"), w.add_rope_scaling_yarn_beta_fast),
                               (rp.get("beta_slow"), w.add_rope_scaling_yarn_beta_slow)):
                if value is not None:
                    add(float(value))
        else:
            raise ConversionError(f"qwen3_5_moe: rope_type {kind!r} is not supported")

    # -- tensors ----------------------------------------------------------------------------------------
    @staticmethod
    def text_name(hf_name: str) -> str:
        """The Qwen3_5MoeForCausalLM name of a checkpoint tensor (drops the VLM's `language_model.`)."""
        return hf_name.replace("language_model.", "", 1)

    def tensor(self, hf_name: str) -> Iterable[TensorSpec]:
        name = self.text_name(hf_name)
        shape = self.weights.shape(hf_name)
        get: Callable[[], Array] = lambda: self.weights.get(hf_name)  # noqa: E731
        if ".linear_attn." in name:
            yield self._linear_attn(hf_name, name, shape)
        elif name.endswith("norm.weight"):       # (1 + w) RMSNorm: store 1 + w
            yield self.spec(self.map_name(name), shape, lambda: get() + np.float32(1.0), hf_name)
        else:
            spec = self.spec(self.map_name(name), shape, get, hf_name)
            if len(shape) == 2:   # untransformed: stream it in row blocks (the 248k-row embedding and output)
                spec.load_rows = lambda r0, r1: self.weights.get_rows(hf_name, r0, r1)
            yield spec

    def _linear_attn(self, hf_name: str, name: str, shape: tuple[int, ...]) -> TensorSpec:
        get = self.weights.get
        tile = lambda x, axis, hd: tile_v_heads(x, axis, self.n_k, self.v_per_k, hd)  # noqa: E731
        qk = 2 * self.n_k * self.d_k          # q and k channels ahead of v in in_proj_qkv and the conv

        def v_rows(x: Array) -> Array:        # tile only the value part of a [q; k; v] stack
            return np.concatenate([x[:qk], tile(x[qk:], 0, self.d_v)], axis=0)

        leaf = name.rsplit(".", 2)
        if name.endswith(".A_log"):
            return self.spec(self.map_name(name), shape, lambda: -np.exp(tile(get(hf_name), 0, 1)), hf_name)
        if name.endswith(".dt_bias"):
            gname = self.map_name(name[: -len(".dt_bias")] + ".dt_proj.bias")
            return self.spec(gname, shape, lambda: tile(get(hf_name), 0, 1), hf_name)
        if name.endswith(".conv1d.weight"):
            if len(shape) != 3 or shape[1] != 1:
                raise CheckpointError(f"{hf_name}: expected a depthwise conv kernel [channels, 1, kernel], "
                                      f"got {list(shape)}")
            flat = (shape[0], shape[2])
            return self.spec(self.map_name(name), flat, lambda: v_rows(get(hf_name).reshape(flat)), hf_name,
                             role=Role.F32)
        loaders: dict[str, Callable[[Array], Array]] = {
            "in_proj_qkv": v_rows,
            "in_proj_z": lambda x: tile(x, 0, self.d_v),
            "in_proj_a": lambda x: tile(x, 0, 1),
            "in_proj_b": lambda x: tile(x, 0, 1),
            "out_proj": lambda x: tile(x, 1, self.d_v),
            "norm": lambda x: x,              # gated RMSNorm: plain x * w
        }
        if len(leaf) < 3 or leaf[-1] != "weight" or leaf[-2] not in loaders:
            raise ConversionError(f"{self.arch_name}: do not know where tensor {hf_name!r} goes")
        f = loaders[leaf[-2]]
        return self.spec(self.map_name(name), shape, lambda: f(get(hf_name)), hf_name)

    # -- validation -------------------------------------------------------------------------------------
    def expected_shapes(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        yield from super().expected_shapes()
        H, key_dim, value_dim = self.n_embd, self.n_k * self.d_k, self.n_v * self.d_v
        conv_dim = 2 * key_dim + value_dim
        yield r"blk\.\d+\.attn_qkv\.weight", (conv_dim, H)
        yield r"blk\.\d+\.attn_gate\.weight", (value_dim, H)
        yield r"blk\.\d+\.ssm_conv1d\.weight", (conv_dim, self.d_conv)
        yield r"blk\.\d+\.ssm_(alpha|beta)\.weight", (self.n_v, H)
        yield r"blk\.\d+\.ssm_(a|dt\.bias)", (self.n_v,)
        yield r"blk\.\d+\.ssm_norm\.weight", (self.d_v,)
        yield r"blk\.\d+\.ssm_out\.weight", (H, value_dim)
        yield r"blk\.\d+\.ffn_gate_inp_shexp\.weight", (1, H)
        yield from attention_shapes(self.hp, q_factor=2)   # the query projection also yields the output gate
        yield r"blk\.\d+\.attn_(q|k)_norm\.weight", (head_dim(self.hp),)
        if (n_ff_sh := self.optional("shared_expert_intermediate_size")) is not None:
            yield r"blk\.\d+\.ffn_(gate|up)_shexp\.weight", (int(n_ff_sh), H)
            yield r"blk\.\d+\.ffn_down_shexp\.weight", (H, int(n_ff_sh))

    def specs(self) -> list[TensorSpec]:
        out = super().specs()
        if self.layer_types is not None:   # a linear-attention layer must have its recurrent tensors, and back
            have = {s.layer for s in out if s.name.endswith(".ssm_a")}
            want = {i for i, t in enumerate(self.layer_types) if t == "linear_attention"}
            if have != want:
                raise CheckpointError(f"linear-attention tensors in layers {sorted(have)}, but config.json's "
                                      f"layer_types puts linear attention in layers {sorted(want)}")
        return out

