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

from typing import Any, Callable, Iterable, Iterator

import gguf
import numpy as np

from ..errors import CheckpointError, ConversionError
from ..recipe import Role
from ..weights import Weights
from .base import Array, MoeArch, TensorSpec

_DEFAULT_MROPE_SECTIONS = (11, 11, 10)   # transformers' default when rope_parameters has no mrope_section


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
    fuse_gate_up = True
    ignore_patterns = MoeArch.ignore_patterns + (
        r"^(model\.)?mtp\.",                         # multi-token-prediction head
        r"^(model\.)?visual\.", r"^model\.vision",    # vision tower
    )

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

