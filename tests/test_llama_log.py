"""llama.cpp's log: on the command line a failure is our one line (llama.cpp's lines only with --verbose), and a model
llama.cpp refuses is a FlashMoeError with llama.cpp's own reason (flashmoe_gguf/llama_log.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from test_runtime import gguf_for

MISSING = "blk.0.attn_q.weight"


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """the Q4_K test model with its first attention query tensor renamed away (same length): our index and checks
    accept it, llama.cpp's loader refuses it"""
    raw = bytearray(gguf_for("qwen3_moe", "Q4_K").read_bytes())
    at = raw.find(MISSING.encode())
    assert at > 0 and raw.find(MISSING.encode(), at + 1) < 0
    raw[at:at + len(MISSING)] = b"blk.0.attn_x.weight"
    out = tmp_path_factory.mktemp("refused") / "m.gguf"
    out.write_bytes(bytes(raw))
    return out


def cli(*argv: object) -> subprocess.CompletedProcess[str]:
    # cwd outside the repository: the installed package, not the source tree
    return subprocess.run([sys.executable, "-m", "flashmoe_gguf.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=300, cwd=tempfile.gettempdir(), env={**os.environ, "PYTHONSAFEPATH": "1"})


def test_log_levels_are_the_pinned_ggml_ones() -> None:
    """the levels the router keys on, against the enum in the ggml headers the extension is built with"""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ggml_ext"))
    from build_ffi import llama_cpp_source

    from flashmoe_gguf import llama_log
    try:
        header = (llama_cpp_source() / "ggml" / "include" / "ggml.h").read_text()
    except Exception as exc:  # noqa: BLE001 - the sdist is fetched when the extension is built
        pytest.skip(f"llama-cpp-python's sources are not here: {exc}")
    enum = dict((k, int(v)) for k, v in re.findall(r"GGML_LOG_LEVEL_(\w+)\s*=\s*(\d+)", header))
    assert enum["ERROR"] == llama_log.GGML_LOG_LEVEL_ERROR and enum["CONT"] == llama_log.GGML_LOG_LEVEL_CONT, enum


def test_refused_model_names_llama_cpps_reason(refused: Path) -> None:
    """stock llama-cpp-python refuses the file too (only "Failed to load model"); flashmoe says why"""
    import llama_cpp

    from flashmoe_gguf import FlashMoeError, Llama
    with pytest.raises(ValueError, match="Failed to load model"):
        llama_cpp.Llama(model_path=str(refused), n_ctx=32, verbose=False)
    with pytest.raises(FlashMoeError) as exc:
        Llama(model_path=str(refused), ram_budget="8M", n_ctx=32, verbose=False)
    assert str(refused) in str(exc.value) and f"tensor '{MISSING}' not found" in str(exc.value), exc.value


def test_cli_run_refused_model_is_one_line(refused: Path) -> None:
    r = cli("run", refused, "-p", "Hello", "-n", "2", "--ram-budget", "8M")
    assert r.returncode == 1, r.stderr[-3000:]
    assert r.stderr.splitlines() == [f"flashmoe run: error: {refused}: llama.cpp cannot load this model: "
                                     f"check_tensor_dims: tensor '{MISSING}' not found"], r.stderr[-3000:]


def test_cli_run_quiet_on_success_and_verbose_shows_the_log(refused: Path) -> None:
    """a good run writes nothing on stderr (llama.cpp warns about the test model's short training context);
    --verbose gives llama.cpp's log, with our error line last"""
    good = gguf_for("qwen3_moe", "Q4_K")
    r = cli("run", good, "-p", "Hello", "-n", "2", "--ram-budget", "8M", "-c", "1024")
    assert r.returncode == 0 and r.stderr == "", r.stderr[-3000:]
    assert "[flashmoe] " in r.stdout
    r = cli("run", refused, "-p", "Hello", "-n", "2", "--ram-budget", "8M", "--verbose")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and lines[-1].startswith("flashmoe run: error: "), r.stderr[-3000:]
    assert any(ln.startswith("llama_model_loader: ") for ln in lines), r.stderr[-3000:]
    assert sum(ln.startswith("flashmoe") for ln in lines) == 1


def test_library_keeps_llama_cpp_pythons_log(refused: Path) -> None:
    """without the command line's quiet(), llama-cpp-python's own logging is unchanged after a flashmoe load"""
    good = str(gguf_for("qwen3_moe", "Q4_K"))
    code = (f"import llama_cpp\nfrom flashmoe_gguf import Llama\n"
            f"Llama(model_path={good!r}, ram_budget='8M', n_ctx=32, verbose=False).close()\n"
            f"try:\n    llama_cpp.Llama(model_path={str(refused)!r}, n_ctx=32, verbose=True)\n"
            f"except ValueError:\n    print('REFUSED')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=tempfile.gettempdir(), env={**os.environ, "PYTHONSAFEPATH": "1"})
    assert r.stdout.strip() == "REFUSED", r.stderr[-3000:]
    assert "llama_model_loader: " in r.stderr and MISSING in r.stderr, r.stderr[-3000:]


def test_text_during_keeps_what_llama_cpp_logs_on_this_thread() -> None:
    """A quiet load (verbose=False) still logs: the block gets every level, e.g. the mapped model buffer's size,
    which is the file's tensor data range (first tensor's start to last one's end, by gguf-py's reader, the
    independent account; llama.cpp prints MiB with two decimals); a load on another thread during the block does
    not come into it."""
    import threading

    import llama_cpp
    from gguf import GGUFReader

    from flashmoe_gguf.llama_log import text_during
    path = gguf_for("qwen3_moe", "Q4_K")
    with text_during() as pieces:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=32, verbose=False)
    llm.close()
    log = "".join(pieces)
    mib = [float(m) for m in re.findall(r"CPU_Mapped model buffer size =\s+([\d.]+) MiB", log)]
    tensors = GGUFReader(str(path)).tensors
    data = max(t.data_offset + int(t.n_bytes) for t in tensors) - min(t.data_offset for t in tensors)
    assert len(mib) == 1 and abs(mib[0] - data / 2**20) <= 0.005, (mib, data)
    def load_elsewhere() -> None:
        llama_cpp.Llama(model_path=str(path), n_ctx=32, verbose=False).close()
    with text_during() as other:
        t = threading.Thread(target=load_elsewhere)
        t.start()
        t.join()
    assert other == []
