"""The streaming layout, read back from the file with gguf-py: alignment, order, fused tensors, flashmoe index."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from conftest import checkpoint, converted
from flashmoe_gguf.converter import convert
from flashmoe_gguf.inspection import inspect_gguf
from flashmoe_gguf.layout import StreamingLayout


def _kv(path: Path) -> dict:
    r = GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items()}


def test_index_matches_tensor_table_and_experts_are_aligned(tmp_path: Path) -> None:
    # 256x256 Q4_K experts are 36864 bytes = 9 x 4096: with 4 KiB alignment every expert slice is aligned
    out = tmp_path / "a.gguf"
    convert(checkpoint("qwen3_moe"), out, align=4096)
    r = GGUFReader(out)
    kv = {k: f.contents() for k, f in r.fields.items()}
    assert kv["general.alignment"] == 4096
    layout = StreamingLayout.from_kv(kv)
    assert layout is not None and layout.n_expert == 8
    by_name = {t.name: t for t in r.tensors}
    data_start = min(int(t.data_offset) for t in r.tensors)
    assert data_start % 4096 == 0
    assert len(layout.tensors) == 6   # 2 layers x gate, up, down
    for e in layout.tensors:
        t = by_name[e.name]
        assert int(t.data_offset) - data_start == e.offset
        assert e.stride * 8 == int(t.n_bytes)
        assert e.stride == 256 * 144               # 256 rows of Q4_K (144 bytes per 256 values)
        for i in range(8):
            assert (int(t.data_offset) + i * e.stride) % 4096 == 0
        assert int(re.match(r"blk\.(\d+)\.", e.name).group(1)) == e.layer
    assert layout.expert_bytes == sum(int(by_name[e.name].n_bytes) for e in layout.tensors)
    assert layout.resident_bytes == sum(int(t.n_bytes) for t in r.tensors) - layout.expert_bytes
    for t in r.tensors:
        assert int(t.data_offset) % 4096 == 0, t.name
    info = inspect_gguf(out)
    assert info.optimal and not info.unaligned and info.index_state == "consistent"


def test_tensors_ordered_by_layer() -> None:
    r = GGUFReader(converted("qwen3_moe", "default"))
    layers = [int(m.group(1)) for t in r.tensors if (m := re.match(r"blk\.(\d+)\.", t.name))]
    assert layers == sorted(layers)
    names = [t.name for t in r.tensors]
    assert names[0] == "token_embd.weight"
    offsets = [int(t.data_offset) for t in r.tensors]
    assert offsets == sorted(offsets)
    # within a layer, an expert's gate and up come before down
    for layer in (0, 1):
        idx = {k: names.index(f"blk.{layer}.ffn_{k}_exps.weight") for k in ("gate", "up", "down")}
        assert idx["gate"] < idx["up"] < idx["down"]


def test_default_alignment_reports_unaligned_slices() -> None:
    path = converted("qwen3_moe", "default")
    info = inspect_gguf(path)
    assert info.alignment == 16384
    assert info.streams and not info.optimal
    assert len(info.unaligned) == 6   # 36864-byte experts cannot all start on 16 KiB boundaries
    text = info.render()
    assert "unaligned expert slices: 6" in text and "streams: yes" in text


def test_inspect_cli(tmp_path: Path) -> None:
    path = converted("qwen3_moe", "default")
    res = subprocess.run([sys.executable, "-m", "flashmoe_gguf.cli", "inspect", str(path)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "architecture:  qwen3moe" in res.stdout
    assert "Q4_K" in res.stdout and "streams: yes" in res.stdout and "layout: streams, but could be better" in res.stdout


def test_inspect_detects_tampered_index(tmp_path: Path) -> None:
    """A file whose flashmoe index disagrees with its tensor table still streams (the runtime reads the tensor
    table); inspect says the index is stale and where."""
    src = converted("qwen3_moe", "default")
    data = bytearray(src.read_bytes())
    r = GGUFReader(src)
    f = r.fields["flashmoe.expert.stride"]
    # overwrite the first stride value in place
    first = f.data[0]
    part = f.parts[first]
    off = int(part.ctypes.data - np.asarray(r.data).ctypes.data)
    data[off:off + 8] = (int(part[0]) + 1).to_bytes(8, "little")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    info = inspect_gguf(bad)
    assert info.streams and info.index_state == "stale"
    assert any("stride" in p for p in info.index_problems)
    assert "flashmoe index: stale" in info.render()


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral"])
def test_file_loads_in_stock_llama_cpp_with_flashmoe_keys(arch: str) -> None:
    import llama_cpp
    path = converted(arch, "default")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)
    out = llm.create_completion("Hello", max_tokens=4, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1
    llm.close()
