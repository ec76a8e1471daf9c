"""Tiny random checkpoints of every supported architecture, built with transformers (a test-only dependency).

The models themselves are family facts: each architecture module declares its `test_models`
(converter/archs/, facts.TestModel: the transformers config of a small model of that family, its tokenizer,
and how its releases lay out what transformers saves). Norm weights and biases are randomised too, so a
wrong norm convention (w vs 1 + w) or a dropped bias shows up in the logits. Checkpoints are built once and
cached (see conftest.py); bump BUILDER_VERSION when the builder changes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from flashmoe_gguf.converter.archs import ARCHITECTURES
from flashmoe_gguf.converter.archs.facts import TestModel
from flashmoe_gguf.tiny import bpe_tokenizer, spm_tokenizer, vocab_gguf, write_tokenizer

BUILDER_VERSION = 3
N_VOCAB_KEEP = 4000

TinyModel = TestModel
TINY: dict[str, TestModel] = dict(sorted((name, tm) for arch in ARCHITECTURES for name, tm in arch.test_models.items()))


def build_checkpoint(name: str, out: Path, seed: int = 0) -> Path:
    """Build TINY[name] into `out` (atomically) with random weights and a real tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = TINY[name]
    cache = Path(os.environ.get("FLASHMOE_TEST_CACHE", out.parent))
    if spec.tokenizer_kind == "spm":
        tj, tcfg, n_vocab = spm_tokenizer(vocab_gguf(cache, spec.tokenizer), N_VOCAB_KEEP)
    else:
        kw = {} if spec.bpe_regex is None else {"regex": spec.bpe_regex}
        tj, tcfg, n_vocab = bpe_tokenizer(vocab_gguf(cache, spec.tokenizer), N_VOCAB_KEEP, **kw)
        if spec.bpe_regex == "":   # plain GPT-2 byte-level pre-tokenizer, no Split
            tj["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                   "use_regex": True}
    cfg_kw = dict(spec.config, vocab_size=n_vocab)
    ids = {k: json.loads(json.dumps(tj["model"]["vocab"])).get(v) if isinstance(v, str) else None
           for k, v in tcfg.items() if k in ("bos_token", "eos_token", "pad_token")}
    for t in tj["added_tokens"]:
        for k, v in tcfg.items():
            if k in ("bos_token", "eos_token", "pad_token") and v == t["content"]:
                ids[k] = t["id"]
    cfg_kw.update({f"{k[:-6]}_token_id": v for k, v in ids.items() if v is not None})
    config = AutoConfig.for_model(spec.model_type, **cfg_kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in pname or "layernorm" in pname):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif pname.endswith(".bias") or p.ndim == 1:
                p.copy_(0.1 * torch.randn_like(p))
            elif spec.expert_std is not None and re.search(r"\.experts\.", pname):
                p.normal_(0.0, spec.expert_std)
            else:
                p.normal_(0.0, spec.weight_std)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    write_tokenizer(tmp, tj, tcfg)
    if spec.post_build:
        spec.post_build(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
