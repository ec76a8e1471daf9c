"""flashmoe_gguf.Llama against stock llama_cpp.Llama on the same GGUF: logits, greedy continuations, loading.

"Equal to stock" means bit for bit equal to stock llama-cpp-python with extra buffer types off (CPU_REPACK and
AMX off: routed experts through ggml's plain CPU MUL_MAT_ID, whose products ours reproduce), with an F32 KV
cache on both sides: every logit of a prompt batch and of token-by-token decode, and greedy continuations, for
every architecture, every expert type (those with our kernels, and F16 through ggml's own code), every
instruction set this CPU has and ggml's own code (isa="ggml"), with a budget far below the experts (constant
eviction) and above them. Stock as llama-cpp-python loads it by default (CPU_REPACK on, other kernels that add
in another order) is compared at the tolerance its own difference from the repack-off configuration needs.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from conftest import cache_root, checkpoint
from flashmoe_gguf.converter import convert
from reference import last_logits, no_extra_buffer_types
from reference import llama as stock_llama
from tiny_models import TINY

PROMPT = [11, 450, 77, 1203, 9, 3020, 600, 42, 5, 1999, 256, 3333, 17, 80, 2500, 1]
# 48 tokens: the tiny models route each token to 2 of 8 experts, so 96 (token, expert) rows go to 8 experts and
# at least one expert receives 12 or more: ggml takes its tiled K-quant path there (8+ rows), its vec_dot
# below, and token-by-token decode (1 row) always takes vec_dot. Both procedures are checked.
BATCH = [int(t) for t in np.random.default_rng(0).integers(5, 3900, 48)]
ARCHS = sorted(TINY)
TYPES = ["Q4_K", "Q8_0", "F16", "Q4_0", "Q4_1", "Q2_K", "Q6_K", "Q5_K", "Q3_K"]
# types with kernels of ours (IQ4_XS, which our converter does not write, is run per instruction set on llama.cpp's
# quantizations in test_hub_gguf.py; MXFP4 there too, and on GPT-OSS's own MXFP4 experts in test_gpt_oss.py)
KERNEL_TYPES = {"Q4_K", "Q8_0", "Q4_0", "Q4_1", "Q2_K", "Q6_K", "Q5_K", "Q3_K"}
ISAS = ["scalar", "avx2", "avx512", "ggml"]


def gguf_for(arch: str, experts: str) -> Path:
    from conftest import spec_key
    out = cache_root() / f"{arch}-{spec_key(arch)}-rt-{experts}.gguf"
    if not out.exists():
        convert(checkpoint(arch), out, experts=experts, dense="Q8_0", align=4096)
    return out


def streamed(path: Path, budget: str | int, **kw: object):  # type: ignore[no-untyped-def]
    from flashmoe_gguf import Llama
    return Llama(model_path=str(path), ram_budget=budget, n_ctx=256, n_batch=256, logits_all=True, verbose=False,
                 seed=0, n_threads=2, type_k=0, type_v=0, **kw)


def expert_bytes(path: Path) -> int:
    from flashmoe_gguf.experts import expert_tensors
    return sum(e.stride * e.n_expert for e in expert_tensors(path))


def logits(llm, tokens: list[int], batch: bool) -> np.ndarray:  # type: ignore[no-untyped-def]
    if batch:
        llm.eval(tokens)
    else:
        for t in tokens:
            llm.eval([t])
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def greedy(llm, tokens: list[int], n: int) -> list[int]:  # type: ignore[no-untyped-def]
    llm.reset()
    llm.eval(tokens)
    out = []
    for _ in range(n):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(t)
        llm.eval([t])
    return out


def assert_same_logits(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape and np.array_equal(got.view(np.uint32), want.view(np.uint32)), (
        f"{what}: max |diff| {np.abs(got - want).max():.3g} in {int((got != want).sum())} of {got.size} logits")


def cpu_isas() -> set[str]:
    """the instruction sets our kernels can use here, as the extension detects them (fm_cpu_isa)"""
    from flashmoe_gguf import extension
    from flashmoe_gguf.isa import isa_code
    best = int(extension.load().lib.fm_cpu_isa())
    return {n for n in ("scalar", "avx2", "avx512") if isa_code(n) <= best}


@functools.lru_cache(maxsize=None)
def stock_reference(arch: str, experts: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """stock (extra buffer types off): prompt-batch logits, token-by-token logits, 32-token greedy continuation"""
    ref = stock_llama(gguf_for(arch, experts))
    batch = logits(ref, BATCH, batch=True)
    ref.reset()
    dec = logits(ref, PROMPT, batch=False)
    cont = greedy(ref, PROMPT[:6], 32)
    ref.close()
    return batch, dec, cont


RUNTIME_CASES = [(a, t, i) for a in ARCHS for t in TYPES for i in (ISAS if t in KERNEL_TYPES else ["auto"])]


@pytest.mark.parametrize("arch,experts,isa", RUNTIME_CASES, ids=["-".join(c) for c in RUNTIME_CASES])
def test_matches_stock(arch: str, experts: str, isa: str) -> None:
    if isa not in ("auto", "ggml") and isa not in cpu_isas():
        pytest.skip(f"this CPU has no {isa} (its kernels run through SIMDe in test_runtime_simde.py)")
    path = gguf_for(arch, experts)
    ref_batch, ref_dec, ref_greedy = stock_reference(arch, experts)
    total = expert_bytes(path)
    for budget in (total // 8, 2 * total):       # constant eviction, and everything cached
        llm = streamed(path, budget, isa=isa)
        st = llm.flashmoe_stats()
        assert st["kernel_isa"] == (isa if isa != "auto" else st["kernel_isa"])
        assert_same_logits(logits(llm, BATCH, batch=True), ref_batch, f"prompt batch, budget {budget}")
        llm.reset()
        assert_same_logits(logits(llm, PROMPT, batch=False), ref_dec, f"token-by-token decode, budget {budget}")
        assert greedy(llm, PROMPT[:6], 32) == ref_greedy
        st = llm.flashmoe_stats()
        assert st["mul_mat_id_calls"] > 0 and st["expert_bytes_read"] > 0
        if budget < total:
            assert st["cache_misses"] > 0 and st["cache_peak_bytes"] <= budget + total // 4
        llm.close()


# One prompt micro-batch of 2048 tokens: 4096 (token, expert) rows over the tiny models' 8 experts, so the busiest
# expert of every node receives at least 512 and each thread's results for its 256 weight rows would exceed
# fm_matmul.c's 256 KiB cap (FM_OUT_CAP): they are computed in blocks of rows, each scattered into dst at its own
# rows. Measured on qwen3_moe Q4_K: 700 pairs in one layer (blocks of 80 rows: 80, 80, 80 and a partial 16), 967 in the
# other (64 rows, 4 blocks); a scatter at the call's first row instead of the block's fails every case.
LARGE_BATCH = [int(t) for t in np.random.default_rng(1).integers(5, 3900, 2048)]


@functools.lru_cache(maxsize=None)
def stock_large_batch(arch: str, experts: str) -> np.ndarray:
    import llama_cpp

    from reference import GGML_TYPE_F32, no_extra_buffer_types
    n = len(LARGE_BATCH)
    with no_extra_buffer_types():
        ref = llama_cpp.Llama(model_path=str(gguf_for(arch, experts)), n_ctx=n, n_batch=n, n_ubatch=n,
                              logits_all=True, verbose=False, seed=0, n_threads=2, type_k=GGML_TYPE_F32,
                              type_v=GGML_TYPE_F32)
    out = logits(ref, LARGE_BATCH, batch=True)
    ref.close()
    return out


@pytest.mark.parametrize("experts", ["Q4_K", "Q8_0"])     # ggml's tiled path (and our VNNI mm_tiled), vec_dot only
@pytest.mark.parametrize("isa", ISAS)
def test_large_micro_batch_matches_stock(experts: str, isa: str) -> None:
    """Every logit of a 2048-token micro-batch (expert products computed in row blocks) is stock's, bit for bit."""
    if isa != "ggml" and isa not in cpu_isas():
        pytest.skip(f"this CPU has no {isa}")
    from flashmoe_gguf import Llama
    path = gguf_for("qwen3_moe", experts)
    want = stock_large_batch("qwen3_moe", experts)
    n = len(LARGE_BATCH)
    llm = Llama(model_path=str(path), ram_budget=2 * expert_bytes(path), n_ctx=n, n_batch=n, n_ubatch=n,
                logits_all=True, verbose=False, seed=0, n_threads=2, type_k=0, type_v=0, isa=isa)
    try:
        assert_same_logits(logits(llm, LARGE_BATCH, batch=True), want, f"{n}-token micro-batch, isa {isa}")
        assert llm.flashmoe_stats()["mul_mat_id_calls"] > 0
    finally:
        llm.close()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("experts", ["Q4_K", "Q4_0"])    # the types CPU_REPACK takes over
def test_stock_default_differs_only_as_stock_does(arch: str, experts: str) -> None:
    """Against stock as llama-cpp-python loads by default (CPU_REPACK on: experts repacked, other kernels that add
    in another order), flashmoe's logits differ exactly as stock's own repack-off configuration does, and by at
    most 2.5 % of the largest logit: the most any of these models moves between stock's two configurations is
    1.2 % (Q4_K, qwen3_5_moe and Q2_K, qwen3_moe on AVX-512; greedy continuations of stock's two configurations
    differ too, e.g. qwen3_moe Q4_K)."""
    path = gguf_for(arch, experts)
    ref = stock_llama(path, extra_bufts=True)
    default = logits(ref, BATCH, batch=True)
    ref.close()
    norepack, _, _ = stock_reference(arch, experts)
    llm = streamed(path, expert_bytes(path) // 8)
    got = logits(llm, BATCH, batch=True)
    llm.close()
    assert np.array_equal(got - default, norepack - default)
    assert np.abs(got - default).max() <= 0.025 * np.abs(default).max()


def test_reference_really_turns_repack_off() -> None:
    """The repack-off reference is what it says: with it, llama.cpp puts no tensor in a CPU_REPACK buffer; by
    default it does (for Q4_K experts)."""
    import ctypes

    import llama_cpp
    from llama_cpp import _logger
    path = gguf_for("qwen3_moe", "Q4_K")
    logs: dict[bool, str] = {}
    for extra in (False, True):
        lines: list[str] = []

        @llama_cpp.llama_log_callback
        def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            lines.append(text.decode(errors="replace"))
        llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
        try:
            stock_llama(path, extra_bufts=extra).close()
        finally:
            llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        logs[extra] = "".join(lines)
    assert "CPU_REPACK model buffer size" in logs[True]
    assert "CPU_REPACK" not in logs[False] and "model buffer size" in logs[False]


def test_load_reads_no_expert_bytes() -> None:
    path = gguf_for("qwen3_moe", "Q4_K")
    size = path.stat().st_size
    experts = expert_bytes(path)
    llm = streamed(path, "64M")
    st = llm.flashmoe_stats()
    assert st["expert_bytes_read"] == 0 and st["mul_mat_id_calls"] == 0
    # the loader read everything but the experts: non-expert tensors, and the header (parsed twice)
    from gguf import GGUFReader
    header = min(int(t.data_offset) for t in GGUFReader(path).tensors)
    assert size - experts - header <= st["load_bytes_read"] <= size - experts + header
    llm.close()


def test_loader_streams_expert_tensors_in_chunks() -> None:
    """Without mmap, llama.cpp stages each tensor of a non-host buffer in a temporary buffer of the tensor's size
    (allocated and written: as many bytes as the file's experts), unless the device offers async uploads; ours
    does, so the loader goes through its 1 MiB host buffers (it says so in its debug log). The model so loaded,
    with llama-cpp-python's defaults (no logits_all, F16 KV cache), gives stock's logits."""
    import ctypes

    import llama_cpp
    from llama_cpp import _logger

    from flashmoe_gguf import Llama
    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text.decode(errors="replace"))

    path = gguf_for("qwen3_moe", "Q4_K")
    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        llm = Llama(model_path=str(path), ram_budget="64M", n_ctx=64, verbose=False)
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    log = "".join(lines)
    assert "using async uploads for device FLASHMOE" in log, log[-3000:]
    tokens = llm.tokenize(b"hello world", add_bos=False)
    llm.eval(tokens)
    got = last_logits(llm)
    llm.close()
    with no_extra_buffer_types():
        ref = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)
    ref.eval(tokens)
    assert_same_logits(got, last_logits(ref), "last token")
    ref.close()


@pytest.mark.parametrize("cache,direct", [("os", False), ("lru", False), ("lfu", False), ("lfu", True), ("lru", True),
                                          ("hazard", False)])
def test_cache_modes_match_stock(cache: str, direct: bool) -> None:
    """Every cache policy, and O_DIRECT reads, give stock's logits; lfu/lru under constant eviction."""
    path = gguf_for("qwen3_moe", "Q4_K")
    ref_llm = stock_llama(path)
    ref = logits(ref_llm, PROMPT, batch=True)
    ref_llm.reset()
    ref_dec = logits(ref_llm, PROMPT, batch=False)
    ref_llm.close()
    budget = "1M" if cache == "os" else expert_bytes(path) // 8
    llm = streamed(path, budget, cache=cache, direct_io=direct)
    assert_same_logits(logits(llm, PROMPT, batch=True), ref, "prompt batch")
    llm.reset()
    assert_same_logits(logits(llm, PROMPT, batch=False), ref_dec, "token-by-token decode")
    st = llm.flashmoe_stats()
    if cache == "os":
        assert st["cache_bytes"] == 0
    else:
        assert st["cache_misses"] > 0 and 0 < st["cache_bytes"] <= int(budget)
    llm.close()


def test_stock_model_in_same_process_is_untouched() -> None:
    """After the flashmoe device is registered, a plain llama_cpp.Llama keeps its experts in RAM as usual."""
    path = gguf_for("qwen3_moe", "Q8_0")
    llm = streamed(path, "64M")
    a = logits(llm, PROMPT, batch=True)
    ref_llm = stock_llama(path)
    b = logits(ref_llm, PROMPT, batch=True)
    assert_same_logits(a, b, "stock model loaded after a flashmoe one")
    ref_llm.close()
    llm.close()


def test_create_completion_and_chat() -> None:
    path = gguf_for("qwen3_moe", "Q4_K")
    llm = streamed(path, "64M")
    out = llm.create_completion("Hello", max_tokens=8, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1
    chat = llm.create_chat_completion(messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert chat["choices"][0]["message"]["role"] == "assistant"
    llm.close()


def test_not_an_moe_file(tmp_path: Path) -> None:
    from flashmoe_gguf import FlashMoeError, Llama
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(FlashMoeError):
        Llama(model_path=str(bad), verbose=False)


def test_flashmoe_run_cli_streams_stock_text() -> None:
    """`flashmoe run` prints the prompt, the same greedy text as stock llama.cpp, and a stats line."""
    import re
    import subprocess
    import sys
    path = gguf_for("qwen3_moe", "Q4_K")
    prompt = "The quick brown fox"
    ref_llm = stock_llama(path)
    ref = ref_llm.create_completion(prompt, max_tokens=12, temperature=0.0)
    want, n_want = ref["choices"][0]["text"], ref["usage"]["completion_tokens"]
    ref_llm.close()
    # cwd: not the repository, whose flashmoe_gguf/ (first on sys.path with -m) has no built extension in CI
    r = subprocess.run([sys.executable, "-m", "flashmoe_gguf.cli", "run", str(path), "-p", prompt, "-n", "12",
                        "--ram-budget", "64K", "-t", "1"], capture_output=True, text=True, timeout=300,
                       cwd=path.parent)
    assert r.returncode == 0, r.stderr
    text, _, stats = r.stdout.rpartition("[flashmoe]")
    assert text.rstrip("\n") == prompt + want
    m = re.match(r" (\d+) tokens, ([\d.]+) tok/s decode, .* cache hit rate (\d+)%, budget 0 MiB", stats)
    assert m, stats
    assert int(m.group(1)) == n_want


@pytest.mark.parametrize("args,message", [
    (["-p", ""], "the prompt is empty"), (["-p", "hi", "-n", "0"], "-n/--tokens must be at least 1"),
    (["-p", "hi", "-n", "-5"], "-n/--tokens must be at least 1"), (["-p", "hi", "--ctx", "0"], "--ctx must be")])
def test_flashmoe_run_cli_checks_its_arguments(args: list[str], message: str) -> None:
    """bad arguments are one line on stderr and exit status 1, before the model is loaded (no traceback, no run
    until the context is full)"""
    import subprocess
    import sys
    path = gguf_for("qwen3_moe", "Q4_K")
    r = subprocess.run([sys.executable, "-m", "flashmoe_gguf.cli", "run", str(path), *args], capture_output=True,
                       text=True, timeout=120, cwd=path.parent)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [f"flashmoe run: error: {r.stderr.split('error: ', 1)[1].strip()}"]
    assert message in r.stderr


def test_flashmoe_version() -> None:
    import subprocess
    import sys
    from importlib import metadata
    r = subprocess.run([sys.executable, "-m", "flashmoe_gguf.cli", "--version"], capture_output=True, text=True,
                       timeout=60, cwd="/")
    assert r.returncode == 0
    assert r.stdout.strip() == (f"flashmoe-gguf {metadata.version('flashmoe-gguf')} "
                                f"(llama-cpp-python {metadata.version('llama-cpp-python')})")


def test_direct_io_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    """direct_io="auto": O_DIRECT with our own cache when the file system takes it, never for cache="os"."""
    import os

    from flashmoe_gguf import streamed as sm
    path = gguf_for("qwen3_moe", "Q4_K")
    assert sm.direct_io_works(path)             # the test cache lives on a disk file system
    llm = streamed(path, "1M")
    assert llm.flashmoe_stats()["direct_io"] is True
    llm.close()
    llm = streamed(path, "1M", cache="os")
    assert llm.flashmoe_stats()["direct_io"] is False
    llm.close()

    def refuse(*a: object, **k: object) -> int:
        raise OSError(22, "Invalid argument")
    monkeypatch.setattr(os, "open", refuse)
    assert not sm.direct_io_works(path)
    with pytest.raises(ValueError, match="direct_io"):
        sm.StreamedModel(path, 1 << 20, direct_io="yes")


@pytest.mark.parametrize("cache", ["lfu", "lru", "os", "hazard"])
@pytest.mark.parametrize("budget_experts", [0, 64])
def test_prefetch_reads_nothing_twice(cache: str, budget_experts: int) -> None:
    """A node's partner experts (up, down) are read ahead with the gate's, and never read in vain: during decode
    the bytes read never exceed the bytes of the experts used. With a budget below one expert, reads go in waves
    and nothing is prefetched."""
    from flashmoe_gguf.experts import expert_tensors
    path = gguf_for("qwen3_moe", "Q4_K")
    stride = max(e.stride for e in expert_tensors(path))
    llm = streamed(path, max(4096, budget_experts * stride), cache=cache)
    llm.eval(PROMPT[:4])
    before = llm.flashmoe_stats()
    for t in PROMPT[4:]:
        llm.eval([t])
    st = llm.flashmoe_stats()
    llm.close()
    read = st["expert_bytes_read"] - before["expert_bytes_read"]
    used = st["expert_bytes_used"] - before["expert_bytes_used"]
    prefetched = st["prefetches"] - before["prefetches"]
    assert used > 0 and read <= used
    if budget_experts == 0 and cache != "os":
        assert prefetched == 0
    elif cache == "os":
        assert prefetched > 0 and read == used


def test_stock_load_on_another_thread_during_a_flashmoe_load() -> None:
    """A stock llama_cpp.Llama made on another thread while a flashmoe model is loading gets its own file, placed
    as stock places it (the load scope is per thread, in Python and in C), and flashmoe models load on several
    threads at once."""
    import threading

    import llama_cpp

    from flashmoe_gguf import streamed as sm
    ours, other = gguf_for("qwen3_moe", "Q4_K"), gguf_for("mixtral", "Q8_0")
    want, _, _ = stock_reference("mixtral", "Q8_0")
    results: dict[str, object] = {}

    def stock_load() -> None:
        try:
            with no_extra_buffer_types():
                llm = llama_cpp.Llama(model_path=str(other), n_ctx=256, n_batch=256, logits_all=True, verbose=False,
                                      seed=0, n_threads=2, type_k=0, type_v=0)
            results["arch"] = llm.metadata.get("general.architecture")
            results["logits"] = logits(llm, BATCH, batch=True)
            llm.close()
            second = streamed(other, "64M")      # a flashmoe load on this thread while the first one is running
            results["second"] = logits(second, BATCH, batch=True)
            second.close()
        except Exception as exc:  # noqa: BLE001 - reported below
            results["error"] = exc

    real_load = sm.StreamedModel.load

    def load_with_a_stock_load_meanwhile(self: sm.StreamedModel, params: object) -> object:
        if self.path == str(ours.resolve()):     # the first load only (the other thread's flashmoe load too)
            t = threading.Thread(target=stock_load)
            t.start()
            t.join(timeout=300)
            assert not t.is_alive()
        return real_load(self, params)

    sm.StreamedModel.load = load_with_a_stock_load_meanwhile  # type: ignore[method-assign]
    try:
        llm = streamed(ours, "64M")
    finally:
        sm.StreamedModel.load = real_load  # type: ignore[method-assign]
    assert "error" not in results, results.get("error")
    assert results["arch"] == "llama"                    # mixtral's file, not the one flashmoe was loading
    assert_same_logits(results["logits"], want, "stock model loaded meanwhile")  # type: ignore[arg-type]
    assert_same_logits(results["second"], want, "flashmoe model loaded meanwhile")  # type: ignore[arg-type]
    ref, _, _ = stock_reference("qwen3_moe", "Q4_K")
    assert_same_logits(logits(llm, BATCH, batch=True), ref, "the flashmoe model")
    assert llm.flashmoe_stats()["mul_mat_id_calls"] > 0
    llm.close()
