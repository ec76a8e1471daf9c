"""Pre-tokenizers: every name llama.cpp's converter can write is known and recognised from a tokenizer.json by how
it splits text, and llama.cpp then tokenizes text exactly as Hugging Face's `tokenizers` does.

The tokenizers are rebuilt from the vocab GGUFs of the llama-cpp-python sdist (tokens and merges of the real
vocabulary; flashmoe_gguf.tiny), with each name's pre-tokenizer; where the sdist also has llama.cpp's test texts
and the real Hugging Face tokenizer's ids for them (`ggml-vocab-*.gguf.inp/.out`), both sides are checked
against those ids too.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import gguf
import pytest

from conftest import cache_root
from flashmoe_gguf.converter import pretokenizers as P
from flashmoe_gguf.converter.errors import ConversionError
from flashmoe_gguf.converter.vocab import load_vocab
from flashmoe_gguf.tiny import bpe_tokenizer, sdist_member, spm_tokenizer, vocab_gguf, write_tokenizer

# digits, CJK, punctuation runs, newlines (LF, CRLF, runs), tabs, code, emoji, contractions, mixed scripts
TEXT = (
    "The year 2024: 1,234,567 items cost $89.99 (approx. 3.5e-7 each)!!! Really?!... \n\n"
    "我想在apple工作1314151天～ 東京タワーは333メートル。 안녕하세요, 세계! привет мир 123\n"
    "def main(argv: list[str]) -> int:\r\n    if len(argv) >= 2 and argv[1] == '--help':\r\n"
    "        print(\"usage: x [--n N]\")  # comment\r\n\t\treturn 0x1F & ~mask\n"
    "  <div class=\"a\">&nbsp;</div>   ----====**** I'm sure you'll see; they've 'RE-done it. \n\n\n"
    "🦙🦙 😶\u200d🌫️ x^2+y^2=z^2 ½ ٣٤٥ ① nǐ hǎo, Ünïcödé façade — “quoted” … end\n"
)
BPE_VOCAB = "qwen2"          # a big byte-level vocabulary for the per-name checks
N_KEEP = 10000


def cache() -> Path:
    return cache_root()


def hf(tj: dict):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer
    return Tokenizer.from_str(json.dumps(tj))


def write_vocab_gguf(model_dir: Path, out: Path, pre: str | None = None) -> Path:
    """our converter's tokenizer metadata from model_dir, in a vocab-only GGUF llama.cpp loads"""
    n = len(json.loads((model_dir / "tokenizer.json").read_text())["model"]["vocab"]) + 64
    vocab = load_vocab(model_dir, n, None, pre)
    w = gguf.GGUFWriter(out, "llama")
    w.add_block_count(1)
    w.add_context_length(512)
    w.add_embedding_length(64)
    w.add_feed_forward_length(64)
    w.add_head_count(1)
    w.add_layer_norm_rms_eps(1e-5)
    vocab.write(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    return out


def llama_ids(path: Path, texts: list[str]) -> list[list[int]]:
    import llama_cpp
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return [llm.tokenize(t.encode(), add_bos=False, special=False) for t in texts]
    finally:
        llm.close()


def pre_of(path: Path) -> str:
    return str(gguf.GGUFReader(path).fields["tokenizer.ggml.pre"].contents())


@functools.lru_cache(maxsize=None)
def _base_tokenizer(vocab: str, n_keep: int) -> str:
    tj, cfg, _ = bpe_tokenizer(vocab_gguf(cache(), vocab), n_keep)
    return json.dumps([tj, cfg])


def tokenizer_dir(tmp: Path, vocab: str, rules: tuple[str, ...], n_keep: int, *, ignore_merges: bool = False,
                  clean_spaces: bool | None = None, add_sep: bool = False, nfc: bool = True) -> Path:
    tj, cfg = json.loads(_base_tokenizer(vocab, n_keep))
    tj["pre_tokenizer"] = P.rules_pre_tokenizer(rules)
    if not nfc:
        tj["normalizer"] = None
    tj["model"]["ignore_merges"] = ignore_merges
    if clean_spaces is not None:
        cfg["clean_up_tokenization_spaces"] = clean_spaces
    if add_sep:
        tj["post_processor"] = {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0],
                                "trim_offsets": False, "add_prefix_space": False}
    write_tokenizer(tmp, tj, cfg)
    return tmp


# -- the table against llama.cpp's converter and loader ---------------------------------------------------------
def converter_names() -> set[str]:
    """every name get_vocab_base_pre of the pinned llama.cpp converter can return"""
    src = sdist_member(cache(), "vendor/llama.cpp/conversion/base.py").read_text(encoding="utf-8")
    body = src[src.index("def get_vocab_base_pre"):src.index("Marker: End get_vocab_base_pre")]
    return set(re.findall(r'res = "([^"]+)"', body))


def test_every_name_llama_cpp_converter_writes_is_known() -> None:
    names = converter_names()
    assert len(names) > 80
    missing = sorted(n for n in names if n not in P.BY_NAME and n not in P.UNSUPPORTED)
    assert not missing, f"llama.cpp's converter writes pre-tokenizers we do not know: {missing}"
    assert set(P.UNSUPPORTED) <= names


def test_probe_tells_apart_every_splitting_rule() -> None:
    """Different rules split the probe differently, except the pairs that are the same rule spelt otherwise
    (MiniCPM5 pre-splits the digits LLAMA3 splits alike; Bailing's possessive quantifiers change nothing)."""
    splits: dict[tuple, list[str]] = {}
    for key, rules in P.RULES.items():
        splits.setdefault(P.split_offsets(P.rules_pre_tokenizer(rules)), []).append(key)
    alike = sorted(sorted(v) for v in splits.values() if len(v) > 1)
    assert alike == [["bailingmoe", "qwen2"], ["llama3", "minicpm5"]]


@pytest.mark.parametrize("p", P.PRE_TOKENIZERS, ids=[p.name for p in P.PRE_TOKENIZERS])
def test_recognised_by_behaviour(p: P.PreTokenizer) -> None:
    """A tokenizer.json with the name's pre-tokenizer and flags gets a name llama.cpp treats the same way: the
    same rules and the same flags (names that share both are interchangeable)."""
    tj = {"pre_tokenizer": P.rules_pre_tokenizer(P.RULES[p.rules]), "model": {"ignore_merges": p.ignore_merges},
          "post_processor": {"type": "RobertaProcessing"} if p.add_sep else None}
    got = P.BY_NAME[P.identify(tj, {"clean_up_tokenization_spaces": p.clean_spaces})]
    assert P.reference_split(got) == P.reference_split(p)
    assert (got.ignore_merges, got.clean_spaces, got.add_sep) == (p.ignore_merges, p.clean_spaces, p.add_sep)
    # the family's own name is kept where it fits
    assert P.identify(tj, {"clean_up_tokenization_spaces": p.clean_spaces}, preferred=p.name) == p.name


def test_gpt2_byte_level_without_split_is_gpt2_or_the_familys_name() -> None:
    tj = {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                            "use_regex": True}, "model": {}}
    assert P.identify(tj, {}) == "gpt-2"
    assert P.identify(tj, {}, preferred="olmo") == "olmo"


def test_regex_spelling_does_not_matter() -> None:
    """Identified by what the rules do, not how they are written: Qwen2's regex spelt as llama.cpp spells it, or
    with an extra case-insensitive group that changes nothing, is still qwen2."""
    spelt = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    for rules in ((spelt,), (P.QWEN2, r"\p{N}")):
        assert P.identify({"pre_tokenizer": P.rules_pre_tokenizer(rules), "model": {}}, {}) == "qwen2"


def test_unknown_pre_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    tj = {"pre_tokenizer": P.rules_pre_tokenizer((r"\p{L}{1,2}",)), "model": {}}
    with pytest.raises(ConversionError) as e:
        P.identify(tj, {})
    msg = str(e.value)
    assert "unrecognised pre-tokenizer" in msg and r"Split('\\p{L}{1,2}')" in msg
    assert "vocab_pre=NAME" in msg and "--vocab-pre" in msg and "qwen2" in msg
    # through load_vocab, and the override that resolves it
    d = tokenizer_dir(tmp_path, BPE_VOCAB, (r"\p{L}{1,2}",), 2000)
    with pytest.raises(ConversionError, match="unrecognised pre-tokenizer"):
        load_vocab(d, 3000)
    assert load_vocab(d, 3000, pre_override="gpt-2").pre == "gpt-2"
    with pytest.raises(ConversionError, match="unknown pre-tokenizer name 'qwen3'"):
        load_vocab(d, 3000, pre_override="qwen3")


def test_unsupported_pre_tokenizer_names_say_why(tmp_path: Path) -> None:
    d = tokenizer_dir(tmp_path, BPE_VOCAB, (P.QWEN2,), 2000)
    with pytest.raises(ConversionError, match="gemma4 is SentencePiece-style BPE"):
        load_vocab(d, 3000, pre_override="gemma4")


# -- llama.cpp tokenizes as Hugging Face does ---------------------------------------------------------------------
# names whose llama.cpp splitter knowingly differs from the Hugging Face rules on TEXT + PROBE: name -> why
LLAMA_CPP_DIFFERS: dict[str, str] = {}


@pytest.mark.parametrize("p", P.PRE_TOKENIZERS, ids=[p.name for p in P.PRE_TOKENIZERS])
def test_llama_cpp_tokenizes_like_hugging_face(p: P.PreTokenizer, tmp_path: Path) -> None:
    """Per name: a 10k-token cut of a real byte-level vocabulary with the name's pre-tokenizer, converted by us with
    that name; llama.cpp's token ids for a varied text (and the probe) are Hugging Face's."""
    if p.name in LLAMA_CPP_DIFFERS:
        pytest.xfail(LLAMA_CPP_DIFFERS[p.name])
    d = tokenizer_dir(tmp_path / "tok", BPE_VOCAB, P.RULES[p.rules], N_KEEP, ignore_merges=p.ignore_merges,
                      clean_spaces=p.clean_spaces, add_sep=p.add_sep)
    path = write_vocab_gguf(d, tmp_path / "v.gguf", pre=p.name)
    tok = hf(json.loads((d / "tokenizer.json").read_text()))
    texts = [TEXT, P.PROBE]
    want = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    assert llama_ids(path, texts) == want


def test_the_check_sees_a_wrong_name(tmp_path: Path) -> None:
    """The comparison above is sensitive: Qwen2's rules written under a name with other rules (GPT-2's, DeepSeek-V3's)
    make llama.cpp's ids differ from Hugging Face's. (Not every other name would: Qwen2's vocabulary has single
    digits only, so llama-bpe's digits-in-threes rule gives the same ids.)"""
    d = tokenizer_dir(tmp_path / "tok", BPE_VOCAB, P.RULES["qwen2"], N_KEEP)
    tok = hf(json.loads((d / "tokenizer.json").read_text()))
    want = [tok.encode(t, add_special_tokens=False).ids for t in (TEXT, P.PROBE)]
    for wrong in ("gpt-2", "deepseek-v3"):
        assert llama_ids(write_vocab_gguf(d, tmp_path / f"{wrong}.gguf", pre=wrong), [TEXT, P.PROBE]) != want


def test_chat_template_from_its_own_file(tmp_path: Path) -> None:
    """Newer releases keep the chat template in chat_template.jinja (GPT-OSS's harmony template) or
    chat_template.json instead of tokenizer_config.json; the GGUF gets it either way."""
    d = tokenizer_dir(tmp_path / "tok", BPE_VOCAB, P.RULES["gpt4o"], 2000)
    template = "{% for m in messages %}<|start|>{{ m.role }}<|channel|>final<|message|>{{ m.content }}<|end|>{% endfor %}"
    (d / "chat_template.jinja").write_text(template)
    assert load_vocab(d, 3000).chat_template == template
    (d / "chat_template.jinja").unlink()
    (d / "chat_template.json").write_text(json.dumps({"chat_template": template + " "}))
    assert load_vocab(d, 3000).chat_template == template + " "


def reference_tests(vocab: str) -> tuple[list[str], list[list[int]]]:
    """llama.cpp's tokenizer test texts for a vocab GGUF and the ids the real Hugging Face tokenizer gave"""
    files = [sdist_member(cache(), f"vendor/llama.cpp/models/ggml-vocab-{vocab}.gguf{s}") for s in (".inp", ".out")]
    texts = files[0].read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    if texts and texts[-1] == "":
        texts.pop()
    lines = files[1].read_text(encoding="utf-8").split("\n")
    assert len(lines) >= len(texts)
    return texts, [[int(x) for x in line.split()] for line in lines[:len(texts)]]


# the tokenizer families of the supported architectures: (vocab GGUF, rules, expected name, has llama.cpp's
# reference ids, NFC normalizer). DeepSeek-V3's and GPT-OSS's vocabularies are not in the sdist: their rules run
# on another byte-level vocabulary of about their size. Qwen3.5's tokenizer does not normalize (Qwen2's does NFC).
FAMILIES = {
    "qwen2": ("qwen2", "qwen2", "qwen2", True, True),           # Qwen2-MoE, Qwen3-MoE
    "qwen35": ("qwen35", "qwen35", "qwen35", True, False),      # Qwen3.5-MoE
    "deepseek-llm": ("deepseek-llm", "deepseek-llm", "deepseek-llm", True, True),  # DeepSeek-MoE-16B, V2(-Lite)
    "deepseek-v3": ("llama-bpe", "deepseek-v3", "deepseek-v3", False, True),       # DeepSeek-V3 / R1
    "gpt-2": ("gpt-2", "gpt2", "gpt-2", True, True),           # OLMoE (GPT-NeoX's byte-level BPE)
    "gpt-4o": ("llama-bpe", "gpt4o", "gpt-4o", False, True),   # GPT-OSS (o200k_harmony)
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_full_vocabulary(family: str, tmp_path: Path) -> None:
    """The whole real vocabulary: our tokenizer.json is recognised as the family's name, and llama.cpp on our GGUF
    gives Hugging Face's ids for the varied text and for llama.cpp's own test texts (whose ids the real tokenizer
    gave, where the sdist has them)."""
    vocab, rules, name, has_ref, nfc = FAMILIES[family]
    d = tokenizer_dir(tmp_path / "tok", vocab, P.RULES[rules], 1 << 30, nfc=nfc)
    path = write_vocab_gguf(d, tmp_path / "v.gguf")
    assert pre_of(path) == name
    tok = hf(json.loads((d / "tokenizer.json").read_text()))
    texts = [TEXT, P.PROBE]
    ref: list[list[int]] = []
    if has_ref:
        inp, ref = reference_tests(vocab)
        texts += inp
    want = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    got = llama_ids(path, texts)
    assert got[:2] == want[:2]
    if has_ref:
        assert want[2:] == ref, "the rebuilt Hugging Face tokenizer differs from the real one"
        assert got[2:] == ref


def test_mixtral_sentencepiece_full_vocabulary(tmp_path: Path) -> None:
    """Mixtral's kind of tokenizer (SentencePiece-style BPE with byte fallback) on the whole llama-spm vocabulary:
    llama.cpp on our GGUF gives the real Hugging Face tokenizer's ids for llama.cpp's test texts. (Our rebuilt
    tokenizer.json is only a stand-in here: its merges, derived from piece scores, are not the real ones.)"""
    tj, cfg, n = spm_tokenizer(vocab_gguf(cache(), "llama-spm"), 1 << 30)
    write_tokenizer(tmp_path / "tok", tj, cfg)
    vocab = load_vocab(tmp_path / "tok", n)
    assert vocab.model == "llama"
    w = gguf.GGUFWriter(tmp_path / "v.gguf", "llama")
    for add in (lambda: w.add_block_count(1), lambda: w.add_context_length(512), lambda: w.add_embedding_length(64),
                lambda: w.add_feed_forward_length(64), lambda: w.add_head_count(1),
                lambda: w.add_layer_norm_rms_eps(1e-5)):
        add()
    vocab.write(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    texts, ref = reference_tests("llama-spm")
    assert llama_ids(tmp_path / "v.gguf", texts) == ref
