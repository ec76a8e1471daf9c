"""Run one configuration: a fresh worker process, in its own memory cgroup when we may make one, watched for
hangs and timeouts, its events turned into a `RunResult`."""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .cgroup import open_memcg
from .machine import Quiet, QuietRule, cpu_busy_seconds, disk_counters, proc_io, wait_quiet
from .model import ModelInfo
from .worker import EVENT, WorkerSpec, is_flashmoe

MB = 1e6


@dataclass(frozen=True)
class RunPlan:
    """One configuration to run."""
    name: str                     # e.g. "cap 1.2G / K=4 / flashmoe-lru"
    config: str
    setting: str                  # "capped" | "nocap"
    cap: int | None               # RAM cap (bytes) for the cgroup; None: no cap
    k: int                        # experts per token in this run
    k_overridden: bool
    spec: WorkerSpec
    cold: bool                    # drop the page cache first
    round: int = 0                # which round of --rounds (0-based)


@dataclass(frozen=True)
class Control:
    """What the benchmark may control on this machine, and how it watches workers."""
    cgroup: bool                  # a memory cgroup per worker (needed for the cap, peak memory incl. cache, OOM)
    drop_caches: bool
    timeout_s: float = 1800.0
    stall_s: float = 120.0
    quiet: QuietRule = QuietRule()
    disk_device: str = ""
    retries: int = 1              # reruns of a run others disturbed
    hang_retries: int = 2
    max_busy: float = 0.25
    max_others_disk: int = 50_000_000
    safety_limit: int | None = None   # memory-group limit of the no-cap runs (90 % of RAM: never the whole machine)


@dataclass
class RunResult:
    name: str
    config: str
    setting: str
    k: int
    k_overridden: bool
    cap_bytes: int | None
    budget_bytes: int | None
    threads: int
    cmd: list[str]
    status: str = "ok"            # ok | oom-killed | killed(SIGNAL) | timeout | hung | error(rc=N) | skipped: why
    cap_enforced: bool = False
    cold: bool = False
    wall_s: float = 0.0
    others_cores: float = 0.0
    others_disk_bytes: int = 0
    quiet: dict[str, Any] = field(default_factory=dict)
    cgroup: dict[str, Any] = field(default_factory=dict)
    load_s: float | None = None
    ttft_s: float | None = None
    prompt_tok_s: float | None = None
    decode_tok_s: float | None = None
    decode_tokens_done: int = 0
    read_bytes: dict[str, int] = field(default_factory=dict)
    read_bytes_per_token: float | None = None     # /proc/<pid>/io read_bytes per decode token (the disk)
    expert_bytes_per_token: float | None = None   # flashmoe_stats() expert bytes read per decode token
    expert_bytes_needed_per_token: int = 0        # layers x K x bytes per expert
    context_bytes: int | None = None              # flashmoe: llama.cpp's context (KV, compute, output buffers)
    hit_rate_bytes: float | None = None           # 1 - bytes read / bytes needed (flashmoe: its reads; stock: disk)
    expert_lookups_per_token: float | None = None
    flashmoe: dict[str, Any] = field(default_factory=dict)
    time_per_token: dict[str, float] = field(default_factory=dict)   # io_wait, expert_compute, rest (s)
    rss: dict[str, int] = field(default_factory=dict)                # baseline, after load, end of decode, hwm
    peak_memory_bytes: int | None = None
    oom: bool = False
    tokens: list[int] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)
    stderr_tail: str = ""
    last_event: str = ""
    phase: str = ""               # where a worker that did not finish stopped: start | load | warmup | prompt | ...
    attempts: list[dict[str, Any]] = field(default_factory=list)
    round: int = 0

    def ok(self) -> bool:
        return self.status == "ok"

    def status_text(self) -> str:
        return status_text(self.status, self.phase)


def status_text(status: str, phase: str | None) -> str:
    """e.g. "killed(SIGSEGV) during load": the status, and for a worker that did not finish, where it stopped"""
    return f"{status} during {phase}" if phase else status


def phase_of(events: list[dict[str, Any]], spec: WorkerSpec) -> str:
    """The phase a worker was in when it stopped, from its last event (worker.main's order: start, loaded, warm
    (with warmup), prompt, token..., done, probe (with probe_pairs), closed): "start" before its first event
    (imports), "load" after start (llama.cpp loading the model), "warmup" or "prompt" after loaded, "prompt" after
    warm, "decode" after prompt or a token, "probe" or "close" after done, "close" after probe, "exit" after
    closed."""
    if not events:
        return "start"
    last = events[-1]["event"]
    if last == "start":
        return "load"
    if last == "loaded":
        return "warmup" if spec.warmup else "prompt"
    if last == "warm":
        return "prompt"
    if last in ("prompt", "token"):
        return "decode"
    if last == "done":
        return "probe" if spec.probe_pairs > 0 else "close"
    if last == "probe":
        return "close"
    return "exit" if last == "closed" else f"after {last}"


def run_worker(spec: WorkerSpec, cap: int | None, control: Control,
               on_event: Callable[[dict[str, Any]], None] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run one worker (in its own memory cgroup if `control.cgroup`); its events and the process figures."""
    cmd = spec.command()
    events: list[dict[str, Any]] = []
    stderr: list[str] = []
    fig: dict[str, Any] = {"last_read_bytes": 0, "cmd": cmd}
    limit = cap if cap is not None else control.safety_limit
    with (open_memcg(limit) if control.cgroup else contextlib.nullcontext()) as cg:
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        me0 = resource.getrusage(resource.RUSAGE_SELF)
        busy0, disk0, t0 = cpu_busy_seconds(), disk_counters(control.disk_device), time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=cg.join if cg is not None else None, cwd="/")
        readers = [threading.Thread(target=_read_events, args=(proc.stdout, events, on_event), daemon=True),
                   threading.Thread(target=_read_lines, args=(proc.stderr, stderr), daemon=True)]
        for r in readers:
            r.start()
        try:
            fig["killed_for"] = _watch(proc, fig, control.timeout_s, control.stall_s)
        finally:
            if proc.poll() is None:     # interrupted: never leave a worker (or its cgroup) behind
                proc.kill()
                proc.wait()
        for r in readers:
            r.join(timeout=10)
        wall = time.monotonic() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        me1 = resource.getrusage(resource.RUSAGE_SELF)
        child_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        child_cpu += (me1.ru_utime - me0.ru_utime) + (me1.ru_stime - me0.ru_stime)    # and ours
        busy = cpu_busy_seconds() - busy0
        disk1 = disk_counters(control.disk_device)
        fig.update(cgroup=cg.figures() if cg is not None else {}, returncode=proc.returncode, wall_s=wall,
                   others_cores=max(0.0, busy - child_cpu) / wall if wall > 0 else 0.0,
                   others_disk_bytes=max(0, disk1[0] - disk0[0] - fig["last_read_bytes"]),
                   stderr_tail="".join(stderr)[-3000:])
    return events, fig


def _read_events(stream: Any, events: list[dict[str, Any]], on_event: Callable[[dict[str, Any]], None] | None) -> None:
    for line in stream:
        if line.startswith(EVENT):
            try:
                e = json.loads(line[len(EVENT):])
            except ValueError:
                continue
            events.append(e)
            if on_event is not None:
                on_event(e)


def _read_lines(stream: Any, out: list[str]) -> None:
    for line in stream:
        out.append(line)
        del out[:-200]


def _watch(proc: subprocess.Popen, fig: dict[str, Any], timeout: float, stall: float) -> str:
    """Poll until the worker exits; kill it after `timeout` s ("timeout"), or when it used no CPU and read nothing
    for `stall` s ("hung"). "" if it exited by itself."""
    start = last_progress = time.monotonic()
    last: tuple[int, int] = (-1, -1)
    while proc.poll() is None:
        now = time.monotonic()
        progress = _progress(proc.pid)
        if progress is not None:
            fig["last_read_bytes"] = progress[1]
            if progress != last:
                last, last_progress = progress, now
        why = "timeout" if now - start > timeout else "hung" if now - last_progress > stall else ""
        if why:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return why
        time.sleep(0.1)
    return ""


def _progress(pid: int) -> tuple[int, int] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        io = proc_io(pid)
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), io.get("read_bytes", 0)


def status_of(fig: dict[str, Any]) -> str:
    rc = fig["returncode"]
    if fig.get("killed_for"):
        return str(fig["killed_for"])
    if rc == 0:
        return "ok"
    if fig.get("cgroup", {}).get("oom_kill", 0) > 0:
        return "oom-killed"
    if rc == -signal.SIGKILL:
        return "killed(SIGKILL)"
    return f"killed({signal.Signals(-rc).name})" if rc < 0 else f"error(rc={rc})"


def summarize(plan: RunPlan, info: ModelInfo, events: list[dict[str, Any]], fig: dict[str, Any],
              control: Control) -> RunResult:
    spec = plan.spec
    need = info.expert_bytes_per_token(plan.k)
    r = RunResult(plan.name, plan.config, plan.setting, plan.k, plan.k_overridden, plan.cap,
                  spec.budget if is_flashmoe(plan.config) else None, spec.threads, fig["cmd"],
                  cap_enforced=control.cgroup and plan.cap is not None, cold=plan.cold and control.drop_caches,
                  wall_s=fig["wall_s"], others_cores=fig["others_cores"], others_disk_bytes=fig["others_disk_bytes"],
                  cgroup=fig["cgroup"], stderr_tail=fig["stderr_tail"], expert_bytes_needed_per_token=need,
                  round=plan.round)
    r.status = status_of(fig)
    r.oom = r.status == "oom-killed" or fig["cgroup"].get("oom_kill", 0) > 0
    if events:
        last = events[-1]
        r.last_event = last["event"] + (f" {last['i']}" if "i" in last else "")
    if not r.ok():
        r.phase = phase_of(events, spec)
    by = {e["event"]: e for e in events}
    steps = [e["seconds"] for e in events if e["event"] == "token"]
    r.decode_tokens_done = len(steps)
    if "start" in by:
        r.rss["baseline"] = by["start"]["status"].get("VmRSS", 0)
    if "loaded" in by:
        r.load_s = by["loaded"]["seconds"]
        fm = by["loaded"].get("fm") or {}
        if fm.get("ram_budget") is not None:    # the budget the worker sized once llama.cpp's context existed
            r.budget_bytes = int(fm["ram_budget"])
        if fm.get("context_bytes") is not None:
            r.context_bytes = int(fm["context_bytes"])
        r.read_bytes["load"] = by["loaded"]["io"]["read_bytes"] - by["start"]["io"]["read_bytes"]
        r.rss["after_load"] = by["loaded"]["status"].get("VmRSS", 0)
    if "prompt" in by:
        r.ttft_s = by["prompt"]["seconds"]
        r.prompt_tok_s = spec.prompt_tokens / by["prompt"]["seconds"] if by["prompt"]["seconds"] > 0 else None
    if steps:       # partial if the worker died: tokens done so far
        r.decode_tok_s = len(steps) / sum(steps)
        r.step_seconds = steps
    if "done" in by:
        _fill_done(r, by["done"], spec, need)
    if "probe" in by:
        r.probe = {k: v for k, v in by["probe"].items() if k != "event"}
    peaks = [fig["cgroup"].get("max_usage_bytes")] if fig["cgroup"] else []
    peaks.append(r.rss.get("hwm"))
    r.peak_memory_bytes = max((p for p in peaks if p), default=None)
    return r


def _fill_done(r: RunResult, d: dict[str, Any], spec: WorkerSpec, need: int) -> None:
    b, p, e = d["before"], d["after_prompt"], d["after_decode"]
    r.step_seconds = d["step_seconds"]
    r.tokens = d["tokens"]
    n = len(r.step_seconds)
    total = sum(r.step_seconds)
    r.decode_tok_s = n / total if n and total > 0 else None
    r.read_bytes["prompt"] = p["io"]["read_bytes"] - b["io"]["read_bytes"]
    r.read_bytes["decode"] = e["io"]["read_bytes"] - p["io"]["read_bytes"]
    r.rss["end_of_decode"] = d["final_status"].get("VmRSS", 0)
    r.rss["hwm"] = d["final_status"].get("VmHWM", 0)
    if n:
        r.read_bytes_per_token = r.read_bytes["decode"] / n
    if p["fm"] is not None and n:
        dec = _fm_delta(p["fm"], e["fm"], n)
        r.flashmoe = {"prompt": _fm_delta(b["fm"], p["fm"], 1), "decode": dec,
                      "cache_peak_bytes": e["fm"].get("cache_peak_bytes"),
                      "load_bytes_read": e["fm"].get("load_bytes_read")}
        r.expert_bytes_per_token = dec["expert_bytes_read"] / n
        # by bytes: flashmoe_stats()' cache_hit_rate also counts partner-prefetch lookups, so it reads high
        r.hit_rate_bytes = 1.0 - r.expert_bytes_per_token / need if need else None
        r.expert_lookups_per_token = (dec["cache_hits"] + dec["cache_misses"]) / n
        io_wait = dec["io_wait_seconds"] / n
        compute = dec["expert_compute_seconds"] / n
        r.time_per_token = {"io_wait": io_wait, "expert_compute": compute,
                            "rest": max(0.0, total / n - io_wait - compute)}
    elif n:
        # stock: what the disk delivered per token against what a token needs (readahead can exceed it)
        r.hit_rate_bytes = 1.0 - r.read_bytes_per_token / need if need and r.read_bytes_per_token is not None \
            else None
        r.time_per_token = {"total": total / n}


def _fm_delta(a: dict[str, float], b: dict[str, float], per: int) -> dict[str, float]:
    keys = ("expert_bytes_read", "reads", "cache_hits", "cache_misses", "mul_mat_id_calls", "io_seconds",
            "io_wait_seconds", "expert_compute_seconds")
    d = {k: b.get(k, 0) - a.get(k, 0) for k in keys}
    acc = d["cache_hits"] + d["cache_misses"]
    d["cache_hit_rate"] = d["cache_hits"] / acc if acc else 0.0
    d["expert_bytes_read_per_token"] = d["expert_bytes_read"] / per if per else 0.0
    return d


def _disturbed(r: RunResult, control: Control) -> bool:
    return r.others_cores > control.max_busy or r.others_disk_bytes > control.max_others_disk


def run_config(plan: RunPlan, info: ModelInfo, control: Control, log: Callable[[str], None],
               on_event: Callable[[dict[str, Any]], None] | None = None) -> RunResult:
    """One configuration; rerun while others disturbed it (up to control.retries) or it hung (hang_retries);
    keeps the least disturbed attempt that did not hang."""
    from .disk import drop_caches
    attempts: list[RunResult] = []
    disturbed = hung = 0
    while True:
        quiet: Quiet = wait_quiet(control.disk_device, control.quiet, log)
        if plan.cold and control.drop_caches:
            drop_caches(plan.spec.model)
        events, fig = run_worker(plan.spec, plan.cap, control, on_event)
        r = summarize(plan, info, events, fig, control)
        r.quiet = asdict(quiet)
        attempts.append(r)
        if r.status == "hung" and hung < control.hang_retries:
            hung += 1
            log(f"  {plan.name}: worker hung (no CPU, no reads for {control.stall_s:.0f} s): rerunning")
            continue
        if r.ok() and _disturbed(r, control) and disturbed < control.retries:
            disturbed += 1
            log(f"  {plan.name}: disturbed ({r.others_cores:.2f} cores, {r.others_disk_bytes / MB:.0f} MB of disk "
                "traffic by others): repeating")
            continue
        break
    done = [a for a in attempts if a.status != "hung"] or attempts
    best = min(done, key=lambda a: (_disturbed(a, control), a.others_cores))
    best.attempts = [{"status": a.status, "phase": a.phase, "last_event": a.last_event,
                      "others_cores": a.others_cores, "others_disk_bytes": a.others_disk_bytes,
                      "decode_tok_s": a.decode_tok_s}
                     for a in attempts]
    return best

