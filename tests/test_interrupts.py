"""What a command that writes files leaves behind when it cannot finish: a full disk during `convert` and
`repack` (a small tmpfs: mounting one needs root, else skipped), and SIGTERM, SIGINT and SIGKILL during a
conversion. Each ends with a clear one-line error, and nothing under the output directory except after SIGKILL
(which no process can handle: the hidden partial file stays, never a file under the output name)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import checkpoint


@pytest.fixture()
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """a 1 MiB tmpfs"""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_convert_disk_full(small_disk: Path) -> None:
    from flashmoe_gguf.converter import convert
    from flashmoe_gguf.converter.errors import ConversionError
    out = small_disk / "m.gguf"
    with pytest.raises(ConversionError, match=f"cannot write {out}: No space left on device"):
        convert(checkpoint("qwen3_moe"), out, experts="Q4_K", align=4096)
    assert list(small_disk.iterdir()) == []


def test_repack_disk_full(small_disk: Path) -> None:
    from flashmoe_gguf.repack import RepackError, repack
    from test_hub_gguf import hub_like
    src = hub_like("qwen3_moe", "Q4_K_M")
    out = small_disk / "r.gguf"
    with pytest.raises(RepackError, match=f"cannot write {out}: No space left on device"):
        repack(src[0], out, progress=False)
    assert list(small_disk.iterdir()) == []
    r = subprocess.run([sys.executable, "-m", "flashmoe_gguf.cli", "repack", str(src[0]), "-o", str(out), "-q"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"flashmoe repack: error: cannot write {out}: No space left on device (nothing was left behind)"]
    assert list(small_disk.iterdir()) == []


PAUSE_AT = 64 << 20     # well inside the writing of the ~1 GB file


def _start_synth(out: Path) -> subprocess.Popen[str]:
    """a conversion of one real-shape layer of Qwen3-30B-A3B (~1 GB) that stops once its file holds PAUSE_AT
    bytes and waits there for a signal (the writer's test seam FLASHMOE_TEST_PAUSE_WRITE_AT, converter/writer.py):
    a signal sent once the file is that long always lands mid-write, however fast the machine finishes the rest"""
    env = dict(os.environ, FLASHMOE_TEST_PAUSE_WRITE_AT=str(PAUSE_AT))
    return subprocess.Popen([sys.executable, "-m", "flashmoe_gguf.cli", "synth", "qwen3-30b-a3b", "--layers", "1",
                             "-o", str(out), "--threads", "1", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _wait_for_partial(out: Path, p: subprocess.Popen[str]) -> None:
    """until the hidden partial file holds PAUSE_AT bytes: the writer has reached its pause (or is about to)"""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        partial = [f for f in out.parent.iterdir() if f.name.startswith(f".{out.name}.partial-")]
        if partial and partial[0].stat().st_size >= PAUSE_AT:
            return
        time.sleep(0.1)
    p.kill()
    pytest.fail("the conversion did not start writing")


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_signal_during_conversion_leaves_nothing(tmp_path: Path, sig: int, code: int, word: str,
                                               sigint_default) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "x.gguf"
    p = _start_synth(out)
    try:
        _wait_for_partial(out, p)
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == code, err
    assert err.strip().splitlines()[-1] == f"flashmoe synth: {word}"
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_sigkill_leaves_only_the_hidden_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    p = _start_synth(out)
    try:
        _wait_for_partial(out, p)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    left = [f.name for f in tmp_path.iterdir()]
    assert left == [f".x.gguf.partial-{p.pid}"] and not out.exists()
    os.unlink(tmp_path / left[0])
