"""What llama.cpp would abort on (GGML_ASSERT, an unsupported operation mid-decode) in a GGUF that parses, checked
before it sees the file, so that flashmoe_gguf.Llama raises FlashMoeError instead of the process dying. Found by
`tools/fuzz.py llama`: a norm stored in any type but F32 (ggml's CPU ggml_mul and fused RMS norm take an F32
weight only: SIGABRT in the first decode), `block_count` 0, a negative or NaN RMS norm epsilon
(GGML_ASSERT(eps >= 0.0f))."""

from __future__ import annotations

import math

from .gguf_index import GGUFModel
from .runtime_errors import FlashMoeError

MAX_LAYERS = 512                  # llama.cpp's LLAMA_MAX_LAYERS
F32 = 0                           # the only weight type ggml's CPU element-wise ops take with F32 activations
EPS_KEYS = ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon")


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
    for t in model.tensors:
        # norms, biases, sinks: llama.cpp multiplies or adds them element-wise; llama-quantize keeps 1-D tensors F32
        if len(t.shape) == 1 and t.gtype != F32:
            raise FlashMoeError(f"{model.path}: {t.name} is a 1-D tensor of ggml type {t.gtype}: llama.cpp applies it "
                                f"element-wise, which needs F32")
