"""`flashmoe run`: stream a completion from a GGUF with experts read from disk, then one line of stats."""

from __future__ import annotations

import resource
import sys
import time
from typing import TextIO


def run(path: str, prompt: str, n_tokens: int = 64, ram_budget: str | int = "auto", n_ctx: int = 2048,
        threads: int | None = None, temperature: float = 0.0, cache: str = "lfu", out: TextIO = sys.stdout,
        verbose: bool = False, gpu_layers: int = 0, tensor_overrides: list[tuple[str, str]] | None = None,
        resident_repack: bool = False) -> dict:
    from .offload import llama_kwargs
    from .runtime import Llama
    from .runtime_errors import FlashMoeError

    if not prompt:
        raise FlashMoeError("the prompt is empty (-p TEXT): a completion continues a text")
    if n_tokens <= 0:
        raise FlashMoeError(f"-n/--tokens must be at least 1, got {n_tokens}")
    if n_ctx <= 0:
        raise FlashMoeError(f"--ctx must be at least 1, got {n_ctx}")
    t0 = time.monotonic()
    kw = {"n_threads": threads} if threads else {}
    kw.update(llama_kwargs(gpu_layers, tensor_overrides))   # GPU layers next to the streamed experts (offload.py)
    llm = Llama(model_path=path, ram_budget=ram_budget, n_ctx=n_ctx, verbose=verbose, cache=cache,
                resident_repack=resident_repack, **kw)
    load_s = time.monotonic() - t0
    try:
        before = llm.flashmoe_stats()
        t1 = time.monotonic()
        first = None
        n_prompt = len(llm.tokenize(prompt.encode()))
        out.write(prompt)
        for chunk in llm.create_completion(prompt, max_tokens=n_tokens, temperature=temperature, stream=True):
            if first is None:
                first = time.monotonic() - t1
            out.write(chunk["choices"][0]["text"])
            out.flush()
        total = time.monotonic() - t1
        # tokens generated: what the context holds beyond the prompt (stream chunks are not tokens: text is
        # held back while it may be an incomplete character or a stop sequence), plus the last sampled one
        n = max(0, llm.n_tokens - n_prompt) + 1 if first is not None else 0
        n = min(n, n_tokens)
        st = llm.flashmoe_stats()
    finally:
        llm.close()
    decode_s = max(total - (first or 0.0), 1e-9)
    read = st["expert_bytes_read"] - before["expert_bytes_read"]
    hits = st["cache_hits"] - before["cache_hits"]
    misses = st["cache_misses"] - before["cache_misses"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    summary = {
        "tokens": n, "load_s": load_s, "first_token_s": first or 0.0,
        "decode_tok_s": (n - 1) / decode_s if n > 1 else 0.0,
        "expert_bytes_per_token": read / max(n, 1), "cache_hit_rate": hits / max(hits + misses, 1),
        "peak_rss": peak, "io_wait_s": st["io_wait_seconds"], "expert_compute_s": st["expert_compute_seconds"],
    }
    out.write("\n")
    out.write(f"[flashmoe] {n} tokens, {summary['decode_tok_s']:.2f} tok/s decode, first token "
              f"{summary['first_token_s']:.2f} s, load {load_s:.2f} s, expert reads "
              f"{summary['expert_bytes_per_token'] / 2**20:.1f} MiB/token, cache hit rate "
              f"{summary['cache_hit_rate']:.0%}, budget {st['ram_budget'] / 2**20:.0f} MiB, peak RSS {peak / 2**20:.0f} MiB\n")
    return summary
