"""Every supported architecture: tiny random checkpoint -> GGUF -> stock llama-cpp-python, against transformers."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGUFReader

from conftest import checkpoint, converted
from reference import hf_greedy, hf_logits, llama_greedy, llama_logits, rel_max_diff
from tiny_models import TINY

ARCHS = sorted(TINY)
PROMPT = [11, 450, 77, 1203, 9, 3020, 600, 42, 5, 1999, 256, 3333]
# a longer prompt for the quantized recipe: random models have flat logits, so agreement is a rate
LONG_PROMPT = [int(t) for t in np.random.default_rng(1).integers(10, 3900, 128)]


@pytest.mark.parametrize("arch", ARCHS)
def test_f32_logits_match_transformers(arch: str) -> None:
    gguf = converted(arch, "f32")
    ref = hf_logits(checkpoint(arch), PROMPT)
    got = llama_logits(gguf, PROMPT)
    assert got.shape == ref.shape
    assert rel_max_diff(got, ref) <= 1e-2, f"max |diff| {np.abs(got - ref).max()} vs max |logit| {np.abs(ref).max()}"


@pytest.mark.parametrize("arch", ARCHS)
def test_f32_greedy_matches_transformers(arch: str) -> None:
    gguf = converted(arch, "f32")
    assert llama_greedy(gguf, PROMPT, 16) == hf_greedy(checkpoint(arch), PROMPT, 16)


@pytest.mark.parametrize("arch", ARCHS)
def test_default_recipe_greedy_mostly_agrees_and_routers_stay_f32(arch: str) -> None:
    gguf = converted(arch, "default")
    reader = GGUFReader(gguf)
    routers = [t for t in reader.tensors if ".ffn_gate_inp" in t.name]
    assert routers, "no router tensors found"
    assert all(t.tensor_type.name == "F32" for t in routers), [(t.name, t.tensor_type.name) for t in routers]
    experts = [t for t in reader.tensors if "_exps.weight" in t.name]
    assert experts and all(t.tensor_type.name == TINY[arch].default_experts for t in experts)
    # teacher-forced greedy agreement: argmax of each position's logits
    ref = hf_logits(checkpoint(arch), LONG_PROMPT).argmax(-1)
    got = llama_logits(gguf, LONG_PROMPT).argmax(-1)
    agree = float((ref == got).mean())
    assert agree >= 0.6, f"greedy agreement {agree:.2f} over {len(LONG_PROMPT)} positions"


def test_list_archs_names_every_family_and_the_readme_table_too() -> None:
    """`flashmoe convert --list-archs` prints every model_type the converter takes with its llama.cpp
    architecture (deepseek_v2 and gpt_oss included), and the README's table has a row for each family."""
    from flashmoe_gguf.converter.archs import ARCHITECTURES
    res = subprocess.run([sys.executable, "-m", "flashmoe_gguf.cli", "convert", "--list-archs"], capture_output=True,
                         text=True, timeout=120, cwd=tempfile.gettempdir())
    assert res.returncode == 0, res.stderr
    listed = [tuple(part.strip() for part in line.split("->")) for line in res.stdout.splitlines() if line.strip()]
    assert len(listed) == len(set(listed)) and set(listed) == {
        (mt, gguf.MODEL_ARCH_NAMES[a.gguf_arch]) for a in ARCHITECTURES for mt in a.model_types}
    assert {("deepseek_v2", "deepseek2"), ("gpt_oss", "gpt-oss")} <= set(listed)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = set(re.findall(r"^\| `(\w+)` \| `([\w-]+)` \|", readme, re.M))
    missing = {(a.model_types[0], gguf.MODEL_ARCH_NAMES[a.gguf_arch]) for a in ARCHITECTURES} - table
    assert not missing, f"README's architecture table lacks {sorted(missing)}"
