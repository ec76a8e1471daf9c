"""Bad input to `flashmoe convert`: one clear error line, a non-zero exit, and no output file left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import checkpoint


def run_convert(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # cwd outside the repository: test the installed package, not the source tree
    return subprocess.run([sys.executable, "-m", "flashmoe_gguf.cli", "convert", "-q", *args],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tempfile.gettempdir())


def copy_ckpt(tmp_path: Path, name: str = "qwen3_moe") -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(checkpoint(name), dst)
    return dst


def assert_fails(res: subprocess.CompletedProcess[str], out: Path, *needles: str) -> None:
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in res.stderr, res.stderr
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")], "partial file left"


def test_missing_config(tmp_path: Path) -> None:
    src = copy_ckpt(tmp_path)
    (src / "config.json").unlink()
    out = tmp_path / "o.gguf"
    assert_fails(run_convert(str(src), "-o", str(out)), out, "no config.json")


def test_unknown_architecture(tmp_path: Path) -> None:
    src = copy_ckpt(tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "llama"
    cfg["architectures"] = ["LlamaForCausalLM"]
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "o.gguf"
    assert_fails(run_convert(str(src), "-o", str(out)), out, "unsupported architecture 'llama'", "supported:",
                 "qwen3_moe")


def test_missing_shard(tmp_path: Path) -> None:
    src = copy_ckpt(tmp_path)
    from safetensors import safe_open
    with safe_open(str(src / "model.safetensors"), "np") as f:
        names = list(f.keys())
    index = {"metadata": {}, "weight_map": {n: "model.safetensors" for n in names}}
    index["weight_map"]["model.layers.1.mlp.gate.weight"] = "model-00002-of-00002.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    out = tmp_path / "o.gguf"
    assert_fails(run_convert(str(src), "-o", str(out)), out, "missing shard", "model-00002-of-00002.safetensors")


def test_truncated_safetensors(tmp_path: Path) -> None:
    src = copy_ckpt(tmp_path)
    f = src / "model.safetensors"
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.truncate(size - 1000)
    out = tmp_path / "o.gguf"
    assert_fails(run_convert(str(src), "-o", str(out)), out, "truncated")


def test_corrupt_header(tmp_path: Path) -> None:
    src = copy_ckpt(tmp_path)
    f = src / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:16] = b"\xff" * 8
    f.write_bytes(bytes(data))
    out = tmp_path / "o.gguf"
    assert_fails(run_convert(str(src), "-o", str(out)), out, "corrupt")


def test_shape_mismatch(tmp_path: Path) -> None:
    src = copy_ckpt(tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["moe_intermediate_size"] = 128   # the experts are 256 wide
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "o.gguf"
    assert_fails(run_convert(str(src), "-o", str(out)), out, "_exps.weight (experts) has shape [8, 256, 256]", "config.json implies")


def test_missing_expert(tmp_path: Path) -> None:
    src = copy_ckpt(tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    key = "num_experts" if "num_experts" in cfg else "num_local_experts"
    cfg[key] = 9
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "o.gguf"
    assert_fails(run_convert(str(src), "-o", str(out)), out, "experts 8 of 9")


@pytest.mark.parametrize("args,needle", [
    (["--experts", "Q9_9"], "unknown tensor type 'Q9_9'"),
    (["--dense", "IQ2_XXS"], "unknown tensor type 'IQ2_XXS'"),
    (["--router", "Q8_0"], "router type"),
    (["--align", "1000"], "power of two"),
])
def test_bad_options(tmp_path: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "o.gguf"
    assert_fails(run_convert(str(checkpoint("qwen3_moe")), "-o", str(out), *args), out, needle)


def test_nonexistent_source(tmp_path: Path) -> None:
    out = tmp_path / "o.gguf"
    assert_fails(run_convert(str(tmp_path / "nope"), "-o", str(out)), out, "no such directory")


def test_existing_output_untouched_on_failure(tmp_path: Path) -> None:
    """A failed conversion does not clobber a previous good file at OUT."""
    src = copy_ckpt(tmp_path)
    out = tmp_path / "o.gguf"
    out.write_bytes(b"previous")
    with open(src / "model.safetensors", "r+b") as fh:
        fh.truncate(fh.seek(0, os.SEEK_END) - 10)
    res = run_convert(str(src), "-o", str(out))
    assert res.returncode != 0 and out.read_bytes() == b"previous"


def test_interrupted_conversion_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupt (or any failure) half-way through writing leaves neither OUT nor a partial file."""
    from flashmoe_gguf.converter import convert
    from flashmoe_gguf.converter.archs import base

    calls = {"n": 0}
    orig = base.MoeArch._loader

    def interrupting_loader(self, src):  # type: ignore[no-untyped-def]
        load = orig(self, src)

        def f(i: int):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 20:   # well into the expert data
                raise KeyboardInterrupt
            return load(i)
        return f

    monkeypatch.setattr(base.MoeArch, "_loader", interrupting_loader)
    out = tmp_path / "o.gguf"
    with pytest.raises(KeyboardInterrupt):
        convert(checkpoint("qwen3_moe"), out)
    assert calls["n"] >= 20   # jobs already running on the pool finish
    assert not out.exists()
    assert not list(tmp_path.iterdir())
