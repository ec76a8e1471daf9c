"""Independent references the tests compare against: transformers' forward pass and stock llama-cpp-python."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np

GGML_TYPE_F32 = 0


def hf_model(model_dir: Path):  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    m.eval()
    return m


def hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    import torch
    m = hf_model(model_dir)
    with torch.no_grad():
        out = m(torch.tensor([ids]))
    return out.logits[0].float().numpy()


def hf_greedy(model_dir: Path, ids: list[int], n: int) -> list[int]:
    import torch
    m = hf_model(model_dir)
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):   # full recompute each step: no cache subtleties in the reference
            logits = m(torch.tensor([seq])).logits[0, -1]
            seq.append(int(torch.argmax(logits)))
    return seq[len(ids):]


@contextlib.contextmanager
def no_extra_buffer_types() -> Iterator[None]:
    """Stock llama.cpp with extra buffer types (CPU_REPACK, AMX) off, so expert weights run through ggml's plain
    CPU MUL_MAT_ID. llama_cpp.Llama reads the model defaults through the submodule's name
    (llama_cpp.llama_cpp.llama_model_default_params), so that is the name patched; checked by
    test_reference_really_turns_repack_off."""
    import llama_cpp.llama_cpp as lc
    orig = lc.llama_model_default_params

    def patched():  # type: ignore[no-untyped-def]
        p = orig()
        p.use_extra_bufts = False
        return p
    lc.llama_model_default_params = patched
    try:
        yield
    finally:
        lc.llama_model_default_params = orig


def llama(gguf: Path, n_ctx: int = 256, extra_bufts: bool = False):  # type: ignore[no-untyped-def]
    import llama_cpp
    kw = dict(model_path=str(gguf), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False, seed=0,
              n_threads=2, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    if extra_bufts:
        return llama_cpp.Llama(**kw)
    with no_extra_buffer_types():
        return llama_cpp.Llama(**kw)


def last_logits(llm) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The logits of the last token evaluated, read from llama.cpp. (llama-cpp-python 0.3.36 fills Llama.scores
    only with logits_all=True; without it, scores is uninitialised memory.)"""
    import llama_cpp
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def llama_logits(gguf: Path, ids: list[int]) -> np.ndarray:
    llm = llama(gguf)
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return out


def llama_greedy(gguf: Path, ids: list[int], n: int) -> list[int]:
    llm = llama(gguf)
    llm.eval(ids)
    out: list[int] = []
    for _ in range(n):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        llm.eval([tok])
    llm.close()
    return out


def rel_max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())
