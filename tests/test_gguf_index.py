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


def _header(kvs: bytes, n_kv: int, tensors: bytes = b"", n_tensors: int = 0) -> bytes:
    import struct
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kvs + tensors


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    import struct
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", vtype) + payload


@pytest.mark.parametrize("case", ["nested-array", "huge-array", "huge-string", "wrapping-offset", "string-alignment",
                                  "duplicate-key"])
def test_hostile_headers_are_clear_errors_fast(tmp_path: Path, case: str) -> None:
    """Headers that made gguf-py's reader (and so `inspect`) loop for minutes or accept garbage: each is a
    GGUFIndexError at once from our reader and a one-line error from `flashmoe inspect`."""
    import struct
    import subprocess
    import sys
    import time
    arr = lambda et, n, body=b"": struct.pack("<IQ", et, n) + body  # noqa: E731
    bodies = {
        "nested-array": _header(_kv("a", 9, arr(9, 1 << 40)), 1),
        "huge-array": _header(_kv("a", 9, arr(4, 1 << 60)), 1),
        "huge-string": _header(_kv("a", 8, struct.pack("<Q", 1 << 62)), 1),
        "wrapping-offset": _header(_kv("general.architecture", 8, struct.pack("<Q", 5) + b"llama"), 1,
                                   struct.pack("<Q", 1) + b"t" + struct.pack("<IQIQ", 1, 32, 0, (1 << 64) - 32), 1),
        "string-alignment": _header(_kv("general.alignment", 8, struct.pack("<Q", 2) + b"32"), 1),
        "duplicate-key": _header(_kv("a", 4, struct.pack("<I", 1)) + _kv("a", 4, struct.pack("<I", 2)), 2),
    }
    bad = tmp_path / f"{case}.gguf"
    bad.write_bytes(bodies[case] + b"\0" * 4096)
    t0 = time.monotonic()
    with pytest.raises(GGUFIndexError, match=str(bad.name)):
        read_index(bad)
    assert time.monotonic() - t0 < 5
    r = subprocess.run([sys.executable, "-m", "flashmoe_gguf.cli", "inspect", str(bad)], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and bad.name in r.stderr, r.stderr


@pytest.mark.parametrize("chunk", [1, 7, 64, 4093])
def test_values_across_read_chunks(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """The header is read in chunks; a number, string or array element that straddles two chunks reads the same
    (a regression: a number read when the buffer grew was taken from the old, shorter buffer, so a streaming GGUF
    whose flashmoe.* arrays crossed the first 1 MiB of the header could not be read)"""
    import flashmoe_gguf.gguf_index as gi
    path = converted("qwen3_moe", "default")
    want = read_index(path)
    assert any(k.startswith("flashmoe.") and isinstance(v, list) and len(v) >= 6 for k, v in want.scalars.items())
    monkeypatch.setattr(gi._Reader, "CHUNK", chunk)
    got = read_index(path)
    assert got == want
