"""A cgroup v1 memory child group: create under this process's own memory cgroup, cap, join, read, remove.

The group is removed when the `with` block ends, whatever happened inside (the worker died, was killed, or the
benchmark itself was interrupted); only the group this object created is ever removed.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any

MEMCG_ROOT = Path("/sys/fs/cgroup/memory")


class CgroupUnavailable(RuntimeError):
    """No writable cgroup v1 memory controller for this process."""


def own_memcg(root: Path = MEMCG_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Path:
    """This process's memory cgroup directory (from /proc/self/cgroup, under the v1 memory mount)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError as exc:
        raise CgroupUnavailable(f"cannot read {proc_cgroup}: {exc}") from exc
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and "memory" in parts[1].split(","):
            path = root / parts[2].lstrip("/")
            if not (path / "memory.limit_in_bytes").exists():
                raise CgroupUnavailable(f"memory cgroup {path} not found (is cgroup v1 memory mounted at {root}?)")
            return path
    raise CgroupUnavailable("this process has no cgroup v1 memory controller (see /proc/self/cgroup; cgroup v2 "
                            "is not supported)")


def check_available(root: Path = MEMCG_ROOT) -> str | None:
    """None if a child memory group can be created here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    try:
        parent = own_memcg(root)
    except CgroupUnavailable as exc:
        return str(exc)
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
