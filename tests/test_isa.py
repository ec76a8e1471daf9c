"""Choosing the code that computes expert products (flashmoe_gguf/isa.py): the isa argument, FLASHMOE_ISA, what
the CPU and ggml allow, and ggml's tiled-path switches, which our kernels must follow as ggml-cpu does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flashmoe_gguf.isa import IsaError, isa_code, resolve_isa, tiled_mode, tiled_setting

AVX512, AVX2, SCALAR = isa_code("avx512"), isa_code("avx2"), isa_code("scalar")


def test_auto_takes_the_best_instruction_set() -> None:
    assert resolve_isa(None, True, AVX512, True, {}).name == "avx512"
    assert resolve_isa("auto", True, AVX2, True, {}).name == "avx2"
    assert resolve_isa(None, True, SCALAR, True, {}).name == "scalar"


def test_auto_uses_ggml_where_its_arithmetic_is_not_ours() -> None:
    c = resolve_isa(None, True, AVX512, False, {})
    assert (c.name, c.code) == ("ggml", isa_code("ggml")) and c.note and "AVX2" in c.note
    with pytest.raises(IsaError, match="built without"):
        resolve_isa("avx2", True, AVX512, False, {})


def test_explicit_choice_and_environment() -> None:
    assert resolve_isa("AVX2", True, AVX512, True, {}).code == AVX2
    assert resolve_isa(None, True, AVX512, True, {"FLASHMOE_ISA": "scalar"}).name == "scalar"
    assert resolve_isa("avx2", True, AVX512, True, {"FLASHMOE_ISA": "scalar"}).name == "avx2"   # the argument wins
    assert resolve_isa(None, True, AVX512, True, {"FLASHMOE_ISA": " "}).name == "avx512"
    with pytest.raises(IsaError, match="FLASHMOE_ISA=avx512: this CPU cannot run it"):
        resolve_isa(None, True, AVX2, True, {"FLASHMOE_ISA": "avx512"})
    with pytest.raises(IsaError, match="unknown instruction set"):
        resolve_isa("sse4", True, AVX512, True, {})


def test_kernels_false_is_ggml() -> None:
    assert resolve_isa(None, False, AVX512, True, {}).name == "ggml"
    assert resolve_isa(None, False, AVX512, True, {"FLASHMOE_ISA": "avx2"}).name == "ggml"  # explicit beats env
    with pytest.raises(IsaError, match="kernels=False"):
        resolve_isa("avx2", False, AVX512, True, {})


@pytest.mark.parametrize("env,want", [
    ({}, "on"), ({"GGML_CPU_TILED_MM": "1"}, "on"), ({"GGML_CPU_TILED_MM": "7"}, "on"),
    ({"GGML_CPU_TILED_MM": "0"}, "off"), ({"GGML_CPU_TILED_MM": ""}, "off"),
    ({"GGML_CPU_TILED_MM": "off"}, "off"), ({"GGML_CPU_TILED_MM": " -0"}, "off"),
    ({"GGML_CPU_TILED_MM_FORCE": "1"}, "force"), ({"GGML_CPU_TILED_MM_FORCE": "01"}, "force"),
    ({"GGML_CPU_TILED_MM_FORCE": "2"}, "on"), ({"GGML_CPU_TILED_MM_FORCE": "yes"}, "on"),
    ({"GGML_CPU_TILED_MM": "0", "GGML_CPU_TILED_MM_FORCE": "1"}, "off")])
def test_tiled_mode_reads_the_environment_as_ggml(env: dict[str, str], want: str) -> None:
    """ggml-cpu/tiled/tiled.cpp: enabled = !env || atoi(env) != 0; forced = env && atoi(env) == 1"""
    assert tiled_setting(env) == want
    assert tiled_mode(env) == {"off": 0, "on": 1, "force": 2}[want]       # ggml_ext/fm_types.h, enum fm_tiled


def test_runtime_reports_and_checks_the_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from flashmoe_gguf import FlashMoeError
    from test_runtime import gguf_for, streamed
    path = gguf_for("qwen3_moe", "Q4_K")
    monkeypatch.setenv("FLASHMOE_ISA", "scalar")
    llm = streamed(path, "64M")
    assert llm.flashmoe_stats()["kernel_isa"] == "scalar"
    llm.close()
    llm = streamed(path, "64M", kernels=False)
    assert llm.flashmoe_stats()["kernel_isa"] == "ggml"
    llm.close()
    with pytest.raises(FlashMoeError, match="unknown instruction set"):
        streamed(path, "64M", isa="neon")


CHECK = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
from test_runtime import BATCH, assert_same_logits, gguf_for, logits, streamed
from reference import llama as stock
out = {}
for case in sys.argv[3:]:
    arch, experts = case.split(":")
    path = gguf_for(arch, experts)
    ref = stock(path); want = logits(ref, BATCH, batch=True); ref.close()
    for isa in ("scalar", "avx2", "ggml"):
        llm = streamed(path, 1 << 30, isa=isa)
        assert_same_logits(logits(llm, BATCH, batch=True), want, f"{case} {isa}")
        llm.close()
    out[case] = want
np.savez(sys.argv[2], **out)
"""
CASES = [f"{a}:{t}" for a in ("mixtral", "olmoe", "qwen3_moe") for t in ("Q4_K", "Q2_K")]


def test_tiled_switches_followed_as_in_ggml(tmp_path: Path) -> None:
    """Stock's logits under GGML_CPU_TILED_MM=0 (ggml's vec_dot everywhere) and GGML_CPU_TILED_MM_FORCE=1 (its
    tiled path even for one row) differ, and ours follow each bit for bit, as they do by default. Each in a
    fresh process: ggml reads the variables once per process. (Whether a model's logits show the switch
    depends on whether a last-bit difference crosses a rounding of the next quantization: several models.)"""
    import os
    out = {}
    for name, env in (("default", {}), ("off", {"GGML_CPU_TILED_MM": "0"}), ("force", {"GGML_CPU_TILED_MM_FORCE": "1"})):
        npz = tmp_path / f"{name}.npz"
        full = {k: v for k, v in os.environ.items() if not k.startswith("GGML_CPU_TILED")} | env
        r = subprocess.run([sys.executable, "-c", CHECK, str(Path(__file__).parent), str(npz), *CASES],
                           capture_output=True, text=True, timeout=900, env=full, cwd=tmp_path)
        assert r.returncode == 0, (name, r.stderr[-3000:])
        out[name] = np.load(npz)
    assert any(not np.array_equal(out["off"][c], out["force"][c]) for c in CASES)
