"""ggml_ext/fm_strings.c, the C scanners of GGUF string arrays, against plain Python readings of the same bytes (the
loops they replaced in gguf_index.py and load_checks.py). llama.cpp's own verdict on duplicate tokens is checked in
test_runtime_faults.py (test_duplicate_tokens_are_errors_not_aborts)."""

from __future__ import annotations

import struct
from pathlib import Path

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


PROBE = r"""
import ctypes, sys
libc = ctypes.CDLL(None)
if not hasattr(libc, "mallinfo2"):
    print("SKIP"); sys.exit(0)
class MI(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                                 "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MI
libc.malloc.restype = ctypes.c_void_p
from flashmoe_gguf.extension import unbound
ext = unbound()
blob = open(sys.argv[1], "rb").read()
if sys.argv[2] == "scan":
    a, b = ext.ffi.new("int64_t *"), ext.ffi.new("int64_t *")
    assert ext.lib.fm_duplicate_string(ext.ffi.from_buffer("uint8_t[]", blob), len(blob), int(sys.argv[3]), a, b) == 0
elif sys.argv[2] == "malloc":          # what a malloc'ed table of the same size did
    libc.free(ctypes.c_void_p(libc.malloc(int(sys.argv[4]))))
before = libc.mallinfo2().hblks
p = libc.malloc(12 << 20)              # below the table's 16 MB, above what the rest of this process frees
print(libc.mallinfo2().hblks - before)
"""


def test_a_large_scan_leaves_mallocs_mmap_threshold_alone(tmp_path: Path) -> None:
    """The duplicate scan's table for a 150k vocabulary is 16 MB: a malloc'ed one, once freed, raised glibc's dynamic
    mmap threshold, so that llama.cpp's later allocations below 16 MB stayed in the heap and their memory in RSS
    after freeing (19 MB more RSS after loading the 8-layer Qwen3 slice here, 37 MB on the device machine). Checked
    with glibc's own count of mmapped blocks (mallinfo2) in fresh processes: a 12 MB malloc after the scan is still a
    mapping of its own, as without the scan, and unlike after a 16 MB malloc'ed block is freed."""
    import subprocess
    import sys
    count = 150_000
    path = tmp_path / "vocab.bin"
    path.write_bytes(pack([b"tok%d" % i for i in range(count)]))
    table = 524_288 * 32               # fm_strings.c: 2 x count rounded up to a power of 2, 32-byte entries

    def probe(mode: str) -> str:
        out = subprocess.run([sys.executable, "-c", PROBE, str(path), mode, str(count), str(table)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip()
    control, old_way = probe("none"), probe("malloc")
    if control == "SKIP":
        pytest.skip("no glibc mallinfo2")
    if (control, old_way) != ("1", "0"):
        pytest.skip(f"this allocator's mmap threshold does not move as glibc's does ({control}, {old_way})")
    assert probe("scan") == "1"
