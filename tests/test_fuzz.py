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
