"""Faults while a streamed model is running: a Python exception from the call in progress, never a crash or
wrong tokens."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_runtime import PROMPT, gguf_for, streamed


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "m.gguf"
    shutil.copy(gguf_for("qwen3_moe", "Q4_K"), dst)
    return dst


def test_injected_read_error_raises(model_copy: Path) -> None:
    from flashmoe_gguf import FlashMoeError
    llm = streamed(model_copy, 1)   # nothing stays cached: every token reads
    llm.eval(PROMPT[:4])
    llm._fm.inject_read_error(3)
    with pytest.raises(FlashMoeError, match="read error.*injected"):
        llm.eval(PROMPT[4:8])
    # the model stays failed rather than producing tokens from missing experts
    with pytest.raises(FlashMoeError):
        llm.eval([5])
    llm.close()


def test_truncated_while_loaded_raises(model_copy: Path) -> None:
    from flashmoe_gguf import FlashMoeError
    llm = streamed(model_copy, 1)
    llm.eval(PROMPT[:4])
    with open(model_copy, "r+b") as f:
        f.truncate(model_copy.stat().st_size // 2)
    with pytest.raises(FlashMoeError, match="changed size|truncated"):
        llm.eval(PROMPT[4:8])
    llm.close()


def test_replaced_while_loaded_raises(model_copy: Path, tmp_path: Path) -> None:
    from flashmoe_gguf import FlashMoeError
    llm = streamed(model_copy, 1)
    llm.eval(PROMPT[:4])
    other = tmp_path / "other.gguf"
    shutil.copy(model_copy, other)
    os.replace(other, model_copy)
    with pytest.raises(FlashMoeError, match="replaced"):
        llm.eval(PROMPT[4:8])
    llm.close()


def test_truncated_before_load_is_a_clear_error(model_copy: Path) -> None:
    from flashmoe_gguf import FlashMoeError
    with open(model_copy, "r+b") as f:
        f.truncate(model_copy.stat().st_size - 100_000)
    with pytest.raises((FlashMoeError, ValueError)):
        streamed(model_copy, "64M")


def test_no_crash_in_subprocess(model_copy: Path) -> None:
    """The same truncation in a fresh process: exits cleanly with an exception, not a signal."""
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_runtime import streamed, PROMPT
from flashmoe_gguf import FlashMoeError
llm = streamed({str(model_copy)!r}, 1)
llm.eval(PROMPT[:4])
open({str(model_copy)!r}, 'r+b').truncate(1000)
try:
    llm.eval(PROMPT[4:8])
except FlashMoeError as e:
    print('raised', e)
    sys.exit(3)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=model_copy.parent)
    assert res.returncode == 3, res.stderr[-2000:]
    assert "raised" in res.stdout


def test_many_experts_many_slots_no_hang(tmp_path: Path, cache: Path) -> None:
    """512 experts and a long prompt: hundreds of cache slots are created while reads are in flight (the slot
    table grows under the I/O threads). Must finish, and match stock (repack off) bit for bit. Run in a
    subprocess with a timeout so a hang fails the test instead of the suite."""
    from flashmoe_gguf.synth import synth
    path = tmp_path / "q35.gguf"
    synth("qwen35-397b-a17b", path, tiny=True, pool=4, seed=3, threads=2, cache_dir=cache)
    code = f"""
import sys, numpy as np
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_runtime import streamed
from reference import llama as stock
toks = [int(t) for t in np.random.default_rng(0).integers(5, 3000, 96)]
ref = stock({str(path)!r}); ref.eval(toks); a = np.array(ref.scores[:len(toks)]); ref.close()
for budget in (1, 1 << 30):
    llm = streamed({str(path)!r}, budget); llm.eval(toks); b = np.array(llm.scores[:len(toks)])
    assert np.array_equal(a, b), np.abs(a - b).max()
    llm.close()
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


def _set_u32(path: Path, key: str, value: int) -> None:
    """overwrite a UINT32 metadata value in place"""
    import struct

    from flashmoe_gguf.gguf_index import read_index
    idx = read_index(path)
    start, end = next((s, e) for k, s, e in idx.kv_spans if k == key)
    with open(path, "r+b") as f:
        f.seek(end - 8)
        vtype, _ = struct.unpack("<II", f.read(8))
        assert vtype == 4, f"{key} is not UINT32"
        f.seek(end - 4)
        f.write(struct.pack("<I", value))


@pytest.mark.parametrize("key,value,message", [
    ("qwen3moe.expert_count", 0, "expert_count is 0"), ("qwen3moe.expert_count", 16, "says 16 experts"),
    ("qwen3moe.expert_used_count", 0, "expert_used_count is 0"),
    ("qwen3moe.expert_used_count", 9, "expert_used_count is 9")])
def test_inconsistent_expert_counts_are_errors_not_aborts(model_copy: Path, key: str, value: int,
                                                          message: str) -> None:
    """llama.cpp asserts on these (GGML_ASSERT: the process aborts); flashmoe refuses the file first. In a child
    process, so that a regression is a failed test, not a dead test run."""
    _set_u32(model_copy, key, value)
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from flashmoe_gguf import FlashMoeError\n"
            "from test_runtime import streamed\n"
            "try:\n    streamed(sys.argv[2], '64M')\nexcept FlashMoeError as e:\n    print('ERR', e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(model_copy)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("ERR ") and message in r.stdout, r.stdout
