"""`flashmoe repack`: GGUFs made by llama.cpp's converter and quantizer (and split), or re-quantized files with a
stale flashmoe index, rewritten in the streaming layout. The bytes of every tensor are the input's (gate and up
experts concatenated where fused), the output loads in stock llama-cpp-python and gives the input's logits bit
for bit, and flashmoe on it gives stock's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reference import llama as stock_llama
from test_hub_gguf import hub_like
from test_runtime import BATCH, PROMPT, assert_same_logits, expert_bytes, greedy, logits, streamed

CASES = [("qwen3_moe", "Q4_K_M"), ("qwen3_5_moe", "Q4_K_M"), ("deepseek_v3", "Q6_K"), ("olmoe", "IQ4_XS")]


def tensor_bytes(paths: list[Path]) -> dict[str, bytes]:
    from flashmoe_gguf.gguf_index import read_model
    m = read_model(paths[0])
    out = {}
    for t in m.tensors:
        with open(m.paths[t.shard], "rb") as f:
            f.seek(t.offset)
            out[t.name] = f.read(t.nbytes)
    return out


@pytest.mark.parametrize("arch,ftype", CASES, ids=["-".join(c) for c in CASES])
def test_repack_keeps_every_byte_and_stock_logits(tmp_path: Path, arch: str, ftype: str) -> None:
    from flashmoe_gguf.experts import parse_expert_name
    from flashmoe_gguf.inspection import inspect_gguf
    from flashmoe_gguf.repack import repack
    src = hub_like(arch, ftype)
    out = tmp_path / "r.gguf"
    report = repack(src[0], out, align=4096)
    assert report.outputs == [out]
    fuses = arch in ("qwen3_5_moe", "deepseek_v3")
    assert (report.fused > 0) == fuses
    a, b = tensor_bytes(src), tensor_bytes([out])
    for name, data in b.items():
        parsed = parse_expert_name(name)
        if parsed and parsed[1] == "gate_up":      # expert e: its gate rows, then its up rows
            g, u = a[name.replace("gate_up", "gate")], a[name.replace("gate_up", "up")]
            n = 8
            sg, su = len(g) // n, len(u) // n
            assert data == b"".join(g[e * sg:(e + 1) * sg] + u[e * su:(e + 1) * su] for e in range(n))
        else:
            assert data == a[name], name
    assert set(a) - set(b) == ({n for n in a if "_gate_exps" in n or "_up_exps" in n} if fuses else set())
    info = inspect_gguf(out)
    assert info.streams and info.index_state == "consistent", info.render()
    assert all(e.offset % 4096 == 0 for e in info.experts)     # every tensor starts aligned (experts: when their size allows)
    ref = stock_llama(src[0])
    want = logits(ref, BATCH, batch=True)
    want_greedy = greedy(ref, PROMPT[:6], 32)
    ref.close()
    got_stock = stock_llama(out)
    assert_same_logits(logits(got_stock, BATCH, batch=True), want, "stock on the repacked file")
    assert greedy(got_stock, PROMPT[:6], 32) == want_greedy
    got_stock.close()
    llm = streamed(out, expert_bytes(out) // 8)
    assert_same_logits(logits(llm, BATCH, batch=True), want, "flashmoe on the repacked file")
    llm.close()


def test_repack_split_output(tmp_path: Path) -> None:
    from flashmoe_gguf.repack import repack
    src = hub_like("qwen3_moe", "Q4_K_M")
    report = repack(src[0], tmp_path / "r.gguf", align=4096, split_max_size=1 << 20)
    assert len(report.outputs) > 2 and report.outputs[0].name == f"r-00001-of-{len(report.outputs):05d}.gguf"
    ref = stock_llama(src[0])
    want = logits(ref, BATCH, batch=True)
    ref.close()
    got = stock_llama(report.outputs[0])
    assert_same_logits(logits(got, BATCH, batch=True), want, "stock on the split output")
    got.close()
    llm = streamed(report.outputs[0], "64M")
    assert_same_logits(logits(llm, BATCH, batch=True), want, "flashmoe on the split output")
    llm.close()
    assert tensor_bytes(report.outputs) == tensor_bytes(src)


def test_repack_drops_a_stale_index(tmp_path: Path) -> None:
    """our converted file, split by another tool (its flashmoe.* keys copied, no longer true): repacked, the
    index is consistent again"""
    from flashmoe_gguf.inspection import inspect_gguf
    from flashmoe_gguf.repack import repack
    from test_split import shards
    stale = shards("qwen3_moe", "Q4_K")
    assert inspect_gguf(stale[0]).index_state == "stale"
    out = tmp_path / "r.gguf"
    repack(stale[0], out, align=4096)
    info = inspect_gguf(out)
    assert info.index_state == "consistent" and info.optimal, info.render()


def test_failed_repack_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flashmoe_gguf import repack as rp
    calls = {"n": 0}
    real = rp._copy

    def failing(*a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        return real(*a, **k)
    monkeypatch.setattr(rp, "_copy", failing)
    with pytest.raises(rp.RepackError, match="cannot write .*r.gguf: No space left on device"):
        rp.repack(hub_like("qwen3_moe", "Q4_K_M")[0], tmp_path / "r.gguf", split_max_size=1 << 20)
    assert list(tmp_path.iterdir()) == []


def test_repack_cli_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGUF" + np.zeros(100, np.uint8).tobytes())
    for args in ([str(bad), "-o", str(tmp_path / "o.gguf")],
                 [str(hub_like("qwen3_moe", "Q4_K_M")[0]), "-o", str(tmp_path / "o.gguf"), "--align", "3000"]):
        r = subprocess.run([sys.executable, "-m", "flashmoe_gguf.cli", "repack", *args, "-q"], capture_output=True,
                           text=True, timeout=120, cwd=tmp_path)
        assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "o.gguf").exists()
