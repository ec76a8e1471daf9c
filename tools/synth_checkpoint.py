"""Write a synthetic Hugging Face checkpoint at a real model's per-layer shapes (bf16 safetensors, sharded).

For converter benchmarks: a Qwen3-30B-A3B-shaped subset with a few layers is several GB, enough to measure
throughput and peak memory, without a hub. Random weights; the tokenizer is rebuilt from llama.cpp's vocab.

    python tools/synth_checkpoint.py qwen3-30b-a3b --layers 4 -o /tmp/q3-synth
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np

from flashmoe_gguf.tiny import bpe_tokenizer, default_cache_dir, vocab_gguf, write_tokenizer

PRESETS = {
    "qwen3-30b-a3b": {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
        "intermediate_size": 6144, "moe_intermediate_size": 768, "num_attention_heads": 32,
        "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
        "norm_topk_prob": True, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 40960,
        "tie_word_embeddings": False, "hidden_act": "silu", "vocab_size": 151936,
    },
}


def _bf16(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    x = (rng.standard_normal(shape, dtype=np.float32) * scale)
    return (x.view(np.uint32) >> 16).astype(np.uint16)


class ShardWriter:
    """Streams tensors into safetensors shards of about `shard_bytes` each."""

    def __init__(self, out: Path, shard_bytes: int) -> None:
        self.out, self.shard_bytes = out, shard_bytes
        self.pending: list[tuple[str, str, tuple[int, ...], bytes]] = []
        self.size = 0
        self.shards: list[list[str]] = []

    def add(self, name: str, dtype: str, arr: np.ndarray) -> None:
        self.pending.append((name, dtype, arr.shape, arr.tobytes()))
        self.size += arr.nbytes
        if self.size >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        idx = len(self.shards)
        header, off = {}, 0
        for name, dtype, shape, data in self.pending:
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(data)]}
            off += len(data)
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        with open(self.out / f"shard-{idx:05d}.safetensors", "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h)
            for _, _, _, data in self.pending:
                f.write(data)
        self.shards.append([n for n, *_ in self.pending])
        self.pending, self.size = [], 0

    def finish(self) -> None:
        self.flush()
        n = len(self.shards)
        weight_map = {}
        for i, names in enumerate(self.shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.out / f"shard-{i:05d}.safetensors").rename(self.out / final)
            weight_map.update({name: final for name in names})
        (self.out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def synthesize(preset: str, layers: int, out: Path, shard_gb: float = 2.0, seed: int = 0) -> Path:
    cfg = dict(PRESETS[preset], num_hidden_layers=layers)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    H, I, E = cfg["hidden_size"], cfg["moe_intermediate_size"], cfg["num_experts"]
    nh, nkv, hd, V = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["vocab_size"]
    w = ShardWriter(out, int(shard_gb * 1e9))
    w.add("model.embed_tokens.weight", "BF16", _bf16(rng, (V, H), 0.02))
    for layer in range(layers):
        p = f"model.layers.{layer}."
        for n, shp in (("self_attn.q_proj", (nh * hd, H)), ("self_attn.k_proj", (nkv * hd, H)),
                       ("self_attn.v_proj", (nkv * hd, H)), ("self_attn.o_proj", (H, nh * hd)),
                       ("mlp.gate", (E, H))):
            w.add(p + n + ".weight", "BF16", _bf16(rng, shp, 0.02))
        for n, d in (("input_layernorm", H), ("post_attention_layernorm", H), ("self_attn.q_norm", hd),
                     ("self_attn.k_norm", hd)):
            w.add(p + n + ".weight", "BF16", _one_bf16(d))
        for e in range(E):
            w.add(p + f"mlp.experts.{e}.gate_proj.weight", "BF16", _bf16(rng, (I, H), 0.02))
            w.add(p + f"mlp.experts.{e}.up_proj.weight", "BF16", _bf16(rng, (I, H), 0.02))
            w.add(p + f"mlp.experts.{e}.down_proj.weight", "BF16", _bf16(rng, (H, I), 0.02))
    w.add("model.norm.weight", "BF16", _one_bf16(H))
    w.add("lm_head.weight", "BF16", _bf16(rng, (V, H), 0.02))
    w.finish()
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    tj, tcfg, _ = bpe_tokenizer(vocab_gguf(default_cache_dir(), "qwen2"), V)
    write_tokenizer(out, tj, tcfg)
    return out


def _one_bf16(n: int) -> np.ndarray:
    return np.full(n, 0x3F80, dtype=np.uint16)  # 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", choices=sorted(PRESETS))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    synthesize(args.preset, args.layers, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
