"""Hugging Face tokenizer files -> GGUF tokenizer metadata, read straight from `tokenizer.json`.

Two tokenizer families cover the supported models:
- byte-level BPE (`tokenizer.ggml.model = gpt2`): Qwen, DeepSeek, OLMoE. llama.cpp also needs the
  pre-tokenizer's name; we identify it from the split regexes in tokenizer.json, which is what the name stands
  for (llama.cpp's own converter hashes a tokenization, which needs the `tokenizers` package at run time).
- SentencePiece-style BPE with byte fallback (`tokenizer.ggml.model = llama`): Mistral / Mixtral.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from .errors import ConversionError

# Split regexes as they appear in tokenizer.json -> llama.cpp's pre-tokenizer name (src/llama-vocab.cpp).
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
_QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEEPSEEK3 = (r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
              "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
              "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+")
KNOWN_PRE: dict[tuple[str, ...], str] = {
    (_QWEN2,): "qwen2",
    (_QWEN35,): "qwen35",
    (_LLAMA3,): "llama-bpe",
    _DEEPSEEK3: "deepseek-v3",
}
# the single-regex pre-tokenizers by name (what tiny test and synthetic tokenizers are built with)
SPLIT_REGEX: dict[str, str] = {name: regexes[0] for regexes, name in KNOWN_PRE.items() if len(regexes) == 1}
PRE_NAMES = sorted(set(KNOWN_PRE.values()) | {"gpt-2", "olmo"})


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


def _split_patterns(pre: Any) -> tuple[tuple[str, ...], bool]:
    """Split regexes of a pre_tokenizer, and whether it is byte-level."""
    if not pre:
        return (), False
    if pre.get("type") == "Sequence":
        pats: list[str] = []
        byte_level = False
        for p in pre.get("pretokenizers", []):
            sub, bl = _split_patterns(p)
            pats.extend(sub)
            byte_level |= bl
        return tuple(pats), byte_level
    if pre.get("type") == "Split":
        pat = pre.get("pattern", {})
        return ((pat.get("Regex") or pat.get("String") or ""),), False
    if pre.get("type") == "ByteLevel":
        return (), True
    return (), False


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
    template = tok_cfg.get("chat_template")
    if isinstance(template, list):  # named templates: keep the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    add_bos = tok_cfg.get("add_bos_token")
    add_eos = tok_cfg.get("add_eos_token")

    if model.get("byte_fallback"):
        # SentencePiece converted to BPE (Mistral/Mixtral): llama.cpp's "llama" tokenizer. Byte tokens are
        # <0xNN>; scores follow the id order as in the original sentencepiece model.
        for tid, text in enumerate(tokens):
            if len(text) == 6 and text.startswith("<0x") and text.endswith(">") and types[tid] == gguf.TokenType.NORMAL:
                types[tid] = gguf.TokenType.BYTE
        scores = [-float(i) if types[i] == gguf.TokenType.NORMAL else 0.0 for i in range(n_vocab)]
        if "unk" not in special and "<unk>" in vocab:
            special["unk"] = vocab["<unk>"]
        return Vocab("llama", pre_override or "default", tokens, [int(t) for t in types], scores, [], special,
                     add_bos if add_bos is not None else True, add_eos, template)

    pats, byte_level = _split_patterns(tj.get("pre_tokenizer"))
    if not byte_level:
        raise ConversionError(f"{path}: pre-tokenizer is neither byte-level BPE nor sentencepiece-style")
    if pre_override:
        pre = pre_override
    elif pats in KNOWN_PRE:
        pre = KNOWN_PRE[pats]
    elif not pats and default_pre:
        pre = default_pre  # plain GPT-2 byte-level regex; the family decides the name (e.g. "olmo")
    elif not pats:
        pre = "gpt-2"
    else:
        raise ConversionError(f"{path}: unrecognised pre-tokenizer regex {pats[0][:60]!r}...; pass "
                              f"vocab_pre=NAME (known: {', '.join(PRE_NAMES)})")
    return Vocab("gpt2", pre, tokens, [int(t) for t in types], None, merges, special,
                 add_bos if add_bos is not None else False, add_eos, template)
