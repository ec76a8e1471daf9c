"""GPU hybrid mode without a GPU: llama.cpp's RPC backend stands in for one (tests/rpc_standin.py).

With n_gpu_layers=-1 every layer goes to the RPC device except the routed experts, which flashmoe keeps on its own
device by a tensor buffer-type override (flashmoe_gguf/offload.py). The reference is stock llama-cpp-python with
the same override (`-ot exps=CPU`, extra buffer types off): every logit of a prompt batch and of token-by-token
decode bit for bit, the same 32-token greedy continuation, with a budget holding all experts and one holding a
quarter. llama.cpp's own log says where the weights went (the RPC device holds the same bytes for both) and how
many graph splits the scheduler made: flashmoe's must equal stock's (the expert block crosses devices once each
way: our backend takes the activation and expert biases between the products, ggml_ext/fm_backend.c).

Each case runs in a child process (gpu_hybrid_child.py): a registered RPC device stays in ggml's registry.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reference import run_result_child
from conftest import cache_root
from flashmoe_gguf.offload import (EXPERT_PATTERN, TensorOverrideError, check_experts_stay, check_overrides,
                                   experts_to_cpu, parse_overrides)
from test_runtime import ARCHS, expert_bytes, gguf_for

HERE = Path(__file__).resolve().parent
# every family of test_runtime (one expert type: the placement and the block's ops do not depend on it);
# gpt_oss's expert biases (ADD_ID) and MXFP4 experts with its own type
CASES = [(a, "MXFP4" if a == "gpt_oss" else "Q4_K") for a in ARCHS]


@pytest.fixture(scope="session")
def rpc_build():  # type: ignore[no-untyped-def]
    import rpc_standin
    try:
        return rpc_standin.build(cache_root())
    except FileNotFoundError as exc:     # no C++ compiler
        pytest.skip(f"cannot build llama.cpp's RPC backend here: {exc}")


def run_child(spec: dict[str, Any], timeout: int = 900) -> dict[str, Any]:
    return run_result_child(HERE / "gpu_hybrid_child.py", spec, timeout)


@pytest.mark.parametrize("arch,experts", CASES, ids=[f"{a}-{t}" for a, t in CASES])
def test_matches_stock_with_experts_on_cpu(rpc_build, arch: str, experts: str) -> None:  # type: ignore[no-untyped-def]
    path = gguf_for(arch, experts)
    total = expert_bytes(path)
    budgets = [2 * total, total // 4]
    res = run_child({"model": str(path), "lib": str(rpc_build.lib), "server": str(rpc_build.server),
                     "budgets": budgets})
    stock = res["stock"]
    assert stock["rpc_model_mib"] > 0, "stock put nothing on the RPC device: not a GPU-layers run"
    assert stock["splits"], "no graph splits in llama.cpp's log"
    for run in res["flashmoe"]:
        what = f"{arch}, budget {run['budget']}"
        assert run["gpu_hybrid"], what
        assert run["experts_overridden"] > 0, f"{what}: the routed experts were not overridden"
        assert run["rpc_model_mib"] == stock["rpc_model_mib"], f"{what}: other weights on the RPC device than stock"
        assert run["splits"] == stock["splits"], f"{what}: graph splits {run['splits']} vs stock's {stock['splits']}"
        assert run["batch_equal"], f"{what}: prompt batch logits differ (max {run['batch_max_diff']})"
        assert run["decode_equal"], f"{what}: token-by-token logits differ (max {run['decode_max_diff']})"
        assert run["greedy_equal"], f"{what}: greedy continuation differs"
    small = res["flashmoe"][1]
    assert small["cache_misses"] > 0 and small["expert_bytes_read"] > total, "a quarter budget must keep evicting"


def test_override_errors_on_a_gpu(rpc_build) -> None:  # type: ignore[no-untyped-def]
    """A user override that sends routed experts to the GPU is refused before the load, naming the tensor; one
    that sends them to the CPU first, or other tensors to the GPU, loads."""
    res = run_child({"mode": "errors", "model": str(gguf_for("qwen3_moe", "Q4_K")), "lib": str(rpc_build.lib),
                     "server": str(rpc_build.server)})
    gpu = res["gpu_buft"]
    for case, tensor in (("experts_to_gpu", "blk.0.ffn_gate_exps.weight"), ("down_to_gpu_first",
                                                                                 "blk.1.ffn_down_exps.weight")):
        msg = res[case]
        assert msg and msg.startswith("TensorOverrideError:"), (case, msg)
        assert tensor in msg and gpu in msg and "must stay on the CPU" in msg, msg
    assert res["experts_cpu_attn_gpu"] is None, res["experts_cpu_attn_gpu"]


def test_check_overrides() -> None:
    assert check_overrides(None) == []
    assert check_overrides([("attn", "CPU")]) == [("attn", "CPU")]
    for bad, why in ((["attn=CPU"], "pair"), ([("attn", "")], "empty"), ([("(", "CPU")], "bad regex"),
                     ([("(?P<x>a)", "CPU")], "ECMAScript"), ([(r"\Ablk", "CPU")], "ECMAScript"),
                     ([("a", 3)], "pair")):
        with pytest.raises(TensorOverrideError, match=why):
            check_overrides(bad)  # type: ignore[arg-type]


def test_parse_overrides() -> None:
    assert parse_overrides(r"blk\.[0-3]\.attn=CPU,exps=CUDA0") == [(r"blk\.[0-3]\.attn", "CPU"), ("exps", "CUDA0")]
    for bad in ("attn", "=CPU", "attn=", "a=CPU,,b=CPU"):
        with pytest.raises(TensorOverrideError, match="REGEX=BUFFER_TYPE"):
            parse_overrides(bad)


def test_experts_stay_first_match_decides() -> None:
    names = ["blk.0.ffn_gate_exps.weight", "blk.0.ffn_down_exps.weight"]
    check_experts_stay([("exps", "CPU"), ("ffn", "CUDA0")], names)        # the CPU entry matches first
    check_experts_stay([("attn", "CUDA0")], names)                        # does not match experts
    with pytest.raises(TensorOverrideError, match="blk.0.ffn_down_exps.weight on CUDA0"):
        check_experts_stay([("down", "CUDA0"), ("exps", "CPU")], names)


def test_expert_pattern_is_the_expert_definition() -> None:
    import re

    from flashmoe_gguf.experts import EXPERT_NAME
    assert EXPERT_PATTERN == EXPERT_NAME.pattern
    assert [p for p, _ in experts_to_cpu()][0] == EXPERT_PATTERN
    assert re.search(experts_to_cpu()[1][0], "blk.7.ffn_gate_up_exps.bias")
    assert not re.search(EXPERT_PATTERN, "blk.7.ffn_gate_shexp.weight")


def test_unknown_and_reserved_buffer_types() -> None:
    """In-process, no GPU: the names resolve against this process's registry (CPU, and FLASHMOE once loaded)."""
    from flashmoe_gguf import Llama
    path = gguf_for("qwen3_moe", "Q4_K")
    with pytest.raises(TensorOverrideError, match=r"unknown buffer type 'CUDA7' \(available: .*CPU"):
        Llama(model_path=str(path), ram_budget="64M", n_ctx=64, verbose=False, tensor_overrides=[("attn", "CUDA7")])
    with pytest.raises(TensorOverrideError, match="holds only the routed experts"):
        Llama(model_path=str(path), ram_budget="64M", n_ctx=64, verbose=False,
              tensor_overrides=[("attn", "FLASHMOE")])


def test_cpu_only_overrides_match_stock() -> None:
    """Without GPU layers, user overrides to the CPU load as before: no hybrid mode, stock's logits."""
    import numpy as np

    from flashmoe_gguf import Llama
    from reference import llama as stock_llama
    from test_runtime import BATCH, assert_same_logits, logits
    path = gguf_for("qwen3_moe", "Q4_K")
    ref = stock_llama(path)
    want = logits(ref, BATCH, batch=True)
    ref.close()
    llm = Llama(model_path=str(path), ram_budget=expert_bytes(path) // 4, n_ctx=256, n_batch=256, logits_all=True,
                verbose=False, seed=0, n_threads=2, type_k=0, type_v=0, tensor_overrides=[("attn_q", "CPU")])
    assert llm._fm.gpu_hybrid is False
    assert_same_logits(logits(llm, BATCH, batch=True), want, "CPU-only with a user override")
    assert np.isfinite(want).all()
    llm.close()


def test_parity_tool_on_rpc(rpc_build) -> None:  # type: ignore[no-untyped-def]
    """tools/gpu_parity.py (what the device script runs on CUDA) with the RPC stand-in (FLASHMOE_RPC): bitwise
    equal at both budgets, the same graph splits as stock, the non-expert weights on the "GPU"."""
    import os

    import rpc_standin
    path = gguf_for("qwen3_moe", "Q4_K")
    with rpc_standin.server(rpc_build) as endpoint:
        env = dict(os.environ, FLASHMOE_RPC=f"{rpc_build.lib}@{endpoint}")
        r = subprocess.run([sys.executable, str(HERE.parent / "tools" / "gpu_parity.py"), str(path), "--threads", "2",
                            "--prompt-tokens", "40", "--greedy", "16"], capture_output=True, text=True, env=env,
                           timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    stock, runs = rows[0]["stock_exps_cpu"], rows[1:]
    assert len(runs) == 2 and "parity: bitwise equal" in r.stdout
    assert any(k.startswith("RPC0[") for k in stock["model_buffers_mib"])
    for run in runs:
        assert run["batch_equal"] and run["decode_equal"] and run["greedy_equal"] and run["same_splits_as_stock"]
        assert "FLASHMOE" in run["model_buffers_mib"] and "FLASHMOE" not in stock["model_buffers_mib"]


def test_rpc_env_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from flashmoe_gguf import rpc
    monkeypatch.setenv(rpc.ENV, "no-endpoint")
    with pytest.raises(ValueError, match="LIB@HOST:PORT|libggml-rpc.so@HOST:PORT"):
        rpc.connect_from_env()
    monkeypatch.delenv(rpc.ENV)
    assert rpc.connect_from_env() is None


def test_command_line_options(tmp_path: Path) -> None:
    """--gpu-layers/-ngl and -ot (repeatable, comma-separated) on run, chat and serve; serve turns them into the
    model's n_gpu_layers and tensor_overrides settings, and those into flashmoe_gguf.Llama's arguments."""
    from flashmoe_gguf.cli import build_parser
    from flashmoe_gguf.serve.command import settings_from_args
    from flashmoe_gguf.serve.loader import llama_arguments
    p = build_parser()
    for cmd in (["run", "m.gguf", "-p", "x"], ["chat", "m.gguf"]):
        a = p.parse_args(cmd + ["-ngl", "-1", "-ot", "attn_q=CPU", "--override-tensor", r"blk\.1\.=CUDA0,norm=CPU"])
        assert a.gpu_layers == -1
        assert a.override_tensor == [("attn_q", "CPU"), (r"blk\.1\.", "CUDA0"), ("norm", "CPU")]
        assert p.parse_args(cmd).gpu_layers == 0 and p.parse_args(cmd).override_tensor is None
    model = tmp_path / "m.gguf"
    model.write_bytes(b"")
    _, (m,) = settings_from_args(p.parse_args(["serve", str(model), "--gpu-layers", "20", "-ot", "attn=CPU"]))
    assert m.n_gpu_layers == 20 and m.tensor_overrides == ["attn=CPU"]
    kw = llama_arguments(m)
    assert kw["n_gpu_layers"] == 20 and kw["tensor_overrides"] == [("attn", "CPU")]
    _, (m0,) = settings_from_args(p.parse_args(["serve", str(model)]))
    assert m0.n_gpu_layers == 0 and llama_arguments(m0)["tensor_overrides"] is None


def test_command_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from flashmoe_gguf.cli import main
    path = str(gguf_for("qwen3_moe", "Q4_K"))
    assert main(["run", path, "-p", "hi", "-n", "2", "--gpu-layers", "-3"]) == 1
    assert "--gpu-layers must be -1 (all), 0 or a layer count" in capsys.readouterr().err
    assert main(["run", path, "-p", "hi", "-n", "2", "-ot", "exps=CUDA0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would put the routed-expert tensor blk.0.ffn_gate_exps.weight on CUDA0" in err[0]
    with pytest.raises(SystemExit):
        main(["run", path, "-p", "hi", "-ot", "attn"])
    assert "expected REGEX=BUFFER_TYPE" in capsys.readouterr().err


def test_run_with_gpu_layers_without_a_gpu() -> None:
    """No GPU device: --gpu-layers changes nothing (llama.cpp has nowhere to offload), user overrides to the CPU
    load; the same greedy text as without them."""
    import io

    from flashmoe_gguf.run import run
    path = str(gguf_for("qwen3_moe", "Q4_K"))
    plain, hybrid = io.StringIO(), io.StringIO()
    run(path, "Hello there", 8, "64M", 256, 2, out=plain)
    run(path, "Hello there", 8, "64M", 256, 2, out=hybrid, gpu_layers=-1, tensor_overrides=[("attn_q", "CPU")])
    assert hybrid.getvalue().split("[flashmoe]")[0] == plain.getvalue().split("[flashmoe]")[0]


def test_partial_offload_matches_stock(rpc_build) -> None:  # type: ignore[no-untyped-def]
    """n_gpu_layers=1 of 2 layers: one layer on the "GPU", one on the CPU (where our backend also runs its expert
    block's activation, as ggml-cpu would): logits and greedy tokens still stock's with the same layers offloaded.
    (The splits differ from stock's in the CPU layer: stock computes it all on the CPU backend, with no crossing.)"""
    path = gguf_for("qwen3_moe", "Q4_K")
    total = expert_bytes(path)
    res = run_child({"model": str(path), "lib": str(rpc_build.lib), "server": str(rpc_build.server),
                     "budgets": [2 * total, total // 4], "n_gpu_layers": 1})
    assert 0 < res["stock"]["rpc_model_mib"]
    for run in res["flashmoe"]:
        assert run["gpu_hybrid"] and run["rpc_model_mib"] == res["stock"]["rpc_model_mib"]
        assert run["batch_equal"] and run["decode_equal"] and run["greedy_equal"], run


def test_products_alone_cross_four_times(rpc_build) -> None:  # type: ignore[no-untyped-def]
    """The control of the split counts: with FLASHMOE_EXPERT_BLOCK=0 our backend takes the expert products alone and
    the activation goes back to the "GPU" between them: 2 splits more per MoE layer than stock's (2 layers: 10
    against 6). The logits stay equal here (the RPC server computes the activation with ggml-cpu too; a real GPU
    would not), so only the splits tell the block ops apart."""
    path = gguf_for("qwen3_moe", "Q4_K")
    res = run_child({"model": str(path), "lib": str(rpc_build.lib), "server": str(rpc_build.server),
                     "budgets": [2 * expert_bytes(path)], "gpu_block": False})
    (run,) = res["flashmoe"]
    stock = [int(x) for x in res["stock"]["splits"]]
    assert [int(x) for x in run["splits"]] == [n + 4 for n in stock], (run["splits"], stock)
    assert run["batch_equal"] and run["decode_equal"]


def test_read_error_with_gpu_layers(rpc_build) -> None:  # type: ignore[no-untyped-def]
    """A failing expert read in the middle of a GPU-layers graph: FlashMoeError with the read's error, no crash,
    and the model stays failed (no tokens from missing experts)."""
    res = run_child({"mode": "read_fault", "model": str(gguf_for("qwen3_moe", "Q4_K")), "lib": str(rpc_build.lib),
                     "server": str(rpc_build.server)})
    assert res["first"] and "Input/output error" in res["first"], res
    assert res["again"], res


def test_bench_budget_counts_host_weights_only_with_every_layer_on_the_gpu(cache: Path) -> None:
    """flashmoe bench --gpu-layers -1: the capped budget leaves out the layers' weights (on the GPU), not the
    embedding and output head; a partial offload and no offload count every resident weight, as before."""
    from flashmoe_gguf.bench.model import model_info
    from flashmoe_gguf.bench.plan import BenchPlanOptions, host_resident_bytes, make_plan
    from test_bench import HEADROOM, _synth_cached
    info = model_info(_synth_cached(cache, "qwen3-30b-a3b", 2))
    assert host_resident_bytes(info, -1) == info.resident_fixed_bytes < info.resident_bytes
    assert host_resident_bytes(info, 0) == host_resident_bytes(info, 1) == info.resident_bytes
    cap = info.resident_bytes + info.kv_cache_bytes(512) + HEADROOM + 4 * info.bytes_per_expert
    budgets = {}
    for layers in (0, -1):
        opt = BenchPlanOptions(caps=(cap,), warm=False, ks=(None,), configs=("flashmoe-lfu",), tokens=4,
                               prompt_tokens=8, n_ctx=512, threads=1, headroom=HEADROOM, gpu_layers=layers)
        (run,) = make_plan(info, opt)
        assert run.spec.gpu_layers == layers
        budgets[layers] = (run.spec.budget, run.spec.budget_before_context)
    gap = info.resident_bytes - info.resident_fixed_bytes
    assert budgets[-1] == (budgets[0][0] + gap, budgets[0][1] + gap)


def test_auto_budget_leaves_out_weights_on_the_gpu(rpc_build) -> None:  # type: ignore[no-untyped-def]
    """ram_budget="auto" subtracts the non-expert weights in host memory: all of them on the CPU, with a partial
    offload or with user overrides (which may bring weights back); with every layer on the GPU only the tensors
    outside the layers (embedding, output head and norm)."""
    res = run_child({"mode": "resident", "model": str(gguf_for("qwen3_moe", "Q4_K")), "lib": str(rpc_build.lib),
                     "server": str(rpc_build.server)})
    for name in ("cpu", "partial", "all_with_override"):
        assert res[name]["host_resident"] == res[name]["non_expert"] and not res[name]["all_layers_on_gpu"], name
    a = res["all"]
    assert a["all_layers_on_gpu"] and a["host_resident"] == a["outside_layers"] < a["non_expert"]


def test_compute_buffers_are_host_memory() -> None:
    """Our backend's default buffer type (the scheduler's compute buffers for its intermediates) is host memory of
    the type stock llama.cpp gives its CPU backend (the first GPU's host buffer type, else the CPU buffer type; no
    GPU here: CPU), so a crossing from or to a GPU is one direct transfer (ggml_backend_tensor_copy) and the CPU
    backend reads our results in place (tests/test_splits.py); our device's buffer type, where llama.cpp places
    the expert weights, stays ours and not host. Checked with ggml's own calls."""
    import ctypes

    from flashmoe_gguf import Llama, ggml_devices
    llm = Llama(model_path=str(gguf_for("qwen3_moe", "Q4_K")), ram_budget="64M", n_ctx=64, verbose=False)
    try:
        ours = [d for d in ggml_devices.devices() if d.name == "FLASHMOE"]
        assert len(ours) == 1 and ours[0].buft_name == "FLASHMOE"
        lib = ggml_devices.libs()
        vp = ctypes.c_void_p
        for name, res, args in (("ggml_backend_dev_init", vp, [vp, ctypes.c_char_p]),
                                ("ggml_backend_get_default_buffer_type", vp, [vp]),
                                ("ggml_backend_buft_is_host", ctypes.c_bool, [vp]),
                                ("ggml_backend_free", None, [vp])):
            getattr(lib.base, name).restype = res
            getattr(lib.base, name).argtypes = args
        dev = [lib.reg.ggml_backend_dev_get(i) for i in range(lib.reg.ggml_backend_dev_count())
               if lib.base.ggml_backend_dev_name(lib.reg.ggml_backend_dev_get(i)) == b"FLASHMOE"][0]
        assert not lib.base.ggml_backend_buft_is_host(lib.base.ggml_backend_dev_buffer_type(dev))
        backend = lib.base.ggml_backend_dev_init(dev, None)
        assert backend
        try:
            buft = lib.base.ggml_backend_get_default_buffer_type(backend)
            assert lib.base.ggml_backend_buft_is_host(buft)
            assert lib.base.ggml_backend_buft_name(buft).decode() == "CPU" and not ggml_devices.has_gpu()
        finally:
            lib.base.ggml_backend_free(backend)
        llm.eval([1, 2, 3])     # and the model computes (its compute buffers came the same way)
    finally:
        llm.close()


def test_bench_worker_opens_the_gpu_before_its_baseline(rpc_build) -> None:  # type: ignore[no-untyped-def]
    """The bench's worker with GPU layers starts a backend on every GPU device before it measures its baseline RSS
    (a GPU runtime's context is host memory that stays with the process, not flashmoe's memory): the real worker
    with the RPC stand-in names the RPC device in its start event, before the load, and finishes its run."""
    import os

    import rpc_standin
    from flashmoe_gguf.bench.worker import EVENT, WorkerSpec
    path = gguf_for("qwen3_moe", "Q4_K")
    spec = WorkerSpec(config="flashmoe-lfu", model=str(path), threads=2, tokens=2, prompt_tokens=4, n_ctx=64,
                      budget=expert_bytes(path), gpu_layers=-1)
    with rpc_standin.server(rpc_build) as endpoint:
        env = dict(os.environ, FLASHMOE_RPC=f"{rpc_build.lib}@{endpoint}")
        r = subprocess.run(spec.command(), capture_output=True, text=True, env=env, timeout=600)
        cpu = subprocess.run(WorkerSpec(**{**spec.__dict__, "gpu_layers": 0}).command(), capture_output=True,
                             text=True, env=env, timeout=600)
    assert r.returncode == 0 and cpu.returncode == 0, r.stderr[-3000:] + cpu.stderr[-3000:]
    events = [json.loads(ln[len(EVENT):]) for ln in r.stdout.splitlines() if ln.startswith(EVENT)]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and "loaded" in kinds and "done" in kinds
    assert events[0]["gpus_opened"] == ["RPC0"]          # the RPC backend's device name (its buffer type: RPC0[HOST:PORT])
    cpu_start = [json.loads(ln[len(EVENT):]) for ln in cpu.stdout.splitlines() if ln.startswith(EVENT)][0]
    assert cpu_start["event"] == "start" and cpu_start["gpus_opened"] == []
