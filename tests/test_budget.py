"""ram_budget="auto" (flashmoe_gguf/budget.py) on fake /proc and /sys trees, and through Llama."""

from __future__ import annotations

from pathlib import Path

import pytest

from flashmoe_gguf.budget import FLOOR, Available, auto_budget, available_memory

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
