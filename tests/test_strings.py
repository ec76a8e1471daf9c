"""ggml_ext/fm_strings.c, the C scanners of GGUF string arrays, against plain Python readings of the same bytes (the
loops they replaced in gguf_index.py and load_checks.py). llama.cpp's own verdict on duplicate tokens is checked in
test_runtime_faults.py (test_duplicate_tokens_are_errors_not_aborts)."""

from __future__ import annotations

import struct

import numpy as np
import pytest


def pack(tokens: list[bytes]) -> bytes:
    return b"".join(struct.pack("<Q", len(t)) + t for t in tokens)


def python_duplicate(tokens: list[bytes]) -> tuple[int, int] | None:
    seen: dict[bytes, int] = {}
    for i, t in enumerate(tokens):
        text = t.split(b"\0", 1)[0] or b"[EMPTY_%d]" % i
        j = seen.setdefault(text, i)
        if j != i:
            return j, i
    return None


def c_duplicate(blob: bytes, count: int) -> tuple[int, tuple[int, int]]:
    from flashmoe_gguf.extension import unbound
    ext = unbound()
    a, b = ext.ffi.new("int64_t *"), ext.ffi.new("int64_t *")
    rc = ext.lib.fm_duplicate_string(ext.ffi.from_buffer("uint8_t[]", blob), len(blob), count, a, b)
    return rc, (int(a[0]), int(b[0]))


def c_skip(blob: bytes, count: int, max_len: int) -> tuple[int, int]:
    from flashmoe_gguf.extension import unbound
    ext = unbound()
    end = ext.ffi.new("uint64_t *")
    n = ext.lib.fm_skip_strings(ext.ffi.from_buffer("uint8_t[]", blob), len(blob), count, max_len, end)
    return int(n), int(end[0])


def vocab(seed: int, n: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [bytes(rng.integers(1, 256, int(rng.integers(1, 12)), dtype=np.uint8)) + b"%d" % i for i in range(n)]


CASES = {
    "distinct": lambda v: v,
    "duplicate": lambda v: v[:500] + [v[100]] + v[501:],
    "two duplicates, the earlier second wins": lambda v: v[:300] + [v[7]] + v[301:800] + [v[2]] + v[801:],
    "empty twice": lambda v: v[:10] + [b"", b""] + v[12:],
    "empty and its name": lambda v: v[:10] + [b"", b"[EMPTY_10]"] + v[12:],
    "its name, then the empty one": lambda v: v[:10] + [b"[EMPTY_11]", b""] + v[12:],
    "NUL cuts": lambda v: v[:20] + [b"abc", b"abc\0xyz"] + v[22:],
    "NUL first": lambda v: v[:20] + [b"\0a", b"[EMPTY_21]"] + v[22:],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_duplicate_string_as_python_sees_it(case: str) -> None:
    tokens = CASES[case](vocab(0, 4000))
    blob = pack(tokens)
    want = python_duplicate(tokens)
    rc, got = c_duplicate(blob, len(tokens))
    assert (rc, got if rc == 1 else None) == (1 if want else 0, want)
    # the same strings with trailing bytes beyond them, and cut short
    assert c_duplicate(blob + b"\xff" * 9, len(tokens))[0] == (1 if want else 0)
    assert c_duplicate(blob[:-1], len(tokens))[0] == -1
    assert c_duplicate(blob, len(tokens) + 1)[0] == -1


def test_skip_strings_stops_where_python_would() -> None:
    tokens = vocab(1, 1000)
    blob = pack(tokens)
    offsets = np.cumsum([0] + [8 + len(t) for t in tokens])
    assert c_skip(blob, len(tokens), 1 << 24) == (len(tokens), len(blob))
    assert c_skip(blob, 10, 1 << 24) == (10, offsets[10])
    for cut in (1, 7, 8, 9, len(blob) - offsets[-2] - 1):
        part = blob[:len(blob) - cut]
        n = int(np.searchsorted(offsets, len(part), side="right")) - 1   # whole strings within part
        assert c_skip(part, len(tokens), 1 << 24) == (n, offsets[n]), cut
    assert c_skip(b"", 5, 1 << 24) == (0, 0)
    assert c_skip(blob, 0, 1 << 24) == (0, 0)
    # a length above the limit: -1 at that string's offset
    longest = max(range(len(tokens)), key=lambda i: len(tokens[i]))
    assert c_skip(blob, len(tokens), len(tokens[longest]) - 1) == (-1, offsets[min(
        i for i in range(len(tokens)) if len(tokens[i]) > len(tokens[longest]) - 1)])
    huge = struct.pack("<Q", (1 << 64) - 1) + b"x"
    assert c_skip(huge, 1, (1 << 64) - 1) == (0, 0)      # does not fit: no overflow past the end
    assert c_duplicate(huge, 1)[0] == -1
