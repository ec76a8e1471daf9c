"""The report: every figure as JSON, and a Markdown summary of it.

`derive` computes the per-run figures that need more than one run or the disk measurement (disk bounds, % of the
bound, the memory check, ratios, the K check, the extrapolation); `write_json` and `render_markdown` write them.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from .disk import decode_bound
from . import extrapolate as _extrapolate_module
from .extrapolate import FixedPart, extrapolate_run, fixed_from_probe, full_model_ram
from .model import ModelInfo
from .plan import BUDGET_DOC as BUDGET_RULE
from .runner import RunResult, status_text
from .worker import is_flashmoe

MB = 1e6
MEMORY_SLACK = 0.10       # issue 3: steady-state RSS <= non-expert weights + ram_budget + KV cache + 10 %



def bound_hit_rate(r: RunResult) -> float:
    """The hit rate the disk bound is evaluated at: for flashmoe's own cache (every mode but os) the share of the
    expert bytes a token needs that flashmoe did not read; for the page cache (flashmoe-os, stock) the share the
    disk did not deliver (/proc/<pid>/io read_bytes; readahead can make it negative: clamped at 0)."""
    if is_flashmoe(r.config) and r.config != "flashmoe-os" and r.hit_rate_bytes is not None:
        return min(1.0, max(0.0, r.hit_rate_bytes))
    if r.read_bytes_per_token is not None and r.expert_bytes_needed_per_token:
        return min(1.0, max(0.0, 1.0 - r.read_bytes_per_token / r.expert_bytes_needed_per_token))
    return 0.0


def memory_check(r: RunResult, info: ModelInfo, n_ctx: int) -> dict[str, Any] | None:
    """Issue 3's memory rule for a flashmoe run: RSS at the end of decode against
    1.1 x (non-expert weights + ram_budget + KV cache). The interpreter and libraries (RSS before the model
    loads; with GPU layers, after a backend was started on every GPU, so that the GPU runtime's own host memory,
    the CUDA context, is in it) are not in that formula: `pass` compares the RSS above that baseline,
    `pass_including_baseline` the whole RSS. Nor are llama.cpp's compute and output buffers: `pass_with_context` puts the whole context the
    worker measured (KV cache, compute and output buffers) where the rule has the KV cache."""
    if not is_flashmoe(r.config) or "end_of_decode" not in r.rss or r.budget_bytes is None:
        return None
    kv = info.kv_cache_bytes(n_ctx)
    allowed = (info.resident_bytes + max(r.budget_bytes, 0) + kv) * (1 + MEMORY_SLACK)
    with_ctx = (info.resident_bytes + max(r.budget_bytes, 0) + (r.context_bytes or 0)) * (1 + MEMORY_SLACK)
    base = r.rss.get("baseline", 0)
    rss = r.rss["end_of_decode"]
    return {"allowed_bytes": int(allowed), "resident_bytes": info.resident_bytes, "budget_bytes": r.budget_bytes,
            "kv_cache_bytes": kv, "baseline_rss_bytes": base, "rss_end_of_decode_bytes": rss,
            "vm_hwm_bytes": r.rss.get("hwm"), "rss_above_baseline_bytes": rss - base,
            "pass": rss - base <= allowed, "pass_including_baseline": rss <= allowed,
            "hwm_above_baseline_pass": (r.rss.get("hwm", 0) - base) <= allowed,
            "context_bytes": r.context_bytes,
            "allowed_with_context_bytes": None if r.context_bytes is None else int(with_ctx),
            "pass_with_context": None if r.context_bytes is None else rss - base <= with_ctx}


def derive(results: list[RunResult], info: ModelInfo, disk: dict[str, Any], n_ctx: int, headroom: int,
           fixed_override: FixedPart | None = None) -> dict[str, Any]:
    """Everything computed across runs."""
    gb_s = disk.get("gb_s") if disk else None
    per_run: dict[str, Any] = {}
    for r in results:
        d: dict[str, Any] = {"bound_hit_rate": bound_hit_rate(r) if r.ok() else None}
        if gb_s and r.expert_bytes_needed_per_token:
            d["disk_bound_0_hit_tok_s"] = decode_bound(gb_s, r.expert_bytes_needed_per_token, 0.0)
            if r.ok():
                b = decode_bound(gb_s, r.expert_bytes_needed_per_token, d["bound_hit_rate"])
                d["disk_bound_at_hit_rate_tok_s"] = b
                if r.decode_tok_s:
                    d["fraction_of_bound_at_hit_rate"] = r.decode_tok_s / b if math.isfinite(b) else None
                    d["fraction_of_bound_0_hit"] = r.decode_tok_s / d["disk_bound_0_hit_tok_s"]
                    if disk.get("min_gb_s") and disk.get("max_gb_s") and math.isfinite(b):
                        d["fraction_of_bound_range"] = [
                            r.decode_tok_s / decode_bound(disk["max_gb_s"], r.expert_bytes_needed_per_token,
                                                          d["bound_hit_rate"]),
                            r.decode_tok_s / decode_bound(disk["min_gb_s"], r.expert_bytes_needed_per_token,
                                                          d["bound_hit_rate"])]
        d.update(prefill(r, gb_s))
        mc = memory_check(r, info, n_ctx)
        if mc is not None:
            d["memory_check"] = mc
        per_run[r.name] = d

    # flashmoe vs each compared configuration, same setting, cap and K
    ratios: list[dict[str, Any]] = []
    prompt_ratios: list[dict[str, Any]] = []     # the same for prompt tok/s (time to first token)
    groups: dict[tuple[str, int | None, int], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.setting, r.cap_bytes, r.k), []).append(r)
    for (setting, cap, k), rs in groups.items():
        configs = list(dict.fromkeys(r.config for r in rs))
        for fc in (c for c in configs if is_flashmoe(c)):
            for sc in (c for c in configs if not is_flashmoe(c)):
                f_runs, s_runs = [r for r in rs if r.config == fc], [r for r in rs if r.config == sc]
                ratios.append(compare(setting, cap, k, f_runs, s_runs))
                prompt_ratios.append(compare(setting, cap, k, f_runs, s_runs, _prompt_speed))

    out: dict[str, Any] = {"per_run": per_run, "ratios": ratios, "prompt_ratios": prompt_ratios,
                           "k_check": k_check(results, info),
                           "extrapolation": extrapolation(results, info, disk, per_run, n_ctx, headroom,
                                                          fixed_override)}
    checks = [d["memory_check"]["pass"] for d in per_run.values() if "memory_check" in d]
    out["memory_check_all_pass"] = all(checks) if checks else None
    # the fixed part of a token's time (output head etc.) per configuration and K, also for whole models
    out["fixed_parts"] = {f"{c} K={k}": asdict(f) for (c, k), f in fixed_parts(results).items()}
    return out


def _speed(r: RunResult) -> float | None:
    return r.decode_tok_s if r.ok() and r.decode_tok_s else None


def _prompt_speed(r: RunResult) -> float | None:
    return r.prompt_tok_s if r.ok() and r.prompt_tok_s else None


def prefill(r: RunResult, gb_s: float | None) -> dict[str, Any]:
    """flashmoe's prompt: where its time went (I/O wait, expert compute, the rest) and the prefill bound, prompt
    tokens x disk bandwidth / expert bytes read for the prompt (= micro-batch tokens x bandwidth / expert bytes
    read per micro-batch, summed over the micro-batches): how fast the prompt could go if reading the experts were
    all it did."""
    p = r.flashmoe.get("prompt") if r.flashmoe else None
    if not p or not r.ttft_s or not r.prompt_tok_s:
        return {}
    tokens = r.prompt_tok_s * r.ttft_s
    io_wait, compute = p["io_wait_seconds"], p["expert_compute_seconds"]
    out: dict[str, Any] = {"prompt_io_wait_s": io_wait, "prompt_expert_compute_s": compute,
                           "prompt_rest_s": max(0.0, r.ttft_s - io_wait - compute),
                           "prompt_expert_bytes_read": p["expert_bytes_read"]}
    if gb_s and p["expert_bytes_read"] > 0:
        bound = tokens * gb_s * 1e9 / p["expert_bytes_read"]
        out.update(prefill_bound_tok_s=bound, fraction_of_prefill_bound=r.prompt_tok_s / bound)
    return out


def compare(setting: str, cap: int | None, k: int, f_runs: list[RunResult], s_runs: list[RunResult],
            speed: Callable[[RunResult], float | None] = _speed) -> dict[str, Any]:
    """flashmoe's runs of one configuration against a compared configuration's runs of the same setting, cap and
    K (decode tok/s, or what `speed` gives). With one run each, their ratio. With rounds (--rounds), the ratio of
    the medians, and the ratio within each round where both finished (`round_ratios`; a machine that drifts slows
    both runs of a round alike)."""
    f_speeds, s_speeds = [speed(r) for r in f_runs], [speed(r) for r in s_runs]
    fs, ss = [x for x in f_speeds if x], [x for x in s_speeds if x]
    f_med = statistics.median(fs) if fs else None
    s_med = statistics.median(ss) if ss else None
    by_round = {r.round: (r, v) for r, v in zip(s_runs, s_speeds)}
    pairs = [(f, v, *by_round[f.round]) for f, v in zip(f_runs, f_speeds) if f.round in by_round]
    round_ratios = [fv / sv for _, fv, _, sv in pairs if fv and sv]
    first = next(((f, r) for f, _, r, _ in pairs if f.ok() and r.ok() and f.tokens), None)
    return {"setting": setting, "cap_bytes": cap, "k": k, "flashmoe": f_runs[0].config, "versus": s_runs[0].config,
            "same_greedy_tokens": first[0].tokens == first[1].tokens if first else None,
            "flashmoe_tok_s": f_med, "versus_status": "ok" if ss else s_runs[0].status, "versus_tok_s": s_med,
            "ratio": f_med / s_med if f_med and s_med else None,
            "rounds": max(len(f_runs), len(s_runs)), "flashmoe_tok_s_runs": f_speeds,
            "versus_tok_s_runs": s_speeds, "round_ratios": round_ratios,
            "round_ratio_min": min(round_ratios) if round_ratios else None,
            "round_ratio_median": statistics.median(round_ratios) if round_ratios else None}


def round_ratios_text(x: dict[str, Any]) -> str:
    """A comparison's same-round ratios as text, "-" if none."""
    return ", ".join(f"{v:.2f}" for v in x.get("round_ratios") or []) or "-"


def k_check(results: list[RunResult], info: ModelInfo) -> dict[str, Any]:
    """Did the K override apply? For every flashmoe run that finished, expert lookups per decode token must be
    layers x K x expert tensors per layer (one lookup per selected expert and projection tensor), and expert bytes
    needed scale with K."""
    rows: list[dict[str, Any]] = []
    for r in results:
        if is_flashmoe(r.config) and r.ok() and r.expert_lookups_per_token is not None:
            expected = info.layers * r.k * info.expert_tensors_per_layer
            rows.append({"run": r.name, "k": r.k, "overridden": r.k_overridden,
                         "expert_lookups_per_token": r.expert_lookups_per_token, "expected": expected,
                         "expert_bytes_read_per_token": r.expert_bytes_per_token,
                         "applied": abs(r.expert_lookups_per_token - expected) <= 0.01 * expected})
    ks = sorted({int(row["k"]) for row in rows})
    return {"ks": ks, "runs": rows, "all_applied": all(row["applied"] for row in rows) if rows else None}


def extrapolation(results: list[RunResult], info: ModelInfo, disk: dict[str, Any], per_run: dict[str, Any],
                  n_ctx: int, headroom: int, fixed_override: FixedPart | None) -> dict[str, Any]:
    if not info.is_slice:
        return {"applies": False, "why": "the file is not known to be a slice of a bigger model (no "
                "flashmoe.synth.full_layers / flashmoe.synthetic preset in its metadata and no --full-layers)"
                if info.full_layers is None else f"the file has all {info.full_layers} layers"}
    fixed = fixed_parts(results)
    out: dict[str, Any] = {"applies": True, "slice_layers": info.block_count, "full_layers": info.full_layers,
                           "full_layers_source": info.full_layers_source,
                           "method": (_extrapolate_module.__doc__ or "").strip(),
                           "assumption": "every layer of the full model behaves like the slice's layers on average, "
                           "with the same expert cache per layer (same hit rate); the RAM that needs is "
                           "full_model_ram"}
    out["fixed_parts_probe"] = {f"{c} K={k}": asdict(f) for (c, k), f in fixed.items()}
    two_config = fixed_override.slices[0].get("config") if fixed_override and fixed_override.slices else None
    out["fixed_part_two_slices"] = asdict(fixed_override) if fixed_override else None
    runs = []
    unmeasured = False
    for r in results:
        if not (r.ok() and r.decode_tok_s):
            continue
        if fixed_override is not None and r.config == two_config:
            f, source = fixed_override.seconds, "two slices"
        else:
            fp = fixed.get((r.config, r.k)) or next((v for (c, _), v in fixed.items() if c == r.config), None)
            f, source = (fp.seconds, "probe") if fp else (0.0, "not measured")
            unmeasured |= fp is None
        e = extrapolate_run(r.name, r.decode_tok_s, info, f, r.k,
                            disk.get("gb_s") if disk else None, per_run.get(r.name, {}).get("bound_hit_rate"))
        row = e.to_dict()
        row.update(config=r.config, setting=r.setting, k=r.k, cap_bytes=r.cap_bytes, fixed_source=source)
        if e.full_decode_tok_s is None:
            row["note"] = "unresolved: the fixed part is not below this run's token time (noise, or a slice dominated " \
                          "by its output head)"
        if is_flashmoe(r.config) and r.budget_bytes is not None:
            row["full_model_ram"] = full_model_ram(info, r.budget_bytes, n_ctx, headroom)
        runs.append(row)
    out["runs"] = runs
    if unmeasured:
        out["note"] = ("For runs whose configuration had no warm run with the probe, the fixed part was not measured: "
                       "full_decode_tok_s then scales the whole token time by full/slice layers, which counts the "
                       "fixed part full/slice times: a lower bound")
    return out


def fixed_parts(results: list[RunResult]) -> dict[tuple[str, int], FixedPart]:
    """F per (configuration, K) from the probes of the warm runs; stock's last-layer expert time from flashmoe's
    warm run at the same K."""
    out: dict[tuple[str, int], FixedPart] = {}
    for r in results:
        if r.probe and r.ok() and is_flashmoe(r.config):
            f = fixed_from_probe(r.probe)
            if f is not None:
                out[(r.config, r.k)] = f
    for r in results:
        if r.probe and r.ok() and not is_flashmoe(r.config):
            last = next((f.last_layer_expert_s for (c, k), f in out.items() if k == r.k), None)
            f = fixed_from_probe(r.probe, last if last is not None else 0.0)
            if f is not None:
                out[(r.config, r.k)] = f
    return out


def cold_load_lines(rep: dict[str, Any]) -> list[str]:
    """Each cold flashmoe load against the sequential read of the same run: the non-expert bytes over the load's
    time (Llama() construction: everything the load does, not only its reads)"""
    seq = rep.get("sequential_disk")
    resident = rep["model"]["resident_bytes"]
    cold = [r for r in rep["runs"] if r.get("cold") and r["load_s"] and r["config"].startswith("flashmoe")]
    if not seq or not seq.get("gb_s") or not cold:
        return []
    out = [f"**Cold load:** the non-expert weights ({resident / 1e9:.3f} GB) over the load's time, against one "
           f"sequential read of the file's first {seq['bytes'] / 1e9:.2f} GB in {seq['block'] >> 20} MiB blocks"
           f"{' (O_DIRECT' if seq['direct'] else ' (buffered'}{', cold)' if seq['cold'] else ')'}: "
           f"{seq['gb_s']:.3f} GB/s. " + "; ".join(
               f"{r['name']}: {r['load_s']:.2f} s, {resident / r['load_s'] / 1e9:.3f} GB/s = "
               f"{resident / r['load_s'] / 1e9 / seq['gb_s']:.0%}" for r in cold) + ".", ""]
    return out


def build(meta: dict[str, Any], info: ModelInfo, results: list[RunResult], disk: dict[str, Any],
          derived: dict[str, Any]) -> dict[str, Any]:
    return dict(meta, model=asdict(info), disk_bandwidth=disk, runs=[asdict(r) for r in results], **derived)


def write_json(path: Path, report: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=_json_default, allow_nan=False))
    tmp.replace(path)


def _json_default(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, float):
        return None
    return str(x)


def sanitize(x: Any) -> Any:
    """inf / nan -> None (JSON has neither)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: sanitize(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [sanitize(v) for v in x]
    return x


# -- Markdown ------------------------------------------------------------------------------------------------

def _f(x: Any, spec: str, scale: float = 1.0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x * scale, spec)


def _gb(x: Any) -> str:
    return _f(x, ".2f", 1e-9)


def time_split_lines(rep: dict[str, Any]) -> list[str]:
    """Where flashmoe's decode token and prompt went (I/O wait, expert compute, the rest), the prefill bound, and
    the prompt against stock."""
    rows = [(r, rep["per_run"].get(r["name"], {})) for r in rep["runs"] if is_flashmoe(r["config"]) and
            (r.get("time_per_token") or {}).get("io_wait") is not None]
    if not rows:
        return []
    L = ["## Where flashmoe's time goes", "",
         "| run | decode ms/token | I/O wait | expert compute | rest | TTFT s | prompt tok/s | prompt I/O wait s | "
         "prompt expert compute s | prompt rest s | prompt expert MB read | prefill bound tok/s | % of prefill bound |",
         "|" + " --- |" * 13]
    for r, d in rows:
        t = r["time_per_token"]
        total = sum(t.values())
        L.append(" | ".join([
            f"| {r['name']}", _f(total, ".1f", 1e3), _f(t["io_wait"], ".1f", 1e3), _f(t["expert_compute"], ".1f", 1e3),
            _f(t["rest"], ".1f", 1e3), _f(r["ttft_s"], ".3f"), _f(r["prompt_tok_s"], ".1f"),
            _f(d.get("prompt_io_wait_s"), ".3f"), _f(d.get("prompt_expert_compute_s"), ".3f"),
            _f(d.get("prompt_rest_s"), ".3f"), _f(d.get("prompt_expert_bytes_read"), ".0f", 1 / MB),
            _f(d.get("prefill_bound_tok_s"), ".1f"), _f(d.get("fraction_of_prefill_bound"), ".0%") + " |"]))
    L += ["", "Milliseconds per decode token: I/O wait is the time the expert products waited for reads, expert "
          "compute the rest of their time, rest everything else (attention, router, norms, output head, Python). "
          "Prefill bound: prompt tokens x the disk bandwidth / the expert bytes read for the prompt.", ""]
    pr = [x for x in rep.get("prompt_ratios", []) if x.get("flashmoe_tok_s") or x.get("versus_tok_s")]
    if pr:
        L += ["| prompt tok/s | K | flashmoe | tok/s | versus | tok/s | ratio | same-round ratios |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for x in pr:
            where = "no cap, warm" if x["setting"] == "nocap" else f"cap {x['cap_bytes'] / 2**30:.2f} GiB, cold"
            L.append(f"| {where} | {x['k']} | {x['flashmoe']} | {_f(x['flashmoe_tok_s'], '.1f')} | {x['versus']} | "
                     f"{_f(x['versus_tok_s'], '.1f')} | {_f(x['ratio'], '.2f')}{'x' if x['ratio'] else ''} | "
                     f"{round_ratios_text(x)} |")
        L.append("")
    return L


def render_markdown(rep: dict[str, Any]) -> str:
    m, model, disk = rep["machine"], rep["model"], rep.get("disk_bandwidth") or {}
    L: list[str] = [f"# flashmoe bench: `{Path(model['path']).name}`", ""]
    L.append(f"{rep['started']} to {rep.get('finished', '(unfinished)')}; command: `{rep['command']}`")
    L.append("")
    L.append(f"**Machine:** {m['cpu_model']}, {m['nproc']} cores (AVX2 {'yes' if m['avx2'] else 'no'}, AVX-512 "
             f"{'yes' if m['avx512f'] else 'no'}), {m['ram_bytes'] / 2**30:.1f} GiB RAM, disk "
             f"`{m['disk'].get('device', '?')}` {m['disk'].get('model', '')}, kernel {m['kernel']}, Python "
             f"{m['python']}, llama-cpp-python {m['llama_cpp_python']}, flashmoe-gguf {m['flashmoe_gguf']} "
             f"(git {m['git_head'][:10] or '?'}).")
    L.append("")
    L.append(f"**Model:** {model['arch']}, {model['block_count']} layers ({model['layers']} with routed experts), "
             f"{model['n_expert']} experts, K = {model['n_expert_used']} in the file; routed experts "
             f"{_gb(model['expert_bytes'])} GB ({', '.join(model['expert_types'])}), {model['bytes_per_expert'] / MB:.2f} "
             f"MB per expert; resident (non-expert) {_gb(model['resident_bytes'])} GB; file {_gb(model['file_bytes'])} "
             f"GB; KV cache at n_ctx {rep['options']['n_ctx']}: {rep['kv_cache_bytes'] / MB:.1f} MB.")
    L.append("")
    lim = rep["control"]["limitations"]
    if lim:
        L.append("**Not controlled on this machine:** " + "; ".join(lim) + ".")
    else:
        L.append("**Controlled:** every run in a fresh process in its own memory cgroup (peak memory includes the "
                 "page cache); capped runs start with the page cache dropped and the cap includes the page cache.")
    L.append("")
    L.append(f"**Budget rule:** {BUDGET_RULE}; headroom {rep['options']['headroom'] / MB:.0f} MB.")
    L.append("")
    if disk:
        L.append(f"**Disk:** {disk['gb_s']:.3f} GB/s cold random reads of whole experts "
                 f"({', '.join(f'{s / MB:.2f} MB' for s in disk['read_sizes'][:4])}), {disk['threads']} threads, "
                 f"median of {sum(len(r['repeats']) for r in disk['rounds'])} measurements in "
                 f"{len(disk['rounds'])} rounds (range {disk['min_gb_s']:.3f}-{disk['max_gb_s']:.3f}; one thread "
                 + ", ".join(f"{r['single_thread_gb_s']:.3f}" for r in disk["rounds"]) + f"); {disk['method']}. "
                 "Decode bound: tok/s <= bandwidth / (layers x K x bytes per expert x (1 - hit rate)).")
    else:
        L.append("**Disk:** not measured.")
    L.append("")
    L.append("## Runs")
    L.append("")
    L.append("| run | status | load s | TTFT s | prompt tok/s | decode tok/s | expert MB/token read | hit rate "
             "(bytes) | disk MB/token | peak MB | RSS end MB | bound 0 % hits | bound at hit rate | % of bound | "
             "memory check | other processes, cores |")
    L.append("|" + " --- |" * 16)
    per = rep["per_run"]
    for r in rep["runs"]:
        d = per.get(r["name"], {})
        mc = d.get("memory_check")
        L.append(" | ".join([
            f"| {r['name']}",
            status_text(r["status"], r.get("phase")) + (" (OOM)" if r["oom"] and "oom" not in r["status"] else ""),
            _f(r["load_s"], ".2f"), _f(r["ttft_s"], ".3f"), _f(r["prompt_tok_s"], ".1f"),
            _f(r["decode_tok_s"], ".3f") + ("*" if r["status"] != "ok" and r["decode_tok_s"] else ""),
            _f(r["expert_bytes_per_token"], ".2f", 1 / MB), _f(r["hit_rate_bytes"], ".3f"),
            _f(r["read_bytes_per_token"], ".2f", 1 / MB), _f(r["peak_memory_bytes"], ".0f", 1 / MB),
            _f(r["rss"].get("end_of_decode"), ".0f", 1 / MB), _f(d.get("disk_bound_0_hit_tok_s"), ".3f"),
            _f(d.get("disk_bound_at_hit_rate_tok_s"), ".3f"), _f(d.get("fraction_of_bound_at_hit_rate"), ".0%"),
            "-" if mc is None else ("pass" if mc["pass"] else "FAIL") + (
                "" if mc.get("pass_with_context") is None else
                " (with the context: " + ("pass" if mc["pass_with_context"] else "FAIL") + ")"),
            f"{r['others_cores']:.2f} |"]))
    L.append("")
    L.extend(cold_load_lines(rep))
    L.append("Decode tok/s marked * is partial (tokens done before the worker died). Expert MB/token read: "
             "flashmoe_stats() expert_bytes_read per decode token; hit rate (bytes): 1 - that / the expert bytes a "
             "token needs (stock: from the disk's read_bytes, so readahead can make it negative); peak MB: the "
             "cgroup's max usage (RSS + page cache) when a cgroup was used, else VmHWM. Memory check (flashmoe): "
             "RSS at the end of decode minus the RSS before the model loaded <= 1.1 x (non-expert weights + "
             "ram_budget + KV cache); llama.cpp's compute buffers are not in that rule, so a small model can fail it; "
             "in parentheses the same check with llama.cpp's whole context as measured (KV cache, compute and output "
             "buffers) in place of the KV cache. In the no-cap runs the file was read into the page cache beforehand by this "
             "process, so their peak is mostly the worker's own memory. Other processes, cores: the CPU other "
             "processes used during the run, on average (a run above --max-busy was repeated up to --retries "
             "times and the least disturbed attempt kept).")
    L.append("")
    L += time_split_lines(rep)
    if rep["ratios"]:
        L.append("## flashmoe against stock llama-cpp-python")
        L.append("")
        multi = any(x.get("rounds", 1) > 1 for x in rep["ratios"])
        if multi:
            L.append("Every configuration ran in several rounds (`--rounds`, a rotated order each round): tok/s are "
                     "medians, the ratio is the ratio of the medians, and the same-round ratios compare the two runs "
                     "of each round (a machine whose speed drifts slows both alike).")
            L.append("")
        L.append("| setting | K | flashmoe | tok/s | versus | tok/s | ratio | same greedy tokens |"
                 + (" rounds | same-round ratios |" if multi else ""))
        L.append("| --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- | --- |" if multi else ""))
        for x in rep["ratios"]:
            where = "no cap, warm" if x["setting"] == "nocap" else f"cap {x['cap_bytes'] / 2**30:.2f} GiB, cold"
            vs = _f(x["versus_tok_s"], ".3f") if x["versus_tok_s"] is not None else x["versus_status"]
            extra = f" {x.get('rounds', 1)} | {round_ratios_text(x)} |" if multi else ""
            L.append(f"| {where} | {x['k']} | {x['flashmoe']} | {_f(x['flashmoe_tok_s'], '.3f')} | {x['versus']} | "
                     f"{vs} | {_f(x['ratio'], '.2f')}{'x' if x['ratio'] else ''} | "
                     f"{'-' if x['same_greedy_tokens'] is None else 'yes' if x['same_greedy_tokens'] else 'no'} |"
                     + extra)
        L.append("")
    kc = rep["k_check"]
    if kc["runs"]:
        L.append("## Experts per token (K)")
        L.append("")
        L.append("K is set with llama.cpp's `" + f"{model['arch']}.expert_used_count` key override (the same for "
                 "stock and flashmoe). Check: expert lookups per decode token = layers x K x expert tensors per "
                 f"layer ({model['layers']} x K x {model['expert_tensors_per_layer']}): "
                 + ("applied in every flashmoe run." if kc["all_applied"] else "**NOT applied in every run**."))
        L.append("")
        L.append("| run | K | lookups/token | expected | expert MB/token read |")
        L.append("| --- | --- | --- | --- | --- |")
        for x in kc["runs"]:
            L.append(f"| {x['run']} | {x['k']} | {x['expert_lookups_per_token']:.1f} | {x['expected']} | "
                     f"{_f(x['expert_bytes_read_per_token'], '.2f', 1 / MB)} |")
        L.append("")
    ex = rep["extrapolation"]
    L.append("## Full-model extrapolation")
    L.append("")
    if not ex["applies"]:
        L.append(f"Not applicable: {ex['why']}.")
    else:
        L.append(f"This file is a **slice**: {ex['slice_layers']} of the {ex['full_layers']} layers of the full "
                 f"model ({ex['full_layers_source']}). The figures below are **extrapolated**, not measured: "
                 "seconds per token t = F + L x p, with F the fixed part (embedding, output norm and head over the "
                 "vocabulary, logits copy, argmax) and p the per-layer part; p = (t - F) / L from this run, then "
                 "t_full = F + L_full x p.")
        L.append("")
        two, probes = ex.get("fixed_part_two_slices"), ex.get("fixed_parts_probe") or {}
        if two:
            a, b = two["slices"]
            L.append(f"{a['config']}: F = {two['seconds'] * 1e3:.2f} ms and p = {two['per_layer_s'] * 1e3:.2f} ms per "
                     f"layer, solved from its warm runs on two slices: {a['layers']} layers "
                     f"{a['seconds_per_token'] * 1e3:.2f} ms per token, {b['layers']} layers "
                     f"{b['seconds_per_token'] * 1e3:.2f} ms (`{Path(b['path']).name}`); this F is used for its runs, "
                     "the probe's below is a cross-check.")
            L.append("")
        if probes:
            L.append("F from the fixed-part probe (decode steps with and without output; llama.cpp then skips the "
                     "output head and the last layer's FFN; minus the last layer's routed-expert time; the last "
                     "layer's router and shared expert stay in F, a slight overestimate, so the extrapolation is "
                     "slightly optimistic):")
            L.append("")
            L.append("| configuration | F ms | step with output ms | without ms | last layer's experts ms | pairs |")
            L.append("| --- | --- | --- | --- | --- | --- |")
            for name, p in probes.items():
                L.append(f"| {name} | {p['seconds'] * 1e3:.2f} | {p['with_output_s'] * 1e3:.2f} | "
                         f"{p['without_output_s'] * 1e3:.2f} | {p['last_layer_expert_s'] * 1e3:.2f} | {p['pairs']} |")
            L.append("")
        if ex.get("note"):
            L.append(ex["note"] + ".")
        L.append("")
        L.append(f"Assumption: {ex['assumption']}.")
        L.append("")
        L.append("| run | slice tok/s | F ms (from) | per layer ms | full model tok/s | whole-time scaling would "
                 "say | full-model disk bound at the run's hit rate | at 0 % hits | RAM for the same cache per layer |")
        L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for x in ex["runs"]:
            ram = x.get("full_model_ram")
            full = f"**{x['full_decode_tok_s']:.3f}**" if x["full_decode_tok_s"] else "unresolved (F >= token time)"
            L.append(f"| {x['run']} | {x['slice_decode_tok_s']:.3f} | {x['fixed_s'] * 1e3:.2f} ({x['fixed_source']}) | "
                     f"{_f(x['per_layer_s'], '.2f', 1e3)} | {full} | "
                     f"{x['naive_full_decode_tok_s']:.3f} | {_f(x['full_disk_bound_tok_s'], '.3f')} | "
                     f"{_f(x['full_disk_bound_0_hit_tok_s'], '.3f')} | "
                     f"{_gb(ram['total_bytes']) + ' GB' if ram else '-'} |")
    L.append("")
    plots = rep.get("plots") or {}
    L.append("## Plots")
    L.append("")
    if plots.get("files"):
        for name in plots["files"]:
            L.append(f"![{name}]({name})")
            L.append("")
    else:
        L.append(f"No plots: {plots.get('skipped', 'not made')}.")
    L.append("")
    return "\n".join(L)
