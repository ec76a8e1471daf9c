"""Child process of test_gpu_hybrid.py: one model with its layers on an RPC "GPU", stock and flashmoe.

Run as `python gpu_hybrid_child.py SPEC_JSON`; prints one line `RESULT {json}` with what it measured (the parent
asserts). A child per case because the RPC device, once registered, stays in the process's ggml registry (every
later model would get a context on it, and the server stops with the test).

For stock (extra buffer types off, the routed experts overridden to the CPU as flashmoe's loader does) and for
flashmoe_gguf.Llama at each budget: prompt-batch logits, token-by-token logits, a greedy continuation, and from
llama.cpp's own log (captured during the load): the bytes of weights on the RPC device and the
scheduler's graph splits.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402

import rpc_standin  # noqa: E402


@contextlib.contextmanager
def log_to(path: Path) -> Iterator[None]:
    """llama.cpp's log (every level, flashmoe_gguf.llama_log) into a file for the duration"""
    from flashmoe_gguf.llama_log import text_during
    with text_during() as pieces:
        try:
            yield
        finally:
            path.write_text("".join(pieces))


def load_facts(log: str) -> dict[str, Any]:
    rpc_mib = sum(float(m.group(1)) for m in re.finditer(r"RPC\d+\[[^\]]*\] model buffer size =\s+([\d.]+) MiB", log))
    splits = [m.group(1) for m in re.finditer(r"graph: nodes = \S+, splits = ([^,]+),", log)]
    return {"rpc_model_mib": rpc_mib, "splits": splits,
            "experts_overridden": len(re.findall(r"tensor blk\.\d+\.ffn_\w+_exps\.weight .* overridden to", log))}


def measure(llm: Any, batch: list[int], prompt: list[int], n_greedy: int) -> dict[str, Any]:
    from test_runtime import greedy, logits
    b = logits(llm, batch, batch=True)
    llm.reset()
    d = logits(llm, prompt, batch=False)
    g = greedy(llm, prompt[:6], n_greedy)
    return {"batch": b, "decode": d, "greedy": g}


def errors(spec: dict[str, Any], build: rpc_standin.RpcBuild) -> dict[str, Any]:
    """User overrides that would put routed experts on the GPU: the error each one gives (none: loaded)."""
    from flashmoe_gguf import Llama
    out = {}
    with rpc_standin.server(build) as endpoint:
        gpu = rpc_standin.register(build, endpoint)
        out["gpu_buft"] = gpu
        cases = {"experts_to_gpu": [("ffn_.*_exps", gpu)],
                 "down_to_gpu_first": [(r"blk\.1\.ffn_down", gpu), ("exps", "CPU")],
                 "experts_cpu_attn_gpu": [("exps", "CPU"), ("attn", gpu)]}
        for name, overrides in cases.items():
            try:
                llm = Llama(model_path=spec["model"], ram_budget="64M", n_ctx=64, verbose=False, n_gpu_layers=-1,
                            tensor_overrides=overrides)
                llm.eval([1, 2, 3])
                llm.close()
                out[name] = None
            except Exception as exc:        # the parent checks the type and message
                out[name] = f"{type(exc).__name__}: {exc}"
    return out


def read_fault(spec: dict[str, Any], build: rpc_standin.RpcBuild) -> dict[str, Any]:
    """An expert read that fails while layers are on the GPU: the error FlashMoeError gives, and a second eval."""
    from flashmoe_gguf import FlashMoeError, Llama
    out: dict[str, Any] = {}
    with rpc_standin.server(build) as endpoint:
        rpc_standin.register(build, endpoint)
        llm = Llama(model_path=spec["model"], ram_budget="64M", n_ctx=64, verbose=False, n_gpu_layers=-1)
        llm.eval([1, 2, 3])
        llm._fm.inject_read_error(1)
        for key in ("first", "again"):
            try:
                llm.eval([4])
                out[key] = None
            except FlashMoeError as exc:
                out[key] = str(exc)
        llm.close()
    return out


def resident(spec: dict[str, Any], build: rpc_standin.RpcBuild) -> dict[str, Any]:
    """What ram_budget="auto" counts as host-resident weights, per offload setting."""
    from flashmoe_gguf import Llama
    out: dict[str, Any] = {}
    with rpc_standin.server(build) as endpoint:
        rpc_standin.register(build, endpoint)
        for name, kw in (("cpu", {}), ("all", {"n_gpu_layers": -1}), ("partial", {"n_gpu_layers": 1}),
                         ("all_with_override", {"n_gpu_layers": -1, "tensor_overrides": [("attn_q", "CPU")]})):
            llm = Llama(model_path=spec["model"], n_ctx=64, verbose=False, **kw)
            fm = llm._fm
            out[name] = {"host_resident": fm.host_resident_bytes(), "all_layers_on_gpu": fm.all_layers_on_gpu,
                         "outside_layers": sum(t.nbytes for t in fm.model.tensors if not t.name.startswith("blk.")),
                         "non_expert": fm.model.size - fm.expert_bytes}
            llm.close()
    return out


def main() -> None:
    spec = json.loads(sys.argv[1])
    build = rpc_standin.RpcBuild(Path(spec["lib"]), Path(spec["server"]), 0.0)
    if spec.get("mode") in ("errors", "read_fault", "resident"):
        run = {"errors": errors, "read_fault": read_fault, "resident": resident}[spec["mode"]]
        print("RESULT " + json.dumps(run(spec, build)), flush=True)
        return
    from flashmoe_gguf import Llama
    from flashmoe_gguf.offload import experts_to_cpu
    from flashmoe_gguf.stock import no_extra_buffer_types, tensor_overrides
    from test_runtime import BATCH, PROMPT
    import llama_cpp
    path = spec["model"]
    if not spec.get("gpu_block", True):
        os.environ["FLASHMOE_EXPERT_BLOCK"] = "0"      # flashmoe takes the expert products alone (streamed.py)
    kw = dict(n_ctx=256, n_batch=256, logits_all=True, verbose=True, seed=0, n_threads=2, type_k=0, type_v=0,
              n_gpu_layers=spec.get("n_gpu_layers", -1))
    out: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp())
    with rpc_standin.server(build) as endpoint:
        rpc_standin.register(build, endpoint)
        with log_to(tmp / "stock.log"), no_extra_buffer_types(), tensor_overrides(experts_to_cpu()):
            ref = llama_cpp.Llama(model_path=path, **kw)
        want = measure(ref, BATCH, PROMPT, 32)
        ref.close()
        out["stock"] = load_facts((tmp / "stock.log").read_text(errors="replace"))
        runs = []
        for budget in spec["budgets"]:
            with log_to(tmp / "fm.log"):
                llm = Llama(model_path=path, ram_budget=budget, **kw)
            got = measure(llm, BATCH, PROMPT, 32)
            stats = llm.flashmoe_stats()
            hybrid = llm._fm.gpu_hybrid
            llm.close()
            run = {"budget": budget, "gpu_hybrid": hybrid, "expert_bytes_read": stats["expert_bytes_read"],
                   "cache_misses": stats["cache_misses"],
                   **load_facts((tmp / "fm.log").read_text(errors="replace"))}
            for k in ("batch", "decode"):
                a, b = got[k], want[k]
                run[f"{k}_equal"] = bool(a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32)))
                run[f"{k}_max_diff"] = float(np.abs(a - b).max()) if a.shape == b.shape else None
            run["greedy_equal"] = got["greedy"] == want["greedy"]
            runs.append(run)
        out["flashmoe"] = runs
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
