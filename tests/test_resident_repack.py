"""flashmoe_gguf.Llama(resident_repack=True): the resident weights in llama.cpp's extra buffer types (CPU_REPACK),
the routed experts still streamed, against stock llama-cpp-python with extra buffer types on (llama.cpp's default)
and the routed experts overridden to the CPU (`-ot exps=CPU`).

The models: tiny checkpoints whose resident weights (attention projections; the shared experts of qwen2_moe;
mixtral's output head, whose 4000-token vocabulary CPU_REPACK's 8-row interleave accepts) are Q4_K, a type
CPU_REPACK repacks on AVX2 and AVX-512 x86, with Q8_0 routed experts, a type it leaves alone there (on x86;
with an expert type it takes, stock's `-ot exps=CPU` repacks the experts too: test_stock_repacks_q4_k_experts).
llama.cpp's own log says where every weight went: the case proves something only if stock really repacked the
resident weights, so that is asserted first (a CPU without any repack is a skip with its reason). Then, at a budget
holding every expert and one holding a quarter: every logit of a prompt batch and of token-by-token decode bit
for bit, and the same 32-token greedy continuation; the same tensors repacked as stock, the routed experts on the
FLASHMOE device and nothing else there. resident_repack=False (the default) is stock with extra buffer types off,
bit for bit: test_runtime.py.

Each model runs in a child process (resident_repack_child.py): llama.cpp's log of each load is read from fd 2.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from reference import run_result_child
from conftest import cache_root, checkpoint, spec_key
from flashmoe_gguf.converter import convert
from test_runtime import expert_bytes

HERE = Path(__file__).resolve().parent
ARCHS = ["qwen3_moe", "qwen2_moe", "mixtral"]
RESIDENT_TYPE = "Q4_K"      # CPU_REPACK takes it on AVX2 / AVX-512 (rows a multiple of 8)
EXPERT_TYPE = "Q8_0"        # CPU_REPACK leaves it alone on x86 (it repacks Q8_0 on ARM with dotprod / i8mm)


def gguf_for(arch: str, experts: str = EXPERT_TYPE, dense: str = RESIDENT_TYPE) -> Path:
    out = cache_root() / f"{arch}-{spec_key(arch)}-rr-{experts}-{dense}.gguf"
    if not out.exists():
        convert(checkpoint(arch), out, experts=experts, dense=dense, align=4096, progress=False)
    return out


def run_child(spec: dict[str, Any], timeout: int = 900) -> dict[str, Any]:
    return run_result_child(HERE / "resident_repack_child.py", spec, timeout)


def resident_names(path: Path, arch: str) -> set[str]:
    """The weights stock must repack for the case to mean anything: every attention projection (q, k, v, output),
    the shared experts, the output head where its rows allow (mixtral)"""
    from flashmoe_gguf.gguf_index import read_model
    want = set()
    for t in read_model(path).tensors:
        if re.search(r"\.(attn_(q|k|v|output)|ffn_(gate|up|down)_shexp)\.weight$", t.name):
            want.add(t.name)
    if arch == "mixtral":
        want.add("output.weight")
    return want


@pytest.mark.parametrize("arch", ARCHS)
def test_matches_stock_with_repack_and_experts_on_cpu(arch: str) -> None:
    path = gguf_for(arch)
    total = expert_bytes(path)
    res = run_child({"model": str(path), "budgets": [2 * total, total // 4]})
    stock = res["stock"]
    # (a) stock really repacked the resident weights, and kept the routed experts in the plain CPU buffer type
    if not stock["buffers"].get("CPU_REPACK"):
        if not stock["cpu_has_repack"]:
            pytest.skip("this llama.cpp build has no CPU_REPACK buffer type (REPACK = 0): nothing to repack")
        pytest.fail(f"stock put no weight in CPU_REPACK (buffers {stock['buffers']}): a CPU whose CPU_REPACK does "
                    f"not take {RESIDENT_TYPE}? The case would prove nothing")
    want = resident_names(path, arch)
    assert want <= set(stock["repacked"]), f"stock did not repack {sorted(want - set(stock['repacked']))}"
    assert stock["experts_to"] and set(stock["experts_to"].values()) == {"CPU"}, (
        f"stock's -ot exps=CPU put experts in {set(stock['experts_to'].values())}: CPU_REPACK takes "
        f"{EXPERT_TYPE} on this CPU, and no stock configuration computes experts as flashmoe does with repack on")
    assert res["norepack_max_diff"] > 0, "stock's logits are the same with repack off: the case tells nothing apart"
    mib = round(total / 2**20, 2)
    for run in res["flashmoe"]:
        what = f"{arch}, budget {run['budget']}"
        # (b) the same weights repacked, the routed experts (and only they) on our device
        assert run["repacked"] == stock["repacked"], f"{what}: repacked {run['repacked']} vs stock's {stock['repacked']}"
        assert run["buffers"].get("CPU_REPACK") == stock["buffers"]["CPU_REPACK"], f"{what}: {run['buffers']}"
        assert abs(run["buffers"].get("FLASHMOE", 0.0) - mib) <= 0.01, (
            f"{what}: FLASHMOE holds {run['buffers'].get('FLASHMOE')} MiB, the routed experts are {mib} MiB")
        assert run["batch_equal"], f"{what}: prompt batch logits differ (max {run['batch_max_diff']})"
        assert run["decode_equal"], f"{what}: token-by-token logits differ (max {run['decode_max_diff']})"
        assert run["greedy_equal"], f"{what}: greedy continuation differs"
    small = res["flashmoe"][1]
    assert small["cache_misses"] > 0 and small["expert_bytes_read"] > total, "a quarter budget must keep evicting"
    off = res["flashmoe_off"]
    assert not off["repacked"] and "CPU_REPACK" not in off["buffers"], f"resident_repack=False repacked: {off}"
    assert abs(off["buffers"].get("FLASHMOE", 0.0) - mib) <= 0.01, off


def test_stock_repacks_q4_k_experts() -> None:
    """Why the equality above needs an expert type CPU_REPACK leaves alone: llama.cpp, overriding a tensor to the
    CPU, considers the extra buffer types too, and repacks Q4_K experts (README, "Equal to stock")."""
    res = run_child({"model": str(gguf_for("qwen3_moe", experts="Q4_K")), "budgets": [1 << 30]})
    stock = res["stock"]
    if not stock["buffers"].get("CPU_REPACK"):
        pytest.skip("no CPU_REPACK for Q4_K on this CPU")
    assert set(stock["experts_to"].values()) == {"CPU_REPACK"}, stock["experts_to"]
    assert res["flashmoe"][0]["buffers"].get("FLASHMOE"), "the routed experts must still come to our device"


def test_expert_not_placed_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """With extra buffer types on, an expert tensor that does not end up on our device still fails the load,
    naming the tensor: here one the store expects and llama.cpp never creates."""
    from flashmoe_gguf import FlashMoeError, Llama
    from flashmoe_gguf.streamed import StreamedModel
    original = StreamedModel.load

    def load(self: StreamedModel, params: Any) -> Any:
        e = self.experts[0]
        err = self.ffi.new("char[1024]")
        assert self.lib.fm_model_add_tensor(self.handle, b"blk.99.ffn_up_exps.weight", e.shard, e.offset, e.stride,
                                            e.n_expert, e.gtype, e.ne0, e.ne1, err, 1024) == 0
        return original(self, params)
    monkeypatch.setattr(StreamedModel, "load", load)
    with pytest.raises(FlashMoeError, match=r"expert tensor blk\.99\.ffn_up_exps\.weight was not placed on the "
                                            r"flashmoe device"):
        Llama(model_path=str(gguf_for("qwen3_moe")), ram_budget="64M", n_ctx=64, verbose=False,
              resident_repack=True)


def test_option_is_checked() -> None:
    from flashmoe_gguf import Llama
    with pytest.raises(TypeError, match="resident_repack must be True or False"):
        Llama(model_path=str(gguf_for("qwen3_moe")), ram_budget="64M", n_ctx=64, verbose=False,
              resident_repack="yes")


def test_threaded_through_cli_serve_and_bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """--resident-repack reaches flashmoe_gguf.Llama from run, chat and serve (and serve's config file), and
    bench's flashmoe workers; stock-exps-cpu-repack loads stock with extra buffer types on and -ot exps=CPU."""
    import functools
    import io

    import flashmoe_gguf.runtime as runtime
    from flashmoe_gguf.bench.command import setup
    from flashmoe_gguf.bench.plan import make_plan
    from flashmoe_gguf.bench.worker import STOCK_CONFIGS, make_llama
    from flashmoe_gguf.cli import build_parser
    from flashmoe_gguf.run import run
    from flashmoe_gguf.serve.command import settings_from_args
    from flashmoe_gguf.serve.loader import llama_arguments
    from flashmoe_gguf.serve.settings import model_settings
    from flashmoe_gguf.terminal_chat import chat
    path = gguf_for("qwen3_moe")
    parser = build_parser()
    seen: list[bool] = []
    original = runtime.Llama.__init__

    @functools.wraps(original)      # bench reads Llama's defaults from its signature
    def init(self: Any, *a: Any, **kw: Any) -> None:
        seen.append(kw.get("resident_repack"))
        original(self, *a, **kw)
    monkeypatch.setattr(runtime.Llama, "__init__", init)
    for flag in (["--resident-repack"], []):
        args = parser.parse_args(["run", str(path), "-p", "hi", "-n", "2", "--ram-budget", "64M"] + flag)
        assert args.resident_repack is bool(flag)
        run(str(path), "hi", 2, "64M", resident_repack=args.resident_repack, out=io.StringIO())
        chat(str(path), "64M", 128, readline=lambda _: (_ for _ in ()).throw(EOFError()), out=io.StringIO(),
             resident_repack=parser.parse_args(["chat", str(path)] + flag).resident_repack)
    assert seen == [True, True, False, False]
    _, models = settings_from_args(parser.parse_args(["serve", str(path), "--resident-repack"]))
    assert llama_arguments(models[0])["resident_repack"] is True
    _, models = settings_from_args(parser.parse_args(["serve", str(path)]))
    assert llama_arguments(models[0])["resident_repack"] is False
    assert llama_arguments(model_settings(model=str(path), resident_repack=True))["resident_repack"] is True
    assert "stock-exps-cpu-repack" in STOCK_CONFIGS
    st = setup(parser.parse_args(["bench", str(path), "--ram", "none", "--resident-repack", "--compare",
                                  "stock-exps-cpu-repack", "--report", str(tmp_path / "r"), "--unprivileged"]))
    specs = {p.config: p.spec for p in make_plan(st.info, st.plan_options)}
    assert any("--resident-repack" in x for x in st.limitations)
    fm = [c for c in specs if c.startswith("flashmoe-")]
    assert fm and all(specs[c].resident_repack for c in fm)
    assert not specs["stock-exps-cpu-repack"].resident_repack
    llm = make_llama(specs[fm[0]])
    assert llm._fm.resident_repack is True
    llm.close()
    make_llama(specs["stock-exps-cpu-repack"]).close()
