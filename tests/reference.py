"""Independent references the tests compare against: transformers' forward pass and stock llama-cpp-python.

Stock runs with extra buffer types off (flashmoe_gguf.stock, shared with `flashmoe bench`: the one place that
knows how to turn them off in llama-cpp-python; test_reference_really_turns_repack_off checks it does)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from flashmoe_gguf.stock import no_extra_buffer_types

GGML_TYPE_F32 = 0


def hf_model(model_dir: Path):  # type: ignore[no-untyped-def]
    import json

    import torch
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    kw = {}
    quant = json.loads((Path(model_dir) / "config.json").read_text()).get("quantization_config") or {}
    if quant.get("quant_method") == "mxfp4":   # GPT-OSS's MXFP4 experts: dequantized to float32 on load (CPU)
        from transformers import Mxfp4Config
        kw["quantization_config"] = Mxfp4Config(dequantize=True)
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kw)
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


def run_result_child(script: Path, spec: dict[str, Any], timeout: int = 900) -> dict[str, Any]:
    """Runs `python SCRIPT SPEC_JSON` (a child that compares stock and flashmoe in a process of its own, e.g. to
    read llama.cpp's log from fd 2) and returns the JSON of its last `RESULT {json}` line; fails the test with the
    child's output if it exits non-zero or prints none."""
    proc = subprocess.run([sys.executable, str(script), json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"child failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])
