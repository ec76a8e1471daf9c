"""The shared base of every architecture module.

An architecture module says three things: which Hugging Face `model_type` it handles, which llama.cpp
architecture it becomes (`gguf_arch`), and how its hyperparameters and any non-trivial tensors map. Everything
else is done here: discovering routed experts in whatever form the checkpoint stores them (one tensor per
expert, HF stacked `experts.gate_up_proj`, MLX `switch_mlp`), naming tensors through gguf-py's
`TensorNameMap`, giving each tensor a role for the recipe, and ordering tensors by layer.

A `TensorSpec` is a promise: name, shape and role are known up front (the GGUF header is written before any
data), and `load` / `load_expert` produce float32 data only when the writer asks, one tensor or one expert at
a time, so memory stays bounded whatever the model size.
"""

from __future__ import annotations

import copy
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator

import gguf
import numpy as np

from flashmoe_gguf.experts import FUSED_GATE_UP_ARCHS, expert_tensor_name, parse_expert_name

from ..errors import CheckpointError, ConversionError
from ..recipe import Role
from ..weights import MlxQuant, Mxfp4Quant, Weights
from .facts import Release, TensorInit, TestModel

Array = np.ndarray


@dataclass
class TensorSpec:
    name: str                                   # GGUF tensor name, e.g. "blk.3.ffn_down_exps.weight"
    shape: tuple[int, ...]                      # numpy order (outermost first)
    role: Role
    load: Callable[[], Array] | None = None     # whole tensor, float32 (non-expert tensors)
    load_expert: Callable[[int], Array] | None = None        # expert i: [rows, cols] float32
    load_expert_mlx: Callable[[int], MlxQuant] | None = None  # expert i, as stored by MLX (for transcoding)
    load_expert_mxfp4: Callable[[int], Mxfp4Quant] | None = None  # expert i, as stored in MXFP4 (copied as is)
    load_rows: Callable[[int, int], Array] | None = None      # rows [r0, r1) of an untransformed matrix
    expert_kind: str | None = None              # "gate_up", "gate", "up" or "down"
    source: str = ""                            # what it was made from, for messages

    @property
    def layer(self) -> int | None:
        m = re.match(r"blk\.(\d+)\.", self.name)
        return int(m.group(1)) if m else None

    @property
    def is_expert(self) -> bool:
        return self.load_expert is not None


@dataclass
class ExpertSource:
    """Where one projection (gate, up, gate_up or down) of one layer's routed experts lives."""
    kind: str
    per_expert: dict[int, str] = field(default_factory=dict)  # expert index -> tensor name
    stacked: str | None = None                                # one [E, rows, cols] tensor


_PER_EXPERT = re.compile(r"^(?P<prefix>.*?layers\.(?P<layer>\d+)\.(?:.+\.)?experts)\.(?P<e>\d+)\.(?P<proj>\w+)\.weight$")
_STACKED = re.compile(r"^(?P<prefix>.*?layers\.(?P<layer>\d+)\.(?:.+\.)?(?:experts|switch_mlp))\.(?P<proj>\w+?)(?:\.weight)?$")


class MoeArch:
    """Base for one Hugging Face MoE family -> one llama.cpp architecture."""

    model_types: ClassVar[tuple[str, ...]] = ()
    gguf_arch: ClassVar[gguf.MODEL_ARCH]
    vocab_pre_default: ClassVar[str | None] = None  # the family's pre-tokenizer name where several names fit
    # names of the expert projections in the checkpoint -> our kinds
    expert_projections: ClassVar[dict[str, str]] = {
        "gate_proj": "gate", "up_proj": "up", "down_proj": "down", "gate_up_proj": "gate_up",
        "w1": "gate", "w3": "up", "w2": "down",
    }
    # checkpoint tensors that are not part of the text model (vision towers, MTP heads, ...)
    ignore_patterns: ClassVar[tuple[str, ...]] = (r"(^|\.)rotary_emb\.inv_freq$",)
    # family facts (facts.py): published models `flashmoe synth` reproduces, tiny models the tests build
    releases: ClassVar[tuple[Release, ...]] = ()
    test_models: ClassVar[dict[str, TestModel]] = {}

    def __init__(self, config: dict[str, Any], weights: Weights) -> None:
        self.config = config
        self.hp: dict[str, Any] = config.get("text_config") or config
        self.weights = weights
        self.n_layers = int(self.require("num_hidden_layers"))
        self.notes: list[str] = []      # what the conversion summary should say (e.g. a known deviation)
        self.tmap = gguf.get_tensor_name_map(self.gguf_arch, self.n_layers)

    # -- releases (for `flashmoe synth`) ----------------------------------------------------------------
    @classmethod
    def release_config(cls, release: Release, layers: int | None = None, tiny: bool = False) -> dict[str, Any]:
        """config.json of the release (its small variant with tiny=True), cut to its first `layers` layers."""
        text = copy.deepcopy(release.text_config)
        if tiny:
            text.update(copy.deepcopy(release.tiny))
        full = int(text["num_hidden_layers"])
        n = full if layers is None else int(layers)
        if not 1 <= n <= full:
            raise ValueError(f"--layers must be between 1 and {full} for {release.name}, got {layers}")
        text["num_hidden_layers"] = n
        return cls.wrap_release_config(release, text)

    @classmethod
    def wrap_release_config(cls, release: Release, text: dict[str, Any]) -> dict[str, Any]:
        """config.json around a release's text config (a VLM release nests it)."""
        return text

    @classmethod
    def release_tensors(cls, config: dict[str, Any]) -> Iterator[tuple[str, tuple[int, ...], TensorInit]]:
        """(Hugging Face name, shape, how to draw it) of every tensor a release checkpoint with this config has.

        Convention: projections get std 1/sqrt(fan_in) (output projections half that), so activations keep unit
        scale through a random stack; embeddings std 1; RMSNorm weights their neutral value. Routers get
        1/sqrt(hidden): router logits of unit-RMS hidden states are N(0, 1) per expert."""
        raise NotImplementedError(f"{cls.__name__} has no synthetic release layout")

    @classmethod
    def release_router(cls, config: dict[str, Any], layer: int) -> str:
        """the Hugging Face name of a layer's router in a release checkpoint"""
        raise NotImplementedError(f"{cls.__name__} has no synthetic release layout")

    # -- hyperparameters --------------------------------------------------------------------------------
    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]

    @property
    def fuse_gate_up(self) -> bool:
        """llama.cpp's loader for this architecture accepts ffn_gate_up_exps: write gate and up fused"""
        return self.arch_name in FUSED_GATE_UP_ARCHS

    def require(self, *keys: str) -> Any:
        for k in keys:
            if k in self.hp and self.hp[k] is not None:
                return self.hp[k]
        raise ConversionError(f"config.json lacks {' / '.join(keys)}")

    def optional(self, *keys: str, default: Any = None) -> Any:
        for k in keys:
            if k in self.hp and self.hp[k] is not None:
                return self.hp[k]
        return default

    @property
    def n_experts(self) -> int:
        return int(self.require("num_experts", "num_local_experts", "n_routed_experts"))

    @property
    def n_embd(self) -> int:
        return int(self.require("hidden_size"))

    def rope_theta(self) -> float | None:
        rp = self.hp.get("rope_parameters") or {}
        return self.optional("rope_theta", default=rp.get("rope_theta"))

    def add_hparams(self, w: gguf.GGUFWriter) -> None:
        """The keys every MoE architecture shares; subclasses add theirs after calling this."""
        w.add_block_count(self.n_layers)
        if (n_ctx := self.optional("max_position_embeddings")) is not None:
            w.add_context_length(int(n_ctx))
        w.add_embedding_length(self.n_embd)
        if (n_ff := self.optional("intermediate_size")) is not None:
            w.add_feed_forward_length(int(n_ff))
        w.add_head_count(int(self.require("num_attention_heads")))
        if (n_kv := self.optional("num_key_value_heads")) is not None:
            w.add_head_count_kv(int(n_kv))
        if (theta := self.rope_theta()) is not None:
            w.add_rope_freq_base(float(theta))
        if (eps := self.optional("rms_norm_eps")) is not None:
            w.add_layer_norm_rms_eps(float(eps))
        w.add_expert_count(self.n_experts)
        w.add_expert_used_count(int(self.require("num_experts_per_tok", "num_experts_per_token")))
        if (n_ff_exp := self.optional("moe_intermediate_size")) is not None:
            w.add_expert_feed_forward_length(int(n_ff_exp))
        if (head_dim := self.optional("head_dim")) is not None:
            w.add_key_length(int(head_dim))
            w.add_value_length(int(head_dim))

    # -- tensors ----------------------------------------------------------------------------------------
    def map_name(self, hf_name: str) -> str:
        name = self.tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConversionError(f"{self.arch_name}: do not know where tensor {hf_name!r} goes")
        return name

    def role_of(self, gguf_name: str, shape: tuple[int, ...]) -> Role:
        if parse_expert_name(gguf_name):
            return Role.EXPERT
        if ".ffn_gate_inp." in gguf_name or ".ffn_gate_inp_shexp." in gguf_name:
            return Role.ROUTER
        if len(shape) < 2 or "_norm." in gguf_name or gguf_name.endswith(".bias"):
            return Role.F32
        return Role.DENSE

    def spec(self, gguf_name: str, shape: tuple[int, ...], load: Callable[[], Array], source: str = "",
             role: Role | None = None) -> TensorSpec:
        return TensorSpec(gguf_name, tuple(int(d) for d in shape), role or self.role_of(gguf_name, shape),
                          load=load, source=source)

    def is_ignored(self, hf_name: str) -> bool:
        return any(re.search(p, hf_name) for p in self.ignore_patterns)

    def tensor(self, hf_name: str) -> Iterable[TensorSpec]:
        """Specs for one non-expert checkpoint tensor. Default: rename, same shape, same values."""
        name = self.map_name(hf_name)
        spec = self.spec(name, self.weights.shape(hf_name), lambda: self.weights.get(hf_name), hf_name)
        if len(spec.shape) == 2:
            spec.load_rows = lambda r0, r1: self.weights.get_rows(hf_name, r0, r1)
        yield spec

    def extra_tensors(self) -> Iterable[TensorSpec]:
        """Tensors that have no checkpoint counterpart (none by default)."""
        return ()

    def specs(self) -> list[TensorSpec]:
        experts = self.find_experts()
        expert_names = {n for srcs in experts.values() for s in srcs.values()
                        for n in (list(s.per_expert.values()) + ([s.stacked] if s.stacked else []))}
        out: list[TensorSpec] = []
        for hf_name in self.weights.names():
            if hf_name in expert_names or self.is_ignored(hf_name):
                continue
            out.extend(self.tensor(hf_name))
        out.extend(self.extra_tensors())
        for layer in sorted(experts):
            out.extend(self.expert_specs(layer, experts[layer]))
        seen: set[str] = set()
        for s in out:
            if s.name in seen:
                raise ConversionError(f"two checkpoint tensors map to {s.name}")
            seen.add(s.name)
        self.check_shapes(out)
        return sorted(out, key=self._order_key)

    @staticmethod
    def _order_key(s: TensorSpec) -> tuple[int, int, str]:
        if s.name.startswith("token_embd"):
            return (-1, 0, s.name)
        layer = s.layer
        if layer is None:
            return (1 << 30, 0, s.name)
        kind_rank = {"gate_up": 1, "gate": 1, "up": 2, "down": 3}.get(s.expert_kind or "", 0)
        return (layer, kind_rank, s.name)

    # -- routed experts ---------------------------------------------------------------------------------
    def find_experts(self) -> dict[int, dict[str, ExpertSource]]:
        found: dict[int, dict[str, ExpertSource]] = defaultdict(dict)
        for name in self.weights.names():
            if self.is_ignored(name):
                continue
            m = _PER_EXPERT.match(name)
            if m and m.group("proj") in self.expert_projections:
                layer, kind = int(m.group("layer")), self.expert_projections[m.group("proj")]
                src = found[layer].setdefault(kind, ExpertSource(kind))
                src.per_expert[int(m.group("e"))] = name
                continue
            m = _STACKED.match(name)
            if m and m.group("proj") in self.expert_projections and len(self.weights.shape(name)) == 3:
                layer, kind = int(m.group("layer")), self.expert_projections[m.group("proj")]
                found[layer].setdefault(kind, ExpertSource(kind)).stacked = name
        for layer, srcs in found.items():
            if layer >= self.n_layers:
                raise CheckpointError(f"experts for layer {layer}, but config.json says {self.n_layers} layers")
            for src in srcs.values():
                if src.stacked and src.per_expert:
                    raise CheckpointError(f"layer {layer}: {src.kind} experts stored both stacked and per expert")
                if src.per_expert and sorted(src.per_expert) != list(range(self.n_experts)):
                    missing = sorted(set(range(self.n_experts)) - set(src.per_expert))
                    raise CheckpointError(f"layer {layer}: {src.kind} projection has experts "
                                          f"{len(src.per_expert)} of {self.n_experts} (missing e.g. {missing[:5]})")
        return dict(found)

    def _expert_shape(self, src: ExpertSource) -> tuple[int, int]:
        if src.stacked:
            shp = self.weights.shape(src.stacked)
            if shp[0] != self.n_experts:
                raise CheckpointError(f"{src.stacked}: {shp[0]} experts, config.json says {self.n_experts}")
            return shp[1], shp[2]
        shapes = {self.weights.shape(n) for n in src.per_expert.values()}
        if len(shapes) != 1:
            raise CheckpointError(f"{src.kind} experts disagree in shape: {sorted(shapes)}")
        shp = shapes.pop()
        if len(shp) != 2:
            raise CheckpointError(f"{next(iter(src.per_expert.values()))}: expected a matrix, got {shp}")
        return shp[0], shp[1]

    def _loader(self, src: ExpertSource) -> Callable[[int], Array]:
        if src.stacked:
            name = src.stacked
            return lambda i: self.weights.get(name, i)
        names = src.per_expert
        return lambda i: self.weights.get(names[i])

    def _mlx_loader(self, src: ExpertSource) -> Callable[[int], MlxQuant] | None:
        if src.stacked and self.weights.is_mlx_quantized(src.stacked):
            name = src.stacked
            return lambda i: self.weights.mlx(name, i)
        if src.per_expert and self.weights.is_mlx_quantized(src.per_expert[0]):
            names = src.per_expert
            return lambda i: self.weights.mlx(names[i])
        return None

    def expert_specs(self, layer: int, srcs: dict[str, ExpertSource]) -> list[TensorSpec]:
        E = self.n_experts
        name = lambda kind: expert_tensor_name(layer, kind)  # noqa: E731
        out: list[TensorSpec] = []
        if "down" not in srcs:
            raise CheckpointError(f"layer {layer}: routed experts without a down projection")
        if "gate_up" in srcs:
            gu = srcs["gate_up"]
            rows, cols = self._expert_shape(gu)
            if rows % 2:
                raise CheckpointError(f"layer {layer}: fused gate_up experts have an odd row count {rows}")
            load, mlx = self._loader(gu), self._mlx_loader(gu)
            if self.fuse_gate_up:
                out.append(TensorSpec(name("gate_up"), (E, rows, cols), Role.EXPERT, load_expert=load,
                                      load_expert_mlx=mlx, expert_kind="gate_up", source=gu.stacked or ""))
            else:
                half = rows // 2
                for kind, sl in (("gate", slice(0, half)), ("up", slice(half, rows))):
                    out.append(TensorSpec(name(kind), (E, half, cols), Role.EXPERT,
                                          load_expert=lambda i, sl=sl: load(i)[sl],
                                          load_expert_mlx=_slice_mlx(mlx, sl), expert_kind=kind))
        else:
            if "gate" not in srcs or "up" not in srcs:
                raise CheckpointError(f"layer {layer}: routed experts lack a gate or up projection")
            g, u = srcs["gate"], srcs["up"]
            gshape, ushape = self._expert_shape(g), self._expert_shape(u)
            if gshape != ushape:
                raise CheckpointError(f"layer {layer}: gate experts {gshape} and up experts {ushape} differ")
            lg, lu = self._loader(g), self._loader(u)
            mg, mu = self._mlx_loader(g), self._mlx_loader(u)
            if self.fuse_gate_up:
                out.append(TensorSpec(name("gate_up"), (E, 2 * gshape[0], gshape[1]), Role.EXPERT,
                                      load_expert=lambda i: np.concatenate([lg(i), lu(i)], axis=0),
                                      load_expert_mlx=_concat_mlx(mg, mu), expert_kind="gate_up"))
            else:
                out.append(TensorSpec(name("gate"), (E, *gshape), Role.EXPERT, load_expert=lg,
                                      load_expert_mlx=mg, expert_kind="gate"))
                out.append(TensorSpec(name("up"), (E, *ushape), Role.EXPERT, load_expert=lu,
                                      load_expert_mlx=mu, expert_kind="up"))
        d = srcs["down"]
        out.append(TensorSpec(name("down"), (E, *self._expert_shape(d)), Role.EXPERT, load_expert=self._loader(d),
                              load_expert_mlx=self._mlx_loader(d), expert_kind="down"))
        return out

    # -- validation -------------------------------------------------------------------------------------
    def expected_shapes(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        """(GGUF name pattern, shape) pairs the config implies; checked before anything is written."""
        H = self.n_embd
        yield r"token_embd\.weight", (-1, H)
        yield r"blk\.\d+\.ffn_gate_inp\.weight", (self.n_experts, H)
        n_ff = self.optional("moe_intermediate_size")
        if n_ff is not None:
            yield r"blk\.\d+\.ffn_down_exps\.weight", (self.n_experts, H, int(n_ff))
            yield r"blk\.\d+\.ffn_(gate|up)_exps\.weight", (self.n_experts, int(n_ff), H)
            yield r"blk\.\d+\.ffn_gate_up_exps\.weight", (self.n_experts, 2 * int(n_ff), H)

    def check_shapes(self, specs: list[TensorSpec]) -> None:
        rules = [(re.compile(p), shp) for p, shp in self.expected_shapes()]
        for s in specs:
            for rx, shp in rules:
                if rx.fullmatch(s.name):
                    if len(shp) != len(s.shape) or any(e not in (-1, a) for e, a in zip(shp, s.shape)):
                        raise CheckpointError(f"{s.name} ({s.source or 'experts'}) has shape {list(s.shape)}, "
                                              f"config.json implies {[d if d >= 0 else '*' for d in shp]}")


def _slice_mlx(load: Callable[[int], MlxQuant] | None, sl: slice) -> Callable[[int], MlxQuant] | None:
    if load is None:
        return None

    def f(i: int) -> MlxQuant:
        m = load(i)
        return MlxQuant(m.q[sl], m.scales[sl], m.biases[sl], m.bits, m.group)
    return f


def _concat_mlx(a: Callable[[int], MlxQuant] | None,
                b: Callable[[int], MlxQuant] | None) -> Callable[[int], MlxQuant] | None:
    if a is None or b is None:
        return None

    def f(i: int) -> MlxQuant:
        x, y = a(i), b(i)
        if (x.bits, x.group) != (y.bits, y.group):
            raise CheckpointError("gate and up experts are quantized differently")
        return MlxQuant(np.concatenate([x.q, y.q]), np.concatenate([x.scales, y.scales]),
                        np.concatenate([x.biases, y.biases]), x.bits, x.group)
    return f


def plain_release_tensors(config: dict[str, Any], moe: str, projections: tuple[str, str, str],
                          qk_norm: bool) -> Iterator[tuple[str, tuple[int, ...], TensorInit]]:
    """release_tensors of the common layout (Qwen3-MoE, Mixtral): `model.layers.L.self_attn.{q,k,v,o}_proj`,
    the router `model.layers.L.<moe>.gate`, one tensor per expert projection (gate, up, down names given)."""
    hp = config.get("text_config") or config
    H, V, L = int(hp["hidden_size"]), int(hp["vocab_size"]), int(hp["num_hidden_layers"])
    nh, nkv = int(hp["num_attention_heads"]), int(hp["num_key_value_heads"])
    hd = int(hp.get("head_dim") or H // nh)
    E = int(hp.get("num_experts") or hp["num_local_experts"])
    I = int(hp.get("moe_intermediate_size") or hp["intermediate_size"])
    proj = lambda fan_in: TensorInit(std=fan_in ** -0.5)           # noqa: E731
    out = lambda fan_in: TensorInit(std=0.5 * fan_in ** -0.5)      # noqa: E731
    one = TensorInit(mean=1.0)
    yield "model.embed_tokens.weight", (V, H), TensorInit(std=1.0)
    for i in range(L):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (H,), one
        yield p + "post_attention_layernorm.weight", (H,), one
        yield p + "self_attn.q_proj.weight", (nh * hd, H), proj(H)
        yield p + "self_attn.k_proj.weight", (nkv * hd, H), proj(H)
        yield p + "self_attn.v_proj.weight", (nkv * hd, H), proj(H)
        yield p + "self_attn.o_proj.weight", (H, nh * hd), out(nh * hd)
        if qk_norm:
            yield p + "self_attn.q_norm.weight", (hd,), one
            yield p + "self_attn.k_norm.weight", (hd,), one
        yield f"{p}{moe}.gate.weight", (E, H), proj(H)
        for e in range(E):
            yield f"{p}{moe}.experts.{e}.{projections[0]}.weight", (I, H), proj(H)
            yield f"{p}{moe}.experts.{e}.{projections[1]}.weight", (I, H), proj(H)
            yield f"{p}{moe}.experts.{e}.{projections[2]}.weight", (H, I), out(I)
    yield "model.norm.weight", (H,), one
    yield "lm_head.weight", (V, H), proj(H)
