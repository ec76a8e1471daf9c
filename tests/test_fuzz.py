"""Every fuzz target of tools/fuzz.py on a small fixed set of inputs, and every saved regression case
(tests/fuzz_corpus/TARGET/*.json): each input must end as ok or as the target's documented error; a crash (any
other exception, or a signal) or a hang fails. Longer campaigns: `python tools/fuzz.py TARGET --seconds N`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"
sys.path.insert(0, str(TOOLS))

from fuzzlib.runner import CORPUS, campaign, load_case  # noqa: E402
from fuzzlib.targets import TARGETS  # noqa: E402

INPUTS = {"llama": 8}    # one model load (and a decode) per input
DEFAULT_INPUTS = 200


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target(name: str) -> None:
    stats = campaign(TARGETS[name], inputs=INPUTS.get(name, DEFAULT_INPUTS), seed=1234, save=False)
    assert stats.inputs == INPUTS.get(name, DEFAULT_INPUTS)
    assert stats.crashes == 0 and stats.hangs == 0, stats.findings
    assert stats.clean > 0          # the mutators do reach the error paths


def _corpus() -> list[Path]:
    return sorted(CORPUS.glob("*/*.json"))


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_regression_case(path: Path) -> None:
    stats = campaign(TARGETS[path.parent.name], cases=[load_case(path)], save=False)
    assert stats.inputs == 1
    assert stats.crashes == 0 and stats.hangs == 0, stats.findings


def test_harness_reports_crashes_and_hangs(tmp_path: Path) -> None:
    """The harness itself: an exception that is not the documented one is a crash, a loop is a hang, a signal is
    a crash, and crashing inputs are saved."""
    import dataclasses
    import os
    import signal
    import time

    def run(d: Path, ctx: dict) -> None:
        what = (d / "m.gguf").read_bytes()[:1]
        if what == b"K":
            raise KeyError("boom")
        if what == b"H":
            time.sleep(60)
        if what == b"S":
            os.kill(os.getpid(), signal.SIGSEGV)
        raise ValueError("clean")

    t = dataclasses.replace(TARGETS["gguf_index"], run=run, clean=lambda: (ValueError,), timeout=2.0)
    cases = [{"m.gguf": b"x"}, {"m.gguf": b"K"}, {"m.gguf": b"x"}, {"m.gguf": b"H"}, {"m.gguf": b"S"},
             {"m.gguf": b"x"}]
    stats = campaign(t, cases=cases, save=True, corpus=tmp_path)
    assert stats.inputs == 6
    assert (stats.crashes, stats.hangs) == (2, 1), stats.findings
    assert len(list((tmp_path / "gguf_index").glob("*.json"))) == 3


def test_harness_library_rewritten_in_place(tmp_path: Path) -> None:
    """A worker killed because a shared library it had mapped was copied over in place (the same inode, as `cp`
    writes it: the next call into it runs the new file's bytes, here past the new end of the file, SIGBUS) is an
    environment death, not a crash of the input it was running: that input runs clean alone in a fresh worker
    and is not saved. A worker killed by a signal with its libraries unchanged is still a crash."""
    import ctypes
    import dataclasses
    import os
    import shutil
    import signal
    import subprocess

    cc = shutil.which(os.environ.get("CC", "cc"))
    if not cc:
        pytest.skip("no C compiler")
    big, small = tmp_path / "big.c", tmp_path / "small.c"
    # big: fm_value lies past the end of small, which is a valid library with the same function
    big.write_text('void fm_pad(void) { __asm__ volatile(".fill 262144, 1, 0x90"); }\n'
                   'int fm_value(void) { return 1; }\n')
    small.write_text("int fm_value(void) { return 2; }\n")
    lib, new = tmp_path / "libfm_test.so", tmp_path / "new.so"
    for src, out in ((big, lib), (small, new)):
        subprocess.run([cc, "-shared", "-fPIC", "-O0", "-o", str(out), str(src)], check=True)
    assert new.stat().st_size + 4096 < lib.stat().st_size
    loaded: dict[str, ctypes.CDLL] = {}

    def run(d: Path, ctx: dict) -> None:
        if "lib" not in loaded:                           # once per worker, as the extension is
            loaded["lib"] = ctypes.CDLL(str(lib))
        value = loaded["lib"].fm_value
        what = (d / "m.gguf").read_bytes()[:1]
        if what == b"R":                                  # a rebuild copied over the library in place
            with open(lib, "r+b") as f:
                f.truncate(0)
                f.write(new.read_bytes())
        if what == b"S":
            os.kill(os.getpid(), signal.SIGSEGV)
        assert value() in (1, 2)
        raise ValueError("clean")

    t = dataclasses.replace(TARGETS["gguf_index"], run=run, clean=lambda: (ValueError,), expensive=True)
    cases = [{"m.gguf": b"x"}, {"m.gguf": b"x"}, {"m.gguf": b"R"}, {"m.gguf": b"x"}, {"m.gguf": b"x"},
             {"m.gguf": b"S"}, {"m.gguf": b"x"}]
    stats = campaign(t, cases=cases, save=True, corpus=tmp_path / "corpus")
    assert stats.inputs == 7
    assert (stats.env, stats.crashes, stats.hangs) == (1, 1, 0), stats.findings
    env = [f for f in stats.findings if f.startswith("environment:")]
    assert len(env) == 1 and str(lib) in env[0] and "exit code -7" in env[0], env   # SIGBUS
    assert len(list((tmp_path / "corpus" / "gguf_index").glob("*.json"))) == 1      # only the SIGSEGV input
