"""ram_budget="auto": how much RAM the expert cache may use on this machine, inside this process's cgroup.

    budget = available - non-expert weights - context - headroom,  clamped to [FLOOR, all expert bytes]

available is MemAvailable (/proc/meminfo), or less when this process's memory cgroup (v1 or v2) has a limit:
that limit minus the group's anonymous memory (its page cache is reclaimable, so it counts as available), taken
before the model loads. context is what llama.cpp allocated for the context: KV cache, compute buffers (which
grow with n_ubatch, and without flash attention with n_ctx x n_ubatch) and output buffer, measured when the context
is created (flashmoe_gguf.Llama sizes the cache after that, see heap.py). headroom (max(512 MiB, 10 % of
available) unless given) covers the reads in flight, allocator slack and what Python allocates later.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
FLOOR = 256 * MiB


@dataclass(frozen=True)
class Available:
    bytes: int
    source: str       # "MemAvailable" or the cgroup file that limited it


def meminfo(root: Path = Path("/")) -> dict[str, int]:
    """/proc/meminfo in bytes (values given in kB are converted; counts such as HugePages_Total are not)."""
    out = {}
    for line in (root / "proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def _stat(path: Path) -> dict[str, int]:
    out = {}
    for line in path.read_text().splitlines():
        k, _, v = line.partition(" ")
        if v.strip().isdigit():
            out[k] = int(v)
    return out


def _cgroup_limit(root: Path) -> Available | None:
    """This process's memory cgroup limit minus its anonymous memory, or None when it has no limit."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        rel = rel.lstrip("/")
        if controllers == "":                                     # v2
            d = root / "sys/fs/cgroup" / rel
            try:
                raw = (d / "memory.max").read_text().strip()
                if raw == "max":
                    return None
                anon = _stat(d / "memory.stat").get("anon", 0)
            except OSError:
                continue
            return Available(max(0, int(raw) - anon), str(d / "memory.max"))
        if "memory" in controllers.split(","):                    # v1
            d = root / "sys/fs/cgroup/memory" / rel
            try:
                limit = int((d / "memory.limit_in_bytes").read_text())
                st = _stat(d / "memory.stat")
            except (OSError, ValueError):
                continue
            if limit >= 1 << 60:
                return None
            return Available(max(0, limit - st.get("rss", 0)), str(d / "memory.limit_in_bytes"))
    return None


def available_memory(root: Path = Path("/")) -> Available:
    mem = meminfo(root)
    avail = Available(mem.get("MemAvailable", mem.get("MemFree", 0)), "MemAvailable")
    cg = _cgroup_limit(root)
    return cg if cg is not None and cg.bytes < avail.bytes else avail


def default_headroom(avail: Available) -> int:
    return max(512 * MiB, avail.bytes // 10)


def room(non_expert_bytes: int, avail: Available, context_bytes: int = 0, headroom: int | None = None) -> int:
    """What is left for the expert cache before the clamp (may be negative)."""
    return avail.bytes - non_expert_bytes - context_bytes - (default_headroom(avail) if headroom is None else headroom)


def auto_budget(non_expert_bytes: int, expert_bytes: int, avail: Available | None = None, context_bytes: int = 0,
                headroom: int | None = None) -> int:
    a = avail if avail is not None else available_memory()
    budget = room(non_expert_bytes, a, context_bytes, headroom)
    return int(min(max(budget, FLOOR), max(expert_bytes, FLOOR)))
