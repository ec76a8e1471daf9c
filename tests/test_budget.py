"""ram_budget="auto" (flashmoe_gguf/budget.py) on fake /proc and /sys trees, and through Llama."""

from __future__ import annotations

import contextlib
import ctypes
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from flashmoe_gguf.budget import FLOOR, Available, auto_budget, available_memory


def _heap_measurable() -> bool:
    """glibc's malloc counters see a 32 MiB malloc (not so when a sanitizer replaces malloc: tools/sanitize.py)"""
    from flashmoe_gguf import heap
    try:
        libc = ctypes.CDLL(None)
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.restype, libc.free.argtypes = None, [ctypes.c_void_p]
    except (OSError, AttributeError):
        return False
    held: list[int] = []
    _, grew = heap.allocated_during(lambda: held.append(libc.malloc(32 << 20)))
    for ptr in held:
        libc.free(ptr)
    return grew is not None and grew >= 32 << 20


# the context is measured through glibc's malloc counters; where they do not see malloc, Llama warns instead
needs_heap_counters = pytest.mark.skipif(not _heap_measurable(), reason="this process's malloc is not glibc's "
                                         "(a sanitizer build): llama.cpp's context cannot be measured here")

GiB = 1 << 30


def fake_root(tmp: Path, avail_kb: int, cgroup: str, files: dict[str, str]) -> Path:
    (tmp / "proc/self").mkdir(parents=True)
    (tmp / "proc/meminfo").write_text(f"MemTotal: {2 * avail_kb} kB\nMemFree: 1000 kB\nMemAvailable: {avail_kb} kB\n")
    (tmp / "proc/self/cgroup").write_text(cgroup)
    for rel, text in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text)
    return tmp


def test_meminfo_without_limit(tmp_path: Path) -> None:
    root = fake_root(tmp_path, 8 * GiB // 1024, "0::/user.slice\n", {"sys/fs/cgroup/user.slice/memory.max": "max\n"})
    assert available_memory(root) == Available(8 * GiB, "MemAvailable")


def test_cgroup_v2_limit_minus_anon(tmp_path: Path) -> None:
    root = fake_root(tmp_path, 20 * GiB // 1024, "0::/bench\n", {
        "sys/fs/cgroup/bench/memory.max": f"{4 * GiB}\n",
        "sys/fs/cgroup/bench/memory.stat": f"anon {GiB}\nfile {2 * GiB}\n"})
    a = available_memory(root)
    assert a.bytes == 3 * GiB and a.source.endswith("memory.max")


def test_cgroup_v1_limit_minus_rss(tmp_path: Path) -> None:
    root = fake_root(tmp_path, 20 * GiB // 1024, "12:memory:/job\n5:cpu,cpuacct:/job\n", {
        "sys/fs/cgroup/memory/job/memory.limit_in_bytes": f"{6 * GiB}\n",
        "sys/fs/cgroup/memory/job/memory.stat": f"cache {3 * GiB}\nrss {2 * GiB}\n"})
    assert available_memory(root).bytes == 4 * GiB


def test_unlimited_v1_group_falls_back_to_meminfo(tmp_path: Path) -> None:
    root = fake_root(tmp_path, 5 * GiB // 1024, "12:memory:/\n", {
        "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
        "sys/fs/cgroup/memory/memory.stat": "rss 0\n"})
    assert available_memory(root) == Available(5 * GiB, "MemAvailable")


@pytest.mark.parametrize("avail,resident,experts,want", [
    (16 * GiB, 2 * GiB, 100 * GiB, 16 * GiB - 2 * GiB - 16 * GiB // 10),   # headroom 10 %
    (3 * GiB // 2, GiB, 100 * GiB, FLOOR),                                     # not enough: the floor
    (64 * GiB, 2 * GiB, 4 * GiB, 4 * GiB),                                     # never more than the experts
    (4 * GiB, GiB, 100 * GiB, 4 * GiB - GiB - 512 * (1 << 20)),                # headroom at least 512 MiB
])
def test_auto_budget_rule(avail: int, resident: int, experts: int, want: int) -> None:
    assert auto_budget(resident, experts, Available(avail, "test")) == want


@pytest.mark.parametrize("avail", [16 * GiB, 2 * GiB])
def test_llama_reports_its_auto_budget(avail: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through Llama: the tiny model's experts (well under 256 MiB) are all it may cache, so with 16 or 2 GiB
    available the budget is the floor, 256 MiB."""
    from test_runtime import expert_bytes, gguf_for
    from flashmoe_gguf import Llama, budget
    path = gguf_for("qwen3_moe", "Q4_K")
    assert expert_bytes(path) < 256 * (1 << 20)
    monkeypatch.setattr(budget, "available_memory", lambda root=None: Available(avail, "test"))
    llm = Llama(model_path=str(path), n_ctx=64, verbose=False)
    try:
        assert llm.flashmoe_stats()["ram_budget"] == 256 * (1 << 20)
    finally:
        llm.close()


# ---- ram_budget="auto" leaves llama.cpp's context (KV cache, compute and output buffers) out of the cache ----

_BUFFER_LINE = re.compile(r"(KV|compute|output) buffer size =\s*([0-9.]+) MiB")


@contextlib.contextmanager
def llama_cpp_buffer_log() -> Iterator[list[float]]:
    """The sizes (bytes) of the buffers llama.cpp reports in its log while the block runs (KV cache, compute and
    output buffers of a context)."""
    import llama_cpp
    from flashmoe_gguf import llama_log
    router = llama_log.install()     # flashmoe's callback in front of llama-cpp-python's: put back after
    sizes: list[float] = []

    @llama_cpp.llama_log_callback
    def capture(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        m = _BUFFER_LINE.search(text.decode(errors="replace"))
        if m:
            sizes.append(float(m.group(2)) * (1 << 20))

    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        yield sizes
    finally:
        llama_cpp.llama_log_set(router.callback, ctypes.c_void_p(0))


@needs_heap_counters
@pytest.mark.parametrize("n_ctx,n_ubatch,flash_attn", [(256, 64, False), (1024, 256, False), (1024, 256, True)])
def test_auto_budget_leaves_out_llama_context(n_ctx: int, n_ubatch: int, flash_attn: bool,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The context flashmoe measures is no less than what llama.cpp's log says it allocated (KV cache, compute and
    output buffers), and more only by the graph metadata llama.cpp does not log (node storage and the scheduler's
    hash sets for graph_max_nodes nodes, zero-filled: about 22 MiB in this build, whatever the model): up to 32
    MiB. With resident weights + that context + the headroom + half the experts available, the cache gets half
    the experts."""
    from test_runtime import expert_bytes, gguf_for
    from flashmoe_gguf import Llama, budget
    path = gguf_for("qwen3_moe", "Q4_K")
    experts = expert_bytes(path)
    resident = path.stat().st_size - experts
    headroom = 4 << 20
    kw = dict(n_ctx=n_ctx, n_batch=n_ubatch, n_ubatch=n_ubatch, flash_attn=flash_attn, verbose=False)
    with llama_cpp_buffer_log() as sizes:
        llm = Llama(str(path), ram_budget="1M", **kw)
        measured = llm.flashmoe_stats()["context_bytes"]
        llm.close()
    reported = int(sum(sizes))
    assert len(sizes) >= 3 and reported > 0, sizes         # output, KV, compute (per device)
    assert measured is not None and reported <= measured <= reported + (32 << 20), (measured, reported)

    monkeypatch.setattr(budget, "FLOOR", 1)      # the tiny model's experts (1.8 MB) are far below the real floor
    avail = resident + measured + headroom + experts // 2
    monkeypatch.setattr(budget, "available_memory", lambda root=None: Available(avail, "test"))
    llm = Llama(str(path), ram_headroom=headroom, **kw)
    try:
        st = llm.flashmoe_stats()
    finally:
        llm.close()
    assert st["ram_budget"] == avail - resident - st["context_bytes"] - headroom
    assert abs(st["ram_budget"] - experts // 2) <= 1 << 20      # the same context, give or take the allocator


@needs_heap_counters
def test_auto_budget_context_grows_with_the_micro_batch() -> None:
    """A larger n_ubatch (without flash attention) allocates larger compute buffers: the measured context grows
    as much as llama.cpp's own figures do (within the scheduler's few MiB of graphs)."""
    from test_runtime import gguf_for
    from flashmoe_gguf import Llama
    path = gguf_for("qwen3_moe", "Q4_K")
    got, said = [], []
    for ub in (64, 512):
        with llama_cpp_buffer_log() as sizes:
            llm = Llama(str(path), n_ctx=1024, n_batch=ub, n_ubatch=ub, ram_budget="64M", verbose=False)
            got.append(llm.flashmoe_stats()["context_bytes"])
            llm.close()
        said.append(sum(sizes))
    assert said[1] > said[0] + (1 << 20)
    assert abs((got[1] - got[0]) - (said[1] - said[0])) <= 4 << 20, (got, said)


def test_one_output_row_is_reserved_unless_more_are_read() -> None:
    """llama-cpp-python reads one logits row per batch unless logits_all (or embedding, or a draft model), so
    flashmoe's context reserves one output row: its buffers, as llama.cpp logs them, are smaller than stock's
    (which reserves n_batch rows; by how much depends on what the graph allocator can overlap: on the 8-layer
    Qwen3 slice at n_ubatch 2048 with flash attention 1,306 MB against 327 MB); a prompt of several batches still
    gives stock's logits bit for bit. With logits_all the reservation is stock's."""
    from reference import last_logits
    from test_runtime import assert_same_logits, gguf_for
    from flashmoe_gguf import Llama
    path = gguf_for("qwen3_moe", "Q4_K")
    n_batch = 64
    kw = dict(n_ctx=256, n_batch=n_batch, n_ubatch=n_batch, verbose=False)

    def compute_buffer(make):  # type: ignore[no-untyped-def]
        with llama_cpp_buffer_log() as sizes:
            llm = make()
        return llm, sum(sizes)

    ref, stock_bytes = compute_buffer(lambda: _stock(path, kw))
    tokens = (ref.tokenize(b"one output row per batch is enough for llama-cpp-python", add_bos=False) * 8)[:150]
    ref.eval(tokens)                     # three batches of 64, 64 and 22 tokens
    want = last_logits(ref)
    n_vocab = ref.n_vocab()
    ref.close()
    llm, fm_bytes = compute_buffer(lambda: Llama(str(path), ram_budget="1M", **kw))
    llm.eval(tokens)
    assert_same_logits(last_logits(llm), want, "last token of a 3-batch prompt")
    llm.close()
    assert fm_bytes < stock_bytes - n_vocab * 4, (stock_bytes, fm_bytes)
    all_rows, all_bytes = compute_buffer(lambda: Llama(str(path), ram_budget="1M", logits_all=True, **kw))
    all_rows.close()
    assert abs(all_bytes - stock_bytes) <= 1 << 20, (all_bytes, stock_bytes)


def _stock(path: Path, kw: dict) -> object:  # type: ignore[type-arg]
    import llama_cpp
    from reference import no_extra_buffer_types
    with no_extra_buffer_types():
        return llama_cpp.Llama(str(path), **kw)


@pytest.mark.parametrize("cache", ["lfu", "lru"])
def test_a_smaller_budget_evicts_down_to_it(cache: str) -> None:
    """set_budget (how "auto" sizes the cache once llama.cpp's context exists) takes effect at once: four experts
    cached under a four-expert budget, then a two-expert budget keeps two; the next misses stay within it."""
    from test_runtime import gguf_for
    from flashmoe_gguf.streamed import StreamedModel
    path = gguf_for("qwen3_moe", "Q4_K")
    m = StreamedModel(path, 1 << 30, io_threads=2, cache=cache)
    try:
        t = m.experts[0]
        m.set_budget(4 * t.stride)
        for e in range(4):
            m.access(t.name, [e])
        assert m.stats()["cache_bytes"] == 4 * t.stride
        m.set_budget(2 * t.stride)
        assert m.stats()["cache_bytes"] == 2 * t.stride and m.stats()["ram_budget"] == 2 * t.stride
        for e in range(4, 7):
            m.access(t.name, [e])
        assert m.stats()["cache_bytes"] <= 2 * t.stride
    finally:
        m.close()


@needs_heap_counters
def test_auto_budget_below_the_floor_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Less available than the resident weights + llama.cpp's context + the headroom: the cache still gets the
    floor (or all the experts, if fewer), and Llama says that this may exceed the limit; enough: no warning."""
    import warnings

    from test_runtime import expert_bytes, gguf_for
    from flashmoe_gguf import Llama, budget
    path = gguf_for("qwen3_moe", "Q4_K")
    experts = expert_bytes(path)
    monkeypatch.setattr(budget, "FLOOR", experts // 2)          # the tiny model's experts: 1.8 MB
    monkeypatch.setattr(budget, "available_memory", lambda root=None: Available(path.stat().st_size, "test"))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", RuntimeWarning)
        llm = Llama(str(path), n_ctx=64, ram_headroom=0, verbose=False)
    assert [w for w in seen if "floor, which may exceed the memory limit" in str(w.message)]
    assert llm.flashmoe_stats()["ram_budget"] == experts // 2
    llm.close()
    monkeypatch.setattr(budget, "available_memory", lambda root=None: Available(16 << 30, "test"))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", RuntimeWarning)
        llm = Llama(str(path), n_ctx=64, ram_headroom=0, verbose=False)
    assert not [w for w in seen if "floor" in str(w.message)]
    assert llm.flashmoe_stats()["ram_budget"] == experts
    llm.close()


@pytest.mark.parametrize("cache", ["lfu", "lru", "hazard"])
def test_a_prompt_keeps_the_cache_within_budget_plus_one_node(cache: str) -> None:
    """ggml_ext/DESIGN.md's bound: the cache holds at most the budget plus the experts of the node in progress.
    A budget of 10 experts, where a prompt's node uses all 8 of a tensor's experts: the node fits, the node with
    its two partner tensors' same experts (24) does not, so those are not read ahead, and the cache never holds
    more than 10 + 8 experts (it held 24 and more when the partners were prefetched anyway)."""
    from test_runtime import PROMPT, gguf_for
    from flashmoe_gguf import Llama
    from flashmoe_gguf.experts import expert_tensors
    path = gguf_for("qwen3_moe", "Q4_K")
    tensors = expert_tensors(path)
    stride = tensors[0].stride
    assert {t.stride for t in tensors} == {stride} and {t.n_expert for t in tensors} == {8}
    llm = Llama(str(path), ram_budget=10 * stride, cache=cache, n_ctx=256, verbose=False)
    try:
        llm.eval((PROMPT * 4)[:48])
        st = llm.flashmoe_stats()
    finally:
        llm.close()
    assert st["cache_peak_bytes"] <= 18 * stride, st["cache_peak_bytes"] / stride


_RSS_CHILD = r"""
import json, random, sys
from flashmoe_gguf.streamed import StreamedModel

def rss_anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

path, budget = sys.argv[1], int(sys.argv[2])
m = StreamedModel(path, budget, io_threads=2, cache="lfu")
names = [t.name for t in m.experts]
rng = random.Random(0)
for name in names:                       # the tables made, one expert of each tensor read: the baseline
    m.access(name, [0])
before = rss_anon()
for _ in range(400):                     # decode-like nodes (a few experts) and prompt-like ones (more than the
    n = rng.choice((1, 4, 8, 40))        # budget holds: read and dropped in waves), two expert sizes
    m.access(rng.choice(names), rng.sample(range(64), n))
after = rss_anon()
st = m.stats()
print(json.dumps({"growth": after - before, "cache_bytes": st["cache_bytes"],
                  "kept_buffer_bytes": st["kept_buffer_bytes"]}))
m.close()
"""


def test_store_memory_is_what_the_store_holds(tmp_path: Path) -> None:
    """What the kernel counts as the process's anonymous memory against what the store says it holds (its cache
    and the free buffers it keeps for the next reads), while thousands of experts of two sizes come and go under a
    16 MB budget (nodes of a few experts and nodes of more than the budget holds). Expert buffers are mappings of
    their own, so one given back leaves no hole behind: with malloc'ed buffers the heap kept about 11 MB more in
    this test (and about 35 MB more after a 512-token prompt of the 8-layer Qwen3 slice), which no budget saw."""
    import gguf
    path = tmp_path / "experts.gguf"
    w = gguf.GGUFWriter(str(path), "qwen3moe")
    w.add_expert_count(64)
    w.add_expert_used_count(4)
    rng = np.random.default_rng(0)
    for kind, rows in (("gate", 256), ("up", 256), ("down", 384)):     # 1 MB and 1.5 MB experts (F32, 1024 cols)
        w.add_tensor(f"blk.0.ffn_{kind}_exps.weight", rng.standard_normal((64, rows, 1024)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    budget = 16 << 20
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(path), str(budget)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["cache_bytes"] <= budget
    # the baseline already held one expert of each tensor (about 3.5 MB), so the growth is at most what the
    # store holds at the end; 2 MB for the tables and the interpreter
    assert got["growth"] <= got["cache_bytes"] + got["kept_buffer_bytes"] + (2 << 20), got
