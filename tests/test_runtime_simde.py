"""The AVX-512 kernels end to end on any CPU with AVX2: the runtime parity check of test_runtime.py, run through
a build of the extension whose AVX-512 kernels are compiled on SIMDe's emulation of the intrinsics.

A machine without AVX-512 cannot run the native AVX-512 kernels, so this build (ggml_ext/build_ffi.py's
`simde_include`) stands in for them: the same kernel source, SIMDe's portable intrinsics, native AVX2 and FMA
underneath. It runs in a subprocess (one extension per process: each registers a ggml backend), which puts the
emulated build in sys.modules as flashmoe_gguf._fmext before flashmoe_gguf imports it. It runs on AVX-512
machines too, where it also checks that the emulation computes what the native kernels compute.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from test_kernels import cpu_flags, simde_include
from test_runtime import KERNEL_TYPES, gguf_for
from tiny_models import TINY

REPO = Path(__file__).resolve().parent.parent
EXT = REPO / "ggml_ext"


@pytest.fixture(scope="session")
def simde_extension(request) -> Path:
    inc = simde_include()
    if inc is None:
        pytest.skip("simde-py is not installed")
    if not {"avx2", "fma"} <= cpu_flags():
        pytest.skip("the SIMDe build needs AVX2 and FMA underneath")
    h = hashlib.sha1()
    for p in sorted(EXT.glob("*.[ch]")) + [EXT / "build_ffi.py"]:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    h.update(inc.encode() + sys.version.encode())
    out = Path(request.config.cache.mkdir("fm_simde_ext")) / h.hexdigest()[:12]
    found = sorted(out.rglob("_fmext*.so"))
    if found:
        return found[0]
    sys.path.insert(0, str(EXT))
    try:
        from build_ffi import make_ffi
    finally:
        sys.path.remove(str(EXT))
    return Path(make_ffi(relative=False, simde_include=inc).compile(tmpdir=str(out)))


CHECK = r"""
import importlib.util, sys
import numpy as np
spec = importlib.util.spec_from_file_location("flashmoe_gguf._fmext", sys.argv[1])
ext = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ext)
import flashmoe_gguf
sys.modules["flashmoe_gguf._fmext"] = ext
sys.path.insert(0, sys.argv[2])
from test_runtime import BATCH, PROMPT, assert_same_logits, expert_bytes, greedy, logits, stock_reference, streamed
from reference import llama as stock_llama
from flashmoe_gguf import extension
assert extension.load() is ext and int(ext.lib.fm_cpu_isa()) == ext.lib.FM_ISA_AVX512
done = 0
for case in sys.argv[3:]:
    arch, experts, path = case.split(":", 2)
    if experts.startswith("hub-"):          # a llama.cpp quantization: stock on the same file
        ref = stock_llama(path)
        ref_batch = logits(ref, BATCH, batch=True)
        ref.reset()
        ref_dec = logits(ref, PROMPT, batch=False)
        ref_greedy = greedy(ref, PROMPT[:6], 32)
        ref.close()
    else:
        ref_batch, ref_dec, ref_greedy = stock_reference(arch, experts)
    total = expert_bytes(path)
    for budget in (total // 8, 2 * total):
        llm = streamed(path, budget, isa="avx512")
        assert llm.flashmoe_stats()["kernel_isa"] == "avx512"
        assert_same_logits(logits(llm, BATCH, batch=True), ref_batch, f"{case}: prompt batch, budget {budget}")
        llm.reset()
        assert_same_logits(logits(llm, PROMPT, batch=False), ref_dec, f"{case}: decode, budget {budget}")
        assert greedy(llm, PROMPT[:6], 32) == ref_greedy, case
        llm.close()
        done += 1
print("checked", done)
"""


def test_emulated_avx512_kernels_match_stock(simde_extension: Path) -> None:
    """Every architecture and every type with kernels (IQ4_XS and MXFP4, which our converter does not write, in
    llama.cpp's quantizations, split): prompt batch (both of ggml's procedures), decode and greedy continuations,
    budgets below and above the experts, bitwise equal to stock (repack off)."""
    from test_hub_gguf import hub_like
    cases = [f"{a}:{t}:{gguf_for(a, t)}" for a in sorted(TINY) for t in sorted(KERNEL_TYPES)]
    cases += [f"{a}:hub-{f}:{hub_like(a, f)[0]}" for a in ("qwen3_moe", "deepseek_v3") for f in ("IQ4_XS", "MXFP4_MOE")]
    r = subprocess.run([sys.executable, "-c", CHECK, str(simde_extension), str(Path(__file__).parent), *cases],
                       capture_output=True, text=True, timeout=1800, cwd=Path(__file__).parent)
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"checked {2 * len(cases)}" in r.stdout
