"""What a non-editable install ships: the package data the code reads at run time (CI installs with `pip install .`,
so a file missing from the wheel fails there and nowhere else)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_routing_traces_are_package_data() -> None:
    """Every stored trace in the repository is declared as package data, so the installed package has it."""
    tomllib = pytest.importorskip("tomllib")     # Python 3.11+
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["flashmoe_gguf.bench"]
    base = REPO / "flashmoe_gguf" / "bench"
    declared = {p for pat in patterns for p in base.glob(pat)}
    stored = set((base / "traces").glob("*.npz"))
    assert stored and stored <= declared


def test_installed_package_has_the_traces() -> None:
    """The package this suite imports (installed or editable) finds the traces it replays."""
    from flashmoe_gguf.bench.traces import stored_traces
    names = {t.name for t in stored_traces()}
    assert {"bmoe-qwen3-30b-a3b-k6", "bmoe-gemma4-26b-a4b-k6", "bmoe-gpt-oss-120b-k2"} <= names

