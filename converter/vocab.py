"""Hugging Face tokenizer files -> GGUF tokenizer metadata, read straight from `tokenizer.json`.

Two tokenizer families cover the supported models:
- byte-level BPE (`tokenizer.ggml.model = gpt2`): Qwen, DeepSeek, OLMoE, GPT-OSS. llama.cpp also needs the
  pre-tokenizer's name, which pretokenizers.py finds from how the tokenizer's pre_tokenizer splits a fixed text.
- SentencePiece-style BPE with byte fallback (`tokenizer.ggml.model = llama`): Mistral / Mixtral.
The chat template comes from the `chat_template.jinja` / `chat_template.json` file newer releases keep it in
(GPT-OSS's harmony template), else from tokenizer_config.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import gguf

from .errors import ConversionError
from .pretokenizers import PRE_NAMES, SPLIT_REGEX, check_name, identify

__all__ = ["PRE_NAMES", "SPLIT_REGEX", "Vocab", "load_vocab"]


@dataclass
class Vocab:
    model: str                        # "gpt2" or "llama"
    pre: str | None
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    special: dict[str, int] = field(default_factory=dict)   # bos / eos / pad / unk -> id
    add_bos: bool | None = None
    add_eos: bool | None = None
    chat_template: str | None = None

    def write(self, w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model(self.model)
        if self.pre is not None:
            w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types(self.types)
        if self.scores is not None:
            w.add_token_scores(self.scores)
        if self.merges:
            w.add_token_merges(self.merges)
        adders = {"bos": w.add_bos_token_id, "eos": w.add_eos_token_id, "pad": w.add_pad_token_id,
                  "unk": w.add_unk_token_id}
        for kind, tid in self.special.items():
            adders[kind](tid)
        if self.add_bos is not None:
            w.add_add_bos_token(self.add_bos)
        if self.add_eos is not None:
            w.add_add_eos_token(self.add_eos)
        if self.chat_template:
            w.add_chat_template(self.chat_template)


def _is_byte_level(pre: Any) -> bool:
    """whether a pre_tokenizer maps bytes to GPT-2's printable characters (a ByteLevel step anywhere in it)"""
    if not isinstance(pre, dict):
        return False
    if pre.get("type") == "ByteLevel":
        return True
    return any(_is_byte_level(p) for p in pre.get("pretokenizers") or [])


def _chat_template(model_dir: Path, tok_cfg: dict[str, Any]) -> str | None:
    """the template file a release ships, as transformers prefers it, else tokenizer_config.json's"""
    template = tok_cfg.get("chat_template")
    if (model_dir / "chat_template.jinja").exists():
        template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    elif (model_dir / "chat_template.json").exists():
        template = json.loads((model_dir / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
    if isinstance(template, list):  # named templates: keep the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def _special_ids(model_dir: Path, tok_cfg: dict[str, Any], vocab: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for kind in ("bos", "eos", "pad", "unk"):
        tok = tok_cfg.get(f"{kind}_token")
        if isinstance(tok, dict):
            tok = tok.get("content")
        if isinstance(tok, str) and tok in vocab:
            out[kind] = vocab[tok]
    gen = model_dir / "generation_config.json"
    cfg = model_dir / "config.json"
    for f in (cfg, gen):
        if f.exists() and "eos" not in out:
            eos = json.loads(f.read_text()).get("eos_token_id")
            if isinstance(eos, list) and eos:
                eos = eos[0]
            if isinstance(eos, int):
                out["eos"] = eos
    return out


def _spm_scores(tokens: list[str], types: Sequence[int], merges: list[str]) -> list[float]:
    """Piece scores for llama.cpp's SentencePiece tokenizer, which merges the adjacent pair whose concatenation
    scores highest. Hugging Face's conversion of a SentencePiece BPE model lists the merges by the score of the
    piece they make, so a piece's rank among the merges is its score order. (The id order is not: Llama's
    whitespace-run pieces sit at ids 259+ with the lowest scores.) Pieces no merge makes come after all others,
    in id order; control, byte and unused tokens score 0."""
    first: dict[str, int] = {}
    for rank, m in enumerate(merges):
        a, _, b = m.partition(" ")
        first.setdefault(a + b, rank)
    tail = len(merges)
    return [(-float(first[t]) if t in first else -float(tail + i)) if types[i] == gguf.TokenType.NORMAL else 0.0
            for i, t in enumerate(tokens)]


def load_vocab(model_dir: Path, n_vocab: int, default_pre: str | None = None,
               pre_override: str | None = None) -> Vocab:
    """Read tokenizer.json (+ tokenizer_config.json) and pad the token list to the embedding's row count."""
    path = model_dir / "tokenizer.json"
    if not path.exists():
        raise ConversionError(f"{model_dir}: no tokenizer.json (the GGUF needs the model's tokenizer)")
    try:
        tj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConversionError(f"{path}: not valid JSON: {exc}") from exc
    cfg_path = model_dir / "tokenizer_config.json"
    tok_cfg: dict[str, Any] = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise ConversionError(f"{path}: tokenizer model {model.get('type')!r} is not supported (BPE only)")
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = tj.get("added_tokens") or []
    for t in added:
        vocab[t["content"]] = int(t["id"])
    size = max(vocab.values()) + 1 if vocab else 0
    if size > n_vocab:
        raise ConversionError(f"tokenizer has {size} tokens but the embedding has only {n_vocab} rows")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    for text, tid in vocab.items():
        tokens[tid] = text
        types[tid] = gguf.TokenType.NORMAL
    for t in added:
        types[int(t["id"])] = gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    special = _special_ids(model_dir, tok_cfg, vocab)
    template = _chat_template(model_dir, tok_cfg)
    add_bos = tok_cfg.get("add_bos_token")
    add_eos = tok_cfg.get("add_eos_token")

    if model.get("byte_fallback"):
        # SentencePiece converted to BPE (Mistral/Mixtral): llama.cpp's "llama" tokenizer. Byte tokens are
        # <0xNN>; scores come from the merges (_spm_scores).
        for tid, text in enumerate(tokens):
            if len(text) == 6 and text.startswith("<0x") and text.endswith(">") and types[tid] == gguf.TokenType.NORMAL:
                types[tid] = gguf.TokenType.BYTE
        scores = _spm_scores(tokens, types, merges)
        if "unk" not in special and "<unk>" in vocab:
            special["unk"] = vocab["<unk>"]
        return Vocab("llama", pre_override or "default", tokens, [int(t) for t in types], scores, [], special,
                     add_bos if add_bos is not None else True, add_eos, template)

    if not _is_byte_level(tj.get("pre_tokenizer")):
        raise ConversionError(f"{path}: pre-tokenizer is neither byte-level BPE nor sentencepiece-style")
    pre = check_name(pre_override) if pre_override else identify(tj, tok_cfg, default_pre, str(path))
    return Vocab("gpt2", pre, tokens, [int(t) for t in types], None, merges, special,
                 add_bos if add_bos is not None else False, add_eos, template)
