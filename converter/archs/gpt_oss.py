"""GPT-OSS (gpt-oss-20b, gpt-oss-120b) -> llama.cpp `gpt-oss`.

Attention with q/k/v/o biases and a learned per-head "sink" logit that joins every softmax; layers alternate
between a sliding window (`layer_types`, `sliding_window` tokens) and full attention; YaRN rope on half-split
pairs (llama.cpp's NEOX, as stored). Every layer routes to 4 of 32 / 128 experts: softmax over the top-k router
logits (router with a bias), experts with biases and a clamped SwiGLU, `(up + 1) * gate * sigmoid(1.702 gate)`.
The release stores the routed experts in MXFP4 (`experts.gate_up_proj_blocks` / `_scales`, and `down_proj_*`).

What is non-trivial:
- MXFP4 experts are copied into ggml's MXFP4 blocks bit for bit (transcode.py), the default expert type for such
  a checkpoint; another --experts type dequantizes them first.
- `gate_up_proj` interleaves gate and up along its output rows (gate = rows 0, 2, 4, ..., up = 1, 3, ...); so do
  its bias and, in the MXFP4 release, its blocks. llama.cpp's gpt-oss takes separate gate and up experts (and
  biases). In MXFP4 a matrix is stored output-major ([experts, out, in / 32, 16]); as floats (the BF16 copies
  some publish, or what transformers saves) `gate_up_proj` is [experts, in, 2 * out] and `down_proj`
  [experts, in, out]: both are transposed to ggml's [experts, out, in].
- `self_attn.sinks` becomes `attn_sinks.weight`; `post_attention_layernorm` is llama.cpp's `post_attention_norm`.
- llama.cpp fixes the SwiGLU constants (alpha 1.702, limit 7) and the gating (softmax over the chosen experts'
  logits); a checkpoint with other values is refused. It also rounds YaRN's correction range to whole
  dimensions, which GPT-OSS's config turns off (`truncate: false`); the conversion summary says so.
- The harmony chat template ships as chat_template.jinja (vocab.py reads it); the tokenizer (o200k_harmony) is
  llama.cpp's "gpt-4o" pre-tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import gguf
import numpy as np

from ..errors import CheckpointError, ConversionError
from ..pretokenizers import SPLIT_REGEX
from ..recipe import Role
from ..weights import Mxfp4Quant, Weights
from .base import Array, ExpertSource, MoeArch, TensorSpec
from .facts import TestModel

SWIGLU_ALPHA, SWIGLU_LIMIT = 1.702, 7.0   # llama.cpp's LLM_FFN_SWIGLU_OAI_MOE constants
HARMONY_SPECIALS = ("<|startoftext|>", "<|endoftext|>", "<|return|>", "<|start|>", "<|end|>", "<|message|>",
                    "<|channel|>", "<|constrain|>", "<|call|>")
# A short template in the harmony format (the release's own is longer: tools, reasoning effort, dates)
HARMONY_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}<|start|>assistant<|channel|>final<|message|>{{ m.content }}<|end|>"
    "{%- else -%}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}")

_FP4_GRID = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=np.float32)


def quantize_mxfp4(w: Array) -> Mxfp4Quant:
    """float [..., rows, cols] -> MXFP4 as GPT-OSS stores it (per 32 weights: E8M0 scale so that the largest
    magnitude fits 6, codes rounded to the nearest E2M1 value). For building test checkpoints."""
    *lead, cols = w.shape
    g = w.reshape(*lead, cols // 32, 32).astype(np.float32)
    amax = np.abs(g).max(axis=-1)
    exp = np.where(amax > 0, np.ceil(np.log2(np.maximum(amax, 1e-30) / 6.0)), 0).astype(np.int32)
    exp = np.clip(exp, -127, 127)
    scaled = np.abs(g) / np.ldexp(np.float32(1.0), exp)[..., None]
    mag = np.abs(scaled[..., None] - _FP4_GRID).argmin(axis=-1).astype(np.uint8)
    codes = mag | np.where(g < 0, 8, 0).astype(np.uint8)
    blocks = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    return Mxfp4Quant(blocks, (exp + 127).astype(np.uint8))


def _gpt_oss_release_files(model_dir: Path) -> None:
    """Rewrite what transformers saved for a fresh GptOssForCausalLM into the layout OpenAI publishes: routed
    experts in MXFP4 (`*_blocks` [E, out, in / 32, 16], `*_scales` [E, out, in / 32]) with a
    quantization_config, the harmony special tokens in the tokenizer and the template in chat_template.jinja.
    transformers loads it back (dequantizing the experts), so the reference forward pass runs the same weights."""
    from safetensors.numpy import load_file, save_file

    path = model_dir / "model.safetensors"
    t = load_file(path)
    out = {}
    for k, v in t.items():
        if k.endswith(("experts.gate_up_proj", "experts.down_proj")):
            q = quantize_mxfp4(np.swapaxes(v, 1, 2))           # [E, in, out] -> [E, out, in]
            out[k + "_blocks"] = q.blocks.reshape(*q.scales.shape, 16)
            out[k + "_scales"] = q.scales
        else:
            out[k] = v
    save_file(out, str(path), metadata={"format": "pt"})
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (model_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    _harmony_specials(tok)
    (model_dir / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    tcfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    tcfg.update(bos_token="<|startoftext|>", eos_token="<|return|>", pad_token="<|endoftext|>")
    tcfg.pop("chat_template", None)
    (model_dir / "tokenizer_config.json").write_text(json.dumps(tcfg, ensure_ascii=False))
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    cfg.update(bos_token_id=ids["<|startoftext|>"], eos_token_id=ids["<|return|>"], pad_token_id=ids["<|endoftext|>"])
    (model_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    (model_dir / "chat_template.jinja").write_text(HARMONY_TEMPLATE)


def _harmony_specials(tok: dict[str, Any]) -> None:
    """Give a test tokenizer.json harmony's special tokens: its own specials renamed, then the last ordinary
    tokens (and the merges that make or use them) turned into the rest, so the vocabulary keeps its size."""
    added, vocab = tok["added_tokens"], tok["model"]["vocab"]
    for t, name in zip(added, HARMONY_SPECIALS):
        t["content"] = name
    extra = HARMONY_SPECIALS[len(added):]
    victims = sorted(vocab.items(), key=lambda kv: kv[1])[len(vocab) - len(extra):]
    gone = {t for t, _ in victims}
    for t in gone:
        del vocab[t]
    pairs = [m.split(" ", 1) if isinstance(m, str) else m for m in tok["model"]["merges"]]
    tok["model"]["merges"] = [" ".join(p) for p in pairs if not (gone & {p[0], p[1], p[0] + p[1]})]
    added += [{"id": tid, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
               "normalized": False, "special": True} for (_, tid), name in zip(victims, extra)]
    # in id order: the tokenizers library numbers added tokens missing from the vocabulary in list order, so a
    # list out of id order would give them other ids than tokenizer.json states (and than a GGUF's vocabulary)
    added.sort(key=lambda t: t["id"])


class GptOss(MoeArch):
    model_types = ("gpt_oss",)
    gguf_arch = gguf.MODEL_ARCH.GPT_OSS
    vocab_pre_default = "gpt-4o"
    # 4 layers alternating sliding (window 8, so the test prompts cross it) and full attention (attention wider
    # than the residual, as in the releases, is a variant in tests/test_gpt_oss.py); YaRN with the
    # release's betas but rounded correction range (truncate: true, what llama.cpp computes: with the release's
    # truncate: false the logits of this small model move by half their range); expert rows of 8 MXFP4 blocks
    # (an even count, which flashmoe's MXFP4 kernels take)
    test_models = {"gpt_oss": TestModel("gpt_oss", dict(
        hidden_size=256, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=64, num_local_experts=8, num_experts_per_tok=2, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"] * 2, max_position_embeddings=512,
        tie_word_embeddings=False,
        rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=4.0, original_max_position_embeddings=128,
                             beta_fast=32.0, beta_slow=1.0, truncate=True)),
        tokenizer="qwen2", bpe_regex=SPLIT_REGEX["gpt-4o"], post_build=_gpt_oss_release_files,
        default_experts="MXFP4")}

    def __init__(self, config: dict[str, Any], weights: Weights) -> None:
        super().__init__(config, weights)
        alpha = float(self.optional("swiglu_alpha", default=SWIGLU_ALPHA))
        limit = float(self.optional("swiglu_limit", default=SWIGLU_LIMIT))
        if (alpha, limit) != (SWIGLU_ALPHA, SWIGLU_LIMIT):
            raise ConversionError(f"gpt_oss: llama.cpp's gpt-oss fixes swiglu_alpha {SWIGLU_ALPHA} and swiglu_limit "
                                  f"{SWIGLU_LIMIT}, config.json has {alpha} and {limit}")
        if self.optional("attention_bias", default=True) is not True:
            raise ConversionError("gpt_oss without attention_bias: llama.cpp's gpt-oss requires q/k/v/o biases")
        self.n_ff = int(self.require("intermediate_size"))
        self.layer_types: list[str] | None = self.optional("layer_types")
        if self.layer_types is not None:
            if len(self.layer_types) != self.n_layers:
                raise ConversionError(f"gpt_oss: layer_types has {len(self.layer_types)} entries for "
                                      f"{self.n_layers} layers")
            unknown = set(self.layer_types) - {"sliding_attention", "full_attention"}
            if unknown:
                raise ConversionError(f"gpt_oss: unknown layer types {sorted(unknown)}")

    # -- hyperparameters --------------------------------------------------------------------------------
    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        super().add_hparams(w)
        w.add_expert_feed_forward_length(self.n_ff)
        w.add_sliding_window(int(self.require("sliding_window")))
        if self.layer_types is not None:
            w.add_sliding_window_pattern([t == "sliding_attention" for t in self.layer_types])
        rp = self.optional("rope_scaling", "rope_parameters", default={})
        kind = rp.get("rope_type", rp.get("type"))
        if kind == "yarn":
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(rp["factor"]))
            w.add_rope_scaling_orig_ctx_len(int(rp["original_max_position_embeddings"]))
            for key, add in (("beta_fast", w.add_rope_scaling_yarn_beta_fast),
                             ("beta_slow", w.add_rope_scaling_yarn_beta_slow)):
                if rp.get(key) is not None:
                    add(float(rp[key]))
            if (attn := rp.get("attention_factor")) is not None:
                w.add_rope_scaling_yarn_attn_factor(float(attn))
            if rp.get("truncate") is False:
                self.notes.append("YaRN: llama.cpp rounds the correction range to whole dimensions, this model's "
                                  "config does not (truncate: false): some rotary frequencies differ from "
                                  "transformers' (for the gpt-oss releases 9 of 32, by up to 43 %), as in every "
                                  "llama.cpp GGUF of it")
        elif kind not in (None, "default"):
            raise ConversionError(f"gpt_oss: rope scaling {kind!r} is not supported (only yarn)")

    # -- tensors ----------------------------------------------------------------------------------------
    def tensor(self, hf_name: str) -> Iterable[TensorSpec]:
        if hf_name.endswith(".self_attn.sinks"):
            yield self.spec(self.map_name(hf_name) + ".weight", self.weights.shape(hf_name),
                            lambda: self.weights.get(hf_name), hf_name)
        elif hf_name.endswith("experts.gate_up_proj_bias"):
            for kind, rows in (("gate", slice(0, None, 2)), ("up", slice(1, None, 2))):
                name = self.map_name(hf_name.replace("gate_up_proj_bias", f"{kind}_proj.bias"))
                E, two_ff = self.weights.shape(hf_name)
                yield self.spec(name, (E, two_ff // 2), lambda rows=rows: self.weights.get(hf_name)[:, rows], hf_name)
        elif hf_name.endswith("experts.down_proj_bias"):
            yield self.spec(self.map_name(hf_name.replace("down_proj_bias", "down_proj.bias")),
                            self.weights.shape(hf_name), lambda: self.weights.get(hf_name), hf_name)
        else:
            yield from super().tensor(hf_name)

    def expert_specs(self, layer: int, srcs: dict[str, ExpertSource]) -> list[TensorSpec]:
        if set(srcs) != {"gate_up", "down"} or srcs["gate_up"].stacked is None or srcs["down"].stacked is None:
            raise CheckpointError(f"layer {layer}: gpt_oss experts must be stacked experts.gate_up_proj and "
                                  f"experts.down_proj, found {sorted(srcs)}")
        E, H, F = self.n_experts, self.n_embd, self.n_ff
        out = [self._expert(layer, srcs["gate_up"].stacked, kind, rows, (F, H), 2 * F)
               for kind, rows in (("gate", slice(0, None, 2)), ("up", slice(1, None, 2)))]
        out.append(self._expert(layer, srcs["down"].stacked, "down", slice(None), (H, F), H))
        assert all(s.shape[0] == E for s in out)
        return out

    def _expert(self, layer: int, name: str, kind: str, rows: slice, shape: tuple[int, int],
                stored_rows: int) -> TensorSpec:
        """One of gate / up / down: rows `rows` of the stored [out, in] matrix of each expert"""
        w = self.weights
        E, (n_out, n_in) = self.n_experts, shape
        mxfp4 = w.is_mxfp4(name)
        stored = w.shape(name)
        want = (E, stored_rows, n_in) if mxfp4 else (E, n_in, stored_rows)
        if stored != want:
            raise CheckpointError(f"{name} has shape {list(stored)}, config.json implies {list(want)}"
                                  f"{' (MXFP4: experts, out, in)' if mxfp4 else ' (experts, in, out)'}")
        if mxfp4:
            load: Callable[[int], Array] = lambda i: w.get(name, i)[rows]                   # noqa: E731
            raw: Callable[[int], Mxfp4Quant] | None = lambda i: self._mxfp4_rows(name, i, rows)  # noqa: E731
        else:
            load = lambda i: np.ascontiguousarray(w.get(name, i).T[rows])                  # noqa: E731
            raw = None
        return TensorSpec(f"blk.{layer}.ffn_{kind}_exps.weight", (E, n_out, n_in), Role.EXPERT, load_expert=load,
                          load_expert_mxfp4=raw, expert_kind=kind, source=name)

    def _mxfp4_rows(self, name: str, i: int, rows: slice) -> Mxfp4Quant:
        m = self.weights.mxfp4(name, i)
        return Mxfp4Quant(np.ascontiguousarray(m.blocks[rows]), np.ascontiguousarray(m.scales[rows]))

    def expected_shapes(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        yield from super().expected_shapes()
        E, H, F = self.n_experts, self.n_embd, self.n_ff
        n_head, n_kv = int(self.require("num_attention_heads")), int(self.require("num_key_value_heads"))
        hd = int(self.optional("head_dim", default=H // n_head))
        yield r"blk\.\d+\.attn_q\.weight", (n_head * hd, H)
        yield r"blk\.\d+\.attn_(k|v)\.weight", (n_kv * hd, H)
        yield r"blk\.\d+\.attn_output\.weight", (H, n_head * hd)
        yield r"blk\.\d+\.attn_q\.bias", (n_head * hd,)
        yield r"blk\.\d+\.attn_(k|v)\.bias", (n_kv * hd,)
        yield r"blk\.\d+\.attn_output\.bias", (H,)
        yield r"blk\.\d+\.ffn_(gate|up)_exps\.weight", (E, F, H)
        yield r"blk\.\d+\.ffn_down_exps\.weight", (E, H, F)
        yield r"blk\.\d+\.ffn_(gate|up)_exps\.bias", (E, F)
        yield r"blk\.\d+\.ffn_down_exps\.bias", (E, H)
        yield r"blk\.\d+\.ffn_gate_inp\.bias", (E,)
        yield r"blk\.\d+\.attn_sinks\.weight", (n_head,)
