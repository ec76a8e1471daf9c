"""`convert()`: Hugging Face checkpoint -> streaming GGUF. The one entry point of the converter."""

from __future__ import annotations

import json
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gguf
from gguf import GGMLQuantizationType as T

from flashmoe_gguf.ggml_lib import Ggml, default_threads
from .checkpoint import Checkpoint
from .errors import ConversionError, RecipeError
from .mixes import MIXES, parse_mix
from .recipe import ROUTER_TYPES, Recipe, Role, parse_type
from .source import resolve_source
from .validate import check_tensors, validated_arch
from .vocab import load_vocab
from .weights import Weights
from .writer import StreamingWriter, plan_tensors, streaming_layout

DEFAULT_ALIGNMENT = 16 * 1024


@dataclass
class ConversionReport:
    output: Path
    arch: str
    tensors: int
    bytes_in: int
    bytes_out: int
    seconds: float
    peak_rss: int
    expert_type: str
    fallbacks: list[str] = field(default_factory=list)
    transcoded_experts: int = 0
    transcode_max_error: float = 0.0
    mxfp4_experts: int = 0
    requantized_experts: int = 0
    requant_rms_error: float = 0.0

    def summary(self) -> str:
        gbps_in = self.bytes_in / self.seconds / 1e9 if self.seconds else 0.0
        gbps_out = self.bytes_out / self.seconds / 1e9 if self.seconds else 0.0
        lines = [f"wrote {self.output} ({self.arch}, {self.tensors} tensors, {self.bytes_out / 1e9:.3f} GB) in "
                 f"{self.seconds:.1f} s: {gbps_in:.2f} GB/s in, {gbps_out:.2f} GB/s out, "
                 f"peak RSS {self.peak_rss / 2**20:.0f} MiB"]
        if self.transcoded_experts:
            lines.append(f"transcoded {self.transcoded_experts} MLX 4-bit experts to Q4_1 directly "
                         f"(max |error| {self.transcode_max_error:.3g})")
        if self.mxfp4_experts:
            lines.append(f"copied {self.mxfp4_experts} MXFP4 experts into ggml's MXFP4 blocks bit for bit")
        if self.requantized_experts:
            lines.append(f"re-quantized {self.requantized_experts} MLX experts to {self.expert_type} (no exact "
                         f"mapping): worst RMS error {self.requant_rms_error:.3%} of the MLX weights' RMS")
        lines += [f"note: {f}" for f in self.fallbacks]
        return "\n".join(lines)


def _type(v: str | T | None, allowed: tuple[T, ...] | None = None, what: str = "tensor type") -> T | None:
    if v is None or isinstance(v, T):
        return v
    return parse_type(v, allowed, what) if allowed else parse_type(v, what=what)


def _peak_rss() -> int:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb if sys.platform == "darwin" else kb * 1024


def read_config(model_dir: Path) -> dict[str, Any]:
    cfg = model_dir / "config.json"
    if not cfg.exists():
        raise ConversionError(f"{model_dir}: no config.json (is this a Hugging Face model directory?)")
    try:
        data = json.loads(cfg.read_bytes())
    except RecursionError:
        raise ConversionError(f"{cfg}: not valid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:   # JSONDecodeError, and int() digit limits, are ValueErrors
        raise ConversionError(f"{cfg}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{cfg}: not a JSON object")
    return data


def _check_options(experts: str | T | None, dense: str | T, router: str | T,
                   align: int) -> tuple[T | None, T, T]:
    if align <= 0 or align & (align - 1) or align % 32:
        raise ConversionError(f"--align must be a power of two and at least 32, got {align}")
    mix = parse_mix(experts) if isinstance(experts, str) else None
    try:
        experts_t = mix.base if mix else _type(experts)
    except RecipeError as exc:
        raise RecipeError(f"{exc}, or one of llama.cpp's mixes {', '.join(MIXES)}") from None
    dense_t = _type(dense)
    router_t = _type(router, ROUTER_TYPES, "router type")
    assert dense_t is not None and router_t is not None
    return experts_t, dense_t, router_t


def convert(src: str | Path, output: str | Path, *, experts: str | T | None = None,
            dense: str | T = T.Q8_0, router: str | T = T.F32, align: int = DEFAULT_ALIGNMENT,
            threads: int | None = None, progress: bool = False, vocab_pre: str | None = None,
            revision: str | None = None) -> ConversionReport:
    """Convert SRC (a model directory or a Hugging Face repo id) into a streaming GGUF at OUTPUT.

    experts: routed experts' type (default Q4_K; Q4_1 for an MLX 4-bit checkpoint and MXFP4 for MXFP4 experts
    (GPT-OSS), exact transcodes), or one of
    llama.cpp's mixes Q3_K_M, Q4_K_M, Q5_K_M (per-layer expert types as llama-quantize chooses them, mixes.py);
    dense: attention, shared experts, embeddings, output (default Q8_0); router: routers and shared-expert
    gates (F32, F16 or BF16); align: general.alignment, a power of two (default 16 KiB).
    """
    _check_options(experts, dense, router, align)
    model_dir = resolve_source(src, revision=revision)
    config = read_config(model_dir)
    validated_arch(config)
    Ggml.load()
    ckpt = Checkpoint(model_dir)
    try:
        return convert_loaded(config, Weights(ckpt, config), model_dir, output, experts=experts, dense=dense,
                              router=router, align=align, threads=threads, progress=progress,
                              vocab_pre=vocab_pre, name=config.get("_name_or_path") or model_dir.name,
                              bytes_in=ckpt.total_bytes())
    finally:
        ckpt.close()


def convert_loaded(config: dict[str, Any], weights: Weights, tokenizer_dir: Path, output: str | Path, *,
                   experts: str | T | None = None, dense: str | T = T.Q8_0, router: str | T = T.F32,
                   align: int = DEFAULT_ALIGNMENT, threads: int | None = None, progress: bool = False,
                   vocab_pre: str | None = None, name: str | None = None, bytes_in: int = 0,
                   expert_pool: int | None = None,
                   extra_metadata: Callable[[gguf.GGUFWriter], None] | None = None) -> ConversionReport:
    """The conversion itself, from an already opened source: config.json's dict, a `Weights` (or anything with
    its interface), and the directory holding tokenizer.json. `convert()` is this after resolving SRC.

    expert_pool: for synthetic weights only (see `StreamingWriter`): encode `expert_pool` experts per routed
    tensor and repeat their bytes for the others. extra_metadata adds keys after the standard ones.
    """
    experts_t, dense_t, router_t = _check_options(experts, dense, router, align)
    output = Path(output)
    arch_cls = validated_arch(config)
    ggml = Ggml.load()
    arch = arch_cls(config, weights)
    specs = arch.specs()
    check_tensors(arch, specs)
    if experts_t is None:   # an exact copy where the checkpoint's experts have one, else Q4_K
        expert_specs = [s for s in specs if s.is_expert]
        mlx4 = all(s.load_expert_mlx is not None for s in expert_specs) and weights.mlx_bits == 4
        mxfp4 = bool(expert_specs) and all(s.load_expert_mxfp4 is not None for s in expert_specs)
        experts_t = T.Q4_1 if mlx4 else T.MXFP4 if mxfp4 else T.Q4_K
    mix = parse_mix(experts) if isinstance(experts, str) else None
    recipe = Recipe(experts=experts_t, dense=dense_t, router=router_t, mix=mix, n_layer=arch.n_layers)
    experts_name = mix.name if mix else experts_t.name
    embd = next((s for s in specs if s.name == "token_embd.weight"), None)
    if embd is None:
        raise ConversionError("checkpoint has no token embedding")
    vocab = load_vocab(tokenizer_dir, embd.shape[0], arch.vocab_pre_default, vocab_pre)
    planned = plan_tensors(specs, recipe, align)
    layout = streaming_layout(planned, arch.n_experts)

    def metadata(w: gguf.GGUFWriter) -> None:
        w.add_name(name or tokenizer_dir.name)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        arch.add_hparams(w)
        vocab.write(w)
        w.add_string("flashmoe.recipe", f"experts={experts_name} dense={dense_t.name} router={router_t.name}")
        if extra_metadata is not None:
            extra_metadata(w)

    total = sum(p.nbytes for p in planned)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=output.name,
                   dynamic_ncols=True)
    try:
        stats = StreamingWriter(ggml, threads or default_threads(), expert_pool=expert_pool).write(
            output, arch.arch_name, metadata, planned, layout, align, bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    return ConversionReport(output, arch.arch_name, stats.tensors, bytes_in, stats.bytes_out,
                            stats.seconds, _peak_rss(), experts_name, list(recipe.fallbacks) + arch.notes,
                            stats.transcoded_experts, stats.transcode_max_error, stats.mxfp4_experts,
                            stats.requantized_experts, stats.requant_rms_error)


__all__ = ["ConversionReport", "convert", "convert_loaded", "DEFAULT_ALIGNMENT", "Role"]
