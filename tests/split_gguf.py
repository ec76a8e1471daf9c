"""Split a GGUF into shards the way llama.cpp's gguf-split does (gguf-py's writer: `<stem>-00001-of-0000N.gguf`,
keys split.no / split.count / split.tensors.count, metadata in the first shard), for the split-model tests.
Every tensor's bytes and every key are copied unchanged."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def split_gguf(src: Path, out: Path, n_shards: int) -> list[Path]:
    """src split into n_shards files named after out (out itself is not written); the shard paths. Tensors are
    aligned to 32 bytes (the original alignment, and so the flashmoe.* layout keys, do not hold any more)."""
    r = gguf.GGUFReader(src)
    arch = str(r.fields["general.architecture"].contents())
    per = -(-len(r.tensors) // n_shards)
    # gguf-py writes general.alignment into the first shard only, while it aligns every shard by it: the other
    # shards would be read with GGUF's default alignment (32) and be wrong. So, as gguf-split's output: 32.
    w = gguf.GGUFWriter(out, arch, split_max_tensors=per)
    for name, field in r.fields.items():
        if name.startswith(("GGUF.", "split.")) or name in ("general.architecture", "general.alignment"):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, field.contents(), vtype, sub_type=sub)
    for t in r.tensors:
        data = np.asarray(t.data)
        w.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return [out.with_name(f"{out.stem}-{i:05d}-of-{n_shards:05d}.gguf") for i in range(1, n_shards + 1)]
