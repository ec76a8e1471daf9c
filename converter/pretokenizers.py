"""llama.cpp's byte-level BPE pre-tokenizers, and which one a Hugging Face tokenizer.json needs, found by behaviour.

A GGUF names its pre-tokenizer (`tokenizer.ggml.pre`); llama.cpp maps the name to the regexes it splits text with
before BPE (src/llama-vocab.cpp) and to a few flags (`ignore_merges`: a word that is a token is taken whole;
`clean_spaces`: detokenizing drops spaces before punctuation; `add_sep`). llama.cpp's own converter finds the name
by hashing the token ids one tokenizer gives for a fixed text, so it recognises exactly the vocabularies it has
hashes for (a cut or extended vocabulary is a new hash). We recognise the pre-tokenizer itself: the
tokenizer.json's `pre_tokenizer` (run by the `tokenizers` package, as Hugging Face runs it) splits PROBE, a
fixed text built to tell the splitting rules apart (digit runs, CJK and kana, Hangul, scripts with marks, case
changes, contractions, punctuation and whitespace runs, CR/LF, code, emoji), and the split is compared with
what each name's rules give on the same text. Names whose rules split alike are told apart by the flags the
tokenizer files state (`model.ignore_merges`, `clean_up_tokenization_spaces`, a Roberta/BERT post-processor).

Every name `get_vocab_base_pre` of the pinned llama.cpp converter can return has a row here (the tests read that
list from the sdist), except the few whose tokenizer is not byte-level BPE (`UNSUPPORTED`). Each row's rules
are the model's own Hugging Face pre-tokenizer where llama.cpp records it (it rewrites some regexes for its
engine: `(?i:...)` spelled out, lookaheads for letter cases, hand-written splitters), else llama.cpp's regexes;
the tests check, name by name, that llama.cpp tokenizes a varied text exactly as Hugging Face does with them.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from .errors import ConversionError

# -- the splitting rules (regexes applied in order, each splitting every piece into matches and the text between) --
_CONTRACTIONS = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
JAIS2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)"
         r"|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}")
_UPPER, _LOWER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_CASED_WORDS = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTIONS}?"
                rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTIONS}?")
GPT4O = _CASED_WORDS + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
YOUTU_WORDS = _CASED_WORDS + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_NO_HAN_UP, _NO_HAN_LOW = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]"
KIMI_K2 = (rf"[\p{{Han}}]+|[^\r\n\p{{L}}\p{{N}}]?{_NO_HAN_UP}*{_NO_HAN_LOW}+{_CONTRACTIONS}?"
           rf"|[^\r\n\p{{L}}\p{{N}}]?{_NO_HAN_UP}+{_NO_HAN_LOW}*{_CONTRACTIONS}?"
           r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT2_NO_TAIL = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CJK = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
_DS3_WORDS = (r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
              r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# DeepSeek LLM's letters: the cased letters (Lu, Ll, Lt) of the Unicode version its tokenizer was made with
_DEEPSEEK_LETTER_RANGES = (
    (0x41, 0x5A), (0x61, 0x7A), (0xB5, 0xB5), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x1BA), (0x1BC, 0x1BF),
    (0x1C4, 0x293), (0x295, 0x2AF), (0x370, 0x373), (0x376, 0x377), (0x37B, 0x37D), (0x37F, 0x37F),
    (0x386, 0x386), (0x388, 0x38A), (0x38C, 0x38C), (0x38E, 0x3A1), (0x3A3, 0x3F5), (0x3F7, 0x481),
    (0x48A, 0x52F), (0x531, 0x556), (0x10A0, 0x10C5), (0x13A0, 0x13F5), (0x13F8, 0x13FD), (0x1C90, 0x1CBA),
    (0x1CBD, 0x1CBF), (0x1D00, 0x1D2B), (0x1D6B, 0x1D77), (0x1D79, 0x1D9A), (0x1E00, 0x1F15), (0x1F18, 0x1F1D),
    (0x1F20, 0x1F45), (0x1F48, 0x1F4D), (0x1F50, 0x1F57), (0x1F59, 0x1F59), (0x1F5B, 0x1F5B), (0x1F5D, 0x1F5D),
    (0x1F5F, 0x1F7D), (0x1F80, 0x1FB4), (0x1FB6, 0x1FBC), (0x1FBE, 0x1FBE), (0x1FC2, 0x1FC4), (0x1FC6, 0x1FCC),
    (0x1FD0, 0x1FD3), (0x1FD6, 0x1FDB), (0x1FE0, 0x1FEC), (0x1FF2, 0x1FF4), (0x1FF6, 0x1FFC), (0x2102, 0x2102),
    (0x2107, 0x2107), (0x210A, 0x2113), (0x2115, 0x2115), (0x2119, 0x211D), (0x2124, 0x2124), (0x2126, 0x2126),
    (0x2128, 0x2128), (0x212A, 0x212D), (0x212F, 0x2134), (0x2139, 0x2139), (0x213C, 0x213F), (0x2145, 0x2149),
    (0x214E, 0x214E), (0x2183, 0x2184), (0x2C00, 0x2C7B), (0x2C7E, 0x2CE4), (0x2CEB, 0x2CEE), (0x2CF2, 0x2CF3),
    (0xA640, 0xA66D), (0xA680, 0xA69B), (0xA722, 0xA76F), (0xA771, 0xA787), (0xA78B, 0xA78E), (0xAB70, 0xABBF),
    (0xFB00, 0xFB06), (0xFB13, 0xFB17), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A), (0x10400, 0x1044F), (0x104B0, 0x104D3),
    (0x104D8, 0x104FB), (0x10C80, 0x10CB2), (0x10CC0, 0x10CF2), (0x118A0, 0x118DF), (0x1E900, 0x1E943),
)
_DEEPSEEK_LETTERS = "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in _DEEPSEEK_LETTER_RANGES)
_DEEPSEEK_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"

RULES: dict[str, tuple[str, ...]] = {
    "gpt2": (GPT2,),
    "llama3": (LLAMA3,),
    "qwen2": (QWEN2,),
    "qwen35": (QWEN35,),
    "jais2": (JAIS2,),
    "deepseek-llm": ("[\r\n]", rf"\s?[{_DEEPSEEK_LETTERS}]+",
                     "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+", r"\s+$", _DEEPSEEK_CJK,
                     r"\p{N}+"),
    "deepseek-coder": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _DEEPSEEK_CJK, r"\p{N}"),
    "deepseek-v3": (r"\p{N}{1,3}", _CJK, _DS3_WORDS),
    "spark2_5": (r"\p{N}{1,3}", _CJK, _DS3_WORDS.replace(r"[\r\n]*|\s*[\r\n]+", r"|[\r\n]"), r"\p{N}"),
    "youtu": ("[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-"
              "\u303f\ufe30-\ufe4f]+|[\u3105-\u312f]+|" + _CJK, YOUTU_WORDS),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2_NO_TAIL, "[0-9][0-9][0-9]"),
    "starcoder": (r"\p{N}", _GPT2_NO_TAIL),
    "bloom": (r" ?[^(\s|.,!?…。，、।۔،)]+",),
    "viking": (r" ?[^(\s|.,!?…。，、।۔،)]+", r"\p{N}"),
    "tekken": (TEKKEN,),
    "chameleon": (r"<sentinel:[0-9]+>", r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", r"([\t\n]|    |  )", r"\p{N}",
                  r"[\p{P}!-/:-@\[-`{-~]", _GPT2_NO_TAIL),
    "gpt4o": (GPT4O,),
    "tiny_aya": (r"\d{1,3}(?=(?:\d{3})*\b)", GPT4O),
    "kimi-k2": (KIMI_K2,),
    "superbpe": (r"\p{N}+", r"(?=(\d{3})+(?!\d))"),
    "bailingmoe": (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]"
                   r"|\s+(?!\S)|\s+",),
    "seed-coder": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+"
                   r"|\s+(?!\S)|\s+",),
    "ufakzeka": (r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "afmoe": (r"\p{N}{1,3}(?=(?:\p{N}{3})*(?!\p{N}))",
              "[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\u3040-\u309f\u30a0-\u30ff\uff65-\uff9f\u2f00-\u2fdf"
              "\u0e00-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f\uaa60-\uaa7f\ua9e0-\ua9ff\uac00-\ud7af"
              "\u1100-\u11ff]+", _DS3_WORDS),
    "laguna": ("[^\n]+|[\n]+", QWEN2),
    "exaone-moe": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",),
    "minicpm5": (r"\p{N}{1,3}", _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+"),
}


@dataclass(frozen=True)
class PreTokenizer:
    """One `tokenizer.ggml.pre` name: the splitting rules llama.cpp applies for it, and its flags."""
    name: str
    rules: str                    # key of RULES
    ignore_merges: bool = False
    clean_spaces: bool = True
    add_sep: bool = False


_P = PreTokenizer
# Every name llama.cpp's converter writes for a byte-level BPE tokenizer (and the few more llama.cpp accepts).
# Within names that split alike, the first whose flags fit is the one written.
PRE_TOKENIZERS: tuple[PreTokenizer, ...] = (
    _P("gpt-2", "gpt2"), _P("olmo", "gpt2"), _P("mpt", "gpt2"), _P("phi-2", "gpt2"), _P("jais", "gpt2"),
    _P("exaone4", "gpt2"), _P("gigachat", "gpt2"), _P("jina-v2-es", "gpt2"), _P("jina-v2-de", "gpt2"),
    _P("jina-es", "gpt2"), _P("jina-de", "gpt2"), _P("a.x-4.0", "gpt2"), _P("mellum", "gpt2"),
    _P("modern-bert", "gpt2"), _P("roberta-bpe", "gpt2", add_sep=True), _P("jina-v1-en", "gpt2", add_sep=True),
    _P("jina-v2-code", "gpt2", add_sep=True), _P("trillion", "gpt2", clean_spaces=False),
    _P("granite-docling", "gpt2", clean_spaces=False),
    _P("llama-bpe", "llama3", ignore_merges=True), _P("llama3", "llama3", ignore_merges=True),
    _P("llama-v3", "llama3", ignore_merges=True), _P("falcon3", "llama3", ignore_merges=True),
    _P("falcon-h1", "llama3", ignore_merges=True), _P("pixtral", "llama3", ignore_merges=True),
    _P("midm-2.0", "llama3", ignore_merges=True), _P("lfm2", "llama3", ignore_merges=True),
    _P("jina-v5-nano", "llama3", ignore_merges=True), _P("glm4", "llama3", ignore_merges=True),
    _P("glm5", "llama3", ignore_merges=True), _P("smaug-bpe", "llama3"), _P("dbrx", "llama3"),
    _P("chatglm-bpe", "llama3"),
    _P("qwen2", "qwen2", clean_spaces=False), _P("deepseek-r1-qwen", "qwen2", clean_spaces=False),
    _P("kormo", "qwen2", clean_spaces=False), _P("f2llmv2", "qwen2", clean_spaces=False),
    _P("hunyuan", "qwen2", clean_spaces=False), _P("solar-open", "qwen2", clean_spaces=False),
    _P("grok-2", "qwen2", clean_spaces=False), _P("stablelm2", "qwen2"), _P("megrez", "qwen2"),
    _P("qwen35", "qwen35", clean_spaces=False),
    _P("jais-2", "jais2"),
    _P("deepseek-llm", "deepseek-llm", clean_spaces=False),
    _P("deepseek-coder", "deepseek-coder", clean_spaces=False),
    _P("deepseek-v3", "deepseek-v3", clean_spaces=False), _P("hunyuan-dense", "deepseek-v3", clean_spaces=False),
    _P("joyai-llm", "deepseek-v3", clean_spaces=False), _P("hy_v4", "deepseek-v3", clean_spaces=False),
    _P("spark2_5", "spark2_5", clean_spaces=False),
    _P("youtu", "youtu", ignore_merges=True, clean_spaces=False),
    _P("falcon", "falcon"),
    _P("starcoder", "starcoder"), _P("refact", "starcoder"), _P("codeshell", "starcoder"),
    _P("exaone", "starcoder"), _P("minerva-7b", "starcoder"), _P("mellum2", "starcoder"),
    _P("command-r", "starcoder", clean_spaces=False), _P("smollm", "starcoder", clean_spaces=False),
    _P("bloom", "bloom"), _P("gpt3-finnish", "bloom"), _P("poro-chat", "bloom", clean_spaces=False),
    _P("viking", "viking", clean_spaces=False),
    _P("tekken", "tekken", ignore_merges=True, clean_spaces=False),
    _P("chameleon", "chameleon", clean_spaces=False),
    _P("gpt-4o", "gpt4o", clean_spaces=False), _P("llama4", "gpt4o", clean_spaces=False),
    _P("kanana2", "gpt4o", clean_spaces=False), _P("talkie", "gpt4o", clean_spaces=False),
    _P("minimax-m2", "gpt4o", clean_spaces=False),
    # llama.cpp adds combining marks to its letters here (a faster regex); the tokenizer's own is GPT-4o's
    _P("granite-embed-multi-97m", "gpt4o", ignore_merges=True, clean_spaces=False),
    _P("tiny_aya", "tiny_aya", clean_spaces=False), _P("cohere2moe", "tiny_aya", clean_spaces=False),
    _P("kimi-k2", "kimi-k2", clean_spaces=False),
    _P("superbpe", "superbpe", clean_spaces=False),
    _P("bailingmoe", "bailingmoe", clean_spaces=False), _P("bailingmoe2", "bailingmoe", clean_spaces=False),
    _P("llada-moe", "bailingmoe", clean_spaces=False),
    _P("seed-coder", "seed-coder", clean_spaces=False),
    _P("ufakzeka", "ufakzeka", clean_spaces=False),
    _P("afmoe", "afmoe", clean_spaces=False),
    _P("laguna", "laguna", clean_spaces=False),
    _P("exaone-moe", "exaone-moe"),
    _P("minicpm5", "minicpm5", ignore_merges=True),
)
BY_NAME: dict[str, PreTokenizer] = {p.name: p for p in PRE_TOKENIZERS}
# names llama.cpp's converter can write that this converter cannot produce: their tokenizers are not byte-level BPE
UNSUPPORTED: dict[str, str] = {
    "gemma4": "SentencePiece-style BPE on raw UTF-8 (llama.cpp's byte_encode off)",
    "granite-embed-multi-311m": "SentencePiece-style BPE on raw UTF-8 (llama.cpp's byte_encode off)",
    "sarvam-moe": "SentencePiece-style BPE on raw UTF-8 (llama.cpp's byte_encode off)",
    "bert-bge": "a WordPiece tokenizer", "bert-bge-large": "a WordPiece tokenizer",
    "jina-v2-en": "a WordPiece tokenizer",
}
PRE_NAMES: list[str] = sorted(BY_NAME)

# The fixed text the splits are compared on. Kept free of mixed-case runs of non-ASCII letters, where llama.cpp's
# rewritten letter-case regexes (GPT-4o, Tekken) knowingly differ from the originals.
PROBE = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\r\n \r\n\r\n x\r\ny "
    "🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 1,234,567.89 12ab34 x2 ٣٤٥ "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "'''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll "
    "make it, 'D you like some tea? We'Ve a'lL 'twas 'Sup don'tcha "
    "Hello World HelloWorld HELLOworld helloWORLD camelCase snake_case ÀÖ µm ǅ "
    "こんにちは カタカナ ｶﾀｶﾅ 日本語 안녕하세요 ㄱㄴ ㄅㄆ नमस्ते ภาษาไทย မြန်မာ "
    "def f(x):\n    return x**2  # sq\n\tif (a<=b) { c += d; } // a/b/c\n"
    "x = [1, 2]; y = {'k': \"v\"}; z = a|b^c~d$e+f`g`\n"
    "<sentinel:12> IMGIMGABZ 。，、।۔، …¿¡ “quoted” ‘single’ — end.   \n\n"
)


# -- running a pre-tokenizer ----------------------------------------------------------------------------------
def rules_pre_tokenizer(rules: tuple[str, ...]) -> dict[str, Any]:
    """The Hugging Face pre_tokenizer (tokenizer.json) that applies these rules, then byte-level mapping."""
    splits = [{"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": False} for r in rules]
    return {"type": "Sequence", "pretokenizers": splits + [
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}


def split_offsets(pre_tokenizer: Any, text: str = PROBE) -> tuple[tuple[int, int], ...]:
    """Where a Hugging Face pre_tokenizer splits `text`: (start, end) character offsets of every piece."""
    return _split_offsets(json.dumps(pre_tokenizer, sort_keys=True), text)


@functools.lru_cache(maxsize=256)
def _split_offsets(pre_json: str, text: str) -> tuple[tuple[int, int], ...]:
    from tokenizers import Tokenizer
    tj = {"version": "1.0", "pre_tokenizer": json.loads(pre_json),
          "model": {"type": "BPE", "vocab": {}, "merges": []}}
    tok = Tokenizer.from_str(json.dumps(tj))
    assert tok.pre_tokenizer is not None
    return tuple(off for _, off in tok.pre_tokenizer.pre_tokenize_str(text))


def reference_split(p: PreTokenizer) -> tuple[tuple[int, int], ...]:
    return split_offsets(rules_pre_tokenizer(RULES[p.rules]))


# -- identification -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Flags:
    """What tokenizer.json / tokenizer_config.json say about the flags llama.cpp ties to a name."""
    ignore_merges: bool
    clean_spaces: bool | None      # None: not stated
    add_sep: bool

    @classmethod
    def of(cls, tokenizer_json: dict[str, Any], tokenizer_config: dict[str, Any]) -> "Flags":
        post = tokenizer_json.get("post_processor") or {}
        clean = tokenizer_config.get("clean_up_tokenization_spaces")
        return cls(bool((tokenizer_json.get("model") or {}).get("ignore_merges", False)),
                   clean if isinstance(clean, bool) else None,
                   post.get("type") in ("RobertaProcessing", "BertProcessing"))

    def score(self, p: PreTokenizer) -> int:
        return (4 * (p.ignore_merges == self.ignore_merges) + 2 * (self.clean_spaces in (None, p.clean_spaces))
                + (p.add_sep == self.add_sep))


def _describe(pre_tokenizer: Any) -> str:
    """A short account of a pre_tokenizer for messages: its types and regexes."""
    if not isinstance(pre_tokenizer, dict):
        return repr(pre_tokenizer)
    kind = pre_tokenizer.get("type")
    if kind == "Sequence":
        return " + ".join(_describe(p) for p in pre_tokenizer.get("pretokenizers", []))
    if kind == "Split":
        pat = pre_tokenizer.get("pattern") or {}
        text = pat.get("Regex") or pat.get("String") or ""
        return f"Split({text[:50]!r}{'...' if len(text) > 50 else ''})"
    if kind == "ByteLevel":
        return f"ByteLevel(use_regex={pre_tokenizer.get('use_regex', True)})"
    return str(kind)


def _first_difference(got: tuple[tuple[int, int], ...], want: tuple[tuple[int, int], ...]) -> str:
    for a, b in zip(got, want):
        if a != b:
            return f"{PROBE[a[0]:a[1]]!r} where it has {PROBE[b[0]:b[1]]!r}"
    return "a different number of pieces"


def identify(tokenizer_json: dict[str, Any], tokenizer_config: dict[str, Any], preferred: str | None = None,
             where: str = "tokenizer.json") -> str:
    """The `tokenizer.ggml.pre` name for a byte-level BPE tokenizer.json, by how its pre_tokenizer splits PROBE.

    preferred: the family's usual name, taken when it is among those that fit (e.g. "olmo" for GPT-2's rules)."""
    pre = tokenizer_json.get("pre_tokenizer")
    try:
        got = split_offsets(pre)
    except Exception as exc:   # tokenizers rejects the pre_tokenizer (or the package is missing)
        raise ConversionError(f"{where}: cannot run its pre-tokenizer {_describe(pre)} ({exc}); pass "
                              f"vocab_pre=NAME (--vocab-pre) to name llama.cpp's (known: {', '.join(PRE_NAMES)})")
    fits = [p for p in PRE_TOKENIZERS if reference_split(p) == got]
    if not fits:
        nearest = max(PRE_TOKENIZERS, key=lambda p: _common_prefix(reference_split(p), got))
        raise ConversionError(
            f"{where}: unrecognised pre-tokenizer {_describe(pre)}: it splits a test text unlike every "
            f"pre-tokenizer llama.cpp knows (nearest, {nearest.name!r}: it cuts "
            f"{_first_difference(got, reference_split(nearest))}); if llama.cpp handles it under a name, pass "
            f"vocab_pre=NAME (--vocab-pre NAME; known: {', '.join(PRE_NAMES)})")
    flags = Flags.of(tokenizer_json, tokenizer_config)
    best = max(flags.score(p) for p in fits)
    chosen = [p for p in fits if flags.score(p) == best]
    return next((p.name for p in chosen if p.name == preferred), chosen[0].name)


def _common_prefix(a: tuple[tuple[int, int], ...], b: tuple[tuple[int, int], ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def check_name(name: str) -> str:
    """An explicitly given name: one llama.cpp accepts for a byte-level BPE vocabulary."""
    if name in BY_NAME or name == "default":
        return name
    why = f" ({name} is {UNSUPPORTED[name]}, which this converter does not write)" if name in UNSUPPORTED else ""
    raise ConversionError(f"unknown pre-tokenizer name {name!r}{why}; known: {', '.join(PRE_NAMES)}")


# the single-rule pre-tokenizers by name (what tiny test and synthetic tokenizers are built with)
SPLIT_REGEX: dict[str, str] = {p.name: RULES[p.rules][0] for p in PRE_TOKENIZERS if len(RULES[p.rules]) == 1}
