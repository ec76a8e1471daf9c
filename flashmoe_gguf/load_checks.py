"""What llama.cpp would abort on (GGML_ASSERT, an unsupported operation mid-decode) in a GGUF that parses, checked
before it sees the file, so that flashmoe_gguf.Llama raises FlashMoeError instead of the process dying. Found by
`tools/fuzz.py llama`: a norm stored in a quantized type (ggml_mul has no kernel for it: SIGABRT in the first
decode), `block_count` 0."""

from __future__ import annotations

from .gguf_index import GGUFModel
from .runtime_errors import FlashMoeError

MAX_LAYERS = 512                  # llama.cpp's LLAMA_MAX_LAYERS
ELEMENTWISE_TYPES = {0: "F32", 1: "F16", 30: "BF16"}   # what ggml's element-wise ops take as a weight


def check_llama_invariants(model: GGUFModel) -> None:
    arch = model.scalars.get("general.architecture")
    if not isinstance(arch, str):
        return
    n = model.scalars.get(f"{arch}.block_count")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_LAYERS):
        raise FlashMoeError(f"{model.path}: {arch}.block_count is {n!r}: it must be between 1 and {MAX_LAYERS}")
    for t in model.tensors:
        # norms, biases, sinks: llama.cpp multiplies or adds them element-wise; llama-quantize keeps 1-D tensors F32
        if len(t.shape) == 1 and t.gtype not in ELEMENTWISE_TYPES:
            raise FlashMoeError(f"{model.path}: {t.name} is a 1-D tensor of ggml type {t.gtype}: llama.cpp applies it "
                                f"element-wise, which needs F32, F16 or BF16")
