"""Split GGUFs (`<name>-00001-of-00003.gguf` ..., llama.cpp's convention): flashmoe_gguf.Llama loads them from the
first shard, streams experts from whichever shard holds them, reads no expert bytes at load, watches every
shard for changes, and says clearly when a shard is missing or foreign. The reference: stock llama-cpp-python
(extra buffer types off) loading the same shards."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import cache_root, spec_key, synth_cached
from split_gguf import split_gguf
from test_runtime import BATCH, PROMPT, assert_same_logits, expert_bytes, gguf_for, greedy, logits, streamed

from reference import llama as stock_llama

ARCH_TYPES = [("qwen3_moe", "Q4_K"), ("qwen3_5_moe", "Q4_K"), ("deepseek_v3", "Q8_0"), ("mixtral", "Q4_0")]


def shards(arch: str, experts: str, n: int = 3) -> list[Path]:
    out = cache_root() / f"split-{arch}-{spec_key(arch)}-{experts}-{n}" / "m.gguf"
    paths = [out.with_name(f"m-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]
    if not all(p.exists() for p in paths):
        out.parent.mkdir(parents=True, exist_ok=True)
        paths = split_gguf(gguf_for(arch, experts), out, n)
    return paths


@pytest.mark.parametrize("arch,experts", ARCH_TYPES, ids=["-".join(c) for c in ARCH_TYPES])
def test_split_model_matches_stock(arch: str, experts: str) -> None:
    paths = shards(arch, experts)
    ref = stock_llama(paths[0])
    want_batch = logits(ref, BATCH, batch=True)
    ref.reset()
    want_dec = logits(ref, PROMPT, batch=False)
    want_greedy = greedy(ref, PROMPT[:6], 32)
    ref.close()
    total = expert_bytes(paths[0])
    assert total == expert_bytes(gguf_for(arch, experts))           # every shard's experts are found
    llm = streamed(paths[0], total // 8)
    st = llm.flashmoe_stats()
    # the loader reads the non-expert tensors, some of them twice around seeks (its FILE* buffers 1 MiB), and
    # never an expert byte (those ranges are not even in what it can read)
    from flashmoe_gguf.experts import expert_tensors
    from flashmoe_gguf.gguf_index import read_model
    model = read_model(paths[0])
    names = {e.name for e in expert_tensors(model)}
    non_expert = sum(t.nbytes for t in model.tensors if t.name not in names)
    assert st["expert_bytes_read"] == 0 and non_expert <= st["load_bytes_read"] <= non_expert + (1 << 20)
    assert_same_logits(logits(llm, BATCH, batch=True), want_batch, "prompt batch")
    llm.reset()
    assert_same_logits(logits(llm, PROMPT, batch=False), want_dec, "decode")
    assert greedy(llm, PROMPT[:6], 32) == want_greedy
    assert llm.flashmoe_stats()["cache_misses"] > 0
    llm.close()


def test_missing_shard_is_a_clear_error(tmp_path: Path) -> None:
    from flashmoe_gguf import FlashMoeError
    for p in shards("qwen3_moe", "Q4_K"):
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "m-00002-of-00003.gguf").unlink()
    with pytest.raises(FlashMoeError, match="split into 3 files, m-00002-of-00003.gguf is missing"):
        streamed(tmp_path / "m-00001-of-00003.gguf", "64M")


def test_foreign_shard_is_a_clear_error(tmp_path: Path) -> None:
    """a shard of another split model under the expected name: wrong split.count"""
    from flashmoe_gguf import FlashMoeError
    for p in shards("qwen3_moe", "Q4_K"):
        shutil.copy(p, tmp_path / p.name)
    two = shards("qwen3_moe", "Q4_K", n=2)
    shutil.copy(two[1], tmp_path / "m-00003-of-00003.gguf")
    with pytest.raises(FlashMoeError, match="expected shard 2 of 3: not the same model's shards"):
        streamed(tmp_path / "m-00001-of-00003.gguf", "64M")


def test_loading_from_a_later_shard_is_a_clear_error() -> None:
    from flashmoe_gguf import FlashMoeError
    with pytest.raises(FlashMoeError, match="load the model from its first shard"):
        streamed(shards("qwen3_moe", "Q4_K")[1], "64M")


def test_first_shard_renamed_is_a_clear_error(tmp_path: Path) -> None:
    from flashmoe_gguf import FlashMoeError
    first = shards("qwen3_moe", "Q4_K")[0]
    shutil.copy(first, tmp_path / "model.gguf")
    with pytest.raises(FlashMoeError, match="its name is not <name>-00001-of-00003.gguf"):
        streamed(tmp_path / "model.gguf", "64M")


def test_a_later_shard_changed_during_decode_raises(tmp_path: Path) -> None:
    from flashmoe_gguf import FlashMoeError
    for p in shards("qwen3_moe", "Q4_K"):
        shutil.copy(p, tmp_path / p.name)
    llm = streamed(tmp_path / "m-00001-of-00003.gguf", 1)
    llm.eval(PROMPT[:4])
    last = tmp_path / "m-00003-of-00003.gguf"
    with open(last, "r+b") as f:
        f.truncate(last.stat().st_size // 2)
    with pytest.raises(FlashMoeError, match="m-00003-of-00003.gguf: the model file changed size"):
        llm.eval(PROMPT[4:8])
    llm.close()


def test_split_tensor_table() -> None:
    """read_model gives every shard's tensors once, each with its shard and its offset in that shard's file"""
    from flashmoe_gguf.gguf_index import read_index, read_model
    paths = shards("qwen3_moe", "Q4_K")
    m = read_model(paths[0])
    assert m.paths == tuple(paths) and m.is_split
    single = read_index(gguf_for("qwen3_moe", "Q4_K"))
    assert sorted(t.name for t in m.tensors) == sorted(t.name for t in single.tensors)
    for t in m.tensors:
        with open(paths[t.shard], "rb") as f:
            f.seek(t.offset)
            a = f.read(64)
        u = next(x for x in single.tensors if x.name == t.name)
        with open(single.path, "rb") as f:
            f.seek(u.offset)
            assert f.read(64) == a, t.name
    assert os.path.getsize(paths[0]) < sum(p.stat().st_size for p in paths)
    np.testing.assert_equal(len({t.shard for t in m.tensors}), 3)


def test_inspect_split_model() -> None:
    """inspect reads every shard from the first; the copied flashmoe.* index no longer describes the files"""
    from flashmoe_gguf.inspection import inspect_gguf
    paths = shards("qwen3_moe", "Q4_K")
    info = inspect_gguf(paths[0])
    assert info.paths == paths and info.streams
    assert info.expert_bytes == expert_bytes(paths[0])
    assert info.index_state == "stale"
    text = info.render()
    assert "split into 3 files: m-00001-of-00003.gguf, m-00002-of-00003.gguf, m-00003-of-00003.gguf" in text
    assert "Q4_K    computed by our kernel (" in text and "streams: yes" in text


def test_without_read_ahead_the_load_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader's chunks read ahead by fm_readahead's thread (default) and read only when llama.cpp asks
    (FLASHMOE_READAHEAD=0): the same logits as stock either way, and read-ahead reads at most 1 MiB more than the
    non-expert tensors here (every chunk of this small model stays in its cache)"""
    paths = shards("qwen3_moe", "Q4_K")
    ref = stock_llama(paths[0])
    want = logits(ref, BATCH, batch=True)
    ref.close()
    read = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("FLASHMOE_READAHEAD", mode)
        llm = streamed(paths[0], "64M")
        try:
            assert_same_logits(logits(llm, BATCH, batch=True), want, f"FLASHMOE_READAHEAD={mode}")
            read[mode] = llm.flashmoe_stats()["load_bytes_read"]
        finally:
            llm.close()
    assert read["0"] <= read["1"] <= read["0"] + (1 << 20), read


@pytest.fixture(scope="module")
def head_last(cache: Path) -> Path:
    """One layer of the full-size Qwen3-30B-A3B shape (random weights): embeddings and output head of 175 MB each
    (Q4_0), 21 of the loader's 8 MiB chunks apiece, the head at the end of the file (after the layer's experts),
    where llama.cpp reads it second, before layer 0"""
    return synth_cached(cache, "synth-qwen3-30b-a3b-L1-dense-Q4_0-v1.gguf", "qwen3-30b-a3b", layers=1, dense="Q4_0",
                        pool=4, seed=0, threads=2, routing_tokens=256)


def test_read_ahead_follows_llamas_read_order(head_last: Path) -> None:
    """The loader reads ahead in the order llama.cpp asks for the tensors (the model's own tensors, then layer by
    layer), not in the file's: the output head at the end of the file no longer makes it drop and read again the
    chunks it read ahead after the embeddings (83 MiB more than the non-expert tensors on this model before, at
    most 2 chunks now), and the load gives stock's logits"""
    from flashmoe_gguf.experts import expert_tensors
    from flashmoe_gguf.gguf_index import read_model
    model = read_model(head_last)
    names = {e.name for e in expert_tensors(model)}
    assert [t.name for t in model.tensors][-2:] == ["output.weight", "output_norm.weight"]
    non_expert = sum(t.nbytes for t in model.tensors if t.name not in names)
    ref = stock_llama(head_last)
    want = logits(ref, BATCH[:8], batch=True)
    ref.close()
    llm = streamed(head_last, "64M")
    try:
        got = llm.flashmoe_stats()["load_bytes_read"]
        assert non_expert <= got <= non_expert + (16 << 20), (non_expert, got)
        assert_same_logits(logits(llm, BATCH[:8], batch=True), want, "head-last model")
    finally:
        llm.close()


def test_read_order_ranks() -> None:
    """llama.cpp creates (and reads) a model's own tensors first, then layer 0, 1, ...: the ranks the loader's read
    ahead sorts by"""
    from flashmoe_gguf.load_plan import read_order
    assert read_order("token_embd.weight") == read_order("output.weight") == read_order("output_norm.weight") == 0
    assert read_order("blk.0.attn_q.weight") == 1
    assert read_order("blk.0.ffn_gate_exps.weight") == 1
    assert read_order("blk.11.ffn_down_exps.weight") == 12
    assert read_order("blk.x.weight") == 0
    # names come from the file: an absurd layer number is still a rank C can take (uint64), after every real layer
    assert read_order("blk." + "9" * 60 + ".attn_q.weight") == read_order("blk.99999999.x") == 1 << 20
    assert read_order("blk.1000.x") == 1001 > read_order("blk.47.x") == 48
