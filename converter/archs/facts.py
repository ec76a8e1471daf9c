"""The data types of the family facts each architecture module declares beside its conversion code.

- `Release`: a published model of the family at its real shapes (its config.json), which `flashmoe synth`
  writes as a GGUF with random weights, with a small variant of the same structure for the tests;
- `TensorInit`: how the synthetic checkpoint draws one tensor (`MoeArch.release_tensors` lists a release's
  tensors: the names a Hugging Face release has, their shapes, and this);
- `TestModel`: a tiny random model of the family that the test suite builds with transformers (the builder is
  tests/tiny_models.py; the facts live here, with the family).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class TensorInit:
    """How a synthetic tensor's random values are drawn: uniform with standard deviation `std` around `mean`,
    or, for `log_uniform`, log(uniform(lo, hi)) (Gated DeltaNet's A_log, as transformers initialises it)."""
    std: float = 0.0
    mean: float = 0.0
    log_uniform: tuple[float, float] | None = None


@dataclass(frozen=True)
class Release:
    name: str                       # what `flashmoe synth` calls it, e.g. "qwen3-30b-a3b"
    description: str
    text_config: dict[str, Any]     # the release's (text) config.json
    vocab: str                      # vocab GGUF in llama-cpp-python's sdist with the release's tokenizer
    tokenizer_kind: str             # "bpe" (byte-level) or "spm" (sentencepiece-style BPE)
    # test-size variant: the same structure with small dimensions (multiples of 256 where a K-quant needs whole
    # blocks), so the unit tests can write, load and run every release in seconds
    tiny: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TestModel:
    __test__ = False                  # not a pytest class
    model_type: str                   # transformers' model_type to build
    config: dict[str, Any]            # transformers config (vocab_size comes from the tokenizer)
    tokenizer: str = "qwen2"          # vocab GGUF name in the llama.cpp sdist
    tokenizer_kind: str = "bpe"       # "bpe" (byte-level) or "spm" (sentencepiece-style BPE)
    # the split regex (or regexes, applied in turn); "" for a plain GPT-2 byte-level pre-tokenizer
    bpe_regex: str | tuple[str, ...] | None = None
    dtype: str = "float32"
    weight_std: float = 0.08          # std of random matrices
    expert_std: float | None = None   # std of routed-expert matrices, if different
    # rewrites the saved checkpoint into the layout the family's releases have (extra tensors, stacked experts)
    post_build: Callable[[Path], None] | None = field(default=None, compare=False)
    default_experts: str = "Q4_K"     # the expert type `convert` picks for it (MXFP4 for MXFP4 experts)
