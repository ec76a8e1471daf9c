"""Structure-aware mutators: each takes a seed (parsed once) and a random generator and returns a mutated input.

Values are drawn from boundary sets (0, 1, -1, powers of two around 2^31, 2^32, 2^62, 2^63, 2^64, off-by-ones,
the seed's own values shifted), types are swapped for other JSON / GGUF types, entries are dropped, duplicated
or renamed to names the readers treat specially, and a fraction of inputs also gets byte-level damage (bit flips,
truncation, inserted bytes) after serialization."""

from __future__ import annotations

import copy
import json
import math
import random
import struct
from typing import Any

from .gguf_struct import ARRAY, FIXED, GGUF, KV, STRING, Tensor, serialize

U64 = 2**64 - 1
INTS = [0, 1, 2, 3, 7, 8, 31, 32, 33, 63, 64, 255, 256, 4095, 4096, 16384, 65535, 65536, 2**20, 2**24,
        2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**48, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 32,
        2**64 - 1, -1, -2, -2**31, -2**63, 10**30, -10**30]


def interesting_int(rng: random.Random, around: int | None = None) -> int:
    r = rng.random()
    if around is not None and r < 0.35:
        return around + rng.choice([-1, 1, -32, 32, around, -around, 1 << rng.randrange(8, 64)])
    if r < 0.85:
        return rng.choice(INTS)
    return rng.getrandbits(rng.choice([8, 16, 32, 64]))


def damage_bytes(rng: random.Random, b: bytes, n: int = 1) -> bytes:
    """Byte-level damage: flip bits, overwrite with boundary bytes, truncate, insert or delete a run."""
    a = bytearray(b)
    for _ in range(n):
        if not a:
            break
        op = rng.randrange(6)
        i = rng.randrange(len(a))
        if op == 0:
            a[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            a[i:i + 8] = struct.pack("<Q", interesting_int(rng) & U64)[: len(a[i:i + 8])]
        elif op == 2:
            del a[i:]
        elif op == 3:
            a[i:i] = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 16)))
        elif op == 4:
            del a[i:i + rng.randrange(1, 64)]
        else:
            a[i] = rng.choice([0, 0xFF, 0x7F, 0x80])
    return bytes(a)


# -- GGUF --------------------------------------------------------------------------------------------------------

SPECIAL_KEYS = ["general.alignment", "split.count", "split.no", "split.tensors.count", "general.architecture",
                "flashmoe.format_version", "flashmoe.expert_count", "flashmoe.expert.offsets",
                "flashmoe.expert.stride", "flashmoe.expert.tensors", "flashmoe.expert.layers",
                "flashmoe.expert.kinds", "flashmoe.expert_bytes", "flashmoe.resident_bytes"]
EXPERT_NAMES = ["blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight", "blk.0.ffn_down_exps.weight",
                "blk.0.ffn_gate_up_exps.weight", "blk.1.ffn_down_exps.weight", "blk.4095.ffn_up_exps.weight"]


def _random_value(rng: random.Random, vtype: int, old: Any = None) -> Any:
    if vtype in (6, 12):
        return rng.choice([0.0, -1.0, 1e-30, 1e30, math.inf, -math.inf, math.nan, 3.5])
    if vtype == 7:
        return rng.choice([True, False])
    if vtype in FIXED:
        return interesting_int(rng, old if isinstance(old, int) and not isinstance(old, bool) else None)
    if vtype == STRING:
        return rng.choice(["", "x" * rng.randrange(1, 300), "\udcff", "qwen3moe", "llama", "gate_up", "down",
                           "blk.0.ffn_gate_exps.weight", str(old)[::-1] if old else "a"])
    etype = rng.choice([4, 10, 8, 0, 9, 5, 99])
    items = [_random_value(rng, etype) for _ in range(rng.randrange(0, 5))] if etype != 9 else []
    return etype, items


def mutate_kv(rng: random.Random, g: GGUF) -> None:
    if not g.kvs:
        g.kvs.append(KV(rng.choice(SPECIAL_KEYS), 4, 1))
        return
    kv = rng.choice(g.kvs)
    op = rng.randrange(9)
    if op == 0:                                   # same type, boundary value
        if kv.vtype == ARRAY and isinstance(kv.value, tuple) and kv.value[1]:
            etype, items = kv.value
            items = list(items)
            j = rng.randrange(len(items))
            items[j] = _random_value(rng, etype, items[j])
            kv.value = (etype, items)
        else:
            kv.value = _random_value(rng, kv.vtype, kv.value)
    elif op == 1:                                 # another type
        kv.vtype = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 255, 2**31])
        kv.value = _random_value(rng, kv.vtype)
    elif op == 2:
        g.kvs.remove(kv)
    elif op == 3:
        g.kvs.insert(rng.randrange(len(g.kvs) + 1), copy.deepcopy(kv))
    elif op == 4:                                 # a key the readers treat specially
        kv.key = rng.choice(SPECIAL_KEYS + [f"{_arch(g)}.expert_count", f"{_arch(g)}.expert_used_count",
                                            f"{_arch(g)}.block_count"])
        if rng.random() < 0.5:
            kv.vtype = rng.choice([4, 5, 10, 8, 9, 6])
            kv.value = _random_value(rng, kv.vtype)
    elif op == 5 and kv.vtype == ARRAY:           # a count that disagrees with the elements
        kv.count = interesting_int(rng, len(kv.value[1]) if isinstance(kv.value, tuple) else 0)
    elif op == 6 and kv.vtype == ARRAY and isinstance(kv.value, tuple):
        kv.value = (rng.choice([0, 4, 8, 9, 10, 12, 13, 99, 2**32 - 1]), kv.value[1])
    elif op == 7:
        kv.key = rng.choice(["", kv.key + "\0", kv.key * 2, "x" * 70000])
    else:
        numeric = [k for k in g.kvs if k.vtype in FIXED and k.vtype not in (6, 7, 12)]
        if numeric:
            k = rng.choice(numeric)
            k.value = interesting_int(rng, k.value)


def _arch(g: GGUF) -> str:
    return next((str(kv.value) for kv in g.kvs if kv.key == "general.architecture"), "qwen3moe")


def mutate_tensor(rng: random.Random, g: GGUF) -> None:
    if not g.tensors:
        g.tensors.append(Tensor(rng.choice(EXPERT_NAMES), [32, 4, 2], 0, 0))
        return
    t = rng.choice(g.tensors)
    op = rng.randrange(8)
    if op == 0:
        j = rng.randrange(len(t.dims)) if t.dims else 0
        if t.dims:
            t.dims[j] = interesting_int(rng, t.dims[j])
    elif op == 1:
        t.dims = [interesting_int(rng) for _ in range(rng.choice([0, 1, 2, 3, 4, 5, 9]))]
    elif op == 2:
        t.gtype = rng.choice([0, 1, 2, 3, 6, 7, 8, 10, 12, 14, 20, 23, 30, 31, 39, 40, 41, 255, 2**31])
    elif op == 3:
        t.offset = rng.choice([0, t.offset + g.alignment, t.offset - g.alignment, t.offset + 1,
                               interesting_int(rng, t.offset), U64 - t.offset, len(g.data), len(g.data) + 32])
    elif op == 4:
        t.name = rng.choice(EXPERT_NAMES + [t.name + "x", "", g.tensors[0].name, "blk.99999999999.ffn_down_exps.weight"])
    elif op == 5:
        g.tensors.remove(t)
    elif op == 6:
        g.tensors.insert(rng.randrange(len(g.tensors) + 1), copy.deepcopy(t))
    else:
        a, b = rng.randrange(len(g.tensors)), rng.randrange(len(g.tensors))
        g.tensors[a].offset, g.tensors[b].offset = g.tensors[b].offset, g.tensors[a].offset


def mutate_gguf(rng: random.Random, seed: GGUF, *, damage: float = 0.15) -> bytes:
    g = copy.deepcopy(seed)
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 5])):
        r = rng.random()
        if r < 0.42:
            mutate_kv(rng, g)
        elif r < 0.84:
            mutate_tensor(rng, g)
        elif r < 0.89:
            g.n_tensors = interesting_int(rng, len(g.tensors))
        elif r < 0.93:
            g.n_kv = interesting_int(rng, len(g.kvs))
        elif r < 0.95:
            g.version = rng.choice([0, 1, 2, 4, 2**32 - 1])
        elif r < 0.98:
            g.data = g.data[: rng.randrange(len(g.data) + 1)]
        else:
            g.pad = False
    b = serialize(g)
    if rng.random() < damage:
        b = damage_bytes(rng, b, rng.choice([1, 2, 4]))
    return b


# -- JSON (safetensors headers, index, config.json) -------------------------------------------------------------

def random_json(rng: random.Random, depth: int = 0) -> Any:
    r = rng.randrange(10 if depth < 3 else 7)
    if r == 0:
        return None
    if r == 1:
        return rng.choice([True, False])
    if r == 2:
        return interesting_int(rng)
    if r == 3:
        return rng.choice([0.5, -0.0, 1e308, -1e-308, math.nan, math.inf, -math.inf, 2.0**70, 256.0])
    if r in (4, 5):
        return rng.choice(["", "F32", "BF16", "U32", "F8_E4M3", "x" * 50, "256", "qwen3_moe", "../x", "\u0000"])
    if r == 6:
        return [interesting_int(rng) for _ in range(rng.randrange(0, 4))]
    if r in (7, 8):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rng.choice(["a", "dtype", "shape", "data_offsets", "weight_map"]): random_json(rng, depth + 1)
            for _ in range(rng.randrange(0, 3))}


def deep(rng: random.Random) -> Any:
    """A value nested past the JSON parser's recursion limit, as text later (see dumps)."""
    return _Deep(rng.choice([999, 1000, 5000, 100_000]), rng.choice("[{"))


class _Deep:
    def __init__(self, n: int, kind: str) -> None:
        self.n, self.kind = n, kind


def dumps(v: Any) -> bytes:
    """json.dumps that can also write _Deep markers (nested far beyond what json.dumps itself can recurse)."""
    marks: list[_Deep] = []

    def strip(x: Any) -> Any:
        if isinstance(x, _Deep):
            marks.append(x)
            return f"__DEEP{len(marks) - 1}__"
        if isinstance(x, dict):
            return {k: strip(y) for k, y in x.items()}
        if isinstance(x, list):
            return [strip(y) for y in x]
        return x
    text = json.dumps(strip(v))
    for i, m in enumerate(marks):
        nest = "[" * m.n + "]" * m.n if m.kind == "[" else '{"a":' * m.n + "1" + "}" * m.n
        text = text.replace(f'"__DEEP{i}__"', nest)
    return text.encode()


def mutate_value(rng: random.Random, old: Any) -> Any:
    """A replacement for one JSON value: a boundary number near it, another type, or something nested deep."""
    r = rng.random()
    if isinstance(old, bool) or old is None:
        return random_json(rng)
    if isinstance(old, int) and r < 0.5:
        return interesting_int(rng, old)
    if isinstance(old, float) and r < 0.5:
        return rng.choice([-old, 0.0, old * 1e300, math.nan, math.inf, float(int(old) if math.isfinite(old) else 0)])
    if isinstance(old, list) and old and r < 0.6:
        new = list(old)
        j = rng.randrange(len(new))
        new[j] = mutate_value(rng, new[j])
        if rng.random() < 0.2:
            new.append(interesting_int(rng))
        if rng.random() < 0.2:
            new.pop(rng.randrange(len(new)))
        return new
    if isinstance(old, dict) and old and r < 0.6:
        new = dict(old)
        k = rng.choice(list(new))
        new[k] = mutate_value(rng, new[k])
        return new
    if r < 0.97:
        return random_json(rng)
    return deep(rng)


def mutate_json_object(rng: random.Random, doc: dict[str, Any], keys: list[str] | None = None,
                       n: int | None = None) -> dict[str, Any]:
    """Change, drop or add 1-3 entries of a JSON object (keys picked from `keys` where given)."""
    d = copy.deepcopy(doc)
    for _ in range(n or rng.choice([1, 1, 2, 3])):
        r = rng.random()
        pool = keys if keys and rng.random() < 0.7 else list(d) or ["a"]
        k = rng.choice(pool)
        if r < 0.75:
            d[k] = mutate_value(rng, d.get(k, 1))
        elif r < 0.9:
            d.pop(k, None)
        else:
            d[k + rng.choice(["", "_x"])] = random_json(rng)
    return d


def mutate_safetensors_header(rng: random.Random, header: dict[str, Any], data_len: int) -> dict[str, Any]:
    h = copy.deepcopy(header)
    names = [k for k in h if k != "__metadata__"]
    for _ in range(rng.choice([1, 1, 2, 3])):
        r = rng.random()
        name = rng.choice(names) if names else "x"
        if r < 0.6 and name in h and isinstance(h[name], dict):
            e = h[name]
            field = rng.choice(["dtype", "shape", "data_offsets", "dtype", "shape", "data_offsets", "extra"])
            if field == "shape" and isinstance(e.get("shape"), list) and rng.random() < 0.5:
                shp = list(e["shape"])
                if shp:
                    shp[rng.randrange(len(shp))] = interesting_int(rng)
                e["shape"] = shp
            elif field == "data_offsets" and rng.random() < 0.5:
                e["data_offsets"] = [interesting_int(rng, data_len // 2), interesting_int(rng, data_len)]
            elif field == "dtype" and rng.random() < 0.5:
                e["dtype"] = rng.choice(["F32", "F16", "BF16", "U8", "U32", "I64", "F8_E4M3", "BOOL", "F64", "Q4"])
            else:
                e[field] = mutate_value(rng, e.get(field))
        elif r < 0.7:
            h.pop(name, None)
        elif r < 0.8:
            h[name + ".x" if rng.random() < 0.5 else rng.choice(names or ["y"])] = random_json(rng)
        elif r < 0.9:
            h["__metadata__"] = mutate_value(rng, h.get("__metadata__", {}))
        else:
            h[name] = mutate_value(rng, h.get(name))
    return h
