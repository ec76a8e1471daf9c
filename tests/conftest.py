"""Shared fixtures: a cache directory for tiny checkpoints and their conversions, built once per run.

FLASHMOE_TEST_CACHE selects the cache (default: .cache/tests in the repository). Entries are keyed by the
builder version, so a stale cache is never used.

FLASHMOE_TEST_FMEXT=path/to/_fmext.so runs the tests on another build of the ggml extension (the sanitizer
build of tools/sanitize.py): it is put in sys.modules as flashmoe_gguf._fmext before anything imports it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import BUILDER_VERSION, TINY, build_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# Subprocesses run `python -m flashmoe_gguf.cli` from the repository root (pytest's cwd), and `-m` puts the cwd
# first on sys.path: without this they would import the source tree (no converter subpackage, no built
# extension) instead of the installed package that the in-process tests use. Python >= 3.11 honours it.
os.environ["PYTHONSAFEPATH"] = "1"


def _use_extension_build(path: str) -> None:
    import importlib.util
    spec = importlib.util.spec_from_file_location("flashmoe_gguf._fmext", path)
    assert spec and spec.loader, path
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    import flashmoe_gguf  # noqa: F401  (the package first, then its extension module)
    sys.modules["flashmoe_gguf._fmext"] = ext


if os.environ.get("FLASHMOE_TEST_FMEXT"):
    _use_extension_build(os.environ["FLASHMOE_TEST_FMEXT"])


def cache_root() -> Path:
    root = Path(os.environ.get("FLASHMOE_TEST_CACHE") or REPO / ".cache" / "tests")
    root.mkdir(parents=True, exist_ok=True)
    os.environ["FLASHMOE_TEST_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def cache() -> Path:
    return cache_root()


def synth_cached(cache: Path, name: str, preset: str, **kw: object) -> Path:
    """`flashmoe_gguf.synth.synth(preset, ..., **kw)` written once as cache/name (atomically: a run interrupted
    while writing leaves no half file under that name)"""
    from flashmoe_gguf.synth import synth
    out = cache / name
    if not out.exists():
        tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
        synth(preset, tmp, cache_dir=cache, **kw)  # type: ignore[arg-type]
        os.replace(tmp, out)
    return out


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


@pytest.fixture(scope="module")
def served_tiny(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """`flashmoe serve` on the tiny qwen3_moe model: a real server process on loopback (tests/served.py), one per
    test module, stopped with SIGTERM (cleanly) at its end."""
    from served import serve
    with serve(converted("qwen3_moe", "default"), "--ctx", "2048",
               log_path=tmp_path_factory.mktemp("serve") / "server.log") as srv:
        yield srv


@pytest.fixture
def openai_client(served_tiny):  # type: ignore[no-untyped-def]
    """The official openai client (no retries, 60 s timeout) on served_tiny's /v1."""
    return served_tiny.client()


@pytest.fixture
def sigint_default():  # type: ignore[no-untyped-def]
    """Children started meanwhile get SIGINT at its default, as from a terminal. A test run launched in the
    background by a non-interactive shell (`pytest &`, nohup) ignores SIGINT, children inherit that, and a Ctrl-C
    test would then test nothing (its child never sees the signal: both such tests failed that way in a full run
    started with `&`)."""
    old = signal.getsignal(signal.SIGINT)
    if old == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
