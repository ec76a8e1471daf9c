"""`flashmoe pull` against a local stand-in of the hub (tests/fake_hub.py: a real HTTP server on loopback that
huggingface_hub talks to through its endpoint setting); no test needs the network.

The repository is laid out as the hub's GGUF repositories are: single-file quants, shard sets in one folder per
quant, a vision projector, a README. The models in it are llama.cpp's own conversions and quantizations of tiny
checkpoints (test_hub_gguf.hub_like), so what `pull` fetches is checked byte for byte against the source files
and loaded by flashmoe against stock llama-cpp-python."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fake_hub import FakeHub
from test_hub_gguf import hub_like

ARCH = "qwen3_moe"


def make_repo(root: Path) -> dict[str, list[Path]]:
    """A hub-like GGUF repository: the sources of each model (in shard order) by quant label."""
    single = hub_like(ARCH, "Q4_K_M")
    split = hub_like(ARCH, "Q6_K")
    shutil.copy(_unsplit(single), root / "Tiny-MoE-Q4_K_M.gguf")
    (root / "Q6_K").mkdir()
    for i, p in enumerate(split, 1):
        shutil.copy(p, root / "Q6_K" / f"Tiny-MoE-Q6_K-{i:05d}-of-00003.gguf")
    (root / "mmproj-Tiny-MoE-F16.gguf").write_bytes(b"GGUF not a model")
    (root / "README.md").write_text("# Tiny-MoE GGUF\n")
    return {"Q4_K_M": [root / "Tiny-MoE-Q4_K_M.gguf"], "Q6_K": sorted((root / "Q6_K").iterdir())}


def _unsplit(shards: list[Path]) -> Path:
    """The single-file quantization hub_like split (kept in the test cache beside the split)."""
    q = shards[0].parent.parent / (shards[0].parent.name.removesuffix("-split") + ".gguf")
    assert q.is_file(), q
    return q


@pytest.fixture()
def hub(tmp_path: Path):
    root = tmp_path / "repo"
    root.mkdir()
    sources = make_repo(root)
    with FakeHub(root, repo="someone/Tiny-MoE-GGUF") as h:
        h.sources = sources                    # type: ignore[attr-defined]
        yield h


def fetched(hub: FakeHub) -> set[str]:
    return {p.rsplit("/resolve/main/", 1)[1] for m, p, _ in hub.requests if m == "GET" and "/resolve/" in p}


def test_pull_single_file_quant(hub: FakeHub, tmp_path: Path) -> None:
    from flashmoe_gguf.pull import pull
    path = pull("someone/Tiny-MoE-GGUF:q4_k_m", tmp_path / "dl", endpoint=hub.endpoint, progress=False)
    assert path == tmp_path / "dl" / "Tiny-MoE-Q4_K_M.gguf"
    assert path.read_bytes() == hub.sources["Q4_K_M"][0].read_bytes()
    assert fetched(hub) == {"Tiny-MoE-Q4_K_M.gguf"}             # nothing else: not the projector, the README, Q6_K


def test_pull_shard_set_in_a_subfolder_loads_and_matches_stock(hub: FakeHub, tmp_path: Path) -> None:
    from flashmoe_gguf.pull import pull
    from reference import llama as stock_llama
    from test_runtime import PROMPT, expert_bytes, greedy, streamed
    path = pull("someone/Tiny-MoE-GGUF:Q6_K", tmp_path / "dl", endpoint=hub.endpoint, progress=False)
    assert path == tmp_path / "dl" / "Q6_K" / "Tiny-MoE-Q6_K-00001-of-00003.gguf"
    got = sorted(path.parent.glob("*.gguf"))
    assert [p.read_bytes() for p in got] == [p.read_bytes() for p in hub.sources["Q6_K"]]
    assert fetched(hub) == {f"Q6_K/{p.name}" for p in got}
    assert not (tmp_path / "dl" / "Tiny-MoE-Q4_K_M.gguf").exists()
    ref = stock_llama(hub.sources["Q6_K"][0])
    want = greedy(ref, PROMPT[:6], 16)
    ref.close()
    llm = streamed(path, expert_bytes(path) // 8)
    assert greedy(llm, PROMPT[:6], 16) == want
    llm.close()


def test_pull_again_downloads_nothing_and_a_changed_file_again(hub: FakeHub, tmp_path: Path) -> None:
    from flashmoe_gguf.pull import pull
    pull("someone/Tiny-MoE-GGUF:Q4_K_M", tmp_path / "dl", endpoint=hub.endpoint, progress=False)
    hub.requests.clear()
    path = pull("someone/Tiny-MoE-GGUF:Q4_K_M", tmp_path / "dl", endpoint=hub.endpoint, progress=False)
    assert fetched(hub) == set()
    # the hub's file changes (a re-upload of the quant): the next pull fetches it again
    src = hub.sources["Q4_K_M"][0]
    data = bytearray(src.read_bytes())
    data[-1] ^= 0xFF
    src.write_bytes(bytes(data))
    path = pull("someone/Tiny-MoE-GGUF:Q4_K_M", tmp_path / "dl", endpoint=hub.endpoint, progress=False)
    assert fetched(hub) == {"Tiny-MoE-Q4_K_M.gguf"}
    assert path.read_bytes() == bytes(data)


def test_pull_resumes_across_runs(tmp_path: Path) -> None:
    """The connection drops repeatedly until huggingface_hub gives up: the partial file stays, and the next pull
    asks only for the rest (an HTTP Range request) and ends with the hub's bytes."""
    import gguf
    from huggingface_hub import constants

    from flashmoe_gguf.pull import STATE_DIR, PullError, pull
    root = tmp_path / "repo"
    root.mkdir()
    src = root / "Big-Q8_0.gguf"
    chunk = constants.DOWNLOAD_CHUNK_SIZE               # huggingface_hub writes in chunks of this size
    w = gguf.GGUFWriter(str(src), "qwen3moe")
    w.add_tensor("token_embd.weight", np.random.default_rng(0).standard_normal(
        (chunk * 3 // 2) // 4, dtype=np.float32).reshape(-1, 256))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # first response: more than one chunk, then every retry breaks before any progress
    with FakeHub(root, cut={src.name: [chunk + chunk // 4] + [100] * 10}) as hub:
        with pytest.raises(PullError, match="run again to resume"):
            pull("owner/repo", tmp_path / "dl", endpoint=hub.endpoint, progress=False)
        assert not (tmp_path / "dl" / src.name).exists()              # never a partial file under its name
        assert (tmp_path / "dl" / STATE_DIR / (src.name + ".part")).stat().st_size == chunk
        hub.cut.clear()
        hub.requests.clear()
        path = pull("owner/repo", tmp_path / "dl", endpoint=hub.endpoint, progress=False)
        assert hub.downloads(src.name) == [f"bytes={chunk}-"]
        assert path.read_bytes() == src.read_bytes()
        assert not (tmp_path / "dl" / STATE_DIR / (src.name + ".part")).exists()


def test_pull_private_repository_needs_the_token(tmp_path: Path) -> None:
    from flashmoe_gguf.pull import PullError, pull
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(_unsplit(hub_like(ARCH, "Q4_K_M")), root / "M-Q4_K_M.gguf")
    with FakeHub(root, private=True) as hub:
        with pytest.raises(PullError, match="HF_TOKEN"):
            pull("owner/repo", tmp_path / "dl", endpoint=hub.endpoint, progress=False)
        path = pull("owner/repo", tmp_path / "dl", endpoint=hub.endpoint, token="secret", progress=False)
        assert path.read_bytes() == (root / "M-Q4_K_M.gguf").read_bytes()


def test_pull_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    from flashmoe_gguf.pull import PullError, pull
    root = tmp_path / "repo"
    (root / "IQ4_XS").mkdir(parents=True)
    q = _unsplit(hub_like(ARCH, "Q4_K_M"))
    shutil.copy(q, root / "M-Q4_K_M.gguf")
    shutil.copy(q, root / "M-Q5_K_M.gguf")
    (root / "M-Q8_0.gguf").write_bytes(b"<html>not found</html>")    # a broken upload
    for i in (1, 3):                                                  # shard 2 of 3 missing
        (root / "IQ4_XS" / f"M-IQ4_XS-{i:05d}-of-00003.gguf").write_bytes(b"x")
    with FakeHub(root) as hub:
        def err(spec: str) -> str:
            with pytest.raises(PullError) as e:
                pull(spec, tmp_path / "dl", endpoint=hub.endpoint, progress=False)
            return str(e.value)
        assert "choose one with owner/repo:QUANT" in err("owner/repo") and "Q5_K_M" in err("owner/repo")
        assert "no Q3_K_M model (available: IQ4_XS, Q4_K_M, Q5_K_M, Q8_0)" in err("owner/repo:Q3_K_M")
        assert "missing shard 2" in err("owner/repo:IQ4_XS")
        assert "not a usable GGUF" in err("owner/repo:Q8_0")
        assert "not found" in err("owner/other")
        assert "not OWNER/REPO" in err("just-a-name")
        with pytest.raises(PullError, match="not found"):
            pull("owner/repo:Q4_K_M", tmp_path / "dl", revision="v9", endpoint=hub.endpoint, progress=False)
        assert not (tmp_path / "dl" / "M-IQ4_XS-00001-of-00003.gguf").exists()


def test_choosing_among_hub_file_names() -> None:
    """Names as they appear in real GGUF repositories (unsloth, bartowski, ggml-org layouts)."""
    from flashmoe_gguf.pull import PullError, choose, remote_models
    files = ["README.md", ".gitattributes", "mmproj-F16.gguf", "mmproj-BF16.gguf",
             "Qwen3-30B-A3B-Q4_K_M.gguf", "Qwen3-30B-A3B-UD-Q4_K_XL.gguf", "Qwen3-30B-A3B-IQ4_XS.gguf",
             "Qwen3-30B-A3B-Q8_0.gguf", "Qwen3-30B-A3B-MXFP4_MOE.gguf",
             "BF16/Qwen3-30B-A3B-BF16-00002-of-00002.gguf", "BF16/Qwen3-30B-A3B-BF16-00001-of-00002.gguf",
             "UD-Q2_K_XL/Qwen3-30B-A3B-UD-Q2_K_XL-00001-of-00002.gguf",
             "UD-Q2_K_XL/Qwen3-30B-A3B-UD-Q2_K_XL-00002-of-00002.gguf"]
    models = remote_models(files)
    assert sorted(m.quant for m in models) == ["BF16", "IQ4_XS", "MXFP4_MOE", "Q4_K_M", "Q8_0", "UD-Q2_K_XL",
                                              "UD-Q4_K_XL"]
    assert choose(models, "bf16", "r").files == ("BF16/Qwen3-30B-A3B-BF16-00001-of-00002.gguf",
                                                 "BF16/Qwen3-30B-A3B-BF16-00002-of-00002.gguf")
    assert choose(models, "UD-Q2_K_XL", "r").first == "UD-Q2_K_XL/Qwen3-30B-A3B-UD-Q2_K_XL-00001-of-00002.gguf"
    assert choose(models, "Q4_K_M", "r").first == "Qwen3-30B-A3B-Q4_K_M.gguf"
    assert choose(models, "mxfp4_moe", "r").first == "Qwen3-30B-A3B-MXFP4_MOE.gguf"
    with pytest.raises(PullError, match="no Q5_K_M model"):
        choose(models, "Q5_K_M", "r")
    with pytest.raises(PullError, match="7 GGUF models"):
        choose(models, None, "r")
    assert choose(remote_models(["mmproj-F16.gguf", "model.gguf"]), None, "r").first == "model.gguf"


def _cli(args: list[str], endpoint: str, **kw: object) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HUB_DISABLE_PROGRESS_BARS="1")
    return subprocess.run([sys.executable, "-m", "flashmoe_gguf.cli", *args], env=env, capture_output=True,
                          text=True, timeout=600, **kw)  # type: ignore[call-overload]


def test_cli_pull_repack_then_run(hub: FakeHub, tmp_path: Path) -> None:
    """`flashmoe pull REPO:QUANT --repack` prints one path, and `flashmoe run` on it works."""
    r = _cli(["pull", "someone/Tiny-MoE-GGUF:Q6_K", "-o", str(tmp_path / "dl"), "--repack", "-q"], hub.endpoint)
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path == tmp_path / "dl" / "Q6_K" / "Tiny-MoE-Q6_K-streaming.gguf" and path.is_file()
    from flashmoe_gguf.inspection import inspect_gguf
    assert inspect_gguf(path).index_state == "consistent"
    run = subprocess.run([sys.executable, "-m", "flashmoe_gguf.cli", "run", str(path), "-p", "Hello", "-n", "4"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr


def test_cli_pull_errors_are_one_line(hub: FakeHub, tmp_path: Path) -> None:
    for args in (["pull", "someone/Tiny-MoE-GGUF"], ["pull", "someone/Tiny-MoE-GGUF:Q2_K"],
                 ["pull", "someone/missing"], ["pull", "not a repo"]):
        r = _cli([*args, "-o", str(tmp_path / "dl"), "-q"], hub.endpoint)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("flashmoe pull: error: "), (args, r.stderr)
