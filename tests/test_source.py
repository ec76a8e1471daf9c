"""SRC as a Hugging Face repo id: resolved through huggingface_hub's cache (no network here: offline mode)."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

import pytest

from conftest import checkpoint
from flashmoe_gguf.converter import ConversionError, convert
from flashmoe_gguf.converter.source import ALLOW_PATTERNS, resolve_source

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(root: Path, repo: str) -> Path:
    """The on-disk layout huggingface_hub keeps for a downloaded snapshot."""
    d = root / f"models--{repo.replace('/', '--')}"
    snap = d / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (d / "refs").mkdir()
    (d / "refs" / "main").write_text(COMMIT)
    for f in checkpoint("qwen3_moe").iterdir():
        shutil.copy(f, snap / f.name)
    return snap


def test_repo_id_from_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # imported before the environment changes: imported under HF_HUB_OFFLINE=1, its constant would be True at
    # import, and monkeypatch would "restore" that, leaving the rest of the run offline (test_pull then failed
    # when it ran in the same process without an earlier import)
    import huggingface_hub.constants as c
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snap = fake_hub_cache(tmp_path / "hub", "someone/tiny-moe")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_source("someone/tiny-moe") == snap
    report = convert("someone/tiny-moe", tmp_path / "o.gguf")
    assert report.arch == "qwen3moe" and (tmp_path / "o.gguf").exists()


def test_repo_id_not_cached_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConversionError, match="not in the local cache"):
        resolve_source("someone/absent")


def test_download_patterns_fetch_only_what_conversion_reads() -> None:
    wanted = ["config.json", "tokenizer.json", "tokenizer_config.json", "model-00001-of-00002.safetensors",
              "model.safetensors.index.json", "generation_config.json"]
    unwanted = ["pytorch_model-00001-of-00002.bin", "consolidated.00.pth", "model.gguf", "original/params.json",
                "README.md", "figures/benchmark.png"]
    match = lambda f: any(fnmatch.fnmatch(f, p) for p in ALLOW_PATTERNS)  # noqa: E731
    assert all(match(f) for f in wanted)
    assert not any(match(f) for f in unwanted)
