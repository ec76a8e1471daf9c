"""I/O faults injected below our code, where real disks produce them: an LD_PRELOAD shim (tests/faultshim/faultshim.c,
compiled here with cc) makes chosen reads and writes of chosen files fail with EIO or ENOSPC, come back short, be
interrupted (EINTR) or end early, or makes a file's writes run out of space after a number of bytes. Each case runs
in a child process with a timeout, so a crash or a hang fails the test instead of the test run.

- expert reads failing mid-decode (EIO, premature EOF): a FlashMoeError, and `flashmoe run` a one-line error;
  the header or the non-expert bytes failing at load: a one-line error naming the file;
- short and interrupted reads of every read of the model file (header, load, experts; buffered and O_DIRECT):
  retried to completion, logits bit for bit stock llama_cpp.Llama's on the same file;
- ENOSPC / EIO on the output of `convert` and `repack` at the first byte, midway and at the last byte (the tmpfs
  tests in test_interrupts.py need root: this runs anywhere), and EIO on their inputs: a one-line error naming
  the file, nothing left in the output directory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import checkpoint
from test_runtime import assert_same_logits, gguf_for, stock_reference

TESTS = Path(__file__).resolve().parent
SHIM_SRC = TESTS / "faultshim" / "faultshim.c"
NO_SPACE = "No space left on device"


@pytest.fixture(scope="session")
def faultshim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which(os.environ.get("CC", "cc"))
    if not cc:
        pytest.skip("no C compiler to build the fault-injection shim")
    out = tmp_path_factory.mktemp("faultshim") / "faultshim.so"
    r = subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-shared", "-fPIC", "-o", str(out),
                        str(SHIM_SRC), "-ldl"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def run_faulted(shim: Path, args: list[str], timeout: float = 240, **faults: object) -> subprocess.CompletedProcess[str]:
    """args in a child process with the shim preloaded and FAULTSHIM_<KEY>=value for each keyword"""
    env = dict(os.environ)
    pre = env.get("LD_PRELOAD")             # the sanitizer run preloads its runtime: it must stay first
    env["LD_PRELOAD"] = f"{pre}:{shim}" if pre else str(shim)
    for k, v in faults.items():
        env[f"FAULTSHIM_{k.upper()}"] = str(v)
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)


def python(code: str, *argv: object) -> list[str]:
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(TESTS)!r})\n" + code, *map(str, argv)]


def cli(*argv: object) -> list[str]:
    return [sys.executable, "-m", "flashmoe_gguf.cli", *map(str, argv)]


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "m.gguf"
    shutil.copy(gguf_for("qwen3_moe", "Q4_K"), dst)
    return dst


def direct_io_or_skip(path: Path, direct: bool) -> None:
    from flashmoe_gguf.streamed import direct_io_works
    if direct and not direct_io_works(path):
        pytest.skip(f"O_DIRECT is not supported on the file system of {path}")


def one_line(stderr: str) -> str:
    """the one line on stderr, ours (llama.cpp's own log lines, e.g. a failed decode's "decode: removing memory
    module entries ...", are not printed without --verbose: flashmoe_gguf/llama_log.py)"""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flashmoe"), stderr[-3000:]
    return lines[0]


# --- reads: errors -------------------------------------------------------------------------------------------------

DECODE_AFTER_FAULT = """
import ctypes
from test_runtime import streamed, PROMPT
from flashmoe_gguf import FlashMoeError
shim = ctypes.CDLL(None)
shim.faultshim_faults.restype = ctypes.c_longlong
llm = streamed(sys.argv[1], 1, direct_io=sys.argv[2] == "1")   # a budget of 1 byte: every token reads its experts
llm.eval(PROMPT[:4])
assert shim.faultshim_faults() == 0
shim.faultshim_arm(1)
for i, toks in enumerate((PROMPT[4:8], [5])):
    try:
        llm.eval(toks)
        print("NO ERROR", i)
    except FlashMoeError as e:
        print("ERR", e)
print("FAULTS", shim.faultshim_faults())
llm.close()
"""


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "odirect"])
@pytest.mark.parametrize("fault,message", [("EIO", "Input/output error"), ("eof", "truncated|ended|changed size")])
def test_expert_read_fault_mid_decode(faultshim: Path, model_copy: Path, direct: bool, fault: str,
                                      message: str) -> None:
    """One expert read fails after four good tokens: that eval raises FlashMoeError with the read's reason, and
    the model stays failed (the next eval raises too) rather than computing with missing experts."""
    direct_io_or_skip(model_copy, direct)
    r = run_faulted(faultshim, python(DECODE_AFTER_FAULT, model_copy, int(direct)), path=model_copy, fault=fault,
                    times=1, armed=0)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.splitlines()
    errs = [ln for ln in out if ln.startswith("ERR ")]
    assert len(errs) == 2 and "NO ERROR" not in r.stdout, r.stdout
    assert re.search(message, errs[0]) and "injected" not in errs[0], errs[0]
    assert str(model_copy) in errs[0], errs[0]
    assert out[-1] == "FAULTS 1", r.stdout


def test_cli_run_expert_read_error_is_one_line(faultshim: Path, model_copy: Path) -> None:
    """`flashmoe run` with every read of layer 1's down experts failing: exit 1 with one line naming the file
    (layer 0 computes, so the failure comes in the middle of the first forward pass)"""
    from flashmoe_gguf.experts import expert_tensors
    down1 = next(e for e in expert_tensors(model_copy) if e.layer == 1 and e.kind == "down")
    r = run_faulted(faultshim, cli("run", model_copy, "-p", "Hello there", "-n", "8", "--ram-budget", "1"),
                    path=model_copy, fault="EIO", range=f"{down1.offset}-{down1.offset + down1.stride * down1.n_expert}")
    assert r.returncode == 1, (r.stdout, r.stderr[-3000:])
    line = one_line(r.stderr)
    assert line.startswith("flashmoe run: error: ") and "Input/output error" in line and str(model_copy) in line, line


def test_cli_run_load_read_errors_are_one_line(faultshim: Path, model_copy: Path) -> None:
    """EIO on the header (read by our index reader) and on a non-expert tensor (read by llama.cpp's loader through
    our FILE*): exit 1 with one line naming the file, no traceback, no abort"""
    from flashmoe_gguf.experts import expert_tensors
    from flashmoe_gguf.gguf_index import read_index
    experts = {e.name for e in expert_tensors(model_copy)}
    last = max((t for t in read_index(model_copy).tensors if t.name not in experts), key=lambda t: t.offset)
    assert last.offset > 1 << 20        # beyond what the index reader reads (its first chunk): llama.cpp's read
    for rng, message in (("0-64", re.escape(f"{model_copy}: read error: Input/output error")),
                         (f"{last.offset}-{last.offset + last.nbytes}",
                          re.escape(f"{model_copy}: read error while loading (at byte ") + r"(\d+)" +
                          re.escape("): Input/output error"))):
        r = run_faulted(faultshim, cli("run", model_copy, "-p", "Hello", "-n", "4", "--ram-budget", "1"),
                        path=model_copy, fault="EIO", range=rng)
        assert r.returncode == 1, (rng, r.stdout, r.stderr[-3000:])
        m = re.fullmatch("flashmoe run: error: " + message, one_line(r.stderr))
        assert m, one_line(r.stderr)
        if m.groups():      # the start of the read that failed: the loader reads 8 MiB chunks of the run of
            # tensors the failing one is in (fm_api.c), so the chunk starts at most 8 MiB before it
            assert last.offset - (8 << 20) < int(m.group(1)) < last.offset + last.nbytes, m.group(1)


# --- reads: short and interrupted ----------------------------------------------------------------------------------

LOGITS_UNDER_FAULTS = """
import ctypes
import numpy as np
from test_runtime import streamed, logits, BATCH, PROMPT
shim = ctypes.CDLL(None)
shim.faultshim_faults.restype = ctypes.c_longlong
llm = streamed(sys.argv[1], int(sys.argv[2]), direct_io=sys.argv[3] == "1")
batch = logits(llm, BATCH, batch=True)
llm.reset()
dec = logits(llm, PROMPT, batch=False)
assert llm.flashmoe_stats()["expert_bytes_read"] > 0
llm.close()
np.save(sys.argv[4], dec)
np.save(sys.argv[5], batch)
print("FAULTS", shim.faultshim_faults())
"""


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "odirect"])
@pytest.mark.parametrize("fault,times", [("short", 0), ("EINTR", 400)])
def test_short_and_interrupted_reads_give_stock_logits(faultshim: Path, model_copy: Path, tmp_path: Path,
                                                      direct: bool, fault: str, times: int) -> None:
    """Every read of the model file (the header, the load's non-expert bytes, the experts) returns half of what
    it asked, or the first 400 are interrupted: all retried to completion, every logit stock's bit for bit."""
    direct_io_or_skip(model_copy, direct)
    want_batch, want_dec, _ = stock_reference("qwen3_moe", "Q4_K")
    a, b = tmp_path / "dec.npy", tmp_path / "batch.npy"
    r = run_faulted(faultshim, python(LOGITS_UNDER_FAULTS, model_copy, 1, int(direct), a, b), path=model_copy,
                    fault=fault, times=times)
    assert r.returncode == 0, r.stderr[-3000:]
    faults = int(r.stdout.split("FAULTS ")[1])
    assert faults >= (times or 1000), r.stdout      # the shim really got in the way
    assert_same_logits(np.load(b), want_batch, f"prompt batch under {fault} reads")
    assert_same_logits(np.load(a), want_dec, f"decode under {fault} reads")


# --- writes: convert and repack ------------------------------------------------------------------------------------

def _convert_args(out: Path) -> list[str]:
    return cli("convert", checkpoint("qwen3_moe"), "-o", out, "--experts", "Q4_K", "--dense", "Q8_0", "--align",
               "4096", "-q")


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_convert_disk_full(faultshim: Path, tmp_path: Path, where: str) -> None:
    """the output directory can take 0 bytes, half of the file, or all but its last byte"""
    size = gguf_for("qwen3_moe", "Q4_K").stat().st_size    # what this conversion writes
    limit = {"first": 0, "middle": size // 2, "last": size - 1}[where]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.gguf"
    r = run_faulted(faultshim, _convert_args(out), calls="write", path=out_dir, limit=limit)
    assert r.returncode == 1, r.stderr[-3000:]
    assert one_line(r.stderr) == f"flashmoe convert: error: cannot write {out}: {NO_SPACE} (nothing was left behind)"
    assert list(out_dir.iterdir()) == []


def test_convert_write_eio(faultshim: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    r = run_faulted(faultshim, _convert_args(out), calls="write", path=tmp_path, fault="EIO", first=5)
    assert r.returncode == 1, r.stderr[-3000:]
    assert one_line(r.stderr) == \
        f"flashmoe convert: error: cannot write {out}: Input/output error (nothing was left behind)"
    assert list(tmp_path.iterdir()) == []


def test_convert_read_eio_names_the_input(faultshim: Path, tmp_path: Path) -> None:
    """a checkpoint read failing is a read error naming the checkpoint's file, not a write error"""
    ckpt = checkpoint("qwen3_moe")
    out = tmp_path / "m.gguf"
    r = run_faulted(faultshim, _convert_args(out), path=ckpt, calls="pread", fault="EIO", first=5)
    assert r.returncode == 1, r.stderr[-3000:]
    line = one_line(r.stderr)
    assert line.startswith("flashmoe convert: error: ") and str(ckpt) in line and "Input/output error" in line, line
    assert "cannot write" not in line, line
    assert list(tmp_path.iterdir()) == []


def _hub_split() -> list[Path]:
    from test_hub_gguf import hub_like
    return hub_like("qwen3_moe", "Q4_K_M")


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_repack_disk_full(faultshim: Path, tmp_path: Path, where: str) -> None:
    src = _hub_split()
    ref = tmp_path / "ref" / "r.gguf"
    ref.parent.mkdir()
    r = subprocess.run(cli("repack", src[0], "-o", ref, "-q"), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    size = ref.stat().st_size
    limit = {"first": 0, "middle": size // 2, "last": size - 1}[where]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "r.gguf"
    r = run_faulted(faultshim, cli("repack", src[0], "-o", out, "-q"), calls="write", path=out_dir, limit=limit)
    assert r.returncode == 1, r.stderr[-3000:]
    assert one_line(r.stderr) == f"flashmoe repack: error: cannot write {out}: {NO_SPACE} (nothing was left behind)"
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("fault", ["EIO", "eof"])
def test_repack_read_fault_names_the_input(faultshim: Path, tmp_path: Path, fault: str) -> None:
    """an input read failing (or the input ending early) while the tensors are copied is an error naming that
    input file, not a write error"""
    from flashmoe_gguf.experts import expert_tensors
    src = _hub_split()
    e = expert_tensors(src[0])[-1]
    shard = src[e.shard]
    out = tmp_path / "r.gguf"
    r = run_faulted(faultshim, cli("repack", src[0], "-o", out, "-q"), path=shard, calls="pread", fault=fault,
                    range=f"{e.offset}-{e.offset + e.stride * e.n_expert}")
    assert r.returncode == 1, r.stderr[-3000:]
    why = {"EIO": f"cannot read {shard}: Input/output error",
           "eof": f"{shard} is shorter than its tensor table says ({e.name}): truncated while repacking?"}[fault]
    assert one_line(r.stderr) == f"flashmoe repack: error: {why} (nothing was left behind)"
    assert list(tmp_path.iterdir()) == []
