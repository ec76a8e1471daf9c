"""`flashmoe synth`: streaming GGUFs with random weights at the exact per-layer shapes of real MoE models.

For benchmarks without a model hub (a 209 GB download is not a fixture). Nothing here writes GGUF itself:
a *virtual checkpoint* (`SyntheticWeights`) serves random float32 tensors under the names a Hugging Face
release of that family has, and the converter (`convert_loaded`: the architecture module, the recipe, the
streaming writer) turns it into a GGUF exactly as it would the real checkpoint, with llama.cpp's metadata, a
real tokenizer (rebuilt from the vocab GGUFs llama-cpp-python's sdist ships, see `tiny.py`) and the
`flashmoe.*` layout.

Speed: quantizing every random expert to Q4_K costs ~90 ns per value per core, hours for a real-size slice,
so by default only `pool` (16) experts per routed tensor are encoded and expert i is written as the bytes of
expert i % pool (`StreamingWriter(expert_pool=...)`). Every expert is still its own byte range of valid
quantized blocks, so I/O and compute behave as in a real file; only the content repeats. Routers are random
per expert (never pooled), so routing spreads over all experts; `synth()` reports how evenly (`RoutingSpread`).

The weights are random: the output text is meaningless, the shapes, types, sizes and layout are the real ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .converter.archs.facts import TensorInit

# -- presets: the releases the architecture modules declare (converter/archs/, family facts) -----------------

@dataclass(frozen=True)
class Preset:
    """A release of a supported family (converter/archs/facts.py: Release) and its architecture module."""
    arch: Any                       # the MoeArch subclass
    release: Any                    # its Release

    @property
    def name(self) -> str:
        return str(self.release.name)

    @property
    def description(self) -> str:
        return str(self.release.description)

    @property
    def family(self) -> str:
        return str(self.arch.model_types[0])

    @property
    def vocab(self) -> str:
        return str(self.release.vocab)

    @property
    def tokenizer_kind(self) -> str:
        return str(self.release.tokenizer_kind)

    def config(self, layers: int | None = None, tiny: bool = False) -> dict[str, Any]:
        """config.json as the release has it (Qwen3.5: the VLM wrapper with `text_config`), cut to `layers`."""
        return dict(self.arch.release_config(self.release, layers, tiny))


def _presets() -> dict[str, Preset]:
    from .converter.archs import ARCHITECTURES
    return {r.name: Preset(a, r) for a in ARCHITECTURES for r in a.releases}


PRESETS: dict[str, Preset] = _presets()


# -- the virtual checkpoint ----------------------------------------------------------------------------------

class SyntheticWeights:
    """A virtual checkpoint with the interface of `converter.weights.Weights` (what the architecture modules
    call): names, shapes, and float32 data drawn on demand, deterministically from (seed, name, expert index,
    row block), so any slice a caller asks for is the same slice of the same tensor."""

    ROW_BLOCK_ELEMENTS = 1 << 20      # rows are drawn in blocks of about this many values

    def __init__(self, arch: Any, config: dict[str, Any], seed: int = 0) -> None:
        self.arch = arch
        self.seed = int(seed)
        self.mlx_bits: int | None = None
        self.mlx_group = 64
        self.fp8_block: tuple[int, int] | None = None
        self.tensors: dict[str, tuple[tuple[int, ...], TensorInit]] = {}
        for name, shape, init in arch.release_tensors(config):
            self.tensors[name] = (shape, init)

    # -- discovery (Weights' interface) -------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[0]

    def is_mlx_quantized(self, name: str) -> bool:
        return False

    def source_dtype(self, name: str) -> str:
        self._entry(name)
        return "F32"

    def total_bytes(self) -> int:
        """float32 bytes of the whole virtual checkpoint (what `get` could produce)."""
        return sum(4 * math.prod(s) for s, _ in self.tensors.values())

    def _entry(self, name: str) -> tuple[tuple[int, ...], TensorInit]:
        from .converter.errors import CheckpointError
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"synthetic checkpoint has no tensor {name!r}") from None

    # -- data ---------------------------------------------------------------------------------------------
    def _rng(self, name: str, *key: int) -> np.random.Generator:
        h = hashlib.blake2b(name.encode(), digest_size=8).digest()
        words = [int.from_bytes(h[:4], "little"), int.from_bytes(h[4:], "little")]
        return np.random.default_rng([self.seed, *words, *(k + 1 for k in key)])

    @staticmethod
    def _draw(rng: np.random.Generator, shape: tuple[int, ...], init: TensorInit) -> np.ndarray:
        if init.log_uniform is not None:
            lo, hi = init.log_uniform
            return np.log(rng.uniform(lo, hi, size=shape)).astype(np.float32)
        if init.std == 0.0:
            return np.full(shape, init.mean, dtype=np.float32)
        # uniform with the wanted std: twice as fast to draw as a normal, and the quantizers do not care
        x = rng.random(shape, dtype=np.float32)
        x -= np.float32(0.5)
        x *= np.float32(init.std * math.sqrt(12.0))
        if init.mean:
            x += np.float32(init.mean)
        return x

    def _block_rows(self, cols: int) -> int:
        return max(1, self.ROW_BLOCK_ELEMENTS // max(cols, 1))

    def _rows(self, name: str, key: tuple[int, ...], shape: tuple[int, ...], init: TensorInit, r0: int,
              r1: int) -> np.ndarray:
        """Rows [r0, r1) of a matrix (or of one expert of a stacked tensor), drawn block by block."""
        rows, rest = shape[0], shape[1:]
        step = self._block_rows(math.prod(rest))
        first, last = r0 // step, -(-r1 // step)
        out: np.ndarray | None = None
        for b in range(first, last):
            b0, b1 = b * step, min((b + 1) * step, rows)
            blk = self._draw(self._rng(name, *key, b), (b1 - b0, *rest), init)
            part = blk[max(r0, b0) - b0: min(r1, b1) - b0]
            if last - first == 1:
                return part
            if out is None:       # filled in place: a whole tensor is never held twice
                out = np.empty((r1 - r0, *rest), dtype=np.float32)
            out[max(r0, b0) - r0: min(r1, b1) - r0] = part
        return out if out is not None else np.empty((0, *rest), dtype=np.float32)

    def get(self, name: str, index: int | None = None) -> np.ndarray:
        shape, init = self._entry(name)
        if index is not None:
            if not shape or not 0 <= index < shape[0]:
                from .converter.errors import CheckpointError
                raise CheckpointError(f"{name}: index {index} out of range for {list(shape)}")
            sub = shape[1:]
            return self._rows(name, (index,), sub, init, 0, sub[0]) if len(sub) >= 2 else \
                self._draw(self._rng(name, index), sub, init)
        if len(shape) == 3 and name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            return np.stack([self.get(name, i) for i in range(shape[0])])
        if len(shape) >= 2:
            return self._rows(name, (), shape, init, 0, shape[0])
        return self._draw(self._rng(name), shape, init)

    def get_rows(self, name: str, r0: int, r1: int) -> np.ndarray:
        shape, init = self._entry(name)
        if len(shape) < 2 or not 0 <= r0 <= r1 <= shape[0]:
            from .converter.errors import CheckpointError
            raise CheckpointError(f"{name}: rows {r0}..{r1} out of range for {list(shape)}")
        if len(shape) == 3 and name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            return self.get(name)[r0:r1]
        return self._rows(name, (), shape, init, r0, r1)

    def mlx(self, name: str, index: int | None = None) -> Any:
        raise NotImplementedError("synthetic weights are never MLX-quantized")


# -- tokenizer -----------------------------------------------------------------------------------------------

def tokenizer_dir(preset: Preset, n_vocab: int, cache_dir: Path | None = None) -> Path:
    """A directory with tokenizer.json / tokenizer_config.json for the preset's vocab, cut to fit n_vocab
    embedding rows; built once per (vocab, size) in the cache (rebuilding Qwen's 151k BPE takes ~10 s)."""
    from .converter.vocab import SPLIT_REGEX
    from .tiny import bpe_tokenizer, default_cache_dir, spm_tokenizer, vocab_gguf, write_tokenizer

    cache = cache_dir or default_cache_dir()
    n_keep = n_vocab if preset.tokenizer_kind == "spm" else n_vocab - 8   # room for the special tokens
    out = cache / "synth-tokenizers" / f"{preset.vocab}-{n_keep}-v1"
    if (out / "tokenizer.json").exists():
        return out
    vocab = vocab_gguf(cache, preset.vocab)
    if preset.tokenizer_kind == "spm":
        tj, tcfg, n = spm_tokenizer(vocab, n_keep)
    else:
        kw = {"regex": SPLIT_REGEX["qwen35"]} if preset.vocab == "qwen35" else {}
        tj, tcfg, n = bpe_tokenizer(vocab, n_keep, **kw)
    if n > n_vocab:
        raise ValueError(f"{preset.name}: tokenizer has {n} tokens for {n_vocab} embedding rows")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    write_tokenizer(tmp, tj, tcfg)
    try:
        os.replace(tmp, out)
    except OSError:            # built concurrently by someone else: keep theirs
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return out


# -- routing spread ------------------------------------------------------------------------------------------

@dataclass
class RoutingSpread:
    """How often each expert is chosen by one layer's router on random hidden states."""
    layer: int
    tokens: int
    n_expert: int
    top_k: int
    freq: np.ndarray              # per expert: fraction of tokens that select it (mean = top_k / n_expert)
    top1_prob: float              # mean softmax probability of the best expert (1.0 would be one-hot)

    @property
    def min(self) -> float:
        return float(self.freq.min())

    @property
    def max(self) -> float:
        return float(self.freq.max())

    @property
    def mean(self) -> float:
        return float(self.freq.mean())

    @property
    def never_chosen(self) -> int:
        return int((self.freq == 0).sum())

    def summary(self) -> str:
        u = self.top_k / self.n_expert
        return (f"routing spread (layer {self.layer} router, {self.tokens} random unit-RMS hidden states, top-"
                f"{self.top_k} of {self.n_expert}): per-expert selection frequency min {self.min:.4f} / mean "
                f"{self.mean:.4f} / max {self.max:.4f} ({self.min / u:.2f}x / {self.max / u:.2f}x of uniform), "
                f"{self.never_chosen} experts never chosen, mean top-1 probability {self.top1_prob:.3f}")


def routing_spread(router: np.ndarray, top_k: int, tokens: int = 8192, seed: int = 0,
                   layer: int = 0) -> RoutingSpread:
    """Run a router [n_expert, hidden] on random hidden states normalised to unit RMS (what RMSNorm with a
    neutral weight hands the router). Every supported family picks the top_k largest router logits (Qwen:
    softmax then top-k; Mixtral: top-k then softmax; softmax is monotonic), so selection is an argpartition."""
    E, H = router.shape
    rng = np.random.default_rng([seed, 0x5EED])
    freq = np.zeros(E, dtype=np.int64)
    top1 = 0.0
    for t0 in range(0, tokens, 2048):
        n = min(2048, tokens - t0)
        x = rng.standard_normal((n, H), dtype=np.float32)
        x /= np.sqrt(np.mean(x * x, axis=1, keepdims=True))
        logits = x @ router.T.astype(np.float32)
        sel = np.argpartition(-logits, top_k - 1, axis=1)[:, :top_k]
        freq += np.bincount(sel.reshape(-1), minlength=E)
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        top1 += float((1.0 / p.sum(axis=1)).sum())
    return RoutingSpread(layer, tokens, E, top_k, freq / tokens, top1 / tokens)


# -- the command ---------------------------------------------------------------------------------------------

@dataclass
class SynthReport:
    preset: str
    layers: int
    full_layers: int
    layer_types: list[str] | None
    seed: int
    pool: int | None
    conversion: Any               # converter.ConversionReport
    routing: RoutingSpread
    params: int                   # parameters in this file
    full_params: int              # ... and in the preset at full depth
    full_active: int              # active per token at full depth (experts x top_k / n_expert)
    seconds: float
    tiny: bool = False

    def summary(self) -> str:
        E = self.routing.n_expert
        pool = f"expert pool {self.pool} (expert i holds the bytes of expert i % {self.pool})" \
            if self.pool and self.pool < E else "no expert pool (every expert encoded)" if not self.pool \
            else f"expert pool {self.pool} >= {E} experts (every expert encoded)"
        lines = [f"synthetic {self.preset}: {self.layers} of {self.full_layers} layers, seed {self.seed}, {pool}"]
        if self.layer_types:
            lines.append("layer types: " + " ".join("A" if t == "full_attention" else "L" for t in self.layer_types)
                         + "  (L = Gated DeltaNet, A = full attention)")
        c = self.conversion
        lines.append(f"wrote {c.output} ({c.arch}, {c.tensors} tensors, {c.bytes_out / 1e9:.3f} GB, experts "
                     f"{c.expert_type}) in {c.seconds:.1f} s: {c.bytes_out / max(c.seconds, 1e-9) / 1e9:.2f} GB/s, "
                     f"peak RSS {c.peak_rss / 2**20:.0f} MiB")
        lines += [f"note: {f}" for f in self.conversion.fallbacks]
        lines.append(f"parameters: {self.params / 1e9:.3f} B in this file{' (tiny test variant)' if self.tiny else ''}; "
                     f"{self.preset} at full size has {self.full_params / 1e9:.1f} B, "
                     f"{self.full_active / 1e9:.1f} B active per token")
        lines.append(self.routing.summary())
        lines.append(f"total {self.seconds:.1f} s (random weights: the text it generates is meaningless)")
        return "\n".join(lines)


def _param_counts(arch: Any, config: dict[str, Any]) -> tuple[int, int]:
    """(all parameters, active per token) of the tensors the GGUF gets (vision tower and MTP head excluded)."""
    hp = config.get("text_config") or config
    E = int(hp.get("num_experts") or hp["num_local_experts"])
    k = int(hp["num_experts_per_tok"])
    total = expert = 0
    for name, shape, _ in arch.release_tensors(config):
        n = math.prod(shape)
        total += n
        if ".experts." in name:
            expert += n
    return total, total - expert + expert * k // E


def synth(preset: str, output: str | Path, *, layers: int | None = None, experts: str = "Q4_K",
          dense: str = "Q8_0", seed: int = 0, pool: int | None = 16, threads: int | None = None,
          align: int | None = None, progress: bool = False, tiny: bool = False,
          cache_dir: Path | None = None, routing_tokens: int = 8192) -> SynthReport:
    """Write a streaming GGUF with random weights at PRESET's shapes (first `layers` layers) to OUTPUT.

    pool: encode this many experts per routed tensor and repeat their bytes (None or 0: encode every expert);
    tiny: the preset's small test variant (same structure, small dimensions; for the test suite).
    """
    from .converter.convert import DEFAULT_ALIGNMENT, convert_loaded

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    t0 = time.monotonic()
    config = p.config(layers, tiny=tiny)
    full_config = p.config(None, tiny=tiny)
    hp = config.get("text_config") or config
    weights = SyntheticWeights(p.arch, config, seed)
    tok = tokenizer_dir(p, int(hp["vocab_size"]), cache_dir)
    pool = pool or None
    info = {"preset": p.name, "layers": int(hp["num_hidden_layers"]), "seed": int(seed), "expert_pool": pool or 0,
            "tiny": bool(tiny)}

    full_layers = int((full_config.get("text_config") or full_config)["num_hidden_layers"])

    def extra(w: Any) -> None:
        w.add_string("flashmoe.synthetic", json.dumps(info, sort_keys=True))
        # the full model's depth, so `flashmoe bench` can extrapolate a slice to it
        w.add_uint32("flashmoe.synth.full_layers", full_layers)

    report = convert_loaded(config, weights, tok, output, experts=experts, dense=dense,  # type: ignore[arg-type]
                            align=align or DEFAULT_ALIGNMENT, threads=threads, progress=progress,
                            name=f"flashmoe synthetic {p.name}" + (" (tiny)" if tiny else ""),
                            bytes_in=0, expert_pool=pool, extra_metadata=extra)
    E = int(hp.get("num_experts") or hp["num_local_experts"])
    router = p.arch.release_router(config, 0)
    spread = routing_spread(weights.get(router), int(hp["num_experts_per_tok"]), routing_tokens, seed)
    assert spread.n_expert == E
    params, _ = _param_counts(p.arch, config)
    full_params, full_active = _param_counts(p.arch, p.config())   # the real preset, never the tiny one
    return SynthReport(p.name, int(hp["num_hidden_layers"]), full_layers, hp.get("layer_types"), int(seed), pool,
                       report, spread, params, full_params, full_active, time.monotonic() - t0, tiny)


__all__ = ["PRESETS", "Preset", "RoutingSpread", "SynthReport", "SyntheticWeights", "routing_spread", "synth"]


# -- routing inside the model --------------------------------------------------------------------------------

def observe_routing(path: str | Path, n_tokens: int = 64, seed: int = 0, n_threads: int = 2) -> dict[int, np.ndarray]:
    """Run N random tokens through the GGUF in stock llama.cpp and count, per layer, how often each routed
    expert was selected: {layer: counts[n_expert]}. Reads llama.cpp's own `ffn_moe_topk-L` graph nodes through
    the scheduler's eval callback, so it shows what the model really routes (random hidden states can be
    diverse while a random network collapses them; this would show it)."""
    import ctypes

    import gguf
    import llama_cpp

    class _Tensor(ctypes.Structure):   # the head of ggml.h's struct ggml_tensor (ggml of llama-cpp-python 0.3.36)
        _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                    ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                    ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                    ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64)]

    r = gguf.GGUFReader(path)
    arch = str(r.fields["general.architecture"].contents())
    n_expert = int(r.fields[f"{arch}.expert_count"].contents())
    n_vocab = len(r.fields["tokenizer.ggml.tokens"].data)
    del r
    counts: dict[int, np.ndarray] = {}

    def cb(t_ptr: int, ask: bool, _: int) -> bool:
        t = _Tensor.from_address(t_ptr)
        name = t.name.decode(errors="replace")
        if not name.startswith("ffn_moe_topk-"):
            return False if ask else True
        if ask:
            return True
        k, n = int(t.ne[0]), int(t.ne[1])
        nb0, nb1 = int(t.nb[0]), int(t.nb[1])
        buf = (ctypes.c_char * ((n - 1) * nb1 + k * nb0)).from_address(t.data)
        ids = np.ndarray((n, k), dtype=np.int32, buffer=buf, strides=(nb1, nb0))
        layer = int(name.rsplit("-", 1)[1])
        c = counts.setdefault(layer, np.zeros(n_expert, dtype=np.int64))
        c += np.bincount(ids.reshape(-1), minlength=n_expert)
        return True

    from llama_cpp._utils import suppress_stdout_stderr

    callback = llama_cpp.ggml_backend_sched_eval_callback(cb)
    tokens = np.random.default_rng([seed, 0x70C]).integers(0, n_vocab, n_tokens).tolist()
    with suppress_stdout_stderr(disable=False):
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
        if not model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        try:
            cp = llama_cpp.llama_context_default_params()
            cp.n_ctx = cp.n_batch = cp.n_ubatch = max(n_tokens, 32)
            cp.n_threads = cp.n_threads_batch = n_threads
            cp.cb_eval = callback
            ctx = llama_cpp.llama_init_from_model(model, cp)
            if not ctx:
                raise RuntimeError(f"llama.cpp could not create a context for {path}")
            batch = llama_cpp.llama_batch_init(n_tokens, 0, 1)
            try:
                for i, tok in enumerate(tokens):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, i, 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = True     # every position is an output: the last layer routes them all
                batch.n_tokens = n_tokens
                if llama_cpp.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed")
            finally:
                llama_cpp.llama_batch_free(batch)
                llama_cpp.llama_free(ctx)
        finally:
            llama_cpp.llama_model_free(model)
    return dict(sorted(counts.items()))
