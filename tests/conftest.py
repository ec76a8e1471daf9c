"""Shared fixtures: a cache directory for tiny checkpoints and their conversions, built once per run.

FLASHMOE_TEST_CACHE selects the cache (default: .cache/tests in the repository). Entries are keyed by the
builder version, so a stale cache is never used.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import BUILDER_VERSION, TINY, build_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    root = Path(os.environ.get("FLASHMOE_TEST_CACHE") or REPO / ".cache" / "tests")
    root.mkdir(parents=True, exist_ok=True)
    os.environ["FLASHMOE_TEST_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def cache() -> Path:
    return cache_root()


def spec_key(name: str) -> str:
    """Short hash of everything that shapes a tiny checkpoint, so a changed entry never reuses a stale cache."""
    t = TINY[name]
    text = repr((BUILDER_VERSION, t.model_type, sorted(t.config.items()), t.tokenizer, t.tokenizer_kind,
                 t.bpe_regex, t.dtype, t.weight_std, t.expert_std, t.post_build.__name__ if t.post_build else None))
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def checkpoint(name: str) -> Path:
    out = cache_root() / f"ckpt-{name}-{spec_key(name)}"
    if not (out / "config.json").exists():
        build_checkpoint(name, out)
    return out


def converted(name: str, recipe: str, **kw: object) -> Path:
    """checkpoint(name) converted with a recipe ("f32" or "default"), cached."""
    from flashmoe_gguf.converter import convert
    out = cache_root() / f"{name}-{spec_key(name)}-{recipe}.gguf"
    if not out.exists():
        types: dict[str, object] = {"f32": dict(experts="F32", dense="F32", router="F32"), "default": {},
                                    "f32-align32": dict(experts="F32", dense="F32", router="F32", align=32)}[recipe]
        convert(checkpoint(name), out, **types, **kw)  # type: ignore[arg-type]
    return out


@pytest.fixture
def tmp_out(tmp_path: Path) -> Path:
    return tmp_path / "out.gguf"
