"""Validation of config.json and of the checkpoint's tensor headers against the architecture, before anything is
written: what the converter writes is something llama.cpp can load and run, or the conversion stops with a
`ConversionError` that names the key or tensor and its value.

Two steps, both cheap (no tensor data is read):
- `check_config(arch_cls, config)`: every hyperparameter any family reads has the right JSON type and a value in
  range (Python ints: no wrap-around; limits are llama.cpp's, e.g. at most 512 layers and 1024 experts), and the
  values agree with each other (`num_experts_per_tok` <= `num_experts`, heads divisible by key/value heads, ...).
  Runs before the architecture module is constructed, so no family code sees a malformed value. A family adds
  its own rules with a classmethod `validate_config(hp)`.
- `check_tensors(arch, specs)`: the tensors llama.cpp's loader requires exist (embedding, output norm, each
  layer's attention norm, query projection, FFN norm, router where it has routed experts, or a dense FFN), norms
  and the embedding have the config's sizes, and the GGUF metadata the family would write can be serialized. A
  family lists what its loader requires beyond that with `required_tensors(layer, moe)` and `required_top`; its shape
  rules are `expected_shapes` (checked by `MoeArch.specs`).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import gguf

from .errors import CheckpointError, ConfigError, ConversionError

if TYPE_CHECKING:   # base imports nothing from here; avoid the cycle at runtime
    from .archs.base import MoeArch, TensorSpec

MAX_LAYERS = 512          # llama.cpp's LLAMA_MAX_LAYERS
MAX_EXPERTS = 1024        # llama.cpp's LLAMA_MAX_EXPERTS
U32 = (1 << 32) - 1
I32 = (1 << 31) - 1


@dataclass(frozen=True)
class Num:
    """An integer (or, with real=True, a finite number) config value in [lo, hi]; lo_open excludes lo."""
    lo: float
    hi: float
    real: bool = False
    lo_open: bool = False


_DIM = Num(1, 1 << 20)
_SMALL = Num(1, 1 << 16)
_POS_REAL = Num(0, math.inf, real=True, lo_open=True)
_REAL = Num(-math.inf, math.inf, real=True)

# every hyperparameter a family module reads, by its JSON type
INT_KEYS: dict[str, Num] = {
    "num_hidden_layers": Num(1, MAX_LAYERS), "hidden_size": _DIM, "intermediate_size": Num(1, 1 << 22),
    "moe_intermediate_size": Num(1, 1 << 22), "shared_expert_intermediate_size": Num(1, 1 << 22),
    "num_attention_heads": _SMALL, "num_key_value_heads": _SMALL, "head_dim": _SMALL,
    "num_experts": Num(1, MAX_EXPERTS), "num_local_experts": Num(1, MAX_EXPERTS),
    "n_routed_experts": Num(1, MAX_EXPERTS), "num_experts_per_tok": Num(1, MAX_EXPERTS),
    "num_experts_per_token": Num(1, MAX_EXPERTS), "vocab_size": Num(1, I32),
    "max_position_embeddings": Num(1, U32), "n_shared_experts": Num(0, MAX_EXPERTS),
    "first_k_dense_replace": Num(0, MAX_LAYERS), "moe_layer_freq": Num(1, MAX_LAYERS),
    "q_lora_rank": Num(0, 1 << 20), "kv_lora_rank": _SMALL, "qk_nope_head_dim": _SMALL,
    "qk_rope_head_dim": _SMALL, "v_head_dim": _SMALL, "n_group": Num(1, MAX_EXPERTS),
    "topk_group": Num(1, MAX_EXPERTS), "linear_num_key_heads": _SMALL, "linear_num_value_heads": _SMALL,
    "linear_key_head_dim": _SMALL, "linear_value_head_dim": _SMALL, "linear_conv_kernel_dim": Num(1, 1 << 10),
    "full_attention_interval": Num(1, MAX_LAYERS), "sliding_window": Num(0, U32),
    "decoder_sparse_step": Num(1, MAX_LAYERS),
}
REAL_KEYS: dict[str, Num] = {
    "rms_norm_eps": Num(0, 1, real=True, lo_open=True), "rope_theta": _POS_REAL,
    "routed_scaling_factor": _POS_REAL, "partial_rotary_factor": Num(0, 1, real=True, lo_open=True),
    "swiglu_limit": _POS_REAL, "swiglu_alpha": _POS_REAL,
}
BOOL_KEYS = ("norm_topk_prob", "tie_word_embeddings", "attention_bias", "mlp_bias", "rope_interleave",
             "attn_output_gate", "use_sliding_window")
STR_KEYS = ("topk_method", "scoring_func", "hidden_act")
DICT_KEYS = ("rope_parameters", "rope_scaling")
# inside rope_parameters / rope_scaling
ROPE_INT: dict[str, Num] = {"original_max_position_embeddings": Num(1, U32)}
ROPE_REAL: dict[str, Num] = {
    "rope_theta": _POS_REAL, "factor": _POS_REAL, "partial_rotary_factor": REAL_KEYS["partial_rotary_factor"],
    "beta_fast": _REAL, "beta_slow": _REAL, "mscale": _REAL, "mscale_all_dim": _REAL,
    "extrapolation_factor": _REAL, "attention_factor": _REAL, "attn_factor": _REAL,
}
QUANT_KEYS = ("quantization", "quantization_config")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def check_number(where: str, v: object, rule: Num) -> None:
    """v is an integer (a finite int or float for a real rule) within the rule's range, else ConfigError."""
    if rule.real:   # an int stays an int: float() of a huge one would overflow
        ok_type = _is_int(v) or (isinstance(v, float) and math.isfinite(v))
        what = "a finite number"
    else:
        ok_type, what = _is_int(v), "an integer"
    if not ok_type:
        raise ConfigError(f"config.json: {where} is {_show(v)}, not {what}")
    x = v
    below = x <= rule.lo if rule.lo_open else x < rule.lo  # type: ignore[operator]
    if below or x > rule.hi:  # type: ignore[operator]
        lo = f"> {rule.lo:g}" if rule.lo_open else f">= {rule.lo:g}"
        hi = "" if math.isinf(rule.hi) else f" and <= {rule.hi:g}"
        raise ConfigError(f"config.json: {where} is {_show(v)}; it must be {lo}{hi}")


def _check_dict_values(prefix: str, d: dict[str, Any], ints: dict[str, Num], reals: dict[str, Num]) -> None:
    for k, rule in ints.items():
        if d.get(k) is not None:
            check_number(f"{prefix}{k}", d[k], rule)
    for k, rule in reals.items():
        if d.get(k) is not None:
            check_number(f"{prefix}{k}", d[k], rule)


def _check_rope(key: str, rp: dict[str, Any]) -> None:
    _check_dict_values(f"{key}.", rp, ROPE_INT, ROPE_REAL)
    for k in ("rope_type", "type"):
        if rp.get(k) is not None and not isinstance(rp[k], str):
            raise ConfigError(f"config.json: {key}.{k} is {_show(rp[k])}, not a string")
    sec = rp.get("mrope_section")
    if sec is not None and (not isinstance(sec, list) or not 1 <= len(sec) <= 4
                            or not all(_is_int(s) and 0 <= s <= 1 << 16 for s in sec)):
        raise ConfigError(f"config.json: {key}.mrope_section is {_show(sec)}, not a list of 1 to 4 sizes")
    for k in ("mrope_interleaved", "truncate"):
        if rp.get(k) is not None and not isinstance(rp[k], bool):
            raise ConfigError(f"config.json: {key}.{k} is {_show(rp[k])}, not true or false")


def _check_quant(key: str, q: dict[str, Any]) -> None:
    if q.get("quant_method") is not None and not isinstance(q["quant_method"], str):
        raise ConfigError(f"config.json: {key}.quant_method is {_show(q['quant_method'])}, not a string")
    if q.get("bits") is not None:
        check_number(f"{key}.bits", q["bits"], Num(1, 8))
    if q.get("group_size") is not None:
        check_number(f"{key}.group_size", q["group_size"], Num(1, 1 << 16))
    blk = q.get("weight_block_size")
    if blk is not None and (not isinstance(blk, list) or len(blk) != 2
                            or not all(_is_int(b) and 1 <= b <= 1 << 16 for b in blk)):
        raise ConfigError(f"config.json: {key}.weight_block_size is {_show(blk)}, not two block sizes")


def text_config(config: object) -> dict[str, Any]:
    """The dict of hyperparameters (a VLM config nests it under text_config), checked to be a JSON object."""
    if not isinstance(config, dict):
        raise ConfigError(f"config.json is {_show(config)}, not a JSON object")
    tc = config.get("text_config")
    if tc is not None and not isinstance(tc, dict):
        raise ConfigError(f"config.json: text_config is {_show(tc)}, not an object")
    return tc or config


def first(hp: dict[str, Any], *keys: str) -> tuple[str, Any] | None:
    """(key, value) of the first of `keys` present and not null, as MoeArch.require reads them."""
    for k in keys:
        if hp.get(k) is not None:
            return k, hp[k]
    return None


def validated_arch(config: object) -> type[MoeArch]:
    """The architecture module for config.json, after checking config.json against it (`check_config`)."""
    from .archs import arch_for

    hp = text_config(config)
    assert isinstance(config, dict)
    for d in (config, hp):
        if d.get("model_type") is not None and not isinstance(d["model_type"], str):
            raise ConfigError(f"config.json: model_type is {_show(d['model_type'])}, not a string")
    arches = config.get("architectures")
    if arches is not None and (not isinstance(arches, list) or not all(isinstance(x, str) for x in arches)):
        raise ConfigError(f"config.json: architectures is {_show(arches)}, not a list of names")
    arch_cls = arch_for(config)
    check_config(arch_cls, config)
    return arch_cls


def check_config(arch_cls: type[MoeArch], config: dict[str, Any]) -> None:
    """Types, ranges and consistency of config.json for `arch_cls`; ConfigError naming the key otherwise."""
    hp = text_config(config)
    for k, rule in INT_KEYS.items():
        if hp.get(k) is not None:
            check_number(k, hp[k], rule)
    for k, rule in REAL_KEYS.items():
        if hp.get(k) is not None:
            check_number(k, hp[k], rule)
    for k in BOOL_KEYS:
        if hp.get(k) is not None and not isinstance(hp[k], bool):
            raise ConfigError(f"config.json: {k} is {_show(hp[k])}, not true or false")
    for k in STR_KEYS:
        if hp.get(k) is not None and not isinstance(hp[k], str):
            raise ConfigError(f"config.json: {k} is {_show(hp[k])}, not a string")
    for k in DICT_KEYS:
        if hp.get(k) is not None:
            if not isinstance(hp[k], dict):
                raise ConfigError(f"config.json: {k} is {_show(hp[k])}, not an object")
            _check_rope(k, hp[k])
    for src in (config, hp):
        for k in QUANT_KEYS:
            if src.get(k) is not None:
                if not isinstance(src[k], dict):
                    raise ConfigError(f"config.json: {k} is {_show(src[k])}, not an object")
                _check_quant(k, src[k])
    for k in ("layer_types", "mlp_only_layers"):
        if hp.get(k) is not None and not isinstance(hp[k], list):
            raise ConfigError(f"config.json: {k} is {_show(hp[k])}, not a list")
    if hp.get("layer_types") is not None and not all(isinstance(t, str) for t in hp["layer_types"]):
        raise ConfigError(f"config.json: layer_types {_show(hp['layer_types'])} holds a non-string")
    for k in ("num_hidden_layers", "hidden_size", "num_attention_heads"):
        if hp.get(k) is None:
            raise ConfigError(f"config.json lacks {k}")
    experts = first(hp, "num_experts", "num_local_experts", "n_routed_experts")
    used = first(hp, "num_experts_per_tok", "num_experts_per_token")
    if experts is None:
        raise ConfigError("config.json lacks num_experts / num_local_experts / n_routed_experts")
    if used is None:
        raise ConfigError("config.json lacks num_experts_per_tok / num_experts_per_token")
    if used[1] > experts[1]:
        raise ConfigError(f"config.json: {used[0]} is {used[1]}, more than {experts[0]} ({experts[1]})")
    nh, nkv = hp["num_attention_heads"], hp.get("num_key_value_heads")
    if nkv is not None and nh % nkv:
        raise ConfigError(f"config.json: num_attention_heads ({nh}) is not a multiple of num_key_value_heads "
                          f"({nkv})")
    family = getattr(arch_cls, "validate_config", None)
    if family is not None:
        family(hp)


# -- helpers for the families' own rules ----------------------------------------------------------------------

def head_dim(hp: dict[str, Any], *, hidden_is_heads: bool = False) -> int:
    """The attention head size: head_dim, or hidden_size / num_attention_heads, which must then divide; with
    hidden_is_heads (llama.cpp's loader for the family takes the attention width to be hidden_size) also
    hidden_size == num_attention_heads * head_dim."""
    H, nh = hp["hidden_size"], hp["num_attention_heads"]
    hd = hp.get("head_dim")
    if hd is None:
        if H % nh:
            raise ConfigError(f"config.json: hidden_size ({H}) is not a multiple of num_attention_heads ({nh}) "
                              f"and there is no head_dim")
        return int(H // nh)
    if hidden_is_heads and nh * hd != H:
        raise ConfigError(f"config.json: num_attention_heads ({nh}) x head_dim ({hd}) = {nh * hd}, but this "
                          f"architecture needs it equal to hidden_size ({H})")
    return int(hd)


def attention_shapes(hp: dict[str, Any], q_factor: int = 1, *,
                     hidden_is_heads: bool = False) -> Iterator[tuple[str, tuple[int, ...]]]:
    """expected_shapes of plain multi-head attention with grouped key/value heads (q_factor 2: the query
    projection also yields a per-head output gate)."""
    H, nh = hp["hidden_size"], hp["num_attention_heads"]
    nkv = hp.get("num_key_value_heads") or nh
    hd = head_dim(hp, hidden_is_heads=hidden_is_heads)
    yield r"blk\.\d+\.attn_q\.weight", (q_factor * nh * hd, H)
    yield r"blk\.\d+\.attn_(k|v)\.weight", (nkv * hd, H)
    yield r"blk\.\d+\.attn_output\.weight", (H, nh * hd)
    yield r"blk\.\d+\.attn_q\.bias", (q_factor * nh * hd,)
    yield r"blk\.\d+\.attn_(k|v)\.bias", (nkv * hd,)


# -- tensors ---------------------------------------------------------------------------------------------------

_QUERY = ("attn_q.weight", "attn_q_a.weight", "attn_qkv.weight")
_FFN_NORM = ("ffn_norm.weight", "post_attention_norm.weight")
_EXPERT_KINDS = ("gate_up", "gate", "up", "down")


def _missing(what: str, name: str, arch: MoeArch) -> CheckpointError:
    return CheckpointError(f"{arch.arch_name}: the checkpoint has no {what} ({name}): llama.cpp cannot load the "
                           f"model without it")


def check_tensors(arch: MoeArch, specs: Sequence[TensorSpec]) -> None:
    """The tensors llama.cpp's loader needs are all there with sizes the config implies; then a dry run of the
    metadata. CheckpointError / ConfigError naming the tensor or key and its value otherwise."""
    by_name = {s.name: s for s in specs}
    H = arch.n_embd
    for s in specs:
        if not s.shape or any(d <= 0 for d in s.shape):
            raise CheckpointError(f"{s.name} ({s.source or 'experts'}) has shape {list(s.shape)}")
    embd = by_name.get("token_embd.weight")
    if embd is None:
        raise _missing("token embedding", "token_embd.weight", arch)
    if len(embd.shape) != 2 or embd.shape[1] != H:
        raise CheckpointError(f"token_embd.weight ({embd.source}) has shape {list(embd.shape)}, config.json "
                              f"implies [*, {H}] (hidden_size)")
    vocab = arch.optional("vocab_size")
    if vocab is not None and embd.shape[0] != vocab:
        raise CheckpointError(f"token_embd.weight ({embd.source}) has {embd.shape[0]} rows, config.json says "
                              f"vocab_size {vocab}")
    out = by_name.get("output.weight")
    if out is not None and tuple(out.shape) != tuple(embd.shape):
        raise CheckpointError(f"output.weight ({out.source}) has shape {list(out.shape)}, the embedding "
                              f"{list(embd.shape)}")
    for name in ("output_norm.weight", *getattr(arch, "required_top", ())):
        if name not in by_name:
            raise _missing("tensor", name, arch)
    norm_rx = ("attn_norm.weight", "ffn_norm.weight", "post_attention_norm.weight")
    for s in specs:
        if s.name == "output_norm.weight" or (s.layer is not None and s.name.split(".", 2)[2] in norm_rx):
            if tuple(s.shape) != (H,):
                raise CheckpointError(f"{s.name} ({s.source}) has shape {list(s.shape)}, config.json implies "
                                      f"[{H}] (hidden_size)")
    family = getattr(arch, "required_tensors", None)
    for layer in range(arch.n_layers):
        p = f"blk.{layer}."
        experts = any(f"{p}ffn_{k}_exps.weight" in by_name for k in _EXPERT_KINDS)
        if experts and f"{p}ffn_gate_inp.weight" not in by_name:
            raise _missing(f"router for layer {layer}", f"{p}ffn_gate_inp.weight", arch)
        if not experts and f"{p}ffn_down.weight" not in by_name:
            raise _missing(f"feed-forward network in layer {layer} (neither routed experts nor a dense FFN)",
                           f"{p}ffn_down_exps.weight", arch)
        if f"{p}attn_norm.weight" not in by_name:
            raise _missing(f"attention norm for layer {layer}", f"{p}attn_norm.weight", arch)
        if not any(p + n in by_name for n in _QUERY):
            raise _missing(f"query projection for layer {layer}", f"{p}attn_q.weight", arch)
        if not any(p + n in by_name for n in _FFN_NORM):
            raise _missing(f"FFN norm for layer {layer}", f"{p}ffn_norm.weight", arch)
        for n in (family(layer, experts) if family else ()):
            if p + n not in by_name:
                raise _missing(f"tensor for layer {layer}", p + n, arch)
    dry_run_metadata(arch)


def dry_run_metadata(arch: MoeArch) -> None:
    """Have the family write its hyperparameters into a writer that has no file and pack every value, so that an
    error in them is raised now, not half-way through writing."""
    notes = list(arch.notes)
    w = gguf.GGUFWriter(None, arch.arch_name)
    try:
        arch.add_hparams(w)
        for kv in w.kv_data:
            for key, val in kv.items():
                try:
                    w._pack_val(val.value, val.type, add_vtype=True, sub_type=val.sub_type)
                except (struct.error, ValueError, TypeError, OverflowError) as exc:
                    raise ConfigError(f"metadata {key} = {_show(val.value)} cannot be written: {exc}") from None
    except ConversionError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, ZeroDivisionError) as exc:
        raise ConfigError(f"config.json: {arch.arch_name} hyperparameters: {type(exc).__name__}: {exc}") from None
    finally:
        arch.notes[:] = notes
