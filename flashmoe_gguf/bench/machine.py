"""The machine: its description for the report, and how busy it is (CPU and the model's disk) around a run."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..budget import meminfo  # /proc/meminfo in bytes (re-exported for the bench)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def describe(model_path: str | Path) -> dict[str, Any]:
    """CPU, cores, RAM, disk device, kernel, versions, git head."""
    info = _cpuinfo()
    mem = meminfo()
    return {"nproc": os.cpu_count(), "cpu_model": info.get("model name", platform.processor()),
            "avx2": "avx2" in info.get("flags", "").split(), "avx512f": "avx512f" in info.get("flags", "").split(),
            "ram_bytes": mem.get("MemTotal", 0), "kernel": platform.release(), "os": platform.platform(),
            "python": sys.version.split()[0], "llama_cpp_python": _version("llama-cpp-python"),
            "flashmoe_gguf": _version("flashmoe-gguf"), "matplotlib": _version("matplotlib"),
            "git_head": git_head(), "euid": os.geteuid(), "disk": block_device_of(model_path)}


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                out.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return out


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def git_head() -> str:
    """HEAD of the repository this package is imported from ("" if it is not a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, text=True,
                             capture_output=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def block_device_of(path: str | Path) -> dict[str, Any]:
    """The block device holding `path` (name as in /proc/diskstats), its model and queue settings."""
    dev = os.stat(path).st_dev
    sysdir = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    out: dict[str, Any] = {"device": "", "major_minor": f"{os.major(dev)}:{os.minor(dev)}"}
    if not sysdir.exists():
        return out
    sysdir = sysdir.resolve()
    out["device"] = sysdir.name             # a partition's own line in /proc/diskstats
    whole = sysdir if (sysdir / "queue").exists() else sysdir.parent
    out["whole_device"] = whole.name
    for key in ("read_ahead_kb", "rotational", "scheduler", "nr_requests"):
        try:
            out[key] = (whole / "queue" / key).read_text().strip()
        except OSError:
            pass
    try:
        out["model"] = (whole / "device" / "model").read_text().strip()
    except OSError:
        pass
    try:
        out["size_bytes"] = int((whole / "size").read_text()) * 512
    except (OSError, ValueError):
        pass
    return out


def cpu_busy_seconds() -> float:
    """Busy CPU-seconds since boot, all cores (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK


def disk_counters(dev: str) -> tuple[int, float]:
    """(bytes read + written, seconds the device was busy) since boot, from /proc/diskstats."""
    if dev:
        for line in Path("/proc/diskstats").read_text().splitlines():
            f = line.split()
            if len(f) > 12 and f[2] == dev:
                return (int(f[5]) + int(f[9])) * 512, int(f[12]) / 1000
    return 0, 0.0


def activity(dev: str, seconds: float = 3.0) -> tuple[float, float]:
    """(cores busy, fraction of time the disk was busy) over `seconds`, all processes (we only sleep)."""
    b0, d0, t0 = cpu_busy_seconds(), disk_counters(dev), time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    return (cpu_busy_seconds() - b0) / dt, (disk_counters(dev)[1] - d0[1]) / dt


def top_processes(n: int = 4, width: int = 180) -> list[str]:
    """top's header line and its `n` busiest processes, from its second sample (the first averages since boot)."""
    try:
        out = subprocess.run(["top", "-bn2", "-d1", f"-w{width}"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    last = out.split("\ntop - ")[-1].splitlines()
    head = next((i for i, line in enumerate(last) if line.lstrip().startswith("PID")), None)
    return [] if head is None else [line.rstrip() for line in last[head:head + 1 + n]]


@dataclass
class Quiet:
    """What the machine looked like when a run started."""
    waited_s: float = 0.0
    busy_cores: float | None = None
    disk_util: float | None = None
    loadavg: list[float] = field(default_factory=list)
    timed_out: bool = False
    top: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class QuietRule:
    wait_s: float = 900.0       # longest wait; 0: do not sample at all
    max_busy: float = 0.25      # cores other processes may use
    max_disk: float = 0.05      # disk utilisation other processes may cause


def wait_quiet(dev: str, rule: QuietRule, log: Callable[[str], None]) -> Quiet:
    """Wait until other processes are (nearly) idle -- CPU and the model's disk, sampled over 3 s."""
    if rule.wait_s <= 0:
        return Quiet(loadavg=list(os.getloadavg()))
    t0 = time.monotonic()
    while True:
        busy, disk = activity(dev)
        elapsed = time.monotonic() - t0
        quiet = busy <= rule.max_busy and disk <= rule.max_disk
        if quiet or elapsed > rule.wait_s:
            if not quiet:
                log(f"  warning: still busy ({busy:.2f} cores, disk {100 * disk:.0f} % busy) after "
                    f"{rule.wait_s:.0f} s; measuring anyway")
            return Quiet(elapsed, busy, disk, list(os.getloadavg()), not quiet, [] if quiet else top_processes())
        log(f"  waiting for a quiet machine: {busy:.2f} cores busy, disk {100 * disk:.0f} % busy")
        time.sleep(min(10.0, max(0.0, rule.wait_s - elapsed)))


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process, bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile")):
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out


def proc_io(pid: int | str = "self") -> dict[str, int]:
    return {k: int(v) for k, v in (line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())}
