"""Child process of test_resident_repack.py: stock with extra buffer types on and the routed experts overridden to
the CPU, then flashmoe_gguf.Llama(resident_repack=True) at each budget, on one model (and stock with them off,
whose logits must differ for the case to tell the configurations apart).

Run as `python resident_repack_child.py SPEC_JSON`; prints one line `RESULT {json}` (the parent asserts). A child
per model so that llama.cpp's log (flashmoe_gguf.llama_log) can be read back for each load: which buffer type holds how
many MiB of weights (`load_tensors: ... model buffer size`), which tensors CPU_REPACK repacked, and where the
routed experts went (`tensor ... buffer type overridden to ...`).
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402

from gpu_hybrid_child import log_to, measure  # noqa: E402


def load_facts(log: str) -> dict[str, Any]:
    buffers: dict[str, float] = {}
    for m in re.finditer(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB", log):
        buffers[m.group(1)] = buffers.get(m.group(1), 0.0) + float(m.group(2))
    return {"buffers": buffers,
            "repacked": sorted(set(re.findall(r"repack: repack tensor (\S+) with", log))),
            "experts_to": {m.group(1): m.group(2) for m in
                           re.finditer(r"tensor (blk\.\d+\.ffn_\w+_exps\.weight) .* overridden to (\S+)", log)},
            "cpu_has_repack": "REPACK = 1" in log}


def main() -> None:
    spec = json.loads(sys.argv[1])
    import llama_cpp

    from flashmoe_gguf import Llama
    from flashmoe_gguf.offload import experts_to_cpu
    from flashmoe_gguf.stock import tensor_overrides
    from test_runtime import BATCH, PROMPT
    path = spec["model"]
    kw = dict(n_ctx=256, n_batch=256, logits_all=True, verbose=True, seed=0, n_threads=2, type_k=0, type_v=0)
    tmp = Path(tempfile.mkdtemp())
    out: dict[str, Any] = {}
    # llama.cpp's defaults (extra buffer types on) with `-ot exps=CPU`
    with log_to(tmp / "stock.log"), tensor_overrides(experts_to_cpu()):
        ref = llama_cpp.Llama(model_path=path, **kw)
    want = measure(ref, BATCH, PROMPT, 32)
    ref.close()
    out["stock"] = load_facts((tmp / "stock.log").read_text(errors="replace"))
    # the case tells the two configurations apart: stock with extra buffer types off gives other logits
    from flashmoe_gguf.stock import no_extra_buffer_types
    from test_runtime import logits
    with log_to(tmp / "norepack.log"), no_extra_buffer_types():
        plain = llama_cpp.Llama(model_path=path, **kw)
    out["norepack_max_diff"] = float(np.abs(logits(plain, BATCH, batch=True) - want["batch"]).max())
    plain.close()
    runs = []
    for budget in spec["budgets"]:
        with log_to(tmp / "fm.log"):
            llm = Llama(model_path=path, ram_budget=budget, resident_repack=True, **kw)
        got = measure(llm, BATCH, PROMPT, 32)
        st = llm.flashmoe_stats()
        llm.close()
        run = {"budget": budget, **load_facts((tmp / "fm.log").read_text(errors="replace")),
               "cache_misses": st["cache_misses"], "expert_bytes_read": st["expert_bytes_read"],
               "greedy_equal": got["greedy"] == want["greedy"]}
        for key in ("batch", "decode"):
            a, b = got[key], want[key]
            run[f"{key}_equal"] = bool(a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32)))
            run[f"{key}_max_diff"] = float(np.abs(a - b).max()) if a.shape == b.shape else None
        runs.append(run)
    out["flashmoe"] = runs
    # the default (resident_repack=False): nothing in the extra buffer types
    with log_to(tmp / "off.log"):
        llm = Llama(model_path=path, ram_budget=spec["budgets"][0], **kw)
    llm.close()
    out["flashmoe_off"] = load_facts((tmp / "off.log").read_text(errors="replace"))
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
