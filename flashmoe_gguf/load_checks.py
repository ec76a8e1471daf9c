"""What llama.cpp would abort on (GGML_ASSERT, an unsupported operation mid-decode) in a GGUF that parses, checked
before it sees the file, so that flashmoe_gguf.Llama raises FlashMoeError instead of the process dying. Found by
`tools/fuzz.py llama`: a norm stored in any type but F32 (ggml's CPU ggml_mul and fused RMS norm take an F32
weight only: SIGABRT in the first decode), `block_count` 0, a negative or NaN RMS norm epsilon
(GGML_ASSERT(eps >= 0.0f)), two tokens of the vocabulary with the same text (GGML_ASSERT(id_to_token.size() ==
token_to_id.size()) in llama-vocab.cpp; llama.cpp reads a token's text up to a NUL byte and names an empty one
"[EMPTY_<id>]")."""

from __future__ import annotations

import math
import struct

from .extension import unbound
from .gguf_index import GGUFModel
from .runtime_errors import FlashMoeError

MAX_LAYERS = 512                  # llama.cpp's LLAMA_MAX_LAYERS
F32 = 0                           # the only weight type ggml's CPU element-wise ops take with F32 activations
EPS_KEYS = ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon")
TOKENS_KEY = "tokenizer.ggml.tokens"
GGUF_STRING, GGUF_ARRAY = 8, 9


def check_llama_invariants(model: GGUFModel) -> None:
    arch = model.scalars.get("general.architecture")
    if not isinstance(arch, str):
        return
    n = model.scalars.get(f"{arch}.block_count")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_LAYERS):
        raise FlashMoeError(f"{model.path}: {arch}.block_count is {n!r}: it must be between 1 and {MAX_LAYERS}")
    for key in EPS_KEYS:
        eps = model.scalars.get(f"{arch}.{key}")
        if eps is not None and (not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps)
                                or eps < 0):
            raise FlashMoeError(f"{model.path}: {arch}.{key} is {eps!r}: llama.cpp needs a finite value >= 0")
    dup = _duplicate_token(model)
    if dup is not None:
        first, second, text = dup
        raise FlashMoeError(f"{model.path}: tokens {first} and {second} of {TOKENS_KEY} are both {text!r}: "
                            f"llama.cpp needs every token's text to be different")
    for t in model.tensors:
        # norms, biases, sinks: llama.cpp multiplies or adds them element-wise; llama-quantize keeps 1-D tensors F32
        if len(t.shape) == 1 and t.gtype != F32:
            raise FlashMoeError(f"{model.path}: {t.name} is a 1-D tensor of ggml type {t.gtype}: llama.cpp applies it "
                                f"element-wise, which needs F32")


def _duplicate_token(model: GGUFModel) -> tuple[int, int, str] | None:
    """the first two tokens with the same text as llama.cpp's vocabulary sees them, from the key's bytes in the header
    (read_index checked their lengths; a file changed since is the store's identity check's business)"""
    head = model.files[0]
    span = next(((b, e) for k, b, e in head.kv_spans if k == TOKENS_KEY), None)
    if span is None:
        return None
    with open(head.path, "rb") as f:
        f.seek(span[0])
        blob = f.read(span[1] - span[0])
    try:
        (klen,) = struct.unpack_from("<Q", blob, 0)
        pos = 8 + klen
        vtype, etype, count = struct.unpack_from("<IIQ", blob, pos)
        pos += 16
    except struct.error:
        return None
    if vtype != GGUF_ARRAY or etype != GGUF_STRING:
        return None              # llama.cpp refuses that itself (an error, not an abort)
    # in C (ggml_ext/fm_strings.c): a dict of ~150k tokens in Python took 0.28 s of every load
    ext = unbound()
    data = memoryview(blob)[pos:]
    first, second = ext.ffi.new("int64_t *"), ext.ffi.new("int64_t *")
    if ext.lib.fm_duplicate_string(ext.ffi.from_buffer("uint8_t[]", data), len(data), count, first, second) != 1:
        return None              # all different, or the strings do not fit the key's bytes (read_index checked them)
    i = int(second[0])
    for _ in range(i):           # the second one's text, for the message
        (n,) = struct.unpack_from("<Q", blob, pos)
        pos += 8 + n
    (n,) = struct.unpack_from("<Q", blob, pos)
    text = blob[pos + 8:pos + 8 + n].split(b"\0", 1)[0] or b"[EMPTY_%d]" % i
    return int(first[0]), i, text.decode("utf-8", errors="replace")
