"""Tiny checkpoints of real architectures with real tokenizers, for the demo and the tests.

There is no model hub here, so the tokenizer comes from the vocabulary GGUFs that the pinned llama-cpp-python
sdist ships (`vendor/llama.cpp/models/ggml-vocab-*.gguf`): pip fetches the sdist from the package index once,
the vocab file is extracted into a cache directory, and a Hugging Face `tokenizer.json` is rebuilt from it
(the first `n_keep` tokens, the merges among them, and the special tokens).

The demo's weights are random: it shows the pipeline, not a language model.
"""

from __future__ import annotations

import functools
import json
import os
import struct
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from flashmoe_gguf.converter.vocab import SPLIT_REGEX

from .sdist import LLAMA_CPP_PYTHON_VERSION, download_sdist

QWEN2_REGEX = SPLIT_REGEX["qwen2"]


def default_cache_dir() -> Path:
    base = os.environ.get("FLASHMOE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "flashmoe-gguf")
    return Path(base)


def sdist_member(cache_dir: Path, member: str) -> Path:
    """Extract one file of the pinned llama-cpp-python sdist into cache_dir (downloading the sdist once)."""
    out = cache_dir / "sdist" / member
    if out.exists():
        return out
    archive = download_sdist(cache_dir / "sdist-archive")
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/"
    with tarfile.open(archive) as tar:
        info = tar.getmember(prefix + member)
        src = tar.extractfile(info)
        if src is None:
            raise FileNotFoundError(member)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, delete=False) as tmp:
            tmp.write(src.read())
        os.replace(tmp.name, out)
    return out


def vocab_gguf(cache_dir: Path, name: str) -> Path:
    return sdist_member(cache_dir, f"vendor/llama.cpp/models/ggml-vocab-{name}.gguf")


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@functools.lru_cache(maxsize=8)
def _fields(path: Path) -> dict[str, Any]:
    """The tokenizer.* keys of a vocab GGUF (read once per process; callers only read them). A direct parse of
    the key-value section: gguf-py's reader takes seconds for a 150k-token vocabulary with its merges."""
    data = memoryview(path.read_bytes())
    if bytes(data[:4]) != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    pos = 24
    n_kv = struct.unpack_from("<Q", data, 16)[0]

    def string() -> str:
        nonlocal pos
        n = struct.unpack_from("<Q", data, pos)[0]
        pos += 8 + n
        return str(data[pos - n:pos], "utf-8", errors="replace")

    def value(vtype: int) -> Any:
        nonlocal pos
        if vtype == _STRING:
            return string()
        if vtype == _ARRAY:
            etype, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if etype in _SCALARS:
                fmt = _SCALARS[etype]
                size = struct.calcsize(fmt)
                out = list(struct.unpack_from(f"<{count}{fmt[1]}", data, pos))
                pos += size * count
                return out
            return [value(etype) for _ in range(count)]
        fmt = _SCALARS[vtype]
        v = struct.unpack_from(fmt, data, pos)[0]
        pos += struct.calcsize(fmt)
        return v

    out: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string()
        vtype = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        v = value(vtype)
        if key.startswith("tokenizer."):
            out[key] = v
    return out


def bpe_tokenizer(vocab_path: Path, n_keep: int, regex: str | tuple[str, ...] = QWEN2_REGEX) -> tuple[dict, dict, int]:
    """(tokenizer.json, tokenizer_config.json, vocab size) for a byte-level BPE vocab GGUF, cut to n_keep; `regex`
    is the pre-tokenizer's split regex, or several applied in turn."""
    f = _fields(vocab_path)
    tokens: list[str] = f["tokenizer.ggml.tokens"]
    types: list[int] = f["tokenizer.ggml.token_type"]
    normal = {t: i for i, t in enumerate(tokens[:n_keep]) if types[i] == gguf.TokenType.NORMAL}
    merges = []
    for m in f["tokenizer.ggml.merges"]:
        a, b = m.split(" ", 1)
        if a in normal and b in normal and a + b in normal:
            merges.append(m)
    vocab = dict(normal)
    specials = [t for i, t in enumerate(tokens) if types[i] == gguf.TokenType.CONTROL][:8]
    added = []
    for t in specials:
        vocab[t] = len(vocab)
        added.append({"id": vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": True})
    eos = next((t for t in specials if "endoftext" in t), specials[0] if specials else None)
    tj = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": False}
            for r in ((regex,) if isinstance(regex, str) else regex)] + [
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {k: v for k, v in vocab.items() if k not in specials}, "merges": merges},
    }
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "pad_token": eos, "bos_token": None,
           "add_bos_token": False, "model_max_length": 4096,
           "chat_template": f.get("tokenizer.chat_template")}
    return tj, cfg, len(vocab)


def spm_tokenizer(vocab_path: Path, n_keep: int) -> tuple[dict, dict, int]:
    """tokenizer.json of the Mistral kind (BPE with byte fallback) from a llama-spm vocab GGUF, cut to n_keep.

    The vocab GGUF has pieces and scores but no merges; merges are rebuilt the way Hugging Face's converter
    does for sentencepiece BPE models: every split of a piece into two kept pieces, ordered by piece score.
    """
    f = _fields(vocab_path)
    tokens: list[str] = f["tokenizer.ggml.tokens"][:n_keep]
    scores: list[float] = f["tokenizer.ggml.scores"][:n_keep]
    types: list[int] = f["tokenizer.ggml.token_type"][:n_keep]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    order = sorted(range(len(tokens)), key=lambda i: -scores[i])
    for i in order:
        piece = tokens[i]
        if types[i] != gguf.TokenType.NORMAL or len(piece) < 2:
            continue
        splits = [(vocab[piece[:k]], vocab[piece[k:]]) for k in range(1, len(piece))
                  if piece[:k] in vocab and piece[k:] in vocab]
        for a, b in sorted(splits):
            merges.append(f"{tokens[a]} {tokens[b]}")
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, t in enumerate(tokens) if types[i] == gguf.TokenType.CONTROL]
    tj = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                           {"type": "Replace", "pattern": {"String": " "},
                                                            "content": "▁"}]},
        "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                                                     {"type": "ByteFallback"}, {"type": "Fuse"},
                                                     {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
           "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "model_max_length": 4096}
    return tj, cfg, len(tokens)


def write_tokenizer(model_dir: Path, tj: dict, cfg: dict) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    (model_dir / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False))


# -- the demo checkpoint: Qwen3-MoE shaped, random weights, written with numpy only -----------------------

DEMO_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 256,
    "intermediate_size": 512, "moe_intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 64, "num_experts": 32, "num_experts_per_tok": 4,
    "norm_topk_prob": True, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 4096,
    "tie_word_embeddings": False, "hidden_act": "silu", "decoder_sparse_step": 1, "mlp_only_layers": [],
    "torch_dtype": "float32",
}


def build_demo_checkpoint(model_dir: Path, cache_dir: Path, seed: int = 0) -> Path:
    """A random-weight Qwen3-MoE checkpoint (float32 safetensors) with a real Qwen2 tokenizer."""
    from safetensors.numpy import save_file

    if (model_dir / "config.json").exists():
        return model_dir
    tj, tcfg, n_vocab = bpe_tokenizer(vocab_gguf(cache_dir, "qwen2"), 8000)
    cfg = dict(DEMO_CONFIG, vocab_size=n_vocab)
    rng = np.random.default_rng(seed)
    H, I, E = cfg["hidden_size"], cfg["moe_intermediate_size"], cfg["num_experts"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]

    def w(*shape: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t: dict[str, np.ndarray] = {"model.embed_tokens.weight": w(n_vocab, H, scale=0.5),
                                "model.norm.weight": np.ones(H, np.float32), "lm_head.weight": w(n_vocab, H)}
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        t[p + "input_layernorm.weight"] = np.ones(H, np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(H, np.float32)
        t[p + "self_attn.q_proj.weight"] = w(nh * hd, H)
        t[p + "self_attn.k_proj.weight"] = w(nkv * hd, H)
        t[p + "self_attn.v_proj.weight"] = w(nkv * hd, H)
        t[p + "self_attn.o_proj.weight"] = w(H, nh * hd)
        t[p + "self_attn.q_norm.weight"] = np.ones(hd, np.float32)
        t[p + "self_attn.k_norm.weight"] = np.ones(hd, np.float32)
        t[p + "mlp.gate.weight"] = w(E, H, scale=0.2)
        for e in range(E):
            t[p + f"mlp.experts.{e}.gate_proj.weight"] = w(I, H)
            t[p + f"mlp.experts.{e}.up_proj.weight"] = w(I, H)
            t[p + f"mlp.experts.{e}.down_proj.weight"] = w(H, I)
    tmp = model_dir.with_name(model_dir.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(t, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    write_tokenizer(tmp, tj, tcfg)
    os.replace(tmp, model_dir)
    return model_dir
