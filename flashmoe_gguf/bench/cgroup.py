"""A memory child group: create under this process's own memory cgroup, cap, join, read, remove.

cgroup v1 (the memory controller's own hierarchy, MemCgroup) where the process has one, else cgroup v2 (the unified
hierarchy, MemCgroupV2); `open_memcg` picks. The group is removed when the `with` block ends, whatever happened
inside (the worker died, was killed, or the benchmark itself was interrupted); only the group this object created
is ever removed.

v2 allows controllers in a child group only if its parent has no processes of its own ("no internal processes"):
when enabling the memory controller for our group's children is refused for that reason (EBUSY), the processes of
our group are moved into a leaf child `flashmoe-bench-leaf` first, as systemd does.
"""

from __future__ import annotations

import errno
import os
import secrets
import time
from pathlib import Path
from typing import Any

MEMCG_ROOT = Path("/sys/fs/cgroup/memory")
V2_ROOT = Path("/sys/fs/cgroup")
V2_LEAF = "flashmoe-bench-leaf"


class CgroupUnavailable(RuntimeError):
    """No writable cgroup v1 memory controller for this process."""


def _proc_cgroup_lines(proc_cgroup: Path) -> list[str]:
    try:
        return proc_cgroup.read_text().splitlines()
    except OSError as exc:
        raise CgroupUnavailable(f"cannot read {proc_cgroup}: {exc}") from exc


def own_memcg(root: Path = MEMCG_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Path:
    """This process's memory cgroup directory (from /proc/self/cgroup, under the v1 memory mount)."""
    for line in _proc_cgroup_lines(proc_cgroup):
        parts = line.split(":", 2)
        if len(parts) == 3 and "memory" in parts[1].split(","):
            path = root / parts[2].lstrip("/")
            if not (path / "memory.limit_in_bytes").exists():
                raise CgroupUnavailable(f"memory cgroup {path} not found (is cgroup v1 memory mounted at {root}?)")
            return path
    raise CgroupUnavailable("this process has no cgroup v1 memory controller (see /proc/self/cgroup; cgroup v2 "
                            "is not supported)")


def own_v2_group(root: Path = V2_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Path:
    """This process's cgroup v2 directory (the "0::PATH" line), if the unified hierarchy is mounted at root."""
    for line in _proc_cgroup_lines(proc_cgroup):
        if line.startswith("0::"):
            path = root / line[3:].strip().lstrip("/")
            if not (path / "cgroup.controllers").exists():
                raise CgroupUnavailable(f"cgroup v2 group {path} not found (is cgroup2 mounted at {root}?)")
            if "memory" not in (path / "cgroup.controllers").read_text().split():
                raise CgroupUnavailable(f"cgroup v2: the memory controller is not available in {path}")
            return path
    raise CgroupUnavailable("this process has no cgroup v2 group (see /proc/self/cgroup)")


def version(root: Path = MEMCG_ROOT, v2_root: Path = V2_ROOT) -> int:
    """1 or 2: the memory cgroup this process can use (v1 first); 0: neither"""
    try:
        own_memcg(root)
        return 1
    except CgroupUnavailable:
        pass
    try:
        own_v2_group(v2_root)
        return 2
    except CgroupUnavailable:
        return 0


def check_available(root: Path = MEMCG_ROOT, v2_root: Path = V2_ROOT) -> str | None:
    """None if a child memory group can be created here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    try:
        parent = own_memcg(root)
    except CgroupUnavailable as v1:
        try:
            parent = own_v2_group(v2_root)
        except CgroupUnavailable as v2:
            return f"{v1}; {v2}"
    if not os.access(parent, os.W_OK):
        return f"{parent} is not writable"
    return None


class MemCgroup:
    """A child memory cgroup of ours, optionally capped (RSS + page cache); removed on exit."""

    def __init__(self, limit: int | None, parent: Path | None = None, name: str | None = None) -> None:
        self.parent = parent or own_memcg()
        self.path = self.parent / (name or f"flashmoe-bench-{os.getpid()}-{secrets.token_hex(4)}")
        self.limit = limit
        self.removed = False

    def __enter__(self) -> "MemCgroup":
        self.path.mkdir()
        try:
            if self.limit is not None:
                (self.path / "memory.limit_in_bytes").write_text(str(int(self.limit)))
                try:   # no swap either (absent when swap accounting is off)
                    (self.path / "memory.memsw.limit_in_bytes").write_text(str(int(self.limit)))
                except OSError:
                    pass
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self, attempts: int = 100) -> None:
        """rmdir the group; its tasks may still be exiting, so retry, killing what is left after a while."""
        for i in range(attempts):
            if not self.path.exists():
                self.removed = True
                return
            try:
                self.path.rmdir()
                self.removed = True
                return
            except OSError:
                if i == attempts // 2:
                    for pid in self.pids():
                        try:
                            os.kill(pid, 9)
                        except OSError:
                            pass
                time.sleep(0.05)
        raise RuntimeError(f"could not remove cgroup {self.path}")

    def join_pid(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def join(self) -> None:
        """For subprocess's preexec_fn: move the forked, not yet exec'd child into this group."""
        with open(self.path / "cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def read(self, name: str) -> str:
        return (self.path / name).read_text()

    def figures(self) -> dict[str, Any]:
        """Peak (RSS + page cache), failcnt, OOM kills and a few memory.stat counters."""
        stat = dict(line.split() for line in self.read("memory.stat").splitlines())
        oom = dict(line.split() for line in self.read("memory.oom_control").splitlines())
        return {"limit_bytes": self.limit, "max_usage_bytes": int(self.read("memory.max_usage_in_bytes")),
                "failcnt": int(self.read("memory.failcnt")), "oom_kill": int(oom.get("oom_kill", 0)),
                "under_oom": int(oom.get("under_oom", 0)),
                "stat": {k: int(stat[k]) for k in ("rss", "cache", "mapped_file", "pgmajfault", "pgpgin")
                         if k in stat}}


def _enable_memory(group: Path) -> None:
    """cgroup v2: the memory controller for group's children (moving group's own processes to a leaf if needed)."""
    ctl = group / "cgroup.subtree_control"
    if "memory" in ctl.read_text().split():
        return
    try:
        ctl.write_text("+memory")
        return
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise CgroupUnavailable(f"cannot enable the memory controller in {ctl}: {exc}") from exc
    leaf = group / V2_LEAF
    leaf.mkdir(exist_ok=True)
    for pid in (group / "cgroup.procs").read_text().split():
        try:
            (leaf / "cgroup.procs").write_text(pid)
        except OSError:          # exited meanwhile, or a kernel thread
            pass
    try:
        ctl.write_text("+memory")
    except OSError as exc:
        raise CgroupUnavailable(f"cannot enable the memory controller in {ctl} (its processes moved to "
                                f"{leaf}): {exc}") from exc


class MemCgroupV2(MemCgroup):
    """The same on cgroup v2: memory.max (RSS + page cache), memory.swap.max 0, memory.peak / events / stat."""

    def __init__(self, limit: int | None, parent: Path | None = None, name: str | None = None) -> None:
        super().__init__(limit, parent or own_v2_group(), name)

    def __enter__(self) -> "MemCgroupV2":
        _enable_memory(self.parent)
        self.path.mkdir()
        try:
            if self.limit is not None:
                (self.path / "memory.max").write_text(str(int(self.limit)))
                try:   # no swap either (absent without swap accounting)
                    (self.path / "memory.swap.max").write_text("0")
                except OSError:
                    pass
        except BaseException:
            self.remove()
            raise
        return self

    def figures(self) -> dict[str, Any]:
        stat = dict(line.split() for line in self.read("memory.stat").splitlines())
        events = dict(line.split() for line in self.read("memory.events").splitlines())
        peak = self.path / "memory.peak"        # kernel 5.19+; else what is charged now
        used = int((peak if peak.exists() else self.path / "memory.current").read_text())
        names = {"anon": "rss", "file": "cache", "file_mapped": "mapped_file", "pgmajfault": "pgmajfault"}
        return {"limit_bytes": self.limit, "max_usage_bytes": used, "failcnt": int(events.get("max", 0)),
                "oom_kill": int(events.get("oom_kill", 0)), "under_oom": 0,
                "stat": {names[k]: int(stat[k]) for k in names if k in stat}}


def open_memcg(limit: int | None) -> MemCgroup:
    """A child memory group of this process's cgroup, v1 where available, else v2 (not yet entered)."""
    return MemCgroup(limit) if version() == 1 else MemCgroupV2(limit)
