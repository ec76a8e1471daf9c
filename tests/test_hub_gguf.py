"""GGUFs made as the hub's are: tiny models converted by llama.cpp's own convert_hf_to_gguf.py, quantized by
llama.cpp's own quantizer to the usual mixes (Q4_K_M has Q6_K down experts in half the layers, Q3_K_M Q4_K
down, Q2_K Q3_K down, ...), split into 3 shards. flashmoe_gguf.Llama, with a budget far below the experts,
gives the logits of stock llama-cpp-python (extra buffer types off) on the same shards bit for bit, for a
48-token batch and token-by-token decode, and the same 32-token greedy continuation; every expert type runs,
through our kernels where we have one and ggml's own MUL_MAT_ID otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import cache_root, checkpoint, spec_key
from llama_cpp_tools import hf_to_gguf, quantize
from reference import llama as stock_llama
from split_gguf import split_gguf
from test_runtime import ISAS, BATCH, PROMPT, assert_same_logits, cpu_isas, expert_bytes, greedy, logits, streamed
from tiny_models import TINY

# Mixtral: llama.cpp's converter reads its vocabulary with sentencepiece from tokenizer.model, which the tiny
# test tokenizer (a tokenizer.json) does not have; our own converter's tests cover it
ARCHS = ["qwen3_moe", "qwen2_moe", "olmoe", "deepseek_v3", "qwen3_5_moe"]
FTYPES = ["Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_M", "Q2_K", "IQ4_XS", "IQ3_S", "MXFP4_MOE"]


def hub_like(arch: str, ftype: str) -> list[Path]:
    c = cache_root()
    key = f"lcpp-{arch}-{spec_key(arch)}"
    f32 = hf_to_gguf(c, checkpoint(arch), c / f"{key}-f32.gguf", TINY[arch].tokenizer,
                     ("--no-mtp",) if arch == "qwen3_5_moe" else ())
    q = quantize(f32, c / f"{key}-{ftype}.gguf", ftype)
    out = c / f"{key}-{ftype}-split" / "m.gguf"
    paths = [out.with_name(f"m-{i:05d}-of-00003.gguf") for i in range(1, 4)]
    if not all(p.exists() for p in paths):
        out.parent.mkdir(parents=True, exist_ok=True)
        paths = split_gguf(q, out, 3)
    return paths


@pytest.mark.parametrize("ftype", FTYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_llama_cpp_quant_mix_split_matches_stock(arch: str, ftype: str) -> None:
    from gguf import GGMLQuantizationType

    from flashmoe_gguf.experts import expert_tensors
    paths = hub_like(arch, ftype)
    types = sorted({GGMLQuantizationType(e.gtype).name for e in expert_tensors(paths[0])})
    ref = stock_llama(paths[0])
    want_batch = logits(ref, BATCH, batch=True)
    ref.reset()
    want_dec = logits(ref, PROMPT, batch=False)
    want_greedy = greedy(ref, PROMPT[:6], 32)
    ref.close()
    llm = streamed(paths[0], expert_bytes(paths[0]) // 8)
    assert_same_logits(logits(llm, BATCH, batch=True), want_batch, f"prompt batch ({ftype}: experts {types})")
    llm.reset()
    assert_same_logits(logits(llm, PROMPT, batch=False), want_dec, f"decode ({ftype}: experts {types})")
    assert greedy(llm, PROMPT[:6], 32) == want_greedy
    st = llm.flashmoe_stats()
    assert st["cache_misses"] > 0 and st["expert_bytes_read"] > 0
    llm.close()


# every instruction set on the mixes whose expert types our converter does not write (IQ4_XS, MXFP4) or mixes
# (Q6_K / Q5_K / Q4_K / Q3_K experts side by side in one model)
ISA_FTYPES = ["IQ4_XS", "MXFP4_MOE", "Q4_K_M", "Q3_K_M", "Q5_K_M"]
ISA_CASES = [(a, f, i) for a in ("qwen3_moe", "deepseek_v3") for f in ISA_FTYPES for i in ISAS]


@pytest.mark.parametrize("arch,ftype,isa", ISA_CASES, ids=["-".join(c) for c in ISA_CASES])
def test_llama_cpp_quant_mix_every_instruction_set(arch: str, ftype: str, isa: str) -> None:
    from gguf import GGMLQuantizationType

    from flashmoe_gguf.experts import expert_tensors
    if isa != "ggml" and isa not in cpu_isas():
        pytest.skip(f"this CPU has no {isa} (its kernels run through SIMDe in test_runtime_simde.py)")
    paths = hub_like(arch, ftype)
    types = sorted({GGMLQuantizationType(e.gtype).name for e in expert_tensors(paths[0])})
    ref = stock_llama(paths[0])
    want_batch = logits(ref, BATCH, batch=True)
    ref.reset()
    want_dec = logits(ref, PROMPT, batch=False)
    ref.close()
    llm = streamed(paths[0], expert_bytes(paths[0]) // 8, isa=isa)
    assert llm.flashmoe_stats()["kernel_isa"] == isa
    assert_same_logits(logits(llm, BATCH, batch=True), want_batch, f"prompt batch ({ftype} {isa}: experts {types})")
    llm.reset()
    assert_same_logits(logits(llm, PROMPT, batch=False), want_dec, f"decode ({ftype} {isa}: experts {types})")
    llm.close()
