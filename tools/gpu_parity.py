#!/usr/bin/env python3
"""GPU hybrid mode against stock with the routed experts on the CPU, bit for bit: prompt-batch logits,
token-by-token logits and a greedy continuation, at each budget.

    python tools/gpu_parity.py MODEL.gguf [--gpu-layers -1] [--budgets all,quarter] [--prompt-tokens 48]

Stock: llama_cpp.Llama with n_gpu_layers, extra buffer types off and the routed experts (and their biases)
overridden to the CPU buffer type (llama.cpp's `-ot exps=CPU`; flashmoe_gguf/offload.py). flashmoe:
flashmoe_gguf.Llama with the same n_gpu_layers. Both with op_offload off: llama.cpp would otherwise copy stock's
host-memory experts to the GPU for batches of 32+ tokens and multiply them there (other arithmetic), which
flashmoe's streamed experts never are. F32 KV cache, logits for every token. Prints one JSON line per budget and
exits 1 if anything differs. Also from llama.cpp's own log of each load (flashmoe_gguf.llama_log): the graph splits the
scheduler made (flashmoe's should equal stock's: the expert block crosses devices once each way) and the model
buffers per device. FLASHMOE_RPC=LIB@HOST:PORT: llama.cpp's RPC backend as the GPU (flashmoe_gguf/rpc.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from typing import Any, Iterator

import numpy as np


def parse_budgets(text: str, total: int) -> list[int]:
    named = {"all": 2 * total, "quarter": total // 4, "eighth": total // 8}
    from flashmoe_gguf.units import parse_size
    return [named[b] if b in named else parse_size(b) for b in text.split(",") if b]


def run(llm: Any, batch: list[int], prompt: list[int], n: int) -> dict[str, Any]:
    llm.reset()
    llm.eval(batch)
    b = np.array(llm.scores[: len(batch)], dtype=np.float32)
    llm.reset()
    for t in prompt:
        llm.eval([t])
    d = np.array(llm.scores[: len(prompt)], dtype=np.float32)
    llm.reset()
    llm.eval(prompt[:6])
    out = []
    for _ in range(n):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(t)
        llm.eval([t])
    return {"batch": b, "decode": d, "greedy": out}


@contextlib.contextmanager
def llama_log(into: dict[str, Any]) -> Iterator[None]:
    """llama.cpp's log during the block (flashmoe_gguf.llama_log); the splits and model buffers it names into `into`"""
    from flashmoe_gguf.llama_log import text_during
    with text_during() as pieces:
        yield
    log = "".join(pieces)
    into["splits"] = re.findall(r"graph: nodes = \S+, splits = ([^,]+),", log)
    into["model_buffers_mib"] = {m.group(1).strip(): float(m.group(2))
                                 for m in re.finditer(r"load_tensors:\s+(.+?) model buffer size =\s+([\d.]+) MiB", log)}


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--gpu-layers", type=int, default=-1)
    ap.add_argument("--budgets", default="all,quarter", help="all, quarter, eighth or sizes (default all,quarter)")
    ap.add_argument("--prompt-tokens", type=int, default=48, help="prompt batch length (default 48)")
    ap.add_argument("--decode-tokens", type=int, default=16, help="token-by-token logits compared (default 16)")
    ap.add_argument("--greedy", type=int, default=32, help="greedy continuation length (default 32)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--n-ctx", type=int, default=256)
    args = ap.parse_args(argv)

    import llama_cpp

    from flashmoe_gguf import Llama
    from flashmoe_gguf.experts import expert_tensors
    from flashmoe_gguf.offload import experts_to_cpu
    from flashmoe_gguf.rpc import connect_from_env
    from flashmoe_gguf.stock import no_extra_buffer_types, tensor_overrides
    connect_from_env()
    total = sum(e.stride * e.n_expert for e in expert_tensors(args.model))
    kw: dict[str, Any] = dict(n_ctx=args.n_ctx, n_batch=args.n_ctx, logits_all=True, verbose=False, seed=0,
                              type_k=0, type_v=0, n_gpu_layers=args.gpu_layers, op_offload=False)
    if args.threads:
        kw.update(n_threads=args.threads, n_threads_batch=args.threads)
    stock_log: dict[str, Any] = {}
    with llama_log(stock_log), no_extra_buffer_types(), tensor_overrides(experts_to_cpu()):
        ref = llama_cpp.Llama(model_path=args.model, **{**kw, "verbose": True})
    print(json.dumps({"stock_exps_cpu": stock_log}), flush=True)
    rng = np.random.default_rng(0)
    hi = min(ref.n_vocab(), 100000)
    batch = [int(t) for t in rng.integers(5, hi, args.prompt_tokens)]
    prompt = [int(t) for t in rng.integers(5, hi, args.decode_tokens)]
    want = run(ref, batch, prompt, args.greedy)
    ref.close()
    ok = True
    for budget in parse_budgets(args.budgets, total):
        fm_log: dict[str, Any] = {}
        with llama_log(fm_log):
            llm = Llama(model_path=args.model, ram_budget=budget, **{**kw, "verbose": True})
        got = run(llm, batch, prompt, args.greedy)
        st = llm.flashmoe_stats()
        res = {"budget": budget, "expert_bytes": total, "gpu_hybrid": llm._fm.gpu_hybrid,
               "batch_equal": same(got["batch"], want["batch"]), "decode_equal": same(got["decode"], want["decode"]),
               "greedy_equal": got["greedy"] == want["greedy"],
               "batch_max_diff": float(np.abs(got["batch"] - want["batch"]).max()),
               "decode_max_diff": float(np.abs(got["decode"] - want["decode"]).max()),
               "expert_bytes_read": st["expert_bytes_read"], "cache_misses": st["cache_misses"], **fm_log,
               "same_splits_as_stock": fm_log["splits"] == stock_log["splits"]}
        llm.close()
        ok = ok and res["gpu_hybrid"] and res["batch_equal"] and res["decode_equal"] and res["greedy_equal"]
        print(json.dumps(res), flush=True)
    print("parity: " + ("bitwise equal" if ok else "DIFFERS"), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
