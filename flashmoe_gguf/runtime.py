"""`flashmoe_gguf.Llama`: llama_cpp.Llama whose routed experts stay on disk and are streamed on demand.

How: the ggml extension (ggml_ext/, extension.py) registers an ACCEL device in the ggml that llama-cpp-python
loaded. While a model loads through this class (loader.py), that device claims the routed-expert tensors; the
model is read through a FILE* that never reads their bytes (streamed.py); at run time the device computes the
expert MUL_MAT_ID nodes from expert bytes it reads with pread into a cache bounded by `ram_budget`. Everything
else (attention, norms, router, shared experts, KV cache, sampling) is stock llama.cpp.
"""

from __future__ import annotations

from typing import Any, Sequence

from . import seams
from .loader import install, loading
from .runtime_errors import FlashMoeError
from .streamed import StreamedModel

__all__ = ["FlashMoeError", "Llama"]


def _llama_base() -> type:
    import llama_cpp
    return llama_cpp.Llama


install()


class Llama(_llama_base()):  # type: ignore[misc]
    """Drop-in llama_cpp.Llama for MoE GGUFs larger than RAM.

    Extra arguments: ram_budget (bytes or "8G": RAM for cached experts; "auto" (default): what this machine or
    cgroup has available beyond the resident weights, llama.cpp's context (KV cache, compute buffers: measured
    when it is created) and a headroom, see flashmoe_gguf/budget.py), ram_headroom (the headroom of "auto",
    bytes or "512M"; default max(512 MiB, 10 % of the available memory)), cache ("lfu": our cache, evicting the
    least often used experts (default); "lru": our cache, least recently used first; "os": no cache of our own,
    the page cache does it; see ggml_ext/fm_store.h), io_threads, direct_io (O_DIRECT reads; "auto" (default):
    with our own cache, when the file system allows it), isa (which code computes the expert products: "auto"
    (default, or the FLASHMOE_ISA environment variable), "avx512", "avx2", "scalar" (our kernels on that
    instruction set) or "ggml" (ggml's own code); all give stock llama.cpp's results bit for bit, see
    flashmoe_gguf/isa.py), kernels (False: the same as isa="ggml"). flashmoe_stats()["kernel_isa"] says which
    is used. tensor_overrides: llama.cpp's `-ot` as (regex, buffer type name) pairs, e.g. [("attn", "CPU")]
    (flashmoe_gguf/offload.py). Every llama_cpp.Llama argument works as usual; with n_gpu_layers (any llama.cpp
    GPU backend) everything but the routed experts is offloaded as asked and the experts stay streamed.

    resident_repack: llama.cpp's extra buffer types (CPU_REPACK, and AMX on CPUs that have it) for the resident
    weights (attention, shared experts, dense FFNs, output head), as stock llama.cpp loads them by default: faster
    on CPUs where they apply (flashmoe's warm decode 1.04-1.49x faster with it on a 16-core AMX Xeon at 16 to 1
    threads, 2026-12-07). The
    routed experts stay streamed and computed as without it. False (default): extra buffer types off, and the
    logits are stock's with them off (`-nr`), bit for bit; True: the logits are stock's with them on (llama.cpp's
    default) and the routed experts overridden to the CPU (`-ot exps=CPU`), bit for bit, when the routed experts
    are of a type CPU_REPACK leaves alone on this CPU (with that override stock repacks the experts too where it
    can: Q4_0, Q4_K, IQ4_NL and MXFP4 on x86, also Q2_K with AVX-512; those experts we compute as plain ggml does,
    so with them no stock configuration is equal bitwise: README, "Equal to stock").
    """

    def __init__(self, model_path: str, *args: Any, ram_budget: str | int = "auto", cache: str = "lfu",
                 io_threads: int = 8, direct_io: bool | str = "auto", kernels: bool = True, isa: str | None = None,
                 ram_headroom: str | int | None = None, tensor_overrides: Sequence[tuple[str, str]] | None = None,
                 resident_repack: bool = False, **kwargs: Any) -> None:
        self._fm: StreamedModel | None = None
        self._evals_to_pause = seams.pause_at(seams.EVAL_AT)     # tests/test_terminal_chat.py only
        self._fm = StreamedModel(model_path, ram_budget, io_threads, cache, direct_io, kernels, isa, ram_headroom,
                                 tensor_overrides, resident_repack)
        try:
            # one logits row per batch is all llama-cpp-python reads unless logits_all, embedding or a draft
            # model: a compute buffer sized for one output row leaves the rest of the RAM to the expert cache
            one_row = not any(kwargs.get(k) for k in ("logits_all", "embedding", "draft_model"))
            with loading(self._fm, outputs_max=1 if one_row else 0):
                super().__init__(model_path, *args, **kwargs)
            self._fm.size_auto_budget()
        except Exception as exc:
            self._fm.close()
            self._fm = None
            import jinja2
            if isinstance(exc, jinja2.TemplateError):     # llama-cpp-python compiles the file's chat template
                raise FlashMoeError(f"{model_path}: the file's chat template (tokenizer.chat_template) is not valid "
                                    f"Jinja: {exc}") from exc
            raise

    def eval(self, tokens: Sequence[int]) -> None:
        try:
            super().eval(tokens)
        except RuntimeError as exc:
            msg = self._fm.error() if self._fm else None
            if msg:
                raise FlashMoeError(msg) from exc
            raise
        if self._fm and (msg := self._fm.error()):
            raise FlashMoeError(msg)
        if self._evals_to_pause:
            self._evals_to_pause -= 1
            if not self._evals_to_pause:
                seams.wait_for_a_signal()      # inside the generation, as after any llama_decode

    def flashmoe_stats(self) -> dict[str, Any]:
        if self._fm is None:
            raise FlashMoeError("model is closed")
        return self._fm.stats()

    def close(self) -> None:
        super().close()
        if self._fm is not None:
            self._fm.close()
            self._fm = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

