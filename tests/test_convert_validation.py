"""The converter validates config.json and the checkpoint's tensor headers against the architecture before it
writes anything (issue 15, items 4 and 5): a malformed or inconsistent checkpoint is a `ConversionError` subclass
that names the key or tensor and its value, raised before any output file exists, never a traceback, a hang, a
MemoryError or a GGUF that llama.cpp cannot load."""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import checkpoint

from flashmoe_gguf.converter import convert
from flashmoe_gguf.converter.errors import CheckpointError, ConfigError, ConversionError

Mutate = Callable[[Path], None]


def copy_ckpt(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(checkpoint(name), dst)
    return dst


def set_config(**changes: Any) -> Mutate:
    """config.json (its text_config where it nests one) with keys set (value None: key removed)."""
    def f(src: Path) -> None:
        cfg = json.loads((src / "config.json").read_text())
        hp = cfg.get("text_config") or cfg
        for k, v in changes.items():
            if v is None:
                hp.pop(k, None)
            else:
                hp[k] = v
        (src / "config.json").write_text(json.dumps(cfg))
    return f


def read_header(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + hlen]), raw[8 + hlen:]


def write_header(path: Path, header_text: bytes, data: bytes) -> None:
    header_text += b" " * (-len(header_text) % 8)
    path.write_bytes(struct.pack("<Q", len(header_text)) + header_text + data)


def edit_header(edit: Callable[[dict[str, Any]], None]) -> Mutate:
    """model.safetensors with its JSON header edited (the data block unchanged)."""
    def f(src: Path) -> None:
        header, data = read_header(src / "model.safetensors")
        edit(header)
        write_header(src / "model.safetensors", json.dumps(header).encode(), data)
    return f


def set_entry(tensor: str, **fields: Any) -> Mutate:
    return edit_header(lambda h: h[tensor].update(fields))


def drop_tensors(*suffixes: str) -> Mutate:
    """model.safetensors without the tensors whose name ends with one of `suffixes` (their bytes left in place)."""
    def edit(h: dict[str, Any]) -> None:
        gone = [k for k in h if k != "__metadata__" and k.endswith(suffixes)]
        assert gone, suffixes
        for k in gone:
            del h[k]
    return edit_header(edit)


def raw_header(text: bytes) -> Mutate:
    def f(src: Path) -> None:
        _, data = read_header(src / "model.safetensors")
        write_header(src / "model.safetensors", text, data)
    return f


def write_index(weight_map: Any) -> Mutate:
    def f(src: Path) -> None:
        (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return f


def index_of_all(shard: Any, extra: dict[str, Any] | None = None) -> Mutate:
    def f(src: Path) -> None:
        header, _ = read_header(src / "model.safetensors")
        wm = {k: "model.safetensors" for k in header if k != "__metadata__"}
        first = next(iter(wm))
        wm[first] = shard
        write_index({**wm, **(extra or {})})(src)
    return f


def assert_rejected(tmp_path: Path, name: str, mutate: Mutate, error: type[ConversionError],
                    *needles: str) -> str:
    src = copy_ckpt(tmp_path, name)
    mutate(src)
    out = tmp_path / "out" / "o.gguf"
    out.parent.mkdir()
    t0 = time.monotonic()
    with pytest.raises(error) as info:
        convert(src, out)
    assert time.monotonic() - t0 < 60
    msg = str(info.value)
    for n in needles:
        assert n in msg, msg
    assert not list(out.parent.iterdir()), "an output file was created before the error"
    return msg


# -- item 4: malformed config values ------------------------------------------------------------------------------

CONFIG_CASES = [
    ("qwen3_moe", dict(num_hidden_layers=2147483648), "num_hidden_layers is 2147483648"),
    ("qwen3_moe", dict(num_experts=2 ** 31), "num_experts is 2147483648"),
    ("qwen3_moe", dict(head_dim=-1), "head_dim is -1"),
    ("qwen3_moe", dict(hidden_size=[256]), "hidden_size is [256], not an integer"),
    ("qwen3_moe", dict(num_attention_heads="4"), "num_attention_heads is '4', not an integer"),
    ("qwen3_moe", dict(moe_intermediate_size=True), "moe_intermediate_size is True, not an integer"),
    ("qwen3_moe", dict(moe_intermediate_size=256.0), "moe_intermediate_size is 256.0, not an integer"),
    ("qwen3_moe", dict(norm_topk_prob="false"), "norm_topk_prob is 'false', not true or false"),
    ("qwen3_moe", dict(rope_theta={"a": 1}), "rope_theta is {'a': 1}, not a finite number"),
    ("qwen3_moe", dict(max_position_embeddings=2 ** 40), "max_position_embeddings is 1099511627776"),
    ("qwen3_moe", dict(rope_parameters=[1, 2]), "rope_parameters is [1, 2], not an object"),
    ("qwen3_moe", dict(quantization_config="fp8"), "quantization_config is 'fp8', not an object"),
    ("qwen3_moe", dict(quantization_config={"quant_method": "fp8", "weight_block_size": [128]}),
     "weight_block_size is [128]"),
    ("qwen3_moe", dict(text_config=[1]), "text_config is [1], not an object"),
    ("deepseek_v2_lite", dict(rope_parameters={"rope_type": "yarn", "factor": "4"}),
     "rope_parameters.factor is '4', not a finite number"),
    ("deepseek_v2_lite", dict(q_lora_rank=-5), "q_lora_rank is -5"),
    ("mixtral", dict(num_local_experts=None), "lacks num_experts / num_local_experts"),
]


@pytest.mark.parametrize("name,changes,needle", CONFIG_CASES, ids=[c[2][:40] for c in CONFIG_CASES])
def test_malformed_config_value(tmp_path: Path, name: str, changes: dict[str, Any], needle: str) -> None:
    assert_rejected(tmp_path, name, set_config(**changes), ConfigError, needle)


# -- item 5: config values llama.cpp cannot run -------------------------------------------------------------------

INCONSISTENT = [
    ("qwen3_moe", dict(num_experts_per_tok=9), "num_experts_per_tok is 9, more than"),
    ("qwen3_moe", dict(num_experts_per_tok=0), "num_experts_per_tok is 0; it must be >= 1"),
    ("mixtral", dict(num_experts_per_tok=9), "more than num_local_experts (8)"),
    ("qwen3_moe", dict(rms_norm_eps=-1), "rms_norm_eps is -1; it must be > 0"),
    ("qwen3_moe", dict(rms_norm_eps=0), "rms_norm_eps is 0; it must be > 0"),
    ("qwen3_moe", dict(rms_norm_eps=math.nan), "rms_norm_eps is nan, not a finite number"),
    ("qwen3_moe", dict(rms_norm_eps=math.inf), "rms_norm_eps is inf, not a finite number"),
    ("qwen3_moe", dict(rms_norm_eps=10 ** 400), "rms_norm_eps is 1000000"),
    ("qwen3_moe", dict(rope_theta=-(10 ** 400)), "rope_theta is -1000000"),
    ("qwen3_moe", dict(num_key_value_heads=3), "num_attention_heads (4) is not a multiple of num_key_value_heads (3)"),
    ("qwen3_moe", dict(hidden_size=0), "hidden_size is 0; it must be >= 1"),
    ("qwen3_moe", dict(moe_intermediate_size=-256), "moe_intermediate_size is -256"),
    ("qwen2_moe", dict(head_dim=32), "num_attention_heads (4) x head_dim (32) = 128"),
    ("olmoe", dict(num_attention_heads=3, num_key_value_heads=3), "hidden_size (256) is not a multiple of num_attention_heads (3)"),
    ("olmoe", dict(num_key_value_heads=2), "olmoe with num_key_value_heads 2"),
    ("mixtral", dict(head_dim=63, num_attention_heads=4), "head size 63 is odd"),
    ("deepseek_v2_lite", dict(first_k_dense_replace=3), "first_k_dense_replace is 3"),
    ("deepseek_v2_lite", dict(kv_lora_rank=None), "lacks kv_lora_rank"),
    ("qwen3_5_moe", dict(layer_types=["linear_attention"] * 4), "without a full-attention layer"),
]


@pytest.mark.parametrize("name,changes,needle", INCONSISTENT, ids=[c[2][:40] for c in INCONSISTENT])
def test_inconsistent_config(tmp_path: Path, name: str, changes: dict[str, Any], needle: str) -> None:
    assert_rejected(tmp_path, name, set_config(**changes), ConfigError, needle)


# -- item 5: tensors llama.cpp needs, with the config's sizes ---------------------------------------------------

MISSING = [
    ("qwen3_moe", (".layers.1.mlp.gate.weight",), "router for layer 1 (blk.1.ffn_gate_inp.weight)"),
    ("qwen3_moe", (".layers.0.self_attn.q_proj.weight",), "query projection for layer 0"),
    ("qwen3_moe", (".layers.1.self_attn.k_proj.weight",), "blk.1.attn_k.weight"),
    ("qwen3_moe", (".layers.0.input_layernorm.weight",), "attention norm for layer 0"),
    ("qwen3_moe", (".layers.1.post_attention_layernorm.weight",), "FFN norm for layer 1"),
    ("qwen3_moe", ("model.norm.weight",), "output_norm.weight"),
    ("qwen3_moe", (".layers.0.self_attn.k_norm.weight",), "blk.0.attn_k_norm.weight"),
    ("qwen3_moe", ("embed_tokens.weight",), "token embedding"),
    ("mixtral", (".layers.1.block_sparse_moe.gate.weight",), "router for layer 1"),
    ("olmoe", ("lm_head.weight",), "output.weight"),
    ("qwen2_moe", (".layers.0.mlp.shared_expert_gate.weight",), "blk.0.ffn_gate_inp_shexp.weight"),
    ("deepseek_v2_lite", (".layers.1.self_attn.kv_a_layernorm.weight",), "blk.1.attn_kv_a_norm.weight"),
    ("deepseek_v2", (".layers.2.mlp.gate.weight",), "router for layer 2"),
    ("qwen3_5_moe", (".layers.0.linear_attn.norm.weight",), "blk.0.ssm_norm.weight"),
    ("qwen3_5_moe", (".layers.3.self_attn.q_norm.weight",), "blk.3.attn_q_norm.weight"),
]


@pytest.mark.parametrize("name,suffixes,needle", MISSING, ids=[f"{c[0]}-{c[1][0]}" for c in MISSING])
def test_missing_tensor(tmp_path: Path, name: str, suffixes: tuple[str, ...], needle: str) -> None:
    msg = assert_rejected(tmp_path, name, drop_tensors(*suffixes), CheckpointError, needle)
    assert "llama.cpp cannot load" in msg or "no" in msg


SHAPES = [
    # k_proj rows are 2 kv heads x 64; with 1 kv head the config implies 64
    ("qwen3_moe", set_config(num_key_value_heads=1), "blk.0.attn_k.weight", "has shape [128, 256]"),
    ("qwen3_moe", set_config(head_dim=32), "blk.0.attn_", "config.json implies [32]"),
    ("qwen3_moe", set_config(vocab_size=5000), "token_embd.weight", "rows, config.json says vocab_size 5000"),
    ("mixtral", set_config(num_attention_heads=8, num_key_value_heads=8), "blk.0.attn_k.weight",
     "config.json implies [256, 256]"),
    ("qwen3_moe", set_entry("model.layers.0.input_layernorm.weight", shape=[128], data_offsets=[0, 512]),
     "blk.0.attn_norm.weight", "has shape [128], config.json implies [256]"),
    ("qwen3_moe", set_entry("model.layers.1.mlp.gate.weight", shape=[4, 256], data_offsets=[0, 4096]),
     "blk.1.ffn_gate_inp.weight", "has shape [4, 256]"),
]


@pytest.mark.parametrize("name,mutate,needle,needle2", SHAPES, ids=[f"{c[0]}-{c[2][:30]}" for c in SHAPES])
def test_shape_inconsistent_with_config(tmp_path: Path, name: str, mutate: Mutate, needle: str,
                                        needle2: str) -> None:
    assert_rejected(tmp_path, name, mutate, CheckpointError, needle, needle2)


# -- item 4: malformed safetensors headers and index ------------------------------------------------------------

EMBED = "model.embed_tokens.weight"
HEADERS = [
    (set_entry(EMBED, dtype={"a": 1}), "has unsupported dtype {'a': 1}"),
    (set_entry(EMBED, dtype="Q4"), "has unsupported dtype 'Q4'"),
    (set_entry(EMBED, shape=[2 ** 40, 4]), "do not match F32[1099511627776, 4]"),
    (set_entry(EMBED, shape=[2 ** 62, 4]), "bad shape [4611686018427387904, 4]"),
    (set_entry(EMBED, shape=[2 ** 62, 0], data_offsets=[0, 0]), "bad shape"),
    (set_entry(EMBED, shape=[2 ** 40, 2 ** 40, 0], data_offsets=[0, 0]), "implausibly large"),
    (set_entry(EMBED, shape=[2 ** 40, 4], data_offsets=[0, 2 ** 44]), "truncated"),
    (set_entry(EMBED, shape=[2 ** 31, 2 ** 31, 4], data_offsets=[0, 0]), "implausibly large"),   # np.prod wrapped to 0
    (set_entry(EMBED, shape="4000x256"), "bad shape '4000x256'"),
    (set_entry(EMBED, shape=[4000.0, 256]), "bad shape [4000.0, 256]"),
    (set_entry(EMBED, shape=[True, 256]), "bad shape [True, 256]"),
    (set_entry(EMBED, shape=[-4000, -256]), "bad shape"),
    (set_entry(EMBED, data_offsets=[5]), "bad data_offsets [5]"),
    (set_entry(EMBED, data_offsets=[-8, 0]), "bad data_offsets [-8, 0]"),
    (set_entry(EMBED, data_offsets={"0": 1}), "bad data_offsets"),
    (edit_header(lambda h: h.update({EMBED: [1, 2]})), "header entry is [1, 2], not an object"),
    (edit_header(lambda h: h.update({"__metadata__": [1]})), "__metadata__ is [1]"),
    (raw_header(b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
    (raw_header(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "nested too deeply"),
    (raw_header(b"[1, 2]"), "not a JSON object"),
    (raw_header(b'{"x": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}'),
     "corrupt safetensors header"),
    (raw_header(b"\xff\xfe{}"), "corrupt safetensors header"),
    (index_of_all(7), "maps to shard 7, not a file name"),
    (index_of_all(None), "maps to shard None"),
    (index_of_all("../ckpt/model.safetensors"), "not a file name in the model directory"),
    (index_of_all("/etc/passwd"), "not a file name in the model directory"),
    (index_of_all("a\u0000b"), "not a file name in the model directory"),
    (write_index(["model.safetensors"]), "weight_map is ['model.safetensors'], not an object"),
    (write_index(3), "weight_map is 3"),
    (lambda src: (src / "model.safetensors.index.json").write_text("[" * 100_000), "nested too deeply"),
    (lambda src: (src / "model.safetensors.index.json").write_text('{"weight_map": {"a": "b"'),
     "not a valid safetensors index"),
]


@pytest.mark.parametrize("mutate,needle", HEADERS, ids=[c[1][:40] for c in HEADERS])
def test_malformed_checkpoint_header(tmp_path: Path, mutate: Mutate, needle: str) -> None:
    assert_rejected(tmp_path, "qwen3_moe", mutate, CheckpointError, needle)


# -- through the CLI: one line, no traceback, no hang ------------------------------------------------------------

@pytest.mark.parametrize("mutate,needle", [
    (set_config(num_hidden_layers=2147483648), "num_hidden_layers is 2147483648"),
    (set_entry(EMBED, dtype={"a": 1}), "unsupported dtype"),
    (drop_tensors(".layers.0.mlp.gate.weight"), "router for layer 0"),
], ids=["layers", "dtype", "router"])
def test_cli_reports_one_line(tmp_path: Path, mutate: Mutate, needle: str) -> None:
    src = copy_ckpt(tmp_path, "qwen3_moe")
    mutate(src)
    out = tmp_path / "o.gguf"
    res = subprocess.run([sys.executable, "-m", "flashmoe_gguf.cli", "convert", "-q", str(src), "-o", str(out)],
                         capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir())
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr
    assert needle in res.stderr, res.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o.gguf")]


# -- valid checkpoints still convert ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["qwen3_moe", "deepseek_v2_lite", "qwen3_5_moe"])
def test_valid_checkpoint_converts(tmp_path: Path, name: str) -> None:
    out = tmp_path / "o.gguf"
    report = convert(checkpoint(name), out, experts="Q8_0")
    assert out.exists() and report.tensors > 0
    from flashmoe_gguf.gguf_index import read_model
    assert len(read_model(out).tensors) == report.tensors


def test_valid_config_variants_convert(tmp_path: Path) -> None:
    """Values the checks must not refuse: a float rope_theta given as an integer, nulls for optional keys, a
    sharded-style index naming the one shard."""
    src = copy_ckpt(tmp_path, "qwen3_moe")
    set_config(rope_theta=1000000, sliding_window=None, rms_norm_eps=1e-6)(src)
    header, _ = read_header(src / "model.safetensors")
    write_index({k: "model.safetensors" for k in header if k != "__metadata__"})(src)
    out = tmp_path / "o.gguf"
    convert(src, out, experts="Q8_0")
    assert out.exists()
