"""Decode benchmark: the streaming runtime (flashmoe_gguf.Llama) against stock llama-cpp-python, same file.

Two settings, in one run:

  capped (cold)   the worker's RAM -- anonymous memory AND page cache -- is capped with a cgroup v1 memory
                  child group at --cap (default: the routed-expert bytes / 3), and the page cache is dropped
                  first (`sync; echo 3 > /proc/sys/vm/drop_caches`);
  no cap (warm)   the model file is in the page cache, and each worker runs the measured sequence once
                  untimed (so flashmoe's LRU cache is also warm) before timing it again.

Configurations (each in a fresh process: this file with --worker):

  stock           llama_cpp.Llama(path, n_ctx=512, n_threads=T, n_threads_batch=T), use_mmap default (on)
  stock-norepack  the same with extra buffer types off (use_extra_bufts=False): CPU_REPACK otherwise copies the
                  Q4_K experts into anonymous memory. Patched on llama_cpp.llama_cpp, the name Llama calls
                  (tests/reference.py patches the package re-export, which leaves repack on)
  flashmoe-lru    flashmoe_gguf.Llama(path, ram_budget=B, cache="lru", same n_ctx/threads)
  flashmoe-os     the same with cache="os" (no cache of its own; the page cache, inside the same cap, is it)
  flashmoe-direct (not run by default) cache="lru", direct_io=True: O_DIRECT reads, no page cache at all

Every configuration gets n_threads = n_threads_batch = --threads (default 1: ggml's threads spin at barriers,
so 2 threads on 2 cores collapse when anything else runs; --threads 1,2 measures both).

B = cap - resident (non-expert) weights - --headroom in the capped runs, all expert bytes in the no-cap runs.
Every worker is a child of its own memory cgroup (created under this process's memory cgroup, removed after,
even on failure), so peak memory is memory.max_usage_in_bytes (RSS + page cache charged to it), and OOM is
memory.oom_control's oom_kill count or the worker dying of SIGKILL.

Measured per configuration: load time; prompt of --prompt-tokens tokens in one llm.eval (prompt tok/s; time to
first token = that eval + the argmax); decode = --tokens steps of llm.eval one token at a time, each feeding the
argmax of the previous one (greedy; --feed random feeds seeded random token ids instead: a random-weight model soon
repeats a few tokens greedily, which makes consecutive tokens reuse experts far more than real text would), decode
tok/s over those steps; read_bytes of /proc/<worker>/io per phase (what the disk delivered: page-cache misses and
readahead); flashmoe_stats() per phase (expert bytes read, io_wait_seconds vs expert_compute_seconds, cache hit
rate -- which also counts the partner-prefetch lookups, so the tool reports a hit rate by bytes too); peak memory,
failcnt and OOM from the cgroup (no-cap runs: the warm page cache is charged to this process's group, so their peak
is anonymous memory only). Greedy tokens are compared with stock-norepack's (the configuration flashmoe computes
like).

Disk bound, measured in the same run, just before and just after the capped runs: with a cold cache, --disk-reads
preads of random expert slices of the real expert tensors (flashmoe_gguf.runtime.expert_tensors), --disk-threads
in parallel, POSIX_FADV_RANDOM (no readahead); --disk-repeats times per round, plus once with one thread. The
median of all multi-threaded measurements gives the bound, their range a range. (On a VM, "cold" means the
guest's page cache: the host may still cache parts of the disk image, which shows up as spread.) Then
    decode tok/s <= bandwidth / (layers x experts_used x bytes of one expert's projections x (1 - hit rate)),
at 0 % hits and at the capped flashmoe-lru run's hit rate.

Before each timed run (and each disk measurement) the tool waits, up to --wait s, until other processes use at
most --max-busy cores and the model's disk is at most --max-disk busy (sampled over 3 s from /proc/stat and
/proc/diskstats; --max-load also gates on the 1-minute load average, which lags by minutes and counts our own
previous worker). It records `uptime`, and the cores and disk traffic other processes used during the run; a
run disturbed beyond --max-busy / --max-others-disk is repeated (up to --retries) and the least disturbed
attempt kept. A worker that uses no CPU and reads nothing for --stall s is hung: its native stacks are dumped
(py-spy dump --native, if installed), it is killed, and the configuration rerun (up to --hang-retries).
Needs root (drop_caches, cgroups).

Reproduce (12-layer Qwen3-30B-A3B-shaped model, Q4_K experts: 4.08 GB of experts, 0.92 GB resident, cap 1.36 GB;
the 4-layer /work/synth/q3-4L.gguf cannot be used: its resident weights, 0.75 GB, exceed experts / 3 = 0.45 GB):

    python tools/synth_checkpoint.py qwen3-30b-a3b --layers 12 -o /work/synth/q3-12L     # 15 GB of bf16
    flashmoe convert /work/synth/q3-12L -o /work/synth/q3-12L.gguf                      # ~12 min on 2 cores
    python tools/bench_decode.py --model /work/synth/q3-12L.gguf \
        --configs stock,stock-norepack,flashmoe-lru,flashmoe-os,flashmoe-direct --json bench_decode-12L-t1.json
    python tools/bench_decode.py --model /work/synth/q3-12L.gguf --feed random --settings capped \
        --configs stock-norepack,flashmoe-lru,flashmoe-os,flashmoe-direct --json bench_decode-12L-t1-random.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

MEMCG_ROOT = Path("/sys/fs/cgroup/memory")
CLK_TCK = os.sysconf("SC_CLK_TCK")
EVENT = "BENCH_EVENT "
PROMPT_TEXT = ("The quick brown fox jumps over the lazy dog. Mixture-of-experts language models route every token "
               "through a few of many feed-forward experts, so most of their weights are idle at any moment, and "
               "a runtime can keep those weights on disk until a token asks for them.")
STOCK_CONFIGS = ("stock", "stock-norepack")
FLASHMOE_CONFIGS = ("flashmoe-lru", "flashmoe-os", "flashmoe-direct")
ALL_CONFIGS = STOCK_CONFIGS + FLASHMOE_CONFIGS
DEFAULT_CONFIGS = ("stock", "stock-norepack", "flashmoe-lru", "flashmoe-os")
GiB = 1 << 30
MB = 1e6


# ---------------------------------------------------------------------------------------------------------------
# model facts


@dataclass(frozen=True)
class ModelInfo:
    path: str
    file_bytes: int
    arch: str
    layers: int                 # layers with routed experts
    n_expert: int
    n_expert_used: int
    expert_bytes: int           # all routed-expert bytes
    resident_bytes: int         # every other tensor
    bytes_per_expert_all_proj: int   # one expert of one layer, gate + up + down (or gate_up + down)
    expert_types: list[str]


def model_info(path: Path) -> ModelInfo:
    import gguf

    from flashmoe_gguf.runtime import expert_tensors
    reader = gguf.GGUFReader(path)
    experts = expert_tensors(path)
    names = {e.name for e in experts}
    arch = _kv_str(reader, "general.architecture")
    used = int(reader.fields[f"{arch}.expert_used_count"].parts[-1][0])
    layers = sorted({e.layer for e in experts})
    per_layer = [sum(e.stride for e in experts if e.layer == layer) for layer in layers]
    resident = sum(int(t.n_bytes) for t in reader.tensors if t.name not in names)
    types = sorted({gguf.GGMLQuantizationType(e.gtype).name for e in experts})
    return ModelInfo(str(path), path.stat().st_size, arch, len(layers), experts[0].n_expert, used,
                     sum(e.stride * e.n_expert for e in experts), resident, max(per_layer), types)


def _kv_str(reader: Any, key: str) -> str:
    f = reader.fields[key]
    return bytes(f.parts[f.data[0]]).decode()


# ---------------------------------------------------------------------------------------------------------------
# machine state


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    mem = _meminfo()
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "ram_bytes": mem.get("MemTotal", 0), "kernel": platform.release(), "python": sys.version.split()[0],
            "llama_cpp_python": _version("llama-cpp-python"), "flashmoe_gguf": _version("flashmoe-gguf"),
            "git_head": _git_head()}


def block_device_of(path: Path) -> dict[str, Any]:
    dev = os.stat(path).st_dev
    sysdir = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve()
    name = sysdir.name                       # a partition's own line in /proc/diskstats
    q = sysdir / "queue" if (sysdir / "queue").exists() else sysdir.parent / "queue"
    out: dict[str, Any] = {"device": name}
    for key in ("read_ahead_kb", "rotational", "scheduler", "nr_requests"):
        try:
            out[key] = (q / key).read_text().strip()
        except OSError:
            pass
    return out


def _meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, v = line.split(":", 1)
        out[k] = int(v.split()[0]) * 1024
    return out


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _git_head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, text=True,
                              capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def cpu_busy_seconds() -> float:
    """Busy CPU-seconds since boot, all cores (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK


def disk_counters(dev: str) -> tuple[int, float]:
    """(bytes read + written, seconds the device was busy) since boot, from /proc/diskstats."""
    for line in Path("/proc/diskstats").read_text().splitlines():
        f = line.split()
        if f[2] == dev:
            return (int(f[5]) + int(f[9])) * 512, int(f[12]) / 1000
    return 0, 0.0


def machine_activity(dev: str, seconds: float = 3.0) -> tuple[float, float]:
    """(cores busy, fraction of time the disk was busy) over `seconds`, all processes (we only sleep)."""
    b0, d0, t0 = cpu_busy_seconds(), disk_counters(dev), time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    return (cpu_busy_seconds() - b0) / dt, (disk_counters(dev)[1] - d0[1]) / dt


def top_processes() -> list[str]:
    try:
        out = subprocess.run(["top", "-bn2", "-d1", "-w180"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    last = out.split("\ntop - ")[-1].splitlines()
    head = next((i for i, line in enumerate(last) if line.lstrip().startswith("PID")), None)
    return [] if head is None else [line.rstrip() for line in last[head:head + 5]]


@dataclass
class Quiet:
    waited_s: float
    busy_cores: float
    disk_util: float
    loadavg: list[float]
    uptime: str
    top: list[str]
    timed_out: bool


def wait_quiet(args: argparse.Namespace) -> Quiet:
    """Wait until other processes are (nearly) idle -- CPU (--max-busy cores) and the model's disk (--max-disk
    utilization), sampled over 3 s; optionally also the 1-minute load average (--max-load), which lags minutes
    behind and counts our own previous worker. Returns what was seen when the run starts."""
    t0 = time.monotonic()
    while True:
        busy, disk = machine_activity(args.disk_device)
        load = list(os.getloadavg())
        elapsed = time.monotonic() - t0
        quiet = busy <= args.max_busy and disk <= args.max_disk and (args.max_load is None or load[0] <= args.max_load)
        if quiet or elapsed > args.wait:
            if not quiet:
                log(f"  warning: still busy ({busy:.2f} cores, disk {100 * disk:.0f} % busy, load {load[0]:.2f}) "
                    f"after {args.wait:.0f} s; measuring anyway")
            return Quiet(elapsed, busy, disk, load, _uptime(), [] if quiet else top_processes(), not quiet)
        log(f"  waiting for a quiet machine: {busy:.2f} cores busy, disk {100 * disk:.0f} % busy, "
            f"load {load[0]:.2f}")
        time.sleep(10)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def warm_file(path: Path) -> float:
    """Read the whole file into the page cache; returns seconds."""
    t0 = time.monotonic()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(8 << 20)
        while f.readinto(buf):
            pass
    return time.monotonic() - t0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# memory cgroup (v1)


def own_memcg() -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, rel = line.split(":", 2)
        if "memory" in controllers.split(","):
            path = MEMCG_ROOT / rel.lstrip("/")
            if not (path / "memory.limit_in_bytes").exists():
                raise RuntimeError(f"memory cgroup {path} not found (is cgroup v1 memory mounted at {MEMCG_ROOT}?)")
            return path
    raise RuntimeError("this process has no cgroup v1 memory controller (see /proc/self/cgroup)")


class MemCgroup:
    """A child memory cgroup of ours, optionally capped; removed on exit (only the one we made)."""

    _count = 0

    def __init__(self, limit: int | None) -> None:
        MemCgroup._count += 1
        self.path = own_memcg() / f"flashmoe-bench-{os.getpid()}-{MemCgroup._count}"
        self.limit = limit

    def __enter__(self) -> "MemCgroup":
        self.path.mkdir()
        try:
            if self.limit is not None:
                (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
        except OSError:
            self.path.rmdir()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:   # tasks still leaving
                time.sleep(0.1)
        log(f"warning: could not remove cgroup {self.path}")

    def join(self) -> None:
        """preexec_fn: move the (forked, not yet exec'd) child into this group."""
        with open(self.path / "cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    def read(self, name: str) -> str:
        return (self.path / name).read_text()

    def figures(self) -> dict[str, Any]:
        stat = dict(line.split() for line in self.read("memory.stat").splitlines())
        oom = dict(line.split() for line in self.read("memory.oom_control").splitlines())
        return {"limit_bytes": self.limit, "max_usage_bytes": int(self.read("memory.max_usage_in_bytes")),
                "failcnt": int(self.read("memory.failcnt")), "oom_kill": int(oom.get("oom_kill", 0)),
                "under_oom": int(oom.get("under_oom", 0)),
                "stat": {k: int(stat[k]) for k in ("rss", "cache", "mapped_file", "pgmajfault", "pgpgin")
                         if k in stat}}


# ---------------------------------------------------------------------------------------------------------------
# worker (runs in the fresh process)


@dataclass
class WorkerSpec:
    config: str
    model: str
    threads: int
    tokens: int
    prompt_tokens: int
    n_ctx: int
    budget: int        # flashmoe ram_budget (bytes)
    warmup: bool       # run the measured sequence once untimed first
    feed: str = "greedy"   # decode input: "greedy" (the argmax) or "random" (seeded random token ids)


def emit(kind: str, **data: Any) -> None:
    print(EVENT + json.dumps({"event": kind, **data}), flush=True)


def proc_io() -> dict[str, int]:
    return {k: int(v) for k, v in (line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())}


def proc_status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile")):
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out


def make_llama(spec: WorkerSpec) -> Any:
    kw: dict[str, Any] = dict(n_ctx=spec.n_ctx, n_threads=spec.threads, n_threads_batch=spec.threads, verbose=False)
    if spec.config.startswith("flashmoe-"):
        from flashmoe_gguf import Llama
        cache, direct = ("lru", True) if spec.config == "flashmoe-direct" else (spec.config.split("-")[1], False)
        return Llama(spec.model, ram_budget=spec.budget, cache=cache, direct_io=direct, **kw)
    import llama_cpp
    if spec.config == "stock-norepack":
        with no_extra_buffer_types():
            return llama_cpp.Llama(spec.model, **kw)
    return llama_cpp.Llama(spec.model, **kw)


@contextlib.contextmanager
def no_extra_buffer_types() -> Iterator[None]:
    """Stock llama.cpp with CPU_REPACK off: use_extra_bufts=False in the model params llama_cpp.Llama builds.

    llama_cpp.Llama calls llama_cpp.llama_cpp.llama_model_default_params (the submodule's name), so that is the
    name to patch; patching the package-level re-export (as tests/reference.py does) leaves repack on.
    """
    import llama_cpp.llama_cpp as lc
    orig = lc.llama_model_default_params

    def patched() -> Any:
        p = orig()
        p.use_extra_bufts = False
        return p
    lc.llama_model_default_params = patched
    try:
        yield
    finally:
        lc.llama_model_default_params = orig


def prompt_ids(llm: Any, n: int) -> list[int]:
    ids = llm.tokenize(PROMPT_TEXT.encode(), add_bos=False)
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def argmax_last(llm: Any) -> int:
    import numpy as np
    logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
    return int(np.argmax(logits))


def fm_stats(llm: Any) -> dict[str, float] | None:
    return llm.flashmoe_stats() if hasattr(llm, "flashmoe_stats") else None


def snapshot(llm: Any) -> dict[str, Any]:
    return {"t": time.perf_counter(), "io": proc_io(), "fm": fm_stats(llm), "status": proc_status()}


def feed_ids(llm: Any, n: int, feed: str) -> list[int] | None:
    """Decode inputs for feed="random": uniform over the vocabulary (seeded); None for greedy."""
    if feed == "greedy":
        return None
    rng = random.Random(1234)
    return [rng.randrange(1000, llm.n_vocab() - 1000) for _ in range(n)]


def run_sequence(llm: Any, prompt: list[int], n: int, timed: bool, feed: list[int] | None) -> dict[str, Any]:
    """Prompt in one eval, then n single-token evals: each feeds the argmax (greedy), or feed[i] if given (the
    argmax is computed either way). Emits per-token events when timed."""
    llm.reset()
    s0 = snapshot(llm)
    llm.eval(prompt)
    tok = argmax_last(llm)
    s1 = snapshot(llm)
    out, step_s = [tok], []
    if timed:
        emit("prompt", seconds=s1["t"] - s0["t"], read_bytes=s1["io"]["read_bytes"] - s0["io"]["read_bytes"])
    for i in range(n):
        t0 = time.perf_counter()
        llm.eval([tok if feed is None else feed[i]])
        tok = argmax_last(llm)
        step_s.append(time.perf_counter() - t0)
        out.append(tok)
        if timed:
            emit("token", i=i, seconds=step_s[-1], read_bytes=proc_io()["read_bytes"])
    s2 = snapshot(llm)
    return {"before": s0, "after_prompt": s1, "after_decode": s2, "step_seconds": step_s, "tokens": out}


def worker_main(spec: WorkerSpec) -> None:
    emit("start", pid=os.getpid(), io=proc_io())
    t0 = time.perf_counter()
    llm = make_llama(spec)
    load_s = time.perf_counter() - t0
    emit("loaded", seconds=load_s, io=proc_io(), status=proc_status(), fm=fm_stats(llm))
    prompt = prompt_ids(llm, spec.prompt_tokens)
    feed = feed_ids(llm, spec.tokens, spec.feed)
    if spec.warmup:
        run_sequence(llm, prompt, spec.tokens, timed=False, feed=feed)
        emit("warm", io=proc_io(), fm=fm_stats(llm))
    seq = run_sequence(llm, prompt, spec.tokens, timed=True, feed=feed)
    emit("done", load_seconds=load_s, prompt=prompt, **seq, final_status=proc_status())
    llm.close()


# ---------------------------------------------------------------------------------------------------------------
# running one configuration


@dataclass
class RunResult:
    name: str                        # e.g. "capped/flashmoe-lru/t1"
    config: str
    setting: str                     # "capped" | "nocap"
    threads: int
    cmd: list[str]
    budget: int | None
    status: str = "ok"               # ok | oom-killed | killed(signal) | timeout | hung | error(rc)
    wall_s: float = 0.0
    child_cpu_s: float = 0.0
    others_cores: float = 0.0        # cores used by other processes during the run, on average
    others_disk_bytes: int = 0       # bytes the model's disk moved during the run beyond the worker's reads
    disk_busy: float = 0.0           # fraction of the run the disk was busy (anyone)
    quiet: dict[str, Any] = field(default_factory=dict)
    cgroup: dict[str, Any] = field(default_factory=dict)
    last_read_bytes: int = 0         # /proc/<pid>/io read_bytes, last value seen (also for killed workers)
    load_s: float | None = None
    ttft_s: float | None = None
    prompt_tok_s: float | None = None
    decode_tok_s: float | None = None
    decode_tokens_done: int = 0
    read_bytes: dict[str, int] = field(default_factory=dict)       # per phase: load, prompt, decode
    read_bytes_per_token: float | None = None
    decode_read_gb_s: float | None = None   # what the disk delivered while decoding, read_bytes / decode time
    disk_hit_rate: float | None = None      # 1 - read_bytes per token / expert bytes a token needs
    flashmoe: dict[str, Any] = field(default_factory=dict)
    peak_rss_bytes: int | None = None
    tokens: list[int] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    stderr_tail: str = ""
    last_event: str = ""
    stacks_at_kill: str = ""         # py-spy dump --native of a worker killed as hung or timed out
    attempts: list[dict[str, Any]] = field(default_factory=list)


def worker_cmd(spec: WorkerSpec) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(asdict(spec))]


def run_worker(spec: WorkerSpec, limit: int | None, timeout: float, stall: float,
               dev: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Runs one worker in its own memory cgroup; returns its events and the process figures."""
    cmd = worker_cmd(spec)
    events: list[dict[str, Any]] = []
    stderr: list[str] = []
    proc_fig: dict[str, Any] = {"last_read_bytes": 0}
    with MemCgroup(limit) as cg:
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        me0 = resource.getrusage(resource.RUSAGE_SELF)
        busy0, disk0, t0 = cpu_busy_seconds(), disk_counters(dev), time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=cg.join)
        readers = [threading.Thread(target=_read_events, args=(proc.stdout, events), daemon=True),
                   threading.Thread(target=_read_lines, args=(proc.stderr, stderr), daemon=True)]
        for r in readers:
            r.start()
        try:
            killed_for = _watch(proc, proc_fig, timeout, stall)
        finally:
            if proc.poll() is None:   # interrupted: never leave a worker (or its cgroup) behind
                proc.kill()
                proc.wait()
        for r in readers:
            r.join(timeout=10)
        wall = time.monotonic() - t0
        busy = cpu_busy_seconds() - busy0
        disk1 = disk_counters(dev)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        me1 = resource.getrusage(resource.RUSAGE_SELF)
        child_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        mine = (me1.ru_utime - me0.ru_utime) + (me1.ru_stime - me0.ru_stime)
        proc_fig.update(cgroup=cg.figures(), returncode=proc.returncode, killed_for=killed_for, wall_s=wall,
                        child_cpu_s=child_cpu, others_cores=max(0.0, busy - child_cpu - mine) / wall,
                        disk_busy=(disk1[1] - disk0[1]) / wall,
                        others_disk_bytes=max(0, disk1[0] - disk0[0] - proc_fig["last_read_bytes"]),
                        stderr_tail="".join(stderr)[-2000:], cmd=cmd)
    return events, proc_fig


def _read_events(stream: Any, events: list[dict[str, Any]]) -> None:
    for line in stream:
        if line.startswith(EVENT):
            events.append(json.loads(line[len(EVENT):]))


def _read_lines(stream: Any, out: list[str]) -> None:
    for line in stream:
        out.append(line)


def _watch(proc: subprocess.Popen, fig: dict[str, Any], timeout: float, stall: float) -> str:
    """Poll the worker until it exits. Kills it after `timeout` s ("timeout"), or when it has used no CPU and
    read nothing for `stall` s ("hung": e.g. waiting for an expert read that will never complete); "" if it
    exited by itself. Records its last read_bytes, and its native stacks when it is killed."""
    start = last_progress = time.monotonic()
    last = (-1, -1)
    while proc.poll() is None:
        now = time.monotonic()
        progress = _progress(proc.pid)
        if progress is not None:
            fig["last_read_bytes"] = progress[1]
            if progress != last:
                last, last_progress = progress, now
        why = "timeout" if now - start > timeout else "hung" if now - last_progress > stall else ""
        if why:
            fig["stacks_at_kill"] = native_stacks(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return why
        time.sleep(0.25)
    return ""


def _progress(pid: int) -> tuple[int, int] | None:
    """(CPU ticks of all threads, read_bytes) of a process, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        io = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    m = re.search(r"^read_bytes: (\d+)", io, re.M)
    return int(fields[11]) + int(fields[12]), int(m.group(1)) if m else 0


def native_stacks(pid: int) -> str:
    """Where a hung worker is (py-spy dump --native), if py-spy is installed."""
    try:
        out = subprocess.run(["py-spy", "dump", "--native", "--pid", str(pid)], capture_output=True, text=True,
                             timeout=60)
        return out.stdout + out.stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"py-spy failed: {exc}"


def summarize(name: str, setting: str, spec: WorkerSpec, events: list[dict[str, Any]], fig: dict[str, Any],
              info: ModelInfo) -> RunResult:
    r = RunResult(name, spec.config, setting, spec.threads, fig["cmd"],
                  spec.budget if spec.config.startswith("flashmoe") else None,
                  wall_s=fig["wall_s"], child_cpu_s=fig["child_cpu_s"], others_cores=fig["others_cores"],
                  others_disk_bytes=fig["others_disk_bytes"], disk_busy=fig["disk_busy"],
                  cgroup=fig["cgroup"], last_read_bytes=fig["last_read_bytes"], stderr_tail=fig["stderr_tail"])
    r.status = _status(fig)
    r.stacks_at_kill = fig.get("stacks_at_kill", "")
    r.last_event = events[-1]["event"] + (f" {events[-1].get('i')}" if events and "i" in events[-1] else "") \
        if events else ""
    by = {e["event"]: e for e in events}
    steps = [e["seconds"] for e in events if e["event"] == "token"]
    r.decode_tokens_done = len(steps)
    if "loaded" in by:
        r.load_s = by["loaded"]["seconds"]
        r.read_bytes["load"] = by["loaded"]["io"]["read_bytes"] - by["start"]["io"]["read_bytes"]
    if "prompt" in by:
        r.ttft_s = by["prompt"]["seconds"]
        r.prompt_tok_s = spec.prompt_tokens / by["prompt"]["seconds"]
    if steps and (r.status != "ok" or "done" not in by):
        r.decode_tok_s = len(steps) / sum(steps)     # partial (worker died or timed out): tokens done so far
        r.step_seconds = steps
    if "done" in by:
        _fill_done(r, by["done"], spec, info)
    return r


def _status(fig: dict[str, Any]) -> str:
    rc = fig["returncode"]
    if fig["killed_for"]:
        return fig["killed_for"]
    if rc == 0:
        return "ok"
    if fig["cgroup"]["oom_kill"] > 0 or rc == -signal.SIGKILL:
        return "oom-killed" if fig["cgroup"]["oom_kill"] > 0 else "killed(SIGKILL)"
    return f"killed({signal.Signals(-rc).name})" if rc < 0 else f"error(rc={rc})"


def _fill_done(r: RunResult, d: dict[str, Any], spec: WorkerSpec, info: ModelInfo) -> None:
    b, p, e = d["before"], d["after_prompt"], d["after_decode"]
    r.step_seconds = d["step_seconds"]
    r.tokens = d["tokens"]
    n = len(r.step_seconds)
    r.decode_tok_s = n / sum(r.step_seconds) if n else None
    r.read_bytes["prompt"] = p["io"]["read_bytes"] - b["io"]["read_bytes"]
    r.read_bytes["decode"] = e["io"]["read_bytes"] - p["io"]["read_bytes"]
    r.read_bytes["total"] = e["io"]["read_bytes"]
    if n:
        r.read_bytes_per_token = r.read_bytes["decode"] / n
        r.decode_read_gb_s = r.read_bytes["decode"] / sum(r.step_seconds) / 1e9
        r.disk_hit_rate = 1.0 - r.read_bytes_per_token / expert_bytes_per_token(info)
    r.peak_rss_bytes = d["final_status"].get("VmHWM")
    if p["fm"] is not None:
        r.flashmoe = {"prompt": _fm_delta(b["fm"], p["fm"], 1), "decode": _fm_delta(p["fm"], e["fm"], n),
                      "cache_peak_bytes": e["fm"]["cache_peak_bytes"], "load_bytes_read": e["fm"]["load_bytes_read"]}
        # flashmoe_stats()' cache_hit_rate also counts the partner prefetch lookups (an up/down expert that is
        # prefetched on a miss is then acquired as a hit), so it reads high; this one is by bytes
        r.flashmoe["decode"]["byte_hit_rate"] = 1.0 - r.flashmoe["decode"]["expert_bytes_read_per_token"] / \
            expert_bytes_per_token(info) if n else 0.0


def _fm_delta(a: dict[str, float], b: dict[str, float], per: int) -> dict[str, float]:
    keys = ("expert_bytes_read", "reads", "cache_hits", "cache_misses", "mul_mat_id_calls", "io_seconds",
            "io_wait_seconds", "expert_compute_seconds")
    d = {k: b[k] - a[k] for k in keys}
    acc = d["cache_hits"] + d["cache_misses"]
    d["cache_hit_rate"] = d["cache_hits"] / acc if acc else 0.0
    d["expert_bytes_read_per_token"] = d["expert_bytes_read"] / per if per else 0.0
    return d


def expert_bytes_per_token(info: ModelInfo) -> int:
    return info.layers * info.n_expert_used * info.bytes_per_expert_all_proj


def _disturbed(r: RunResult, args: argparse.Namespace) -> bool:
    return r.others_cores > args.max_busy or r.others_disk_bytes > args.max_others_disk


def run_config(name: str, setting: str, spec: WorkerSpec, limit: int | None, cold: bool, args: argparse.Namespace,
               info: ModelInfo) -> RunResult:
    """One configuration. Rerun while other processes disturbed it (up to --retries) or its worker hung (up to
    --hang-retries); keeps the least disturbed attempt that did not hang."""
    attempts: list[RunResult] = []
    disturbed = hung = 0
    while True:
        quiet = wait_quiet(args)
        if cold:
            drop_caches()
        log(f"[{name}] attempt {len(attempts) + 1}: load {quiet.loadavg[0]:.2f}, {quiet.busy_cores:.2f} cores busy")
        events, fig = run_worker(spec, limit, args.timeout, args.stall, args.disk_device)
        r = summarize(name, setting, spec, events, fig, info)
        r.quiet = asdict(quiet)
        attempts.append(r)
        log(f"[{name}] {r.status} (last event: {r.last_event}): decode {_fmt(r.decode_tok_s, '.3f')} tok/s, "
            f"load {_fmt(r.load_s, '.1f')} s, peak {r.cgroup['max_usage_bytes'] / MB:.0f} MB, "
            f"others used {r.others_cores:.2f} cores")
        if r.status == "hung" and hung < args.hang_retries:
            hung += 1
            log(f"[{name}] worker hung (no CPU, no reads for {args.stall:.0f} s): rerunning")
            continue
        if r.status == "ok" and _disturbed(r, args) and disturbed < args.retries:
            disturbed += 1
            log(f"[{name}] disturbed ({r.others_cores:.2f} cores, {r.others_disk_bytes / MB:.0f} MB of disk "
                "traffic by others): repeating")
            continue
        break
    done = [a for a in attempts if a.status != "hung"] or attempts
    best = min(done, key=lambda a: (_disturbed(a, args), a.others_cores))
    best.attempts = [{"status": a.status, "last_event": a.last_event, "others_cores": a.others_cores,
                      "others_disk_bytes": a.others_disk_bytes,
                      "decode_tok_s": a.decode_tok_s, "loadavg": a.quiet["loadavg"],
                      "stacks_at_kill": a.stacks_at_kill} for a in attempts]
    return best


# ---------------------------------------------------------------------------------------------------------------
# disk bound


def disk_bandwidth(info: ModelInfo, n_reads: int, threads: int, seed: int) -> dict[str, Any]:
    """Cold random preads of whole expert slices of the real expert tensors, `threads` at a time."""
    from flashmoe_gguf.runtime import expert_tensors
    tensors = expert_tensors(info.path)
    rng = random.Random(seed)
    picks = rng.sample([(t.offset + e * t.stride, t.stride) for t in tensors for e in range(t.n_expert)], n_reads)
    drop_caches()
    fd = os.open(info.path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            total = sum(pool.map(lambda p: _pread_all(fd, p[0], p[1]), picks))
        secs = time.perf_counter() - t0
    finally:
        os.close(fd)
    return {"threads": threads, "reads": n_reads, "bytes": total, "seconds": secs, "gb_s": total / secs / 1e9,
            "read_size": sorted({p[1] for p in picks})}


def _pread_all(fd: int, off: int, n: int) -> int:
    got = 0
    while got < n:
        b = os.pread(fd, min(n - got, 4 << 20), off + got)
        if not b:
            raise OSError(f"short read at {off + got}")
        got += len(b)
    return got


def disk_bound(bw_gb_s: float, info: ModelInfo, hit_rate: float) -> float:
    need = expert_bytes_per_token(info) * (1.0 - hit_rate)
    return float("inf") if need <= 0 else bw_gb_s * 1e9 / need


# ---------------------------------------------------------------------------------------------------------------
# the benchmark


def plan(args: argparse.Namespace, info: ModelInfo, cap: int, budget: int) -> Iterator[tuple[str, str, WorkerSpec,
                                                                                               int | None, bool]]:
    """(name, setting, spec, cgroup limit, cold) for every run, capped runs first."""
    everything = info.expert_bytes + 64 * info.bytes_per_expert_all_proj
    for setting in ("capped", "nocap"):
        if setting not in args.settings:
            continue
        for threads in args.threads:
            for config in args.configs:
                spec = WorkerSpec(config, info.path, threads, args.tokens, args.prompt_tokens, args.n_ctx,
                                  budget if setting == "capped" else everything, warmup=setting == "nocap",
                                  feed=args.feed)
                yield (f"{setting}/{config}/t{threads}", setting, spec, cap if setting == "capped" else None,
                       setting == "capped")


def summary(results: list[RunResult], disk: dict[str, Any], info: ModelInfo) -> dict[str, Any]:
    by = {r.name: r for r in results}
    out: dict[str, Any] = {}
    for t in sorted({r.threads for r in results}):
        s: dict[str, Any] = {}
        cap = {c: by.get(f"capped/{c}/t{t}") for c in ALL_CONFIGS}
        warm = {c: by.get(f"nocap/{c}/t{t}") for c in ALL_CONFIGS}
        s["capped_decode_tok_s"] = {c: (r.decode_tok_s if r and r.status == "ok" else None) for c, r in cap.items()}
        s["capped_status"] = {c: r.status for c, r in cap.items() if r}
        s["nocap_decode_tok_s"] = {c: (r.decode_tok_s if r and r.status == "ok" else None) for c, r in warm.items()}
        s["capped_ratio"] = _ratios(s["capped_decode_tok_s"])
        s["nocap_ratio"] = _ratios(s["nocap_decode_tok_s"])
        lru = cap.get("flashmoe-lru")
        hit = lru.flashmoe["decode"]["byte_hit_rate"] if lru and lru.flashmoe else 0.0
        if disk:
            bw = disk["gb_s"]
            s["disk_bound_tok_s"] = {"hit_0": disk_bound(bw, info, 0.0), "hit_lru": disk_bound(bw, info, hit),
                                     "lru_hit_rate": hit, "gb_s": bw,
                                     "hit_0_range": [disk_bound(disk["min_gb_s"], info, 0.0),
                                                     disk_bound(disk["max_gb_s"], info, 0.0)]}
            s["fraction_of_disk_bound"] = {}
            for c in FLASHMOE_CONFIGS:
                r = cap.get(c)
                if r and r.decode_tok_s and r.status == "ok":
                    h = max(0.0, r.disk_hit_rate or 0.0) if c == "flashmoe-os" else \
                        r.flashmoe["decode"]["byte_hit_rate"]
                    s["fraction_of_disk_bound"][c] = {
                        "at_own_hit_rate": r.decode_tok_s / disk_bound(bw, info, h), "hit_rate_used": h,
                        "at_own_hit_rate_range": [r.decode_tok_s / disk_bound(disk["max_gb_s"], info, h),
                                                  r.decode_tok_s / disk_bound(disk["min_gb_s"], info, h)],
                        "at_0_hit": r.decode_tok_s / disk_bound(bw, info, 0.0)}
        out[f"t{t}"] = s
    return out


def _ratios(tps: dict[str, float | None]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for f in FLASHMOE_CONFIGS:
        for st in STOCK_CONFIGS:
            a, b = tps.get(f), tps.get(st)
            out[f"{f}/{st}"] = a / b if a and b else None
    return out


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(results: list[RunResult], info: ModelInfo) -> str:
    head = (f"{'run':30} {'status':12} {'load s':>7} {'TTFT s':>7} {'pp t/s':>7} {'tg t/s':>8} {'MB rd/tok':>9} "
            f"{'fm MB/tok':>9} {'fm hit':>6} {'st hit':>6} {'dsk hit':>7} {'io_wait':>7} {'exp_cmp':>7} {'peak MB':>8} "
            f"{'failcnt':>8} {'rd GB/s':>7} {'others':>6} {'oth MB':>6} {'hung':>4}")
    lines = [head, "-" * len(head)]
    for r in results:
        dec = r.flashmoe.get("decode", {}) if r.flashmoe else {}
        tg = _fmt(r.decode_tok_s, ".3f") + ("*" if r.status != "ok" and r.decode_tok_s else "")
        n = max(1, len(r.step_seconds))
        lines.append(
            f"{r.name:30} {r.status:12} {_fmt(r.load_s, '.1f'):>7} {_fmt(r.ttft_s, '.2f'):>7} "
            f"{_fmt(r.prompt_tok_s, '.1f'):>7} {tg:>8} "
            f"{_fmt(r.read_bytes_per_token / MB if r.read_bytes_per_token is not None else None, '.1f'):>9} "
            f"{_fmt(dec.get('expert_bytes_read_per_token', 0) / MB if dec else None, '.1f'):>9} "
            f"{_fmt(dec.get('byte_hit_rate') if dec else None, '.3f'):>6} "
            f"{_fmt(dec.get('cache_hit_rate') if dec else None, '.3f'):>6} {_fmt(r.disk_hit_rate, '.3f'):>7} "
            f"{_fmt(dec['io_wait_seconds'] / n * 1e3 if dec else None, '.1f'):>7} "
            f"{_fmt(dec['expert_compute_seconds'] / n * 1e3 if dec else None, '.1f'):>7} "
            f"{r.cgroup['max_usage_bytes'] / MB:8.0f} {r.cgroup['failcnt']:8d} {_fmt(r.decode_read_gb_s, '.3f'):>7} "
            f"{r.others_cores:6.2f} "
            f"{r.others_disk_bytes / MB:6.0f} "
            f"{sum(a['status'] == 'hung' for a in r.attempts):4d}")
    per_tok = f"{expert_bytes_per_token(info) / MB:.1f} MB"
    lines.append(
        "tg t/s: decode tokens/s (* = partial, before the worker died); MB rd/tok: /proc/<pid>/io read_bytes per "
        "decode token; fm MB/tok: flashmoe_stats() expert_bytes_read per decode token; fm hit: 1 - fm MB/tok / "
        f"{per_tok} (the expert bytes a token needs); st hit: flashmoe_stats() cache_hit_rate (counts prefetch "
        f"lookups too); dsk hit: 1 - MB rd/tok / {per_tok}; io_wait, exp_cmp: ms per decode token; peak MB: "
        "cgroup max usage (RSS + page cache); rd GB/s: decode read_bytes / decode time; others: cores used by "
        "other processes during the run; oth MB: disk traffic beyond the worker's reads during the run; hung: "
        "attempts killed as hung (no CPU, no reads)")
    return "\n".join(lines)


def summary_text(s: dict[str, Any]) -> str:
    lines = []
    for t, v in s.items():
        lines.append(f"[{t}] capped decode tok/s: " + ", ".join(f"{k} {_fmt(x, '.3f')}"
                                                               for k, x in v["capped_decode_tok_s"].items()))
        lines.append(f"[{t}] capped status: " + ", ".join(f"{k} {x}" for k, x in v["capped_status"].items()))
        lines.append(f"[{t}] capped ratio: " + ", ".join(f"{k} {_fmt(x, '.2f')}x"
                                                         for k, x in v["capped_ratio"].items()))
        if "disk_bound_tok_s" in v:
            d = v["disk_bound_tok_s"]
            lines.append(f"[{t}] disk bound ({d['gb_s']:.3f} GB/s): {d['hit_0']:.3f} tok/s at 0 % hits (range "
                         f"{d['hit_0_range'][0]:.3f}-{d['hit_0_range'][1]:.3f}), {d['hit_lru']:.3f} tok/s at "
                         f"flashmoe-lru's {100 * d['lru_hit_rate']:.1f} %")
            for c, f in v["fraction_of_disk_bound"].items():
                lo, hi = f["at_own_hit_rate_range"]
                lines.append(f"[{t}] {c}: {100 * f['at_own_hit_rate']:.0f} % of the bound at its hit rate "
                             f"({100 * f['hit_rate_used']:.1f} %; {100 * lo:.0f}-{100 * hi:.0f} % over the measured "
                             f"bandwidth range), {100 * f['at_0_hit']:.0f} % of the 0 %-hit bound")
        lines.append(f"[{t}] no-cap warm decode tok/s: " + ", ".join(f"{k} {_fmt(x, '.3f')}"
                                                                    for k, x in v["nocap_decode_tok_s"].items()))
        lines.append(f"[{t}] no-cap ratio: " + ", ".join(f"{k} {_fmt(x, '.3f')}x" for k, x in v["nocap_ratio"].items()))
    return "\n".join(lines)


def token_agreement(results: list[RunResult]) -> dict[str, Any]:
    """Greedy tokens of each run against stock-norepack's in the same setting and thread count."""
    by = {r.name: r for r in results}
    out = {}
    for r in results:
        ref = by.get(f"{r.setting}/stock-norepack/t{r.threads}")
        if ref and ref is not r and r.tokens and ref.tokens:
            same = sum(a == b for a, b in zip(r.tokens, ref.tokens))
            first_diff = next((i for i, (a, b) in enumerate(zip(r.tokens, ref.tokens)) if a != b), None)
            out[r.name] = {"equal": r.tokens == ref.tokens, "same_positions": same, "first_difference": first_diff}
    return out


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main_bench(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _terminate)   # so `finally` kills the worker and removes its cgroup
    signal.signal(signal.SIGHUP, _terminate)
    if os.geteuid() != 0:
        log("needs root: drop_caches and memory cgroups")
        return 2
    path = Path(args.model).resolve()
    info = model_info(path)
    cap = args.cap if args.cap else info.expert_bytes // 3
    budget = cap - info.resident_bytes - args.headroom
    log(f"model {path}: {info.layers} expert layers, {info.n_expert} experts, {info.n_expert_used} used, experts "
        f"{info.expert_bytes / MB:.0f} MB, resident {info.resident_bytes / MB:.0f} MB; cap {cap / MB:.0f} MB "
        f"(experts / {info.expert_bytes / cap:.2f}); flashmoe ram_budget {budget / MB:.0f} MB")
    if budget <= 0 and "capped" in args.settings:
        log(f"the cap ({cap / MB:.0f} MB) does not even hold the resident weights ({info.resident_bytes / MB:.0f} MB) "
            f"plus --headroom ({args.headroom / MB:.0f} MB): use a model with more expert layers or --cap")
        if any(c.startswith("flashmoe") for c in args.configs):
            return 2
    args.disk_device = block_device_of(path)["device"]
    report: dict[str, Any] = {
        "command": shlex.join([sys.executable] + sys.argv), "argv": sys.argv, "started": time.strftime("%F %T %z"),
        "machine": machine(), "disk": block_device_of(path), "model": asdict(info),
        "expert_bytes_per_token": expert_bytes_per_token(info), "cap_bytes": cap, "flashmoe_budget_bytes": budget,
        "headroom_bytes": args.headroom, "memcg_parent": str(own_memcg()), "settings": vars(args),
    }
    results: list[RunResult] = []
    disk: dict[str, Any] = {}
    warmed = False
    try:
        rounds: list[dict[str, Any]] = []
        for name, setting, spec, limit, cold in plan(args, info, cap, budget):
            if setting == "capped" and not rounds and args.disk_repeats > 0:
                rounds.append(measure_disk(args, info, "before capped runs", 0))
            if setting == "nocap" and not warmed:
                if rounds and len(rounds) == 1:
                    rounds.append(measure_disk(args, info, "after capped runs", 1000))
                report["warm_file_seconds"] = warm_file(path)
                warmed = True
            disk = combine_disk(rounds)
            results.append(run_config(name, setting, spec, limit, cold, args, info))
            _write(args.json, report, results, disk, info)
        if len(rounds) == 1:
            rounds.append(measure_disk(args, info, "after capped runs", 1000))
        disk = combine_disk(rounds)
    finally:
        _write(args.json, report, results, disk, info)
    print(table(results, info))
    print()
    if disk:
        print(f"disk: {disk['gb_s']:.3f} GB/s cold random {disk['read_size']} B reads, {disk['threads']} threads "
              f"(median; range {disk['min_gb_s']:.3f}-{disk['max_gb_s']:.3f}: "
              + "; ".join(f"{r['label']}: " + ", ".join(f"{x:.3f}" for x in r["repeats"])
                          + f", 1 thread {r['single_thread_gb_s']:.3f}" for r in disk["rounds"]) + ")")
    print(summary_text(summary(results, disk, info)))
    print("greedy tokens vs stock-norepack: " + json.dumps(token_agreement(results)))
    if args.json:
        print(f"wrote {args.json}")
    return 0


def measure_disk(args: argparse.Namespace, info: ModelInfo, label: str, seed: int) -> dict[str, Any]:
    """One round: --disk-repeats cold measurements with --disk-threads, then one with a single thread."""
    reps = []
    for i in range(args.disk_repeats + 1):
        q = wait_quiet(args)
        threads = args.disk_threads if i < args.disk_repeats else 1
        d0 = disk_counters(args.disk_device)[0]
        d = disk_bandwidth(info, args.disk_reads if threads > 1 else min(args.disk_reads, 100), threads, seed + i)
        d.update(loadavg=q.loadavg, busy_before=q.busy_cores, disk_util_before=q.disk_util,
                 others_disk_bytes=max(0, disk_counters(args.disk_device)[0] - d0 - d["bytes"]))
        reps.append(d)
        log(f"[disk, {label}] {d['gb_s']:.3f} GB/s ({threads} threads, {d['reads']} reads, load "
            f"{q.loadavg[0]:.2f}, others moved {d['others_disk_bytes'] / MB:.0f} MB meanwhile)")
    par = reps[:-1]
    return {"label": label, "repeats": [r["gb_s"] for r in par], "single_thread_gb_s": reps[-1]["gb_s"],
            "runs": reps}


def combine_disk(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The bandwidth for the bound: the median of every multi-threaded measurement of every round."""
    if not rounds:
        return {}
    all_gb_s = [x for r in rounds for x in r["repeats"]]
    first = rounds[0]["runs"][0]
    return {"gb_s": statistics.median(all_gb_s), "min_gb_s": min(all_gb_s), "max_gb_s": max(all_gb_s),
            "threads": first["threads"], "read_size": first["read_size"], "rounds": rounds}


def _write(path: str | None, report: dict[str, Any], results: list[RunResult], disk: dict[str, Any],
           info: ModelInfo) -> None:
    if not path:
        return
    out = dict(report, disk_bandwidth=disk, runs=[asdict(r) for r in results], summary=summary(results, disk, info),
               token_agreement=token_agreement(results), finished=time.strftime("%F %T %z"))
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1, default=str))
    tmp.replace(path)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from flashmoe_gguf.units import parse_size
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="/work/synth/q3-12L.gguf")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--cap", type=parse_size, default=0, help="RAM cap (default: routed-expert bytes / 3)")
    ap.add_argument("--headroom", type=parse_size, default=parse_size("250M"),
                    help="cap - resident weights - this = flashmoe's ram_budget (process, KV, buffers, page cache)")
    ap.add_argument("--tokens", type=int, default=32, help="greedy decode steps")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--feed", choices=("greedy", "random"), default="greedy",
                    help="decode input: greedy (argmax; a random-weight model soon repeats a few tokens, so "
                         "consecutive tokens reuse experts) or random token ids (no such reuse)")
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1],
                    help="n_threads (= n_threads_batch) for every configuration; a list runs each, e.g. 1,2")
    ap.add_argument("--configs", type=lambda s: s.split(","), default=list(DEFAULT_CONFIGS),
                    help=f"comma-separated, from {','.join(ALL_CONFIGS)}")
    ap.add_argument("--settings", type=lambda s: s.split(","), default=["capped", "nocap"])
    ap.add_argument("--disk-reads", type=int, default=200)
    ap.add_argument("--disk-threads", type=int, default=8)
    ap.add_argument("--disk-repeats", type=int, default=3, help="0 skips the disk measurement")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per worker")
    ap.add_argument("--stall", type=float, default=60,
                    help="a worker that uses no CPU and reads nothing for this long is hung: killed and rerun")
    ap.add_argument("--hang-retries", type=int, default=3, help="reruns of a configuration whose worker hung")
    ap.add_argument("--max-busy", type=float, default=0.25, help="cores other processes may use")
    ap.add_argument("--max-disk", type=float, default=0.05, help="disk utilization other processes may cause")
    ap.add_argument("--max-others-disk", type=parse_size, default=parse_size("50M"),
                    help="disk traffic by others during a run that makes it count as disturbed")
    ap.add_argument("--max-load", type=float, default=None,
                    help="also wait for this 1-minute load average (off by default: it lags by minutes and "
                         "counts our own previous worker; it is recorded either way)")
    ap.add_argument("--wait", type=float, default=900, help="longest wait for a quiet machine, s")
    ap.add_argument("--retries", type=int, default=1, help="repeats of a run that others disturbed")
    args = ap.parse_args(argv)
    bad = [c for c in args.configs if c not in ALL_CONFIGS] + [s for s in args.settings if s not in ("capped", "nocap")]
    if bad:
        ap.error(f"unknown configs/settings {bad}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        worker_main(WorkerSpec(**json.loads(args.worker)))
        return 0
    return main_bench(args)


if __name__ == "__main__":
    sys.exit(main())
