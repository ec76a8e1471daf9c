"""`flashmoe bench`: argument parsing, the budget rule, the KV-cache estimate, extrapolation math, cgroup setup and
removal, report writing, and real end-to-end runs on a tiny synthetic model (a 2-layer slice of the 4-layer tiny
Qwen3-MoE variant). Timings are not asserted; counts of bytes and lookups are."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import numpy as np
import pytest

from flashmoe_gguf.bench import cgroup as cgroup_mod
from flashmoe_gguf.bench.command import parse_caps, parse_configs, parse_ks, setup
from flashmoe_gguf.bench.extrapolate import (extrapolate_run, extrapolate_time, fit_two_slices, fixed_from_probe,
                                             fixed_from_two_slices, full_model_ram)
from flashmoe_gguf.bench.model import FULL_LAYERS_KEY, model_info
from flashmoe_gguf.bench.plan import BenchPlanOptions, flashmoe_budget, make_plan, nocap_budget
from flashmoe_gguf.bench.worker import WorkerSpec
from flashmoe_gguf.cli import build_parser
from flashmoe_gguf.gguf_index import read_index
from flashmoe_gguf.experts import expert_tensors
from conftest import synth_cached

PNG = b"\x89PNG\r\n\x1a\n"
HEADROOM = 64 << 20


def _synth_cached(cache: Path, preset: str, layers: int | None) -> Path:
    return synth_cached(cache, f"bench-{preset}-tiny-L{layers or 'all'}-v1.gguf", preset, layers=layers, tiny=True,
                        pool=4, seed=1, threads=2, routing_tokens=256)


def context_bytes(path: Path, n_ctx: int, k: int, n_ubatch: int = 512) -> int:
    """llama.cpp's context of a flashmoe load (flashmoe_stats()["context_bytes"]) in a fresh process, as a bench
    worker measures it (in this process, earlier tests' allocations can move the figure by a megabyte)."""
    info = model_info(path)
    code = textwrap.dedent(f"""
        from flashmoe_gguf import Llama
        llm = Llama({str(path)!r}, n_ctx={n_ctx}, n_batch={n_ubatch}, n_ubatch={n_ubatch}, n_threads=1,
                    n_threads_batch=1, ram_budget="1M", verbose=False,
                    kv_overrides={{{info.arch + ".expert_used_count"!r}: {k}}})
        print(llm.flashmoe_stats()["context_bytes"])
        llm.close()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    n = int(out.stdout.strip().splitlines()[-1])
    assert n > info.kv_cache_bytes(n_ctx)
    return n


@pytest.fixture(scope="module")
def tiny(cache: Path) -> Path:
    """2 of the 4 layers of the tiny qwen3-30b-a3b variant: 16 experts, K 4, Q4_K experts."""
    return _synth_cached(cache, "qwen3-30b-a3b", 2)


def _bench_args(path: Path, *extra: str) -> list[str]:
    return ["bench", str(path), *extra]


# -- the model facts and the budget rule -------------------------------------------------------------------

def test_model_info_from_the_tensor_table(tiny: Path) -> None:
    info = model_info(tiny)
    experts = expert_tensors(tiny)
    idx = read_index(tiny)
    assert info.arch == "qwen3moe" and info.block_count == info.layers == 2
    assert info.n_expert == 16 and info.n_expert_used == 4 and info.expert_tensors_per_layer == 3
    # one expert of one layer: gate + up + down, each 256 x 256 Q4_K (144 bytes per 256 values)
    assert info.bytes_per_expert == sum(e.stride for e in experts if e.layer == 0) == 3 * 256 * 144
    assert info.expert_bytes == sum(e.stride * e.n_expert for e in experts) == 2 * 16 * 3 * 256 * 144
    # sizes from gguf's own reader, not from read_index (which model_info uses)
    tensors = gguf.GGUFReader(tiny).tensors
    assert info.resident_bytes + info.expert_bytes == sum(int(t.n_bytes) for t in tensors)
    assert info.resident_fixed_bytes == sum(int(t.n_bytes) for t in tensors if not t.name.startswith("blk."))
    assert info.expert_bytes_per_token() == 2 * 4 * info.bytes_per_expert
    assert info.expert_bytes_per_token(2) == 2 * 2 * info.bytes_per_expert
    # synth records the full depth: this is a slice
    assert idx.scalars[FULL_LAYERS_KEY] == 4
    assert info.full_layers == 4 and info.is_slice and FULL_LAYERS_KEY in info.full_layers_source
    assert model_info(tiny, full_layers=48).full_layers == 48


@pytest.mark.parametrize("preset", ["qwen3-30b-a3b", "qwen35-397b-a17b"])
def test_kv_cache_estimate_matches_llama_cpp(cache: Path, preset: str, capfd: pytest.CaptureFixture[str]) -> None:
    """What llama.cpp allocates (its own log) for n_ctx 512: KV buffer and, for the hybrid model, RS buffer."""
    import llama_cpp
    path = _synth_cached(cache, preset, None)
    info = model_info(path)
    capfd.readouterr()
    llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=1, verbose=True)
    llm.close()
    log = capfd.readouterr().err
    mib = {m.group(1): float(m.group(2)) for m in re.finditer(r"CPU (KV|RS) buffer size =\s+([\d.]+) MiB", log)}
    assert "KV" in mib, log[-2000:]
    assert info.kv_bytes_per_ctx * 512 / 2**20 == pytest.approx(mib["KV"], abs=0.01)
    assert info.recurrent_state_bytes / 2**20 == pytest.approx(mib.get("RS", 0.0), abs=0.01)
    assert (preset == "qwen35-397b-a17b") == (info.recurrent_state_bytes > 0)
    assert info.kv_cache_bytes(512) == pytest.approx((mib["KV"] + mib.get("RS", 0.0)) * 2**20, abs=2**20 / 100)


def test_budget_rule(tiny: Path) -> None:
    info = model_info(tiny)
    kv = info.kv_cache_bytes(512)
    assert kv == 2 * 2 * (64 + 64) * 2 * 512           # 2 layers, 2 KV heads, key + value 64 each, f16
    assert info.kv_cache_bytes(300) == kv              # llama.cpp pads n_ctx to 256
    cap = 1 << 30
    assert flashmoe_budget(cap, info, 512, HEADROOM) == cap - info.resident_bytes - kv - HEADROOM
    assert flashmoe_budget(HEADROOM, info, 512, HEADROOM) < 0
    assert nocap_budget(info) >= info.expert_bytes
    assert nocap_budget(info, 512, HEADROOM, 64 << 30) == nocap_budget(info)
    # a machine too small to hold every expert: the no-cap budget stays within 90 % of its RAM
    ram = int((info.resident_bytes + kv + HEADROOM + info.expert_bytes // 2) / 0.9)
    budget = nocap_budget(info, 512, HEADROOM, ram)
    assert budget == int(0.9 * ram) - info.resident_bytes - kv - HEADROOM
    assert abs(budget - info.expert_bytes // 2) <= 2


def test_plan(tiny: Path) -> None:
    info = model_info(tiny)
    opt = BenchPlanOptions(caps=(1 << 30, 1 << 29), warm=True, ks=(None, 2), configs=("flashmoe-lru", "stock"),
                           tokens=4, prompt_tokens=8, n_ctx=512, threads=1, headroom=HEADROOM)
    plan = make_plan(info, opt)
    assert len(plan) == 2 * 2 * 2 + 2 * 2               # (caps x K x configs) + (warm x K x configs)
    assert [p.setting for p in plan] == ["capped"] * 8 + ["nocap"] * 4     # capped (cold) runs first
    assert all(p.cold == (p.setting == "capped") and p.spec.warmup == (p.setting == "nocap") for p in plan)
    for p in plan:
        assert p.k == (p.spec.kv_overrides.get("qwen3moe.expert_used_count") or 4)
        assert p.k_overridden == bool(p.spec.kv_overrides)
        if p.config == "stock":
            assert p.spec.budget == 0
        elif p.cap is not None:
            assert p.spec.budget == p.cap - info.resident_bytes - info.kv_cache_bytes(512) - HEADROOM
        else:
            assert p.spec.budget == nocap_budget(info)
    assert [p.spec.probe_pairs for p in plan] == [8 if p.setting == "nocap" else 0 for p in plan]   # warm runs


def test_plan_rounds_rotate_the_order(tiny: Path) -> None:
    info = model_info(tiny)
    configs = ("flashmoe-lfu", "stock", "stock-norepack")
    opt = BenchPlanOptions(caps=(1 << 30,), warm=True, ks=(None,), configs=configs, tokens=4, prompt_tokens=8,
                           n_ctx=512, threads=1, headroom=HEADROOM, rounds=3)
    plan = make_plan(info, opt)
    assert len(plan) == 2 * 3 * 3                        # (cap + warm) x rounds x configs
    for setting in ("capped", "nocap"):
        runs = [p for p in plan if p.setting == setting]
        assert [p.round for p in runs] == [0, 0, 0, 1, 1, 1, 2, 2, 2]      # one round after the other
        assert [p.config for p in runs] == ["flashmoe-lfu", "stock", "stock-norepack",
                                            "stock", "stock-norepack", "flashmoe-lfu",
                                            "stock-norepack", "flashmoe-lfu", "stock"]
    assert len({p.name for p in plan}) == len(plan) and plan[3].name.endswith("/ round 2")
    with pytest.raises(ValueError):
        make_plan(info, BenchPlanOptions(caps=(), warm=True, ks=(None,), configs=configs, tokens=4, prompt_tokens=8,
                                         n_ctx=512, threads=1, headroom=HEADROOM, rounds=0))


def test_ratios_over_rounds() -> None:
    from flashmoe_gguf.bench.report import compare
    from flashmoe_gguf.bench.runner import RunResult

    def run(config: str, rnd: int, tok_s: float | None, status: str = "ok") -> RunResult:
        return RunResult(f"{config} {rnd}", config, "nocap", 8, False, None, None, 1, [], status=status,
                         decode_tok_s=tok_s, round=rnd, tokens=[1, 2])

    fm = [run("flashmoe-lfu", 0, 3.0), run("flashmoe-lfu", 1, 4.0), run("flashmoe-lfu", 2, 2.0)]
    st = [run("stock", 0, 2.5), run("stock", 1, 5.0), run("stock", 2, None, "oom-killed")]
    x = compare("nocap", None, 8, fm, st)
    # medians 3.0 (of 2, 3, 4) and 3.75 (of 2.5 and 5; the failed run has no speed); rounds 1 and 2 pair up
    assert x["flashmoe_tok_s"] == 3.0 and x["versus_tok_s"] == 3.75 and x["ratio"] == pytest.approx(0.8)
    assert x["round_ratios"] == pytest.approx([1.2, 0.8]) and x["round_ratio_median"] == pytest.approx(1.0)
    assert x["round_ratio_min"] == pytest.approx(0.8) and x["rounds"] == 3 and x["same_greedy_tokens"] is True
    one = compare("nocap", None, 8, fm[:1], st[:1])     # one round: the plain ratio of the two runs
    assert one["ratio"] == pytest.approx(1.2) and one["rounds"] == 1
    failed = compare("nocap", None, 8, fm[:1], st[2:])
    assert failed["ratio"] is None and failed["versus_status"] == "oom-killed"


def test_prefill_split_and_bound_by_hand() -> None:
    """A 512-token prompt in 2 s that read 1 GB of experts, 0.5 s of it waiting for reads and 0.75 s in the expert
    products: 0.75 s elsewhere; at 2 GB/s reading 1 GB takes 0.5 s, so the bound is 1024 tok/s and 256 tok/s is
    25 % of it. The prompt ratio against stock (128 tok/s) is 2x."""
    from flashmoe_gguf.bench.report import _prompt_speed, compare, prefill
    from flashmoe_gguf.bench.runner import RunResult
    r = RunResult("fm", "flashmoe-lfu", "capped", 8, False, 1 << 30, 1 << 28, 1, [], ttft_s=2.0, prompt_tok_s=256.0,
                  flashmoe={"prompt": {"io_wait_seconds": 0.5, "expert_compute_seconds": 0.75,
                                       "expert_bytes_read": 1_000_000_000}})
    d = prefill(r, 2.0)
    assert d["prompt_io_wait_s"] == 0.5 and d["prompt_expert_compute_s"] == 0.75
    assert d["prompt_rest_s"] == pytest.approx(0.75)
    assert d["prefill_bound_tok_s"] == pytest.approx(1024.0) and d["fraction_of_prefill_bound"] == pytest.approx(0.25)
    assert prefill(r, None).get("prefill_bound_tok_s") is None
    st = RunResult("st", "stock-norepack", "capped", 8, False, 1 << 30, None, 1, [], ttft_s=4.0, prompt_tok_s=128.0)
    x = compare("capped", 1 << 30, 8, [r], [st], _prompt_speed)
    assert x["ratio"] == pytest.approx(2.0) and x["flashmoe_tok_s"] == 256.0


def test_disk_reads_experts_as_flashmoe_does(tiny: Path) -> None:
    """The bandwidth figure comes from flashmoe's own reader: batches of a layer's worth of experts (K x tensors)
    read through the store with O_DIRECT (this file system allows it, as direct_io="auto" finds), every byte
    counted; the Python measurement (where the extension is missing) reads whole experts of the real tensors."""
    from flashmoe_gguf.bench.disk import bandwidth, expert_slices, python_bandwidth
    from flashmoe_gguf.streamed import direct_io_works
    info = model_info(tiny)
    batch = info.n_expert_used * info.expert_tensors_per_layer
    b = bandwidth(tiny, 5 * batch, 4, 0, drop=False)
    strides = {n for _, _, n in expert_slices(tiny)}
    assert b["batch"] == batch and b["read_sizes"] == sorted(strides) and b["gb_s"] > 0
    # 5 batches; a cache of one byte keeps at most the last expert read, so a batch may hit it once
    assert 5 * batch - 5 <= b["reads"] <= 5 * batch and len(strides) == 1 and b["bytes"] == b["reads"] * min(strides)
    assert b["direct"] == direct_io_works(tiny)
    assert b["method"].startswith("flashmoe's reader (4 I/O threads, " + ("O_DIRECT" if b["direct"] else "buffered"))
    slices = expert_slices(tiny)
    p = python_bandwidth(tiny, len(slices), 4, 0, drop=False)
    assert p["reads"] == len(slices) and p["bytes"] == sum(n for _, _, n in slices) and p["direct"] == b["direct"]
    if p["direct"]:
        assert p["method"].startswith("O_DIRECT pread of each expert's 4096-byte-aligned cover, 4 in flight")


# -- argument parsing ----------------------------------------------------------------------------------------

def test_parse_caps_ks_configs() -> None:
    assert parse_caps("6G,3G", 10**10) == (6 << 30, 3 << 30)
    assert parse_caps("3G,6G,3G", 10**10) == (6 << 30, 3 << 30)          # sorted, largest first, unique
    assert parse_caps("35%", 2_000_000_000) == (700_000_000,)
    assert parse_caps("none", 1) == () and parse_caps("", 1) == ()
    for bad in ("x", "-1G", "0%", "5G,abc"):
        with pytest.raises(ValueError):
            parse_caps(bad, 10**9)
    assert parse_ks(None) == (None,) and parse_ks("4,10,4") == (4, 10)
    with pytest.raises(ValueError):
        parse_ks("0")
    assert parse_configs("lru,os", "stock,stock-norepack") == ("flashmoe-lru", "flashmoe-os", "stock",
                                                               "stock-norepack")
    assert parse_configs("lru-direct", "none") == ("flashmoe-lru-direct",)
    assert parse_configs(None, "stock")[0].startswith("flashmoe-") and parse_configs(None, "stock")[1] == "stock"
    with pytest.raises(ValueError, match="--cache"):
        parse_configs("fifo", "stock")
    with pytest.raises(ValueError, match="--compare"):
        parse_configs("lru", "vllm")


def test_cli_arguments(tiny: Path) -> None:
    a = build_parser().parse_args(_bench_args(tiny, "--ram", "6G,3G", "--tokens", "8", "--k", "4,10", "--compare",
                                              "stock", "--report", "/tmp/r", "--threads", "2"))
    assert a.command == "bench" and a.file == tiny and a.ram == "6G,3G" and a.tokens == 8 and a.k == "4,10"
    assert a.compare == "stock" and a.report == Path("/tmp/r") and a.threads == 2
    d = build_parser().parse_args(_bench_args(tiny))
    assert (d.ram, d.tokens, d.k, d.compare, d.threads, d.report) == ("35%", 32, None, "stock", 1, None)
    st = setup(build_parser().parse_args(_bench_args(tiny, "--ram", "1G", "--k", "2", "--unprivileged")))
    assert st.caps == (1 << 30,) and st.plan_options.ks == (2,)
    assert not st.control.cgroup and not st.control.drop_caches
    assert any("NOT enforced" in x for x in st.limitations) and any("page cache" in x for x in st.limitations)
    assert setup(build_parser().parse_args(_bench_args(tiny, "--rounds", "3"))).plan_options.rounds == 3
    # a context that fits the run unless given: 512, or prompt + decode + probe steps + 8 rounded up to 256
    assert setup(build_parser().parse_args(_bench_args(tiny))).plan_options.n_ctx == 512
    long = setup(build_parser().parse_args(_bench_args(tiny, "--prompt-tokens", "2048", "--n-ubatch", "2048")))
    assert long.plan_options.n_ctx == 2304 and long.plan_options.n_ubatch == long.plan_options.n_batch == 2048
    assert setup(build_parser().parse_args(_bench_args(tiny, "--prompt-tokens", "2048", "--n-ctx", "4096"))
                 ).plan_options.n_ctx == 4096
    for bad in (["--n-ctx", "16"], ["--ram", "none", "--no-warm"], ["--tokens", "0"], ["--k", "x"],
                ["--rounds", "0"], ["--n-batch", "512", "--n-ubatch", "1024"], ["--prompt-tokens", "600",
                                                                             "--n-ctx", "512"]):
        with pytest.raises(ValueError):
            setup(build_parser().parse_args(_bench_args(tiny, *bad)))
    with pytest.raises(ValueError, match="no such file"):
        setup(build_parser().parse_args(_bench_args(tiny.with_name("missing.gguf"))))


# -- extrapolation -------------------------------------------------------------------------------------------

def test_extrapolation_math(tiny: Path) -> None:
    # t = F + L p: 10 ms fixed, 5 ms per layer; a 4-layer slice of a 60-layer model
    assert extrapolate_time(0.030, 4, 60, 0.010) == pytest.approx(0.010 + 60 * 0.005)
    assert extrapolate_time(0.030, 4, 60, 0.0) == pytest.approx(0.030 * 15)     # no F: whole-time scaling
    assert fit_two_slices(4, 0.030, 8, 0.050) == pytest.approx((0.010, 0.005))
    with pytest.raises(ValueError):
        fit_two_slices(4, 0.03, 4, 0.04)
    probe = {"with_output": {"seconds": [0.012, 0.011, 0.030], "expert_seconds": 0.0045, "expert_bytes": 0},
             "no_output": {"seconds": [0.008, 0.007, 0.008], "expert_seconds": 0.0015, "expert_bytes": 0}}
    f = fixed_from_probe(probe)
    assert f is not None and f.pairs == 3
    # medians 12 ms and 8 ms; the last layer's experts: 1.5 ms - 0.5 ms per step
    assert f.seconds == pytest.approx(0.012 - 0.008 - 0.001)
    assert fixed_from_probe({}) is None
    # stock: no flashmoe_stats(); the last layer's expert time is given (from flashmoe's run)
    g = fixed_from_probe(probe, last_layer_expert_s=0.002)
    assert g is not None and g.seconds == pytest.approx(0.012 - 0.008 - 0.002) and g.last_layer_expert_s == 0.002
    two = fixed_from_two_slices("flashmoe-lru", ("a", 4, 0.030), ("b", 8, 0.050))
    assert two.seconds == pytest.approx(0.010) and two.per_layer_s == pytest.approx(0.005)
    assert [x["layers"] for x in two.slices or []] == [4, 8] and two.slices and two.slices[0]["config"] == "flashmoe-lru"
    info = model_info(tiny)      # 2 of 4 layers
    e = extrapolate_run("r", 1 / 0.030, info, 0.010, 4, 1.0, 0.5)
    assert e.full_decode_tok_s == pytest.approx(1 / (0.010 + 4 * 0.010))
    assert e.naive_full_decode_tok_s == pytest.approx(1 / 0.060) and e.naive_full_decode_tok_s < e.full_decode_tok_s
    need_full = 4 * 4 * info.bytes_per_expert
    assert e.full_disk_bound_tok_s == pytest.approx(1e9 / (need_full * 0.5))
    assert e.full_disk_bound_0_hit_tok_s == pytest.approx(1e9 / need_full)
    # F not below the token time: the per-layer part cannot be resolved, no figure
    u = extrapolate_run("r", 1 / 0.010, info, 0.012, 4, 1.0, 0.5)
    assert u.full_decode_tok_s is None and u.per_layer_s is None and u.naive_full_decode_tok_s == pytest.approx(50)
    ram = full_model_ram(info, 1000, 512, HEADROOM)
    assert ram["ram_budget_bytes"] == 2000 and ram["kv_cache_bytes"] == 2 * info.kv_cache_bytes(512)
    assert ram["resident_bytes"] == info.resident_fixed_bytes + 2 * (info.resident_bytes - info.resident_fixed_bytes)


# -- the memory cgroup ---------------------------------------------------------------------------------------

needs_cgroup = pytest.mark.skipif(cgroup_mod.check_available() is not None or cgroup_mod.version() != 1,
                                  reason=f"no writable cgroup v1 memory controller: {cgroup_mod.check_available()} "
                                         f"(cgroup version {cgroup_mod.version()}; v2: test_cgroup_v2.py)")


def _child(code: str, cg: cgroup_mod.MemCgroup) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], preexec_fn=cg.join, capture_output=True,
                          text=True, timeout=60)


@needs_cgroup
def test_cgroup_create_join_read_remove() -> None:
    parent = cgroup_mod.own_memcg()
    with cgroup_mod.MemCgroup(256 << 20) as cg:
        assert cg.path.parent == parent and cg.path.is_dir()
        assert int(cg.read("memory.limit_in_bytes")) == 256 << 20
        r = _child("""
            import os
            print(open('/proc/self/cgroup').read())
            b = bytearray(64 << 20)          # touched: 64 MB of RSS charged to the group
            for i in range(0, len(b), 4096):
                b[i] = 1
        """, cg)
        assert r.returncode == 0, r.stderr
        assert "memory:" + str(cg.path.relative_to(cgroup_mod.MEMCG_ROOT)).join(["/", ""]) in r.stdout
        fig = cg.figures()
        assert fig["limit_bytes"] == 256 << 20 and fig["max_usage_bytes"] >= 64 << 20
        assert fig["oom_kill"] == 0 and "rss" in fig["stat"]
    assert not cg.path.exists() and cg.removed


@needs_cgroup
def test_cgroup_removed_after_the_child_fails_or_is_oom_killed() -> None:
    with cgroup_mod.MemCgroup(None) as cg:
        r = _child("raise SystemExit(3)", cg)
        assert r.returncode == 3
    assert not cg.path.exists()
    with cgroup_mod.MemCgroup(48 << 20) as cg:
        r = _child("""
            b = bytearray(256 << 20)
            for i in range(0, len(b), 4096):
                b[i] = 1
        """, cg)
        assert r.returncode == -9
        fig = cg.figures()
        assert fig["oom_kill"] >= 1 and fig["max_usage_bytes"] <= 48 << 20
    assert not cg.path.exists()
    with pytest.raises(RuntimeError, match="boom"):
        with cgroup_mod.MemCgroup(64 << 20) as cg:
            p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=cg.join)
            try:
                raise RuntimeError("boom")
            finally:
                p.kill()
                p.wait()
    assert not cg.path.exists()


def test_own_memcg_reports_what_is_missing(tmp_path: Path) -> None:
    pc = tmp_path / "cgroup"
    pc.write_text("0::/user.slice\n")
    with pytest.raises(cgroup_mod.CgroupUnavailable, match="v2"):
        cgroup_mod.own_memcg(tmp_path, pc)
    pc.write_text("4:memory:/a/b\n")
    with pytest.raises(cgroup_mod.CgroupUnavailable, match="not found"):
        cgroup_mod.own_memcg(tmp_path, pc)
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "memory.limit_in_bytes").write_text("1\n")
    assert cgroup_mod.own_memcg(tmp_path, pc) == tmp_path / "a" / "b"


# -- a worker that dies ---------------------------------------------------------------------------------------

# the real worker (flashmoe_gguf.bench.worker.main) on the tiny model, made to die of SIGSEGV at one point: inside
# make_llama (as llama.cpp did inside llama_model_load_from_file on a device, before the 'loaded' event), or right
# after it emitted a given event
_DYING_WORKER = """
import os, signal, sys
from flashmoe_gguf.bench import worker
where = sys.argv[2]
if where == "make_llama":
    def make_llama(spec):
        os.kill(os.getpid(), signal.SIGSEGV)
    worker.make_llama = make_llama
else:
    emit = worker.emit
    def dying_emit(kind, **data):
        emit(kind, **data)
        if kind == where:
            os.kill(os.getpid(), signal.SIGSEGV)
    worker.emit = dying_emit
sys.exit(worker.main([sys.argv[1]]))
"""


class _DyingSpec(WorkerSpec):
    where = ""

    def command(self) -> list[str]:
        return [sys.executable, "-c", _DYING_WORKER, self.to_json(), self.where]


@pytest.mark.parametrize("where,warmup,phase", [("make_llama", True, "load"), ("loaded", True, "warmup"),
                                                ("loaded", False, "prompt"), ("warm", True, "prompt"),
                                                ("prompt", False, "decode"), ("token", False, "decode"),
                                                ("done", False, "close")])
def test_a_dead_worker_says_where_it_died(tiny: Path, where: str, warmup: bool, phase: str) -> None:
    from dataclasses import asdict
    from flashmoe_gguf.bench.command import _line, summary_lines
    from flashmoe_gguf.bench.machine import QuietRule
    from flashmoe_gguf.bench.runner import Control, RunPlan, run_config
    info = model_info(tiny)
    spec = _DyingSpec("flashmoe-lru", str(tiny), threads=1, tokens=2, prompt_tokens=8, n_ctx=512, budget=64 << 20,
                      warmup=warmup)
    spec.where = where
    plan = RunPlan("K=4 / flashmoe-lru", "flashmoe-lru", "nocap", None, 4, False, spec, cold=False)
    control = Control(cgroup=False, drop_caches=False, timeout_s=120, quiet=QuietRule(wait_s=0), retries=0,
                      hang_retries=0)
    r = run_config(plan, info, control, lambda line: None)
    assert r.status == "killed(SIGSEGV)", r.stderr_tail
    assert r.phase == phase and r.attempts[0]["phase"] == phase
    assert _line(r).startswith(f"killed(SIGSEGV) during {phase}: load ")
    assert (r.load_s is None) == (phase == "load")
    line = summary_lines({"runs": [asdict(r)], "per_run": {}, "ratios": [], "extrapolation": {}}).splitlines()
    if where in ("token", "done"):      # tokens decoded before it died (1, or all 2): said as such
        assert r.decode_tokens_done == (1 if where == "token" else 2) and r.decode_tok_s
        assert line == [(f"{plan.name:45s} killed(SIGSEGV) during {phase} (decode {r.decode_tok_s:.3f} tok/s over "
                         f"{r.decode_tokens_done} tokens before)")]
    else:
        assert line == [f"{plan.name:45s} killed(SIGSEGV) during {phase}"]


# -- end to end ----------------------------------------------------------------------------------------------

def _leftover_groups(pid: int) -> list[Path]:
    """Memory groups the bench process `pid` made and left behind."""
    try:
        return sorted(cgroup_mod.own_memcg().glob(f"flashmoe-bench-{pid}-*"))
    except cgroup_mod.CgroupUnavailable:
        return []


@pytest.fixture(scope="module")
def e2e(tiny: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, int]:
    """One real `flashmoe bench` (installed CLI, fresh processes): a cap that leaves flashmoe a budget smaller
    than one expert (so every expert a token selects is read), K 4 and 2, flashmoe and stock, capped and warm; and
    the 4-layer file as a second slice for the two-point fit of the fixed part. The cap counts llama.cpp's context
    as a flashmoe load of the same file, n_ctx, K and micro-batch measures it (KV cache, compute and output
    buffers); micro-batches of 8 tokens keep the compute buffers of K 4 and 2 within half an expert of each
    other, so that one cap leaves both less than an expert."""
    info = model_info(tiny)
    four = _synth_cached(cache, "qwen3-30b-a3b", None)
    budget = info.bytes_per_expert // 2
    cap = info.resident_bytes + context_bytes(tiny, 512, 4, n_ubatch=8) + HEADROOM + budget
    out = tmp_path_factory.mktemp("bench") / "report"
    p = subprocess.Popen(["flashmoe", "bench", str(tiny), "--ram", str(cap), "--headroom", str(HEADROOM), "--tokens",
                        "2", "--prompt-tokens", "8", "--k", "4,2", "--cache", "lru", "--compare", "stock",
                        "--wait", "0", "--disk-reads", "16", "--disk-repeats", "1", "--retries", "0",
                        "--probe-pairs", "3", "--n-ubatch", "8", "--slice", str(four), "--report", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path_factory.mktemp("cwd"))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    assert "[1/8] cap " in err and "[8/8] no cap, warm" in err and "[slice]" in err      # progress lines
    assert _leftover_groups(p.pid) == []
    return out, json.loads((out / "report.json").read_text()), cap


def test_e2e_report_is_complete(e2e: tuple[Path, dict, int], tiny: Path) -> None:
    out, rep, cap = e2e
    for key in ("command", "started", "finished", "machine", "model", "options", "control", "budget_rule",
                "caps_bytes", "budgets_bytes", "kv_cache_bytes", "disk_bandwidth", "runs", "per_run", "ratios",
                "k_check", "extrapolation", "plots"):
        assert key in rep, key
    m = rep["machine"]
    for key in ("cpu_model", "nproc", "ram_bytes", "disk", "kernel", "python", "llama_cpp_python"):
        assert m[key] not in (None, ""), key
    # the package's git HEAD: empty when it is installed from a copy rather than imported from a checkout
    assert m["git_head"] == "" or re.fullmatch(r"[0-9a-f]{40}", m["git_head"]), m["git_head"]
    assert rep["caps_bytes"] == [cap]
    names = [r["name"] for r in rep["runs"]]
    assert len(names) == 8 and len(set(names)) == 8
    assert {(r["setting"], r["k"], r["config"]) for r in rep["runs"]} == \
        {(s, k, c) for s in ("capped", "nocap") for k in (4, 2) for c in ("flashmoe-lru", "stock")}
    for r in rep["runs"]:
        assert r["status"] == "ok", (r["name"], r["status"], r["stderr_tail"])
        assert r["decode_tokens_done"] == 2 and len(r["tokens"]) == 3
        for key in ("load_s", "ttft_s", "prompt_tok_s", "decode_tok_s", "peak_memory_bytes"):
            assert r[key] and r[key] > 0, (r["name"], key)
        assert not r["oom"]
        if rep["control"]["cgroup"]:
            assert r["cgroup"]["max_usage_bytes"] > 0
            if r["setting"] == "capped":
                assert r["cap_enforced"] and r["cgroup"]["limit_bytes"] == cap
                assert r["cgroup"]["max_usage_bytes"] <= cap
            else:       # only a safety net
                assert not r["cap_enforced"] and r["cgroup"]["limit_bytes"] == int(0.9 * m["ram_bytes"])
    disk = rep["disk_bandwidth"]
    assert disk["gb_s"] > 0 and len(disk["rounds"]) == 2          # before the capped runs and after them
    # the sequential read the cold loads are set against: the file's first max(non-expert bytes, 1 GiB), all of this
    # small file
    seq = rep["sequential_disk"]
    assert seq["bytes"] == min(max(model_info(tiny).resident_bytes, 1 << 30), tiny.stat().st_size)
    assert seq["gb_s"] == pytest.approx(seq["bytes"] / seq["seconds"] / 1e9) and seq["cold"] == rep["control"]["drop_caches"]
    assert (out / "report.md").is_file()


def test_e2e_expert_bytes_and_k(e2e: tuple[Path, dict, int], tiny: Path) -> None:
    _, rep, cap = e2e
    info = model_info(tiny)
    runs = {(r["setting"], r["k"], r["config"]): r for r in rep["runs"]}
    for k in (4, 2):
        capped = runs[("capped", k, "flashmoe-lru")]
        # the budget: the cap less the resident weights, the headroom and llama.cpp's context (KV cache, compute
        # and output buffers), which the worker measured; less than one expert: nothing can be cached, every
        # selected expert is read
        assert capped["context_bytes"] > info.kv_cache_bytes(512)
        assert capped["budget_bytes"] == cap - info.resident_bytes - HEADROOM - capped["context_bytes"]
        assert 0 < capped["budget_bytes"] < info.bytes_per_expert
        assert capped["expert_bytes_needed_per_token"] == info.layers * k * info.bytes_per_expert
        assert capped["expert_bytes_per_token"] == info.layers * k * info.bytes_per_expert
        assert capped["hit_rate_bytes"] == pytest.approx(0.0)
        assert capped["expert_lookups_per_token"] == info.layers * k * 3
        assert capped["time_per_token"]["io_wait"] + capped["time_per_token"]["expert_compute"] > 0
        warm = runs[("nocap", k, "flashmoe-lru")]
        assert warm["expert_bytes_per_token"] == 0 and warm["hit_rate_bytes"] == 1.0     # all cached after warm-up
    assert runs[("capped", 4, "flashmoe-lru")]["expert_bytes_per_token"] == \
        2 * runs[("capped", 2, "flashmoe-lru")]["expert_bytes_per_token"]
    kc = rep["k_check"]
    assert kc["all_applied"] is True and kc["ks"] == [2, 4] and len(kc["runs"]) == 4


def test_e2e_derived_figures(e2e: tuple[Path, dict, int], tiny: Path) -> None:
    _, rep, _ = e2e
    info = model_info(tiny)
    bw = rep["disk_bandwidth"]["gb_s"]
    for r in rep["runs"]:
        d = rep["per_run"][r["name"]]
        need = info.layers * r["k"] * info.bytes_per_expert
        assert d["disk_bound_0_hit_tok_s"] == pytest.approx(bw * 1e9 / need)
        if r["config"] == "flashmoe-lru" and r["setting"] == "capped":
            assert d["bound_hit_rate"] == pytest.approx(0.0)
            assert d["fraction_of_bound_at_hit_rate"] == pytest.approx(r["decode_tok_s"] / (bw * 1e9 / need))
        if r["config"] == "flashmoe-lru":
            mc = d["memory_check"]
            assert mc["allowed_bytes"] == int(1.1 * (info.resident_bytes + r["budget_bytes"] +
                                                     info.kv_cache_bytes(512)))
            assert mc["pass"] == (mc["rss_end_of_decode_bytes"] - mc["baseline_rss_bytes"] <= mc["allowed_bytes"])
            assert mc["allowed_with_context_bytes"] == int(1.1 * (info.resident_bytes + r["budget_bytes"] +
                                                                  r["context_bytes"]))
            assert 0 < mc["baseline_rss_bytes"] < mc["rss_end_of_decode_bytes"]
        else:
            assert "memory_check" not in d
    ratios = {(x["setting"], x["k"]): x for x in rep["ratios"]}
    assert set(ratios) == {(s, k) for s in ("capped", "nocap") for k in (4, 2)}
    for x in ratios.values():
        assert x["ratio"] == pytest.approx(x["flashmoe_tok_s"] / x["versus_tok_s"])
    ex = rep["extrapolation"]
    assert ex["applies"] and ex["slice_layers"] == 2 and ex["full_layers"] == 4
    probes = ex["fixed_parts_probe"]            # every warm run ran the probe: F per configuration and K
    assert set(probes) == {f"{c} K={k}" for c in ("flashmoe-lru", "stock") for k in (4, 2)}
    for k in (4, 2):
        fm, st = probes[f"flashmoe-lru K={k}"], probes[f"stock K={k}"]
        assert fm["pairs"] == st["pairs"] == 3 and fm["seconds"] >= 0 and st["seconds"] >= 0
        assert st["last_layer_expert_s"] == fm["last_layer_expert_s"]     # stock borrows flashmoe's
        assert fm["seconds"] == pytest.approx(max(0.0, fm["with_output_s"] - fm["without_output_s"]
                                                  - fm["last_layer_expert_s"]))
    # the two-point fit: this file's warm flashmoe run at K 4 (2 layers) and the other slice's (4 layers)
    two = ex["fixed_part_two_slices"]
    second = rep["second_slice"]["run"]
    assert second["status"] == "ok" and second["config"] == "flashmoe-lru" and second["k"] == 4
    assert second["setting"] == "nocap" and rep["second_slice"]["model"]["block_count"] == 4
    t2 = 1 / next(r for r in rep["runs"] if r["name"] == "no cap, warm / K=4 / flashmoe-lru")["decode_tok_s"]
    t4 = 1 / second["decode_tok_s"]
    assert [s["layers"] for s in two["slices"]] == [2, 4]
    assert two["per_layer_s"] == pytest.approx((t4 - t2) / 2)
    assert two["seconds"] == pytest.approx(max(0.0, t2 - 2 * (t4 - t2) / 2))
    assert len(ex["runs"]) == 8
    for x in ex["runs"]:
        if x["config"] == "flashmoe-lru":     # the fit wins over the probe for the configuration it was made for
            assert x["fixed_source"] == "two slices" and x["fixed_s"] == two["seconds"]
        else:
            assert x["fixed_source"] == "probe" and x["fixed_s"] == probes[f"stock K={x['k']}"]["seconds"]
        t, f = 1 / x["slice_decode_tok_s"], x["fixed_s"]
        if t > f:
            assert x["full_decode_tok_s"] == pytest.approx(1 / (f + 4 * (t - f) / 2))
        else:
            assert x["full_decode_tok_s"] is None and "unresolved" in x["note"]
        assert x["naive_full_decode_tok_s"] == pytest.approx(x["slice_decode_tok_s"] / 2)


def test_e2e_markdown_and_plots(e2e: tuple[Path, dict, int]) -> None:
    out, rep, _ = e2e
    md = (out / "report.md").read_text()
    for text in ("# flashmoe bench", "**Machine:**", "**Budget rule:**", "**Disk:**", "## Runs",
                 "## flashmoe against stock llama-cpp-python", "## Experts per token (K)",
                 "## Full-model extrapolation", "**slice**", "extrapolated", "two slices", "F from the fixed-part probe",
                 "## Plots", "## Where flashmoe's time goes", "| prompt tok/s | K | flashmoe |"):
        assert text in md, text
    for r in rep["runs"]:         # flashmoe's decode split: its three parts add up to the token's time
        if r["config"].startswith("flashmoe") and r["status"] == "ok":
            t = r["time_per_token"]
            assert sum(t.values()) == pytest.approx(1 / r["decode_tok_s"])
            assert f"| {r['name']} | {1e3 / r['decode_tok_s']:.1f} | {t['io_wait'] * 1e3:.1f} |" in md
    for r in rep["runs"]:
        assert f"| {r['name']} | ok |" in md
    # every cold flashmoe load against the sequential read: non-expert bytes / load time
    resident, seq = rep["model"]["resident_bytes"], rep["sequential_disk"]["gb_s"]
    cold = [r for r in rep["runs"] if r["cold"] and r["config"].startswith("flashmoe")]
    assert bool(cold) == rep["control"]["drop_caches"]         # capped runs are cold where caches can be dropped
    assert ("sequential read of the file's first" in md) == bool(cold)
    for r in cold:
        rate = resident / r["load_s"] / 1e9
        assert f"{r['name']}: {r['load_s']:.2f} s, {rate:.3f} GB/s = {rate / seq:.0%}" in md, r["name"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert rep["plots"]["files"] == [] and "matplotlib" in rep["plots"]["skipped"]
        assert "No plots: matplotlib" in md
        return
    assert rep["plots"]["files"] == ["decode_vs_ram.png", "time_per_token.png"]
    import matplotlib.image
    for name in rep["plots"]["files"]:
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 5000
        img = matplotlib.image.imread(out / name)           # decodes: a valid PNG
        assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 500
        assert f"![{name}]({name})" in md


def test_e2e_rounds(tiny: Path, tmp_path: Path) -> None:
    """--rounds 2 on the warm setting: four real runs in rotated order, the ratio from medians and per round."""
    out = tmp_path / "report"
    p = subprocess.run(["flashmoe", "bench", str(tiny), "--ram", "none", "--tokens", "2", "--prompt-tokens", "8",
                        "--k", "2", "--cache", "lru", "--compare", "stock", "--rounds", "2", "--wait", "0",
                        "--disk-reads", "16", "--disk-repeats", "1", "--retries", "0", "--probe-pairs", "2",
                        "--report", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert [(r["config"], r["round"]) for r in rep["runs"]] == [("flashmoe-lru", 0), ("stock", 0), ("stock", 1),
                                                                ("flashmoe-lru", 1)]
    assert all(r["status"] == "ok" and r["decode_tok_s"] for r in rep["runs"]) and len(rep["warm_file_seconds"]) == 4
    (x,) = rep["ratios"]
    speed = {(r["config"], r["round"]): r["decode_tok_s"] for r in rep["runs"]}
    assert x["rounds"] == 2 and x["round_ratios"] == pytest.approx(
        [speed["flashmoe-lru", i] / speed["stock", i] for i in (0, 1)])
    median = {c: (speed[c, 0] + speed[c, 1]) / 2 for c in ("flashmoe-lru", "stock")}
    assert x["ratio"] == pytest.approx(median["flashmoe-lru"] / median["stock"])
    assert "same-round ratios" in (out / "report.md").read_text() and "medians of 2 rounds" in p.stdout


def test_unprivileged_run_says_what_it_could_not_control(tiny: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Without a cgroup or drop_caches (as a normal user), and without matplotlib: runs anyway and says so."""
    from flashmoe_gguf.bench import plots
    from flashmoe_gguf.cli import main
    monkeypatch.setattr(plots, "matplotlib_missing", lambda: "matplotlib is not installed (test)")
    monkeypatch.chdir(tmp_path)
    assert main(["bench", str(tiny), "--ram", "none", "--tokens", "2", "--prompt-tokens", "8", "--cache", "lru",
                 "--compare", "none", "--wait", "0", "--disk-reads", "8", "--disk-repeats", "1",
                 "--probe-pairs", "0", "--unprivileged", "--report", "r"]) == 0
    assert _leftover_groups(os.getpid()) == []
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [r["status"] for r in rep["runs"]] == ["ok"] and rep["runs"][0]["cgroup"] == {}
    assert not rep["control"]["cgroup"] and not rep["control"]["drop_caches"]
    method = rep["disk_bandwidth"]["method"]      # not dropped: O_DIRECT reads bypass the page cache anyway
    assert method.startswith("flashmoe's reader (8 I/O threads, ") and "page cache dropped" not in method
    assert rep["plots"] == {"files": [], "skipped": "matplotlib is not installed (test)"}
    ex = rep["extrapolation"]
    assert ex["fixed_parts_probe"] == {} and "lower bound" in ex["note"]
    assert [x["fixed_source"] for x in ex["runs"]] == ["not measured"]
    assert ex["runs"][0]["full_decode_tok_s"] == pytest.approx(ex["runs"][0]["naive_full_decode_tok_s"])
    md = (tmp_path / "r" / "report.md").read_text()
    assert "**Not controlled on this machine:**" in md and "NOT enforced" in md
    assert "No plots: matplotlib is not installed (test)" in md
    assert not list((tmp_path / "r").glob("*.png"))
    err = capsys.readouterr().err
    assert "WARNING: no memory cgroup" in err and "plots skipped" in err


def test_a_cap_below_the_resident_weights_skips_flashmoe(tiny: Path, tmp_path: Path) -> None:
    """No budget left under the cap: flashmoe's run is reported as skipped (no worker), the report still written."""
    from flashmoe_gguf.cli import main
    assert main(["bench", str(tiny), "--ram", "1M", "--no-warm", "--compare", "none", "--cache", "lru",
                 "--disk-repeats", "0", "--wait", "0", "--report", str(tmp_path / "r"), "-q"]) == 0
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    [r] = rep["runs"]
    assert r["status"].startswith("skipped") and r["budget_bytes"] < 0 and r["decode_tok_s"] is None
    assert rep["budgets_bytes"] == {str(1 << 20): r["budget_bytes"]} and rep["disk_bandwidth"] == {}
    assert "| cap 0.00G / K=4 / flashmoe-lru | skipped" in (tmp_path / "r" / "report.md").read_text()


# -- realistic routing (--routing) ---------------------------------------------------------------------------

def test_routing_specs_resolve_and_are_checked(tmp_path: Path) -> None:
    from flashmoe_gguf.bench.routing import Trace
    from flashmoe_gguf.bench.traces import check_fits, routing_trace, save_trace, stored_traces
    assert routing_trace("router") is None
    gen = routing_trace("mixtral-8x7b", tokens=64)
    assert gen is not None and gen.experts.shape == (64, 32, 2) and gen.n_expert == 8
    real = stored_traces()[0]
    got = routing_trace(real.name)
    assert got is not None and got.prompt_tokens == 0                     # its decode part only
    np.testing.assert_array_equal(got.experts, real.experts[real.prompt_tokens:])
    path = tmp_path / "t.npz"
    save_trace(Trace("mine", "test", 16, np.zeros((3, 2, 4), np.int16)), path)
    assert routing_trace(str(path)).name == "mine"                          # type: ignore[union-attr]
    with pytest.raises(ValueError, match="not a preset"):
        routing_trace("no-such-model")
    check_fits(gen, 8, 2, 32)
    for args, msg in (((16, 2, 32), "is for 8 experts, the model has 16"),
                      ((8, 4, 32), "selects 2 experts per token, the model 4 \\(--k 2"),
                      ((8, 2, 40), "has 32 layers, the model 40")):
        with pytest.raises(ValueError, match=msg):
            check_fits(gen, *args)


def test_plan_gives_the_routing_to_flashmoe_runs_only(tiny: Path) -> None:
    opt = BenchPlanOptions(caps=(1 << 30,), warm=True, ks=(None,), configs=("flashmoe-lru", "stock"), tokens=4,
                           prompt_tokens=8, n_ctx=512, threads=1, headroom=HEADROOM, routing="x.npz")
    assert {(p.config, p.spec.routing) for p in make_plan(model_info(tiny), opt)} == {
        ("flashmoe-lru", "x.npz"), ("stock", "router")}


def test_e2e_routing_replays_the_trace(tiny: Path, tmp_path: Path) -> None:
    """A trace in which every token selects experts 0..3 in every layer, with a budget a little above those 4 per
    tensor: flashmoe reads each once and then nothing per token, while with its router (which spreads tokens over
    all 16 experts) the same budget keeps reading. A trace for another model is a one-line error."""
    from flashmoe_gguf.bench.routing import Trace
    from flashmoe_gguf.bench.traces import save_trace
    info = model_info(tiny)
    trace = tmp_path / "same.npz"
    save_trace(Trace("same-4", "test", info.n_expert,
                     np.broadcast_to(np.arange(4, dtype=np.int16), (64, info.block_count, 4)).copy()), trace)
    budget = info.expert_bytes_per_token(4) + (1 << 16)        # experts 0..3 of every tensor, and a little
    cap = budget + info.resident_bytes + context_bytes(tiny, 512, 4) + HEADROOM
    common = ["--ram", str(cap), "--no-warm", "--tokens", "6", "--prompt-tokens", "8", "--cache", "lru",
              "--compare", "none", "--headroom", str(HEADROOM), "--wait", "0", "--disk-repeats", "0",
              "--retries", "0", "--probe-pairs", "0"]
    reps = {}
    for routing in (str(trace), "router"):
        out = tmp_path / f"report-{len(reps)}"
        p = subprocess.run(["flashmoe", "bench", str(tiny), *common, "--routing", routing, "--report", str(out)],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-3000:]
        reps[routing] = json.loads((out / "report.json").read_text())
    (replayed,), (routed,) = reps[str(trace)]["runs"], reps["router"]["runs"]
    assert replayed["status"] == routed["status"] == "ok"
    for r in (replayed, routed):     # the cap less llama.cpp's context as the worker measured it: the same as here
        assert r["budget_bytes"] == cap - info.resident_bytes - HEADROOM - r["context_bytes"]
        assert abs(r["budget_bytes"] - budget) < 1 << 15
    assert replayed["expert_bytes_per_token"] == 0 and replayed["hit_rate_bytes"] == 1.0
    assert routed["expert_bytes_per_token"] > 0
    assert any("replay same-4" in lim for lim in reps[str(trace)]["control"]["limitations"])
    p = subprocess.run(["flashmoe", "bench", str(tiny), *common, "--routing", "qwen3-30b-a3b", "--report",
                        str(tmp_path / "bad")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode != 0 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert f"is for 128 experts, the model has {info.n_expert}" in p.stderr
