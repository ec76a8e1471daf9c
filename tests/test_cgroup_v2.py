"""flashmoe bench's cgroup v2 memory groups (bench/cgroup.py MemCgroupV2): on a fake unified hierarchy (plain
files: what is written where, and what is read back), and for real where this machine has cgroup v2 (skipped on
v1 machines: test_bench.py tests v1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flashmoe_gguf.bench import cgroup as cg_mod


def fake_tree(tmp_path: Path, controllers: str = "cpu memory pids") -> tuple[Path, Path, Path]:
    root = tmp_path / "cg"
    own = root / "job" / "task"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers + "\n")
    (own / "cgroup.subtree_control").write_text("\n")
    (own / "cgroup.procs").write_text("")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/job/task\n")
    return root, own, proc


def test_own_v2_group(tmp_path: Path) -> None:
    root, own, proc = fake_tree(tmp_path)
    assert cg_mod.own_v2_group(root, proc) == own
    proc.write_text("4:memory:/x\n")
    with pytest.raises(cg_mod.CgroupUnavailable, match="no cgroup v2 group"):
        cg_mod.own_v2_group(root, proc)
    root2, _, proc2 = fake_tree(tmp_path / "b", controllers="cpu pids")
    with pytest.raises(cg_mod.CgroupUnavailable, match="memory controller is not available"):
        cg_mod.own_v2_group(root2, proc2)
    assert cg_mod.version(tmp_path / "no-v1", root) in (0, 2)


def test_v2_group_caps_and_reads(tmp_path: Path) -> None:
    _, own, _ = fake_tree(tmp_path)
    g = cg_mod.MemCgroupV2(96 << 20, parent=own, name="g")
    g.__enter__()
    assert (own / "cgroup.subtree_control").read_text() == "+memory"
    assert (g.path / "memory.max").read_text() == str(96 << 20)
    assert (g.path / "memory.swap.max").read_text() == "0"
    (g.path / "memory.stat").write_text("anon 1000\nfile 2000\nfile_mapped 300\npgmajfault 4\nshmem 0\n")
    (g.path / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n")
    (g.path / "memory.current").write_text("5000\n")
    fig = g.figures()
    assert fig == {"limit_bytes": 96 << 20, "max_usage_bytes": 5000, "failcnt": 7, "oom_kill": 1, "under_oom": 0,
                   "stat": {"rss": 1000, "cache": 2000, "mapped_file": 300, "pgmajfault": 4}}
    (g.path / "memory.peak").write_text("9000\n")
    assert g.figures()["max_usage_bytes"] == 9000
    for f in g.path.iterdir():      # a real group's files vanish with it; the fake's are removed by hand
        f.unlink()
    g.__exit__(None, None, None)
    assert g.removed and not g.path.exists()


@pytest.mark.skipif(cg_mod.version() != 2 or cg_mod.check_available() is not None,
                    reason=f"no writable cgroup v2 memory controller here (version {cg_mod.version()})")
def test_v2_real_group_oom_kills_over_the_cap() -> None:
    with cg_mod.open_memcg(48 << 20) as g:
        r = subprocess.run([sys.executable, "-c", "b = bytearray(256 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1"],
                           preexec_fn=g.join, capture_output=True, timeout=60)
        assert r.returncode == -9
        assert g.figures()["oom_kill"] >= 1
    assert not g.path.exists()
