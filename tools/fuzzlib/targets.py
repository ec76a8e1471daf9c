"""The fuzz targets: every parser that reads offsets or sizes from a file, each with its seeds, its mutator and
the exception type that is its documented, clean error.

A case is a dict of file name -> bytes, written into a fresh directory before the target runs. Two special
entries: `__sizes__.json` ({name: size}) extends a file with zeros to that size (sparse: a checkpoint's data block
need not be written for its header to be fuzzed), and `__seedtail__.json` ({name: [seed, offset]}) appends a seed
file's bytes from that offset (the tensor data of a real model whose header was mutated)."""

from __future__ import annotations

import json
import random
import shutil
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from . import mutate as M  # noqa: E402
from .gguf_struct import GGUF, parse  # noqa: E402

Case = dict[str, bytes]


@dataclass
class Target:
    name: str
    description: str
    setup: Callable[[Path], dict[str, Any]]              # seeds and state, built once (before the worker forks)
    generate: Callable[[random.Random, dict[str, Any]], Case]
    run: Callable[[Path, dict[str, Any]], None]          # on the case's directory; raises `clean` at worst
    clean: Callable[[], tuple[type[BaseException], ...]]
    timeout: float = 10.0                                # seconds per input
    memory: int = 4 << 30                                # RLIMIT_AS of the worker
    expensive: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# -- seeds -------------------------------------------------------------------------------------------------------

def tiny_moe_gguf(path: Path) -> Path:
    """A small, valid MoE GGUF (qwen3moe keys, one layer, 4 experts; F32, F16 and Q8_0 tensors)."""
    import gguf

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, "qwen3moe")
    w.add_block_count(1)
    w.add_embedding_length(32)
    w.add_expert_count(4)
    w.add_expert_used_count(2)
    w.add_head_count(2)
    w.add_token_list([f"t{i}" for i in range(8)])
    w.add_tensor("token_embd.weight", rng.standard_normal((8, 32)).astype(np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(32, np.float32))
    w.add_tensor("blk.0.ffn_gate_inp.weight", rng.standard_normal((4, 32)).astype(np.float16))
    for kind in ("gate", "up"):
        w.add_tensor(f"blk.0.ffn_{kind}_exps.weight", rng.standard_normal((4, 16, 32)).astype(np.float32))
    down = rng.standard_normal((4 * 32, 32)).astype(np.float32)
    q = gguf.quants.quantize(down, gguf.GGMLQuantizationType.Q8_0).reshape(4, 32, -1)
    w.add_tensor("blk.0.ffn_down_exps.weight", q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gguf_seeds(work: Path) -> dict[str, Any]:
    from flashmoe_gguf.repack import repack
    from split_gguf import split_gguf

    work.mkdir(parents=True, exist_ok=True)
    plain = tiny_moe_gguf(work / "plain.gguf")
    streaming = work / "streaming.gguf"
    if not streaming.exists():
        repack(plain, streaming, align=64)
    shards = split_gguf(plain, work / "sp.gguf", 3)
    return {"single": [parse(plain.read_bytes()), parse(streaming.read_bytes())],
            "split": [parse(p.read_bytes()) for p in shards]}


def single_case(rng: random.Random, ctx: dict[str, Any]) -> Case:
    return {"m.gguf": M.mutate_gguf(rng, rng.choice(ctx["single"]))}


SPLIT_NAMES = [f"m-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]


def split_case(rng: random.Random, ctx: dict[str, Any]) -> Case:
    from .gguf_struct import serialize
    shards: list[GGUF] = ctx["split"]
    which = rng.randrange(3)
    case = {n: (M.mutate_gguf(rng, g) if i == which else serialize(g)) for i, (n, g) in enumerate(zip(SPLIT_NAMES, shards))}
    if rng.random() < 0.05:
        del case[SPLIT_NAMES[rng.randrange(1, 3)]]
    return case


def _gguf_errors() -> tuple[type[BaseException], ...]:
    from flashmoe_gguf.gguf_index import GGUFIndexError
    return (GGUFIndexError,)


def run_index(d: Path, ctx: dict[str, Any]) -> None:
    from flashmoe_gguf.gguf_index import read_index, read_model
    read_index(d / "m.gguf")
    read_model(d / "m.gguf")


def run_split(d: Path, ctx: dict[str, Any]) -> None:
    from flashmoe_gguf.experts import expert_tensors
    from flashmoe_gguf.gguf_index import read_model
    m = read_model(d / SPLIT_NAMES[0])
    for t in m.tensors:   # each tensor lies inside its own shard
        assert 0 <= t.offset and t.offset + t.nbytes <= m.files[t.shard].size, t
    try:
        expert_tensors(m)
    except ValueError:
        pass


def run_inspect(d: Path, ctx: dict[str, Any]) -> None:
    from flashmoe_gguf.inspection import inspect_gguf
    inspect_gguf(d / "m.gguf").render(verbose=True)


def _inspect_errors() -> tuple[type[BaseException], ...]:
    from flashmoe_gguf.inspection import InspectError
    return (InspectError,)


def repack_case(rng: random.Random, ctx: dict[str, Any]) -> Case:
    return split_case(rng, ctx) if rng.random() < 0.25 else single_case(rng, ctx)


def run_repack(d: Path, ctx: dict[str, Any]) -> None:
    from flashmoe_gguf.gguf_index import read_model
    from flashmoe_gguf.repack import RepackError, repack
    src = d / ("m.gguf" if (d / "m.gguf").exists() else SPLIT_NAMES[0])
    out = d / "out"
    out.mkdir()
    try:
        report = repack(src, out / "r.gguf", align=64)
    except RepackError:
        left = list(out.iterdir())
        assert not left, f"repack failed and left {left}"
        raise
    got = read_model(report.outputs[0])   # what repack wrote must read back, with the same tensors
    assert len(got.tensors) == report.tensors, (len(got.tensors), report.tensors)


def _repack_errors() -> tuple[type[BaseException], ...]:
    from flashmoe_gguf.repack import RepackError
    return (RepackError,)


# -- safetensors -------------------------------------------------------------------------------------------------

def _st_bytes(header: dict[str, Any] | bytes, data: bytes, hlen: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else M.dumps(header)
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", (len(text) if hlen is None else hlen) & M.U64) + text + data


def safetensors_seed(work: Path) -> dict[str, Any]:
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    t = {"a.weight": rng.standard_normal((8, 16)).astype(np.float32),
         "b.weight": rng.standard_normal((4, 8, 16)).astype(np.float16),
         "c.scales": np.arange(12, dtype=np.uint8).reshape(3, 4), "d": np.zeros((0, 5), np.int64)}
    raw = save(t)
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen])
    return {"header": header, "data": raw[8 + hlen:], "names": list(t)}


def safetensors_case(rng: random.Random, ctx: dict[str, Any]) -> Case:
    header, data = ctx["header"], ctx["data"]
    r = rng.random()
    case: Case = {}
    if r < 0.6:
        st = _st_bytes(M.mutate_safetensors_header(rng, header, len(data)), data)
    elif r < 0.7:
        st = _st_bytes(header, data, hlen=M.interesting_int(rng, len(M.dumps(header))))
    elif r < 0.8:
        st = M.damage_bytes(rng, _st_bytes(header, data), rng.choice([1, 2, 4]))
    else:
        st = _st_bytes(header, data)
        wm: Any = {n: "model.safetensors" for n in ctx["names"]}
        doc: Any = {"metadata": {}, "weight_map": wm}
        rr = rng.random()
        if rr < 0.5:
            doc["weight_map"] = M.mutate_json_object(rng, wm)
            if rng.random() < 0.5:
                doc["weight_map"][rng.choice(ctx["names"])] = rng.choice(
                    ["../model.safetensors", "/etc/hostname", "", ".", "x.safetensors", "model.safetensors\0"])
        elif rr < 0.8:
            doc = M.mutate_json_object(rng, doc, ["weight_map", "metadata"])
        else:
            doc = M.mutate_value(rng, doc)
        text = M.dumps(doc)
        case["model.safetensors.index.json"] = M.damage_bytes(rng, text) if rng.random() < 0.2 else text
    case["model.safetensors"] = st
    return case


def run_safetensors(d: Path, ctx: dict[str, Any]) -> None:
    from flashmoe_gguf.converter.checkpoint import Checkpoint
    ck = Checkpoint(d)
    for name in list(ck.names()):
        e = ck.entry(name)
        ck.raw(name)
        if e.shape and e.shape[0]:
            ck.raw(name, 0)
            ck.raw(name, None, (0, 1))
    ck.total_bytes()


def _conversion_errors() -> tuple[type[BaseException], ...]:
    from flashmoe_gguf.converter.errors import ConversionError
    return (ConversionError,)


# -- config and tensor headers against the architecture ------------------------------------------------------------

def _tiny_checkpoints() -> list[tuple[str, Path]]:
    from conftest import checkpoint
    from tiny_models import TINY
    return [(name, checkpoint(name)) for name in TINY]


def config_seeds(work: Path) -> dict[str, Any]:
    from flashmoe_gguf.converter.checkpoint import Checkpoint
    from flashmoe_gguf.converter.weights import Weights
    out = []
    for name, d in _tiny_checkpoints():
        cfg = json.loads((d / "config.json").read_text())
        out.append((name, cfg, Checkpoint(d)))
    from flashmoe_gguf.converter import validate as V
    keys = list(V.INT_KEYS) + list(V.REAL_KEYS) + list(V.BOOL_KEYS) + list(V.STR_KEYS) + list(V.DICT_KEYS) + \
        ["layer_types", "quantization_config", "model_type", "text_config", "architectures", "head_dim"]
    return {"seeds": out, "keys": keys, "Weights": Weights}


def config_case(rng: random.Random, ctx: dict[str, Any]) -> Case:
    i = rng.randrange(len(ctx["seeds"]))
    name, cfg, _ = ctx["seeds"][i]
    nested = "text_config" in cfg and isinstance(cfg["text_config"], dict)
    hp = cfg["text_config"] if nested else cfg
    new = M.mutate_json_object(rng, hp, ctx["keys"])
    if rng.random() < 0.3 and isinstance(new.get("rope_parameters"), dict):
        new["rope_parameters"] = M.mutate_json_object(rng, new["rope_parameters"],
                                                      ["factor", "rope_type", "mrope_section", "rope_theta",
                                                       "original_max_position_embeddings", "partial_rotary_factor"])
    full = dict(cfg, text_config=new) if nested else new
    return {"seed.txt": str(i).encode(), "config.json": M.dumps(full)}


def run_config(d: Path, ctx: dict[str, Any]) -> None:
    from flashmoe_gguf.converter.convert import read_config
    from flashmoe_gguf.converter.validate import check_tensors, validated_arch
    _, _, ckpt = ctx["seeds"][int((d / "seed.txt").read_text())]
    config = read_config(d)
    arch_cls = validated_arch(config)
    arch = arch_cls(config, ctx["Weights"](ckpt, config))
    check_tensors(arch, arch.specs())


def checkpoint_seeds(work: Path) -> dict[str, Any]:
    out = []
    for name, d in _tiny_checkpoints():
        raw = (d / "model.safetensors").read_bytes()[: 1 << 20]
        (hlen,) = struct.unpack("<Q", raw[:8])
        out.append((name, json.loads((d / "config.json").read_text()), json.loads(raw[8:8 + hlen]),
                    (d / "model.safetensors").stat().st_size - 8 - hlen, d))
    return {"seeds": out}


def checkpoint_case(rng: random.Random, ctx: dict[str, Any]) -> Case:
    """A tiny real checkpoint whose safetensors header (and sometimes config) is mutated; its data block is left
    sparse (zeros): what is exercised is the header against the architecture, up to the last check before writing."""
    i = rng.randrange(len(ctx["seeds"]))
    name, cfg, header, data_len, d = ctx["seeds"][i]
    h = M.mutate_safetensors_header(rng, header, data_len) if rng.random() < 0.85 else header
    if rng.random() < 0.2:   # a tensor dropped: what the architecture then misses
        h = dict(h)
        h.pop(rng.choice([k for k in header if k != "__metadata__"]), None)
    text = M.dumps(h)
    text += b" " * (-len(text) % 8)
    st = struct.pack("<Q", len(text)) + text
    if rng.random() < 0.3:
        cfg = M.mutate_json_object(rng, cfg)
    case: Case = {"config.json": M.dumps(cfg), "model.safetensors": st,
                  "__sizes__.json": json.dumps({"model.safetensors": len(st) + data_len}).encode()}
    for tok in ("tokenizer.json", "tokenizer_config.json"):
        if (d / tok).exists():
            case[tok] = (d / tok).read_bytes()
    return case


def run_checkpoint(d: Path, ctx: dict[str, Any]) -> None:
    from flashmoe_gguf.converter.checkpoint import Checkpoint
    from flashmoe_gguf.converter.convert import read_config
    from flashmoe_gguf.converter.validate import check_tensors, validated_arch
    from flashmoe_gguf.converter.weights import Weights
    config = read_config(d)
    arch_cls = validated_arch(config)
    ck = Checkpoint(d)
    arch = arch_cls(config, Weights(ck, config))
    check_tensors(arch, arch.specs())


# -- the C store, through flashmoe_gguf.Llama ----------------------------------------------------------------------

def llama_seeds(work: Path) -> dict[str, Any]:
    from conftest import converted
    path = converted("qwen3_moe", "default")
    raw = path.read_bytes()
    g = parse(raw)
    data_offset = len(raw) - len(g.data)
    g.data = b""
    return {"seed": g, "seed_name": "qwen3_moe-default", "data_offset": data_offset}


def seed_file(name: str) -> Path:
    from conftest import converted
    if name == "qwen3_moe-default":
        return converted("qwen3_moe", "default")
    raise KeyError(name)


def llama_case(rng: random.Random, ctx: dict[str, Any]) -> Case:
    g: GGUF = ctx["seed"]
    # the vocabulary arrays are large and llama.cpp's own: mutate the model's structure, not its tokens
    head = M.mutate_gguf(rng, g, damage=0.05)
    return {"m.gguf": head,
            "__seedtail__.json": json.dumps({"m.gguf": [ctx["seed_name"], ctx["data_offset"]]}).encode()}


def run_llama(d: Path, ctx: dict[str, Any]) -> None:
    from flashmoe_gguf import Llama
    llm = Llama(model_path=str(d / "m.gguf"), ram_budget="8M", n_ctx=32, n_threads=1, verbose=False)
    try:
        llm.eval([1, 2, 3])
    finally:
        llm.close()


def _llama_errors() -> tuple[type[BaseException], ...]:
    from flashmoe_gguf.runtime_errors import FlashMoeError
    return (FlashMoeError, ValueError)   # llama_cpp: ValueError("Failed to load model from file ...")


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("gguf_index", "read_index / read_model on one GGUF file", gguf_seeds, single_case, run_index, _gguf_errors),
    Target("inspect", "flashmoe inspect (inspect_gguf + render)", gguf_seeds, single_case, run_inspect, _inspect_errors),
    Target("split", "read_model on a model split into 3 shards", gguf_seeds, split_case, run_split, _gguf_errors),
    Target("repack", "repack (its reader and planner; the output must read back)", gguf_seeds, repack_case,
           run_repack, _repack_errors),
    Target("safetensors", "converter/checkpoint.py: safetensors header, index, pread of every tensor",
           safetensors_seed, safetensors_case, run_safetensors, _conversion_errors),
    Target("config", "config.json against the architecture (validate.py, family modules, specs)", config_seeds,
           config_case, run_config, _conversion_errors),
    Target("checkpoint", "safetensors headers of real tiny checkpoints against their architecture",
           checkpoint_seeds, checkpoint_case, run_checkpoint, _conversion_errors),
    Target("llama", "flashmoe_gguf.Llama load + eval of a mutated real model (the C store's offset checks)",
           llama_seeds, llama_case, run_llama, _llama_errors, timeout=60.0, memory=16 << 30, expensive=True),
]}


def write_case(case: Case, d: Path) -> None:
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for name, data in case.items():
        if not name.startswith("__"):
            (d / name).write_bytes(data)
    if "__sizes__.json" in case:
        for name, size in json.loads(case["__sizes__.json"]).items():
            with open(d / name, "r+b") as f:
                f.truncate(size)
    if "__seedtail__.json" in case:
        for name, (seed, offset) in json.loads(case["__seedtail__.json"]).items():
            with open(seed_file(seed), "rb") as src, open(d / name, "ab") as dst:
                src.seek(offset)
                shutil.copyfileobj(src, dst)
