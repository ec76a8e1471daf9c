"""Write a synthetic Hugging Face checkpoint at a real model's per-layer shapes (bf16 safetensors, sharded).

For converter benchmarks: a Qwen3-30B-A3B-shaped subset with a few layers is several GB, enough to measure
throughput and peak memory, without a hub. The releases, their tensor names and shapes are the family facts of
the architecture modules (converter/archs/, `releases` and `release_tensors`). Random weights (matrices
N(0, 0.02), norms at their neutral value); the tokenizer is rebuilt from llama.cpp's vocab.

    python tools/synth_checkpoint.py qwen3-30b-a3b --layers 4 -o /tmp/q3-synth
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from flashmoe_gguf.tiny import bpe_tokenizer, default_cache_dir, vocab_gguf, write_tokenizer

def _releases() -> dict[str, tuple[Any, Any]]:
    from flashmoe_gguf.converter.archs import ARCHITECTURES
    return {r.name: (a, r) for a in ARCHITECTURES for r in a.releases if r.tokenizer_kind == "bpe"}


PRESETS = _releases()


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
    arch, release = PRESETS[preset]
    cfg = arch.release_config(release, layers)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = ShardWriter(out, int(shard_gb * 1e9))
    for name, shape, init in arch.release_tensors(cfg):
        if len(shape) >= 2:
            w.add(name, "BF16", _bf16(rng, shape, 0.02))
        else:
            w.add(name, "BF16", _const_bf16(shape, init.mean))
    w.finish()
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    V = int((cfg.get("text_config") or cfg)["vocab_size"])
    tj, tcfg, _ = bpe_tokenizer(vocab_gguf(default_cache_dir(), release.vocab), V)
    write_tokenizer(out, tj, tcfg)
    return out


def _const_bf16(shape: tuple[int, ...], value: float) -> np.ndarray:
    return (np.full(shape, value, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


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
