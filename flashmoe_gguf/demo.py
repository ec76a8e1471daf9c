"""`flashmoe demo`: build (or reuse) a tiny random Qwen3-MoE checkpoint, convert it, run it with llama-cpp-python."""

from __future__ import annotations

import time
from pathlib import Path

from .tiny import build_demo_checkpoint, default_cache_dir


def run_demo(cache_dir: Path | None = None, prompt: str = "The capital of France is", n_tokens: int = 16) -> None:
    from .converter import convert
    from .inspection import inspect_gguf

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    model_dir = cache / "demo-qwen3moe"
    print(f"[1/3] checkpoint: {model_dir} (Qwen3-MoE layout, random weights, real Qwen2 tokenizer)")
    build_demo_checkpoint(model_dir, cache)
    out = cache / "demo-qwen3moe.gguf"
    if not out.exists():
        print("[2/3] converting to a streaming GGUF (experts Q4_K, dense Q8_0, router F32)")
        print(convert(model_dir, out, progress=False).summary())
    else:
        print(f"[2/3] reusing {out}")
    info = inspect_gguf(out)
    print(f"      {info.arch}: resident {info.resident_bytes / 1e6:.1f} MB, experts {info.expert_bytes / 1e6:.1f} MB, "
          f"streams: {'yes' if info.streams else 'no'}")

    import llama_cpp

    from .runtime import Llama
    from .stock import no_extra_buffer_types
    budget = info.expert_bytes // 4
    print(f"[3/3] running it with flashmoe (experts streamed from disk, RAM budget {budget / 1e6:.1f} MB = "
          f"a quarter of the experts) and with stock llama-cpp-python (everything in RAM; repack off, the "
          f"configuration flashmoe reproduces bit for bit)")
    t0 = time.monotonic()
    llm = Llama(model_path=str(out), ram_budget=budget, n_ctx=256, n_threads=1, verbose=False, seed=0)
    res = llm.create_completion(prompt, max_tokens=n_tokens, temperature=0.0)
    dt = time.monotonic() - t0
    st = llm.flashmoe_stats()
    llm.close()
    with no_extra_buffer_types():
        stock = llama_cpp.Llama(model_path=str(out), n_ctx=256, n_threads=1, verbose=False, seed=0)
    ref = stock.create_completion(prompt, max_tokens=n_tokens, temperature=0.0)
    stock.close()
    text, ref_text = res["choices"][0]["text"], ref["choices"][0]["text"]
    n = res["usage"]["completion_tokens"]
    print(f"      prompt:  {prompt!r}")
    print(f"      flashmoe: {text!r}")
    print(f"      stock:    {ref_text!r}  ({'identical' if text == ref_text else 'DIFFERENT'}; random weights: the "
          f"words mean nothing)")
    print(f"      flashmoe: {n} tokens in {dt:.2f} s (load included), read {st['expert_bytes_read'] / 1e6:.1f} MB of "
          f"experts, cache hit rate {st['cache_hit_rate']:.0%}, peak cache {st['cache_peak_bytes'] / 1e6:.1f} MB")
