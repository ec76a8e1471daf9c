"""GPT-OSS specifics beyond the per-architecture tests (test_convert_archs, test_runtime): the MXFP4 experts copied
bit for bit, the float layout some copies publish, the harmony template and tokens, the limits llama.cpp has,
and the MXFP4 experts streamed by flashmoe_gguf.Llama bitwise against stock on every instruction set."""

from __future__ import annotations

import ctypes
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T, GGUFReader

from conftest import cache_root, checkpoint, converted, spec_key
from flashmoe_gguf.converter import convert
from flashmoe_gguf.converter.archs.gpt_oss import HARMONY_TEMPLATE
from flashmoe_gguf.converter.errors import ConversionError
from flashmoe_gguf.ggml_lib import Ggml
from reference import hf_greedy, hf_logits, llama_greedy, llama_logits, rel_max_diff
from reference import llama as stock_llama
from tiny_models import TINY

ARCH = "gpt_oss"


def tensors(path: Path) -> dict[str, tuple[T, np.ndarray]]:
    return {t.name: (T(int(t.tensor_type)), np.asarray(t.data)) for t in GGUFReader(path).tensors}


def release_experts(layer: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """gate / up / down blocks and scales of one layer as the checkpoint stores them (gate|up rows interleaved)"""
    from safetensors.numpy import load_file
    t = load_file(checkpoint(ARCH) / "model.safetensors")
    p = f"model.layers.{layer}.mlp.experts."
    gb, gs = t[p + "gate_up_proj_blocks"], t[p + "gate_up_proj_scales"]
    return {"gate": (gb[:, 0::2], gs[:, 0::2]), "up": (gb[:, 1::2], gs[:, 1::2]),
            "down": (t[p + "down_proj_blocks"], t[p + "down_proj_scales"])}


def fp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """OCP MXFP4 decoded independently of the converter: element 2k is the low nibble of byte k"""
    table = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float64)
    codes = np.stack([blocks & 15, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)
    return (table[codes] * 2.0 ** (scales.astype(np.float64)[..., None] - 127)).reshape(*blocks.shape[:-2], -1)


def test_mxfp4_experts_are_the_checkpoints_bit_for_bit(tmp_path: Path) -> None:
    """The default recipe keeps MXFP4: ggml's own decoding of every expert gives exactly the checkpoint's values,
    and the summary says the experts were copied."""
    path = converted(ARCH, "default")
    got = tensors(path)
    ggml = Ggml.load()
    for layer in range(4):
        for kind, (blocks, scales) in release_experts(layer).items():
            gtype, data = got[f"blk.{layer}.ffn_{kind}_exps.weight"]
            assert gtype == T.MXFP4
            want = fp4(blocks, scales).astype(np.float32)
            assert data.shape == (*want.shape[:-1], want.shape[-1] // 32 * 17)
            assert np.array_equal(ggml.dequantize(T.MXFP4, data, want.size).reshape(want.shape), want)
    report = convert(checkpoint(ARCH), tmp_path / "again.gguf")
    assert report.expert_type == "MXFP4" and report.mxfp4_experts == 4 * 3 * 8
    assert "copied 96 MXFP4 experts into ggml's MXFP4 blocks bit for bit" in report.summary()


def kv_fields(path: Path) -> dict[str, object]:
    skip = ("GGUF.", "general.", "flashmoe.")
    return {k: f.contents() for k, f in GGUFReader(path).fields.items() if not k.startswith(skip)}


def test_same_file_as_llama_cpps_converter(tmp_path: Path) -> None:
    """llama.cpp's convert_hf_to_gguf.py on the same checkpoint (its MXFP4 repacking, F32 elsewhere): every tensor
    has the same name, type and bytes in ours with --dense F32, and every model and tokenizer key the same value.
    Ours adds the sliding-window pattern (llama.cpp's converter leaves it to gpt-oss's default, every other layer
    from the first: the same pattern for the releases)."""
    from llama_cpp_tools import hf_to_gguf
    ref = hf_to_gguf(cache_root(), checkpoint(ARCH), cache_root() / f"lcpp-{ARCH}-{spec_key(ARCH)}-f32.gguf", "gpt-4o")
    ours = tmp_path / "ours.gguf"
    report = convert(checkpoint(ARCH), ours, dense="F32")
    assert report.expert_type == "MXFP4"
    want, got = tensors(ref), tensors(ours)
    assert sorted(got) == sorted(want)
    for name, (gtype, data) in want.items():
        assert got[name][0] == gtype and np.array_equal(got[name][1], data), name
    kw, kg = kv_fields(ref), kv_fields(ours)
    assert {k: v for k, v in kg.items() if k not in kw} == {"gpt-oss.attention.sliding_window_pattern":
                                                               [True, False, True, False]}
    kw.pop("tokenizer.ggml.add_eos_token")   # False: what llama.cpp assumes without the key
    assert {k: v for k, v in kw.items() if kg.get(k) != v} == {}


def test_llama_cpp_tokenizes_harmony_as_transformers() -> None:
    """The harmony specials and ordinary text: llama.cpp's tokenization of the GGUF equals the checkpoint's."""
    import llama_cpp
    from transformers import AutoTokenizer
    text = ("<|start|>system<|message|>You are ChatGPT.\nReasoning: high<|end|><|start|>user<|message|>What is "
            "2+2? Answer in 12 words, 3 digits: 123456.<|end|><|start|>assistant<|channel|>analysis<|message|>"
            "Simple.<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>")
    want = AutoTokenizer.from_pretrained(checkpoint(ARCH)).encode(text, add_special_tokens=False)
    llm = llama_cpp.Llama(model_path=str(converted(ARCH, "f32")), vocab_only=True, verbose=False)
    try:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == want
    finally:
        llm.close()


@pytest.fixture
def wide_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny model with 8 heads of 64: attention 512 wide on the 256 residual, as the releases' 64 x 64 on 2880
    (key_length, not n_embd / n_head). Not the suite's model: with it the Q4_K experts' two stock kernels
    (CPU_REPACK on or off) already disagree by 21-50 % of the largest logit on test_runtime's batch (a routing
    flip in this random model), where the 4-head model moves 1 %."""
    import tiny_models
    tm = TINY[ARCH]
    monkeypatch.setitem(tiny_models.TINY, ARCH, replace(tm, config={**tm.config, "num_attention_heads": 8}))


def test_attention_wider_than_the_residual(wide_attention: None) -> None:
    """Logits (F32) and greedy continuation against transformers, as test_convert_archs checks every family."""
    from test_convert_archs import PROMPT
    path = converted(ARCH, "f32")
    assert tensors(path)["blk.0.attn_q.weight"][1].shape == (512, 256)
    ref = hf_logits(checkpoint(ARCH), PROMPT)
    got = llama_logits(path, PROMPT)
    assert rel_max_diff(got, ref) <= 1e-2, f"max |diff| {np.abs(got - ref).max()} vs max |logit| {np.abs(ref).max()}"
    assert llama_greedy(path, PROMPT, 16) == hf_greedy(checkpoint(ARCH), PROMPT, 16)


def release_config(tmp: Path) -> Path:
    """The checkpoint with config.json as the releases ship it (transformers 4.55: rope_scaling, rope_theta)"""
    shutil.copytree(checkpoint(ARCH), tmp)
    cfg = json.loads((tmp / "config.json").read_text())
    rp = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rp.pop("rope_theta")
    cfg["rope_scaling"] = rp
    cfg.update(experts_per_token=cfg["num_experts_per_tok"], initial_context_length=128, swiglu_limit=7.0,
               transformers_version="4.55.0.dev0")
    (tmp / "config.json").write_text(json.dumps(cfg))
    return tmp


def test_release_config_converts_the_same(tmp_path: Path) -> None:
    src = release_config(tmp_path / "ckpt")
    convert(src, tmp_path / "m.gguf", experts="F32", dense="F32")
    assert kv_fields(tmp_path / "m.gguf") == kv_fields(converted(ARCH, "f32"))


def float_layout(tmp: Path) -> Path:
    """The same model as the BF16 copies of GPT-OSS store it: experts as floats, gate_up_proj [E, in, 2 * out]"""
    from safetensors.numpy import load_file, save_file
    src = checkpoint(ARCH)
    shutil.copytree(src, tmp)
    t = load_file(src / "model.safetensors")
    out = {}
    for k, v in t.items():
        if k.endswith("_blocks"):
            base = k[: -len("_blocks")]
            out[base] = np.ascontiguousarray(np.swapaxes(fp4(v, t[base + "_scales"]), 1, 2).astype(np.float32))
        elif not k.endswith("_scales"):
            out[k] = v
    save_file(out, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((tmp / "config.json").read_text())
    del cfg["quantization_config"]
    (tmp / "config.json").write_text(json.dumps(cfg))
    return tmp


def test_float_layout_converts_to_the_same_tensors(tmp_path: Path) -> None:
    f = float_layout(tmp_path / "bf16")
    convert(f, tmp_path / "float.gguf", experts="F32", dense="F32")
    a, b = tensors(tmp_path / "float.gguf"), tensors(converted(ARCH, "f32"))
    assert a.keys() == b.keys()
    for name in a:
        assert a[name][0] == b[name][0] and np.array_equal(a[name][1], b[name][1]), name
    # its default is Q4_K (no MXFP4 to copy); MXFP4 on request goes through ggml's quantizer
    assert convert(f, tmp_path / "q.gguf").expert_type == "Q4_K"
    r = convert(f, tmp_path / "m.gguf", experts="MXFP4")
    assert r.expert_type == "MXFP4" and r.mxfp4_experts == 0


def test_our_mxfp4_quantizer_is_llama_cpps(tmp_path: Path) -> None:
    """--experts MXFP4 on float weights: the bytes llama_model_quantize writes for MXFP4_MOE experts."""
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_MXFP4_MOE
    params.nthread = 2
    ref = tmp_path / "ref.gguf"
    assert llama_cpp.llama_model_quantize(str(converted("qwen3_moe", "f32-align32")).encode(), str(ref).encode(),
                                          ctypes.byref(params)) == 0
    convert(checkpoint("qwen3_moe"), tmp_path / "ours.gguf", experts="MXFP4")
    want, got = tensors(ref), tensors(tmp_path / "ours.gguf")
    exps = [n for n in want if "_exps." in n]
    assert exps and all(want[n][0] == T.MXFP4 for n in exps)
    for n in exps:
        assert got[n][0] == T.MXFP4 and np.array_equal(got[n][1], want[n][1]), n


def test_harmony_template_and_tokens() -> None:
    """The template from chat_template.jinja; llama.cpp recognises it as GPT-OSS's harmony format, ends generation
    on <|return|> and <|call|>, and the pre-tokenizer is GPT-4o's."""
    import llama_cpp
    path = converted(ARCH, "f32")
    fields = GGUFReader(path).fields
    assert fields["tokenizer.chat_template"].contents() == HARMONY_TEMPLATE
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-4o"
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        msgs = (llama_cpp.llama_chat_message * 2)(
            llama_cpp.llama_chat_message(b"system", b"be brief"), llama_cpp.llama_chat_message(b"user", b"hi"))
        buf = ctypes.create_string_buffer(1024)
        n = llama_cpp.llama_chat_apply_template(HARMONY_TEMPLATE.encode(), msgs, 2, True, buf, 1024)
        assert buf.raw[:n].decode() == "<|start|>system<|message|>be brief<|end|><|start|>user<|message|>hi<|end|>" \
                                       "<|start|>assistant"
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        ids = {t: llm.tokenize(t.encode(), add_bos=False, special=True) for t in ("<|return|>", "<|call|>", "<|end|>")}
        assert all(len(v) == 1 for v in ids.values())
        assert llama_cpp.llama_vocab_is_eog(vocab, ids["<|return|>"][0])
        assert llama_cpp.llama_vocab_is_eog(vocab, ids["<|call|>"][0])
        assert llm.token_eos() == ids["<|return|>"][0]
    finally:
        llm.close()


def test_keys_llama_cpp_reads() -> None:
    kv = {k: f.contents() for k, f in GGUFReader(converted(ARCH, "f32")).fields.items() if k.startswith("gpt-oss.")}
    assert kv["gpt-oss.attention.sliding_window"] == 8
    assert kv["gpt-oss.attention.sliding_window_pattern"] == [True, False, True, False]
    assert kv["gpt-oss.expert_feed_forward_length"] == 256 and kv["gpt-oss.expert_used_count"] == 2
    assert kv["gpt-oss.rope.scaling.type"] == "yarn" and kv["gpt-oss.rope.scaling.factor"] == 4.0
    names = set(tensors(converted(ARCH, "f32")))
    for suffix in ("attn_sinks.weight", "attn_q.bias", "attn_output.bias", "post_attention_norm.weight",
                   "ffn_gate_inp.bias", "ffn_gate_exps.bias", "ffn_up_exps.bias", "ffn_down_exps.bias"):
        assert f"blk.3.{suffix}" in names, suffix


def modified(tmp: Path, change: dict) -> Path:
    shutil.copytree(checkpoint(ARCH), tmp)
    cfg = json.loads((tmp / "config.json").read_text())
    for k, v in change.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    (tmp / "config.json").write_text(json.dumps(cfg))
    return tmp


def test_release_yarn_is_converted_with_a_note(tmp_path: Path) -> None:
    """The release's YaRN (truncate: false) is converted as llama.cpp's own converter does, and the summary says
    llama.cpp rounds the correction range (the tiny test model uses the rounded range to compare exactly)."""
    src = modified(tmp_path / "ckpt", {"rope_parameters": {"truncate": False}})
    report = convert(src, tmp_path / "m.gguf", experts="Q8_0")
    note = [n for n in report.fallbacks if "truncate: false" in n]
    assert note and "9 of 32, by up to 43 %" in note[0]
    # the figures the note gives, from transformers' YaRN at the releases' config (gpt-oss-20b and -120b alike)
    from transformers import GptOssConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    freqs = {}
    for truncate in (False, True):
        cfg = GptOssConfig(hidden_size=2880, head_dim=64, num_attention_heads=64, rope_parameters=dict(
            rope_type="yarn", rope_theta=150000.0, factor=32.0, original_max_position_embeddings=4096,
            beta_fast=32.0, beta_slow=1.0, truncate=truncate))
        freqs[truncate] = ROPE_INIT_FUNCTIONS["yarn"](cfg, "cpu")[0].double().numpy()
    rel = np.abs(freqs[False] - freqs[True]) / freqs[True]
    assert len(rel) == 32 and int((rel > 0).sum()) == 9 and round(float(rel.max()), 2) == 0.43


@pytest.mark.parametrize("change,message", [
    ({"swiglu_limit": 10.0}, "fixes swiglu_alpha 1.702 and swiglu_limit 7.0"),
    ({"layer_types": ["sliding_attention", "chunked_attention"] * 2}, "unknown layer types"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "rope scaling 'linear' is not supported"),
    ({"attention_bias": False}, "llama.cpp's gpt-oss requires q/k/v/o biases"),
    ({"layer_types": ["sliding_attention", "full_attention"]}, "layer_types has 2 entries for 4 layers"),
])
def test_refused(change: dict, message: str, tmp_path: Path) -> None:
    src = modified(tmp_path / "ckpt", change)
    with pytest.raises(ConversionError, match=message):
        convert(src, tmp_path / "m.gguf")


# -- the MXFP4 experts streamed ----------------------------------------------------------------------------
def mxfp4_gguf() -> Path:
    out = cache_root() / f"{ARCH}-{spec_key(ARCH)}-rt-MXFP4.gguf"
    if not out.exists():
        convert(checkpoint(ARCH), out, dense="Q8_0", align=4096)
    return out


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512", "ggml"])
def test_mxfp4_streamed_matches_stock(isa: str) -> None:
    """The release's expert type through flashmoe's MXFP4 kernels (and ggml's code), bit for bit against stock:
    prompt batch, token-by-token decode, greedy continuation, budgets below and above the experts."""
    from test_runtime import BATCH, PROMPT, assert_same_logits, cpu_isas, expert_bytes, greedy, logits, streamed
    if isa != "ggml" and isa not in cpu_isas():
        pytest.skip(f"this CPU has no {isa} (its kernels run through SIMDe in test_runtime_simde.py)")
    path = mxfp4_gguf()
    ref = stock_llama(path)
    want_batch = logits(ref, BATCH, batch=True)
    ref.reset()
    want_dec = logits(ref, PROMPT, batch=False)
    want_greedy = greedy(ref, PROMPT[:6], 32)
    ref.close()
    total = expert_bytes(path)
    for budget in (total // 8, 2 * total):
        llm = streamed(path, budget, isa=isa)
        assert_same_logits(logits(llm, BATCH, batch=True), want_batch, f"MXFP4 prompt batch, budget {budget}")
        llm.reset()
        assert_same_logits(logits(llm, PROMPT, batch=False), want_dec, f"MXFP4 decode, budget {budget}")
        assert greedy(llm, PROMPT[:6], 32) == want_greedy
        st = llm.flashmoe_stats()
        assert st["kernel_isa"] == isa and st["expert_bytes_read"] > 0
        llm.close()
