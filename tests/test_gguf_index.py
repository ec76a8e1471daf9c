"""The runtime's fast tensor-table reader agrees with gguf-py's GGUFReader and rejects damaged files."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFReader

from conftest import converted
from flashmoe_gguf.gguf_index import GGUFIndexError, read_index


@pytest.mark.parametrize("arch", ["qwen3_moe", "qwen3_5_moe", "mixtral"])
def test_matches_gguf_reader(arch: str) -> None:
    path = converted(arch, "default")
    ours = read_index(path)
    ref = GGUFReader(path)
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors):
        assert a.offset == int(b.data_offset) and a.nbytes == int(b.n_bytes)
        assert a.gtype == int(b.tensor_type) and list(a.shape) == [int(x) for x in b.shape]
    assert ours.alignment == int(ref.fields["general.alignment"].contents())
    assert ours.scalars["general.architecture"] == ref.fields["general.architecture"].contents()


def test_rejects_truncated_and_garbage(tmp_path: Path) -> None:
    src = converted("qwen3_moe", "default").read_bytes()
    for n in (3, 30, 5000, len(src) - 100_000):
        p = tmp_path / f"t{n}.gguf"
        p.write_bytes(src[:n])
        with pytest.raises(GGUFIndexError):
            read_index(p)
    p = tmp_path / "garbage.gguf"
    p.write_bytes(b"GGUF" + b"\xff" * 200)
    with pytest.raises(GGUFIndexError):
        read_index(p)
