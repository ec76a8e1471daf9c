"""`flashmoe bench FILE.gguf`: decode speed of flashmoe against stock llama-cpp-python on this machine, under RAM
caps, with the disk bound, as a report (JSON, Markdown, PNG plots). `cli.py` calls `add_arguments` and `main`."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ..units import parse_size
from . import disk as diskmod
from .arguments import add_arguments, parse_caps, parse_configs, parse_ks  # noqa: F401  (re-exported)
from .cgroup import check_available
from .extrapolate import FixedPart
from .machine import QuietRule, block_device_of, describe, meminfo, wait_quiet
from .model import ModelInfo, model_info
from .plan import BUDGET_DOC, SAFETY, BenchPlanOptions, flashmoe_budget, make_plan
from .report import build, derive, render_markdown, round_ratios_text, sanitize, write_json
from .runner import Control, RunPlan, RunResult, run_config, status_text
from .routing import Trace
from .traces import check_fits, routing_trace, save_trace
from .worker import is_flashmoe

MB = 1e6


@dataclass(frozen=True)
class Setup:
    info: ModelInfo
    caps: tuple[int, ...]
    plan_options: BenchPlanOptions
    control: Control
    limitations: tuple[str, ...]
    report_dir: Path
    second_slice: ModelInfo | None = None
    trace: Trace | None = None          # --routing: the trace flashmoe's runs replay


def setup(args: argparse.Namespace) -> Setup:
    """Everything decided before the first run (no side effects but reading the model's header)."""
    path = Path(args.file).resolve()
    if not path.is_file():
        raise ValueError(f"{args.file}: no such file")
    info = model_info(path, args.full_layers)
    caps = parse_caps(args.ram, info.file_bytes)
    ks = parse_ks(args.k)
    configs = parse_configs(args.cache, args.compare)
    for name, v in (("--tokens", args.tokens), ("--prompt-tokens", args.prompt_tokens), ("--threads", args.threads),
                    ("--rounds", args.rounds)):
        if v <= 0:
            raise ValueError(f"{name} must be positive")
    if args.n_batch < 0 or args.n_ubatch < 0:
        raise ValueError("--n-batch and --n-ubatch must not be negative")
    if args.n_batch and args.n_ubatch > args.n_batch:
        raise ValueError(f"--n-ubatch {args.n_ubatch} is larger than --n-batch {args.n_batch} (llama.cpp would "
                         "cut the micro-batch to the batch)")
    need = args.prompt_tokens + args.tokens + 2 * args.probe_pairs + 8
    if not args.n_ctx:          # a fitting context: 512 (llama-cpp-python's default), or what the run needs
        args.n_ctx = max(512, -(-need // 256) * 256)
    if args.n_ctx < need:
        raise ValueError(f"--n-ctx {args.n_ctx} is too small for {args.prompt_tokens} prompt tokens, {args.tokens} "
                         f"decode steps and {args.probe_pairs} probe pairs")
    if args.gpu_layers < -1:
        raise ValueError(f"--gpu-layers must be -1 (all), 0 or a layer count, not {args.gpu_layers}")
    if not caps and args.no_warm:
        raise ValueError("nothing to run: --ram none and --no-warm")
    headroom = parse_size(args.headroom)
    limitations = []
    cg_reason = "pretending to be unprivileged (--unprivileged)" if args.unprivileged else check_available()
    drop = not args.unprivileged and diskmod.can_drop_caches()
    if cg_reason:
        limitations.append(f"no memory cgroup ({cg_reason}): RAM caps are NOT enforced (flashmoe still gets the "
                           "budget a cap implies; stock runs uncapped), peak memory is VmHWM without page cache, "
                           "and an OOM kill cannot be told from another SIGKILL")
    if not drop:
        limitations.append("cannot drop the page cache (needs root): capped runs are not guaranteed cold (files "
                           "read earlier may still be cached), the disk is measured with O_DIRECT instead")
    if args.threads >= (os.cpu_count() or 1):
        limitations.append(f"--threads {args.threads} uses every core: ggml's threads spin at barriers, so any other "
                           "process on the machine slows decoding a lot")
    if args.gpu_layers:
        limitations.append(f"--gpu-layers {args.gpu_layers}: flashmoe keeps the routed experts streamed on the CPU "
                           "(GPU hybrid mode); stock puts them on the GPU too, stock-exps-cpu keeps them in host "
                           "memory. flashmoe's budget under a cap counts as host memory the resident weights outside "
                           "the layers with --gpu-layers -1 (the token embedding stays on the CPU; the output head, "
                           "counted too, does not), every resident weight otherwise")
    if args.resident_repack:
        limitations.append("--resident-repack: flashmoe's resident weights in llama.cpp's extra buffer types "
                           "(CPU_REPACK, AMX), as stock loads them; the stock configuration it equals bit for bit is "
                           "stock-exps-cpu-repack, where CPU_REPACK leaves the expert type alone")
    rule = QuietRule(wait_s=args.wait, max_busy=args.max_busy)
    dev = block_device_of(path).get("device", "")
    ram = meminfo().get("MemTotal", 0) or None
    control = Control(cgroup=cg_reason is None, drop_caches=drop, timeout_s=args.timeout, stall_s=args.stall,
                      quiet=rule, disk_device=dev, retries=args.retries, max_busy=args.max_busy,
                      safety_limit=int(SAFETY * ram) if ram else None)
    # long enough that the warm-up and timed runs do not wrap around (prompt rows + decode rows, twice)
    trace = routing_trace(args.routing, tokens=min(4096, max(256, 2 * (args.prompt_tokens + args.tokens) + 64)))
    if trace is not None:
        for k in ks:
            check_fits(trace, info.n_expert, k or info.n_expert_used, info.block_count)
        limitations.append(f"routing: flashmoe's streamed expert products replay {trace.name} ({trace.model}) in "
                           "place of the router's choice; stock runs keep their router's, so only flashmoe's runs "
                           "see real routing's reuse (and decode outputs differ from stock's)")
    opt = BenchPlanOptions(caps, not args.no_warm, ks, configs, args.tokens, args.prompt_tokens, args.n_ctx,
                           args.threads, headroom, args.feed, args.probe_pairs, ram, args.rounds,
                           routing=args.routing, n_batch=args.n_batch or args.n_ubatch, n_ubatch=args.n_ubatch,
                           flash_attn=args.flash_attn, gpu_layers=args.gpu_layers,
                           op_offload=not args.no_op_offload, resident_repack=args.resident_repack)
    second = None
    if args.slice is not None:
        second = model_info(Path(args.slice).resolve(), args.full_layers or info.full_layers)
        same = (second.arch, second.n_expert, second.bytes_per_expert, second.resident_fixed_bytes)
        if same != (info.arch, info.n_expert, info.bytes_per_expert, info.resident_fixed_bytes):
            raise ValueError(f"--slice {args.slice} is not a slice of the same model as {path} (architecture, "
                             "experts, expert size or embedding/output differ)")
        if second.block_count == info.block_count:
            raise ValueError(f"--slice {args.slice} has the same layer count ({info.block_count}) as {path}")
        if args.no_warm:
            raise ValueError("--slice needs the warm setting (drop --no-warm)")
    report_dir = Path(args.report) if args.report else \
        Path.cwd() / f"flashmoe-bench-{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Setup(info, caps, opt, control, tuple(limitations), report_dir, second, trace)


def command_line(args: argparse.Namespace) -> str:
    """The command as typed when run as `flashmoe bench ...`, else rebuilt from every option."""
    if sys.argv[1:2] == ["bench"]:
        return shlex.join(["flashmoe", "bench"] + sys.argv[2:])
    parts = ["flashmoe", "bench", str(args.file)]
    for k, v in sorted(vars(args).items()):
        if k in ("file", "func", "command") or v is None or v is False:
            continue
        parts += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return shlex.join(parts)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main(args: argparse.Namespace, log: Callable[[str], None] | None = None) -> int:
    say: Callable[[str], None] = log or ((lambda s: None) if args.quiet else
                                          (lambda s: print(s, file=sys.stderr, flush=True)))
    st = setup(args)
    old = {s: signal.signal(s, _terminate) for s in (signal.SIGTERM, signal.SIGHUP)}  # `finally` cleans up
    try:
        return _run(args, st, say)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _run(args: argparse.Namespace, st: Setup, say: Callable[[str], None]) -> int:
    info, opt, control = st.info, st.plan_options, st.control
    st.report_dir.mkdir(parents=True, exist_ok=True)
    if st.trace is not None:    # generated once, kept with the report; every flashmoe worker replays this file
        trace_path = st.report_dir / f"routing-{st.trace.name.replace(':', '-')}.npz"
        save_trace(st.trace, trace_path)
        opt = replace(opt, routing=str(trace_path))
        st = replace(st, plan_options=opt)
    kv = info.kv_cache_bytes(opt.n_ctx)
    say(f"flashmoe bench {info.path}: {info.arch}, {info.block_count} layers, {info.n_expert} experts, K "
        f"{info.n_expert_used}; experts {info.expert_bytes / MB:.0f} MB ({info.bytes_per_expert / MB:.2f} MB each), "
        f"resident {info.resident_bytes / MB:.0f} MB, KV cache {kv / MB:.1f} MB")
    for lim in st.limitations:
        say(f"WARNING: {lim}")
    budgets = {}
    for cap in st.caps:
        b = flashmoe_budget(cap, info, opt.n_ctx, opt.headroom)
        budgets[str(cap)] = b
        say(f"cap {cap / MB:.0f} MB -> flashmoe ram_budget {b / MB:.0f} MB"
            + ("  (too small: flashmoe runs skipped)" if b <= 0 else ""))
    plan = make_plan(info, opt)
    meta: dict[str, Any] = {
        "command": command_line(args), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": describe(info.path), "options": {k: (str(v) if isinstance(v, Path) else v)
                                                    for k, v in vars(args).items() if k != "func"},
        "control": {"cgroup": control.cgroup, "drop_caches": control.drop_caches,
                    "limitations": list(st.limitations), "quiet_rule": asdict(control.quiet)},
        "budget_rule": BUDGET_DOC, "caps_bytes": list(st.caps), "budgets_bytes": budgets, "kv_cache_bytes": kv,
        "plan": [p.name for p in plan],
    }
    meta["options"]["headroom"] = opt.headroom
    results: list[RunResult] = []
    rounds: list[dict[str, Any]] = []
    disk: dict[str, Any] = {}
    json_path = st.report_dir / "report.json"

    def measure_disk(label: str, seed: int) -> None:
        if args.disk_repeats <= 0:
            return
        quiet = wait_quiet(control.disk_device, control.quiet, say)
        say(f"disk: {label}: {args.disk_repeats} x {args.disk_reads} random expert reads, {args.disk_threads} threads")
        rounds.append(diskmod.measure_round(info.path, label, args.disk_reads, args.disk_threads, args.disk_repeats,
                                            seed, control.drop_caches))
        rounds[-1]["quiet_before"] = asdict(quiet)
        say(f"disk: {label}: " + ", ".join(f"{x:.3f}" for x in rounds[-1]["repeats"]) +
            f" GB/s; one thread {rounds[-1]['single_thread_gb_s']:.3f} GB/s")

    second: dict[str, Any] = {}

    def save(final: bool) -> dict[str, Any]:
        derived = derive(results, info, disk, opt.n_ctx, opt.headroom, two_slice_fixed(results, info, second))
        rep = sanitize(build(meta, info, results, disk, derived))
        if final:
            rep["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
        write_json(json_path, rep)
        return rep

    warmed = False
    meta["warm_file_seconds"] = []
    try:
        measure_disk("before the runs", 0)
        disk = diskmod.combine(rounds)
        if args.disk_repeats > 0 and any(p.cold for p in plan):
            # what a cold load of the non-expert weights should reach (the report sets each cold load against it)
            seq = diskmod.sequential_cold(info.path, max(info.resident_bytes, 1 << 30), control.drop_caches)
            meta["sequential_disk"] = seq
            say(f"disk: sequential read {seq['gb_s']:.3f} GB/s ({seq['bytes'] / 1e9:.2f} GB"
                f"{', cold' if seq['cold'] else ''})")
        for i, p in enumerate(plan, 1):
            if p.setting == "nocap":
                if not warmed and any(q.setting == "capped" for q in plan):
                    measure_disk("after the capped runs", 1000)
                    disk = diskmod.combine(rounds)
                # before every warm run: the run before (stock's repacked copy of the weights, 90 % of the RAM)
                # may have pushed part of the file out of the page cache
                meta["warm_file_seconds"].append(diskmod.warm_file(info.path))
                warmed = True
            say(f"[{i}/{len(plan)}] {p.name}")
            r = _run_one(p, info, control, say)
            results.append(r)
            say(f"[{i}/{len(plan)}] {p.name}: {_line(r)}")
            save(False)
        if not warmed and len(rounds) == 1:
            measure_disk("after the runs", 1000)
        disk = diskmod.combine(rounds)
        if st.second_slice is not None:
            second.update(run_second_slice(st, say))
            meta["second_slice"] = second
    finally:
        rep = save(True)
        (st.report_dir / "report.md").write_text(render_markdown(rep))    # also when a run failed or was stopped
    from .plots import make_plots, matplotlib_missing
    missing = matplotlib_missing()
    if missing:
        rep["plots"] = {"files": [], "skipped": missing}
        say(f"plots skipped: {missing}")
    else:
        rep["plots"] = {"files": make_plots(rep, st.report_dir)}
    write_json(json_path, rep)
    md = render_markdown(rep)
    (st.report_dir / "report.md").write_text(md)
    print(summary_lines(rep))
    print(f"report: {st.report_dir / 'report.md'} (every figure: {json_path})")
    return 0


def run_second_slice(st: Setup, say: Callable[[str], None]) -> dict[str, Any]:
    """The warm run of the first flashmoe configuration at the first K on the other slice (--slice)."""
    other = st.second_slice
    assert other is not None
    opt = st.plan_options
    import dataclasses
    plan = [p for p in make_plan(other, dataclasses.replace(opt, caps=(), warm=True, probe_pairs=0))
            if is_flashmoe(p.config)][:1]
    if not plan:
        return {}
    p = dataclasses.replace(plan[0], name=f"second slice {Path(other.path).name} / " + plan[0].name)
    diskmod.warm_file(other.path)
    say(f"[slice] {p.name}")
    r = _run_one(p, other, st.control, say)
    say(f"[slice] {p.name}: {_line(r)}")
    return {"model": asdict(other), "run": asdict(r)}


def two_slice_fixed(results: list[RunResult], info: ModelInfo, second: dict[str, Any]) -> FixedPart | None:
    """F from this file's and the other slice's warm run of the same configuration and K (None if missing)."""
    from .extrapolate import fixed_from_two_slices
    run = second.get("run") if second else None
    if not run or run["status"] != "ok" or not run["decode_tok_s"]:
        return None
    mine = next((r for r in results if r.setting == "nocap" and r.config == run["config"] and r.k == run["k"]
                 and r.ok() and r.decode_tok_s), None)
    if mine is None or not mine.decode_tok_s:
        return None
    return fixed_from_two_slices(run["config"], (info.path, info.block_count, 1.0 / mine.decode_tok_s),
                                 (second["model"]["path"], second["model"]["block_count"], 1.0 / run["decode_tok_s"]))


def _run_one(p: RunPlan, info: ModelInfo, control: Control, say: Callable[[str], None]) -> RunResult:
    if is_flashmoe(p.config) and p.spec.budget <= 0:
        r = RunResult(p.name, p.config, p.setting, p.k, p.k_overridden, p.cap, p.spec.budget, p.spec.threads,
                      p.spec.command(), expert_bytes_needed_per_token=info.expert_bytes_per_token(p.k), round=p.round)
        r.status = "skipped: cap below resident + KV cache + headroom"
        return r

    def on_event(e: dict[str, Any]) -> None:
        if e["event"] == "loaded":
            say(f"    loaded in {e['seconds']:.2f} s")
        elif e["event"] == "token" and (e["i"] + 1) % 8 == 0:
            say(f"    token {e['i'] + 1}/{p.spec.tokens}")

    return run_config(p, info, control, say, on_event)


def _line(r: RunResult) -> str:
    def f(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)
    return (f"{r.status_text()}: load {f(r.load_s, '.2f')} s, TTFT {f(r.ttft_s, '.3f')} s, prompt "
            f"{f(r.prompt_tok_s, '.1f')} tok/s, decode {f(r.decode_tok_s, '.3f')} tok/s, peak "
            f"{f(r.peak_memory_bytes / MB if r.peak_memory_bytes else None, '.0f')} MB"
            + (f", expert {r.expert_bytes_per_token / MB:.2f} MB/token, hit rate {r.hit_rate_bytes:.3f}"
               if r.expert_bytes_per_token is not None and r.hit_rate_bytes is not None else ""))


def summary_lines(rep: dict[str, Any]) -> str:
    out = []
    d = rep.get("disk_bandwidth") or {}
    if d:
        out.append(f"disk: {d['gb_s']:.3f} GB/s cold random expert reads ({d['min_gb_s']:.3f}-{d['max_gb_s']:.3f})")
    for r in rep["runs"]:
        pr = rep["per_run"].get(r["name"], {})
        frac = pr.get("fraction_of_bound_at_hit_rate")
        if r["status"] == "ok":
            out.append(f"{r['name']:45s} {r['status']:10s} decode "
                       f"{'-' if r['decode_tok_s'] is None else format(r['decode_tok_s'], '.3f'):>8} tok/s"
                       + (f"  ({frac:.0%} of the disk bound at its hit rate)" if frac else ""))
        else:       # where the worker stopped, and what it decoded before (never a bare "decode" beside it)
            out.append(f"{r['name']:45s} {status_text(r['status'], r.get('phase'))}"
                       + (f" (decode {r['decode_tok_s']:.3f} tok/s over {r['decode_tokens_done']} tokens before)"
                          if r["decode_tok_s"] else ""))
    for x in rep["ratios"]:
        if x["ratio"]:
            out.append(f"{x['flashmoe']} / {x['versus']} ({x['setting']}, K={x['k']}, cap "
                       f"{'-' if x['cap_bytes'] is None else format(x['cap_bytes'] / 2**30, '.2f') + 'G'}): "
                       f"{x['ratio']:.2f}x" + (f" (medians of {x['rounds']} rounds; same-round ratios "
                                                 f"{round_ratios_text(x)})" if x.get("rounds", 1) > 1 else ""))
    ex = rep["extrapolation"]
    if ex.get("applies"):
        for x in ex["runs"]:
            v = f"{x['full_decode_tok_s']:.3f} tok/s" if x["full_decode_tok_s"] else "unresolved (F >= token time)"
            out.append(f"extrapolated to {x['full_layers']} layers: {x['run']}: {v}")
    if rep.get("memory_check_all_pass") is not None:
        out.append(f"memory check (issue 3 rule): {'pass' if rep['memory_check_all_pass'] else 'FAIL'}")
        ctx = [d["memory_check"].get("pass_with_context") for d in rep["per_run"].values() if "memory_check" in d]
        if ctx and None not in ctx:
            out.append(f"memory check with llama.cpp's context (KV, compute, output buffers) in place of the KV "
                       f"cache: {'pass' if all(ctx) else 'FAIL'}")
    return "\n".join(out)
