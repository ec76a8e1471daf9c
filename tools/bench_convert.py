"""Benchmark `flashmoe convert` against llama.cpp's own pipeline on the same checkpoint, in the same run.

Pipelines, each started with a cold page cache (`sync; echo 3 > /proc/sys/vm/drop_caches`, needs root):

  A. ours:      flashmoe convert CKPT -o ours.gguf -q --threads T      (experts Q4_K, dense Q8_0, router F32)
  B. llama.cpp: convert_hf_to_gguf.py CKPT --outtype bf16 --outfile ref-bf16.gguf   (PYTHONPATH=<llama.cpp>/gguf-py)
                llama-quantize --pure --tensor-type ffn_{gate,up,down}_exps=q4_k ref-bf16.gguf ref.gguf Q8_0 T
                (--pure: no k-quant mixture, so everything quantizable is Q8_0 except the routed experts;
                llama-quantize never quantizes ffn_gate_inp and convert_hf_to_gguf writes it in F32, so the
                routers stay F32, as in ours)

The cache is dropped before llama-quantize as well, so it reads its bf16 input from disk, as it has to for
any real model (a 30B MoE's bf16 GGUF is 61 GB); whether that file would otherwise still be cached depends
on what else the machine is doing (between 0.45 and 5.9 GB of it came from disk in our runs when it was
not dropped), which made that step's time vary between runs.

Every step runs as a child process; its peak RSS is that child's own ru_maxrss (os.wait4), its time is the
wall time of the process plus a `sync` afterwards (ours fsyncs its output, the llama.cpp tools do not, so
the sync puts all of them on the same footing). Before each step the tool waits (up to --wait s) until the
machine is idle: CPU use sampled from /proc/stat over 2 s must be below --max-busy cores (the 1-minute load
average is recorded too, but it still carries the tail of our own previous step). During the step it measures
the CPU the other processes used (busy CPU-seconds in /proc/stat minus the child's own); a step during which
they used more than --max-others cores is re-run (--retries times at most; the least disturbed attempt is
kept, and a pipeline's first step drops the page cache again before each attempt).

Afterwards both outputs are compared with gguf.GGUFReader: same tensor names, shapes and types, and the
bytes of every tensor (ours quantizes with ggml's ggml_quantize_chunk, and Q4_K with ggml_ext/fm_quant.c, which
performs ggml's float operations in ggml's order: they should be identical).

The synthetic checkpoints (tools/synth_checkpoint.py) carry a rebuilt Qwen2 tokenizer with the full vocab;
convert_hf_to_gguf.py recognizes its pre-tokenizer hash as `qwen2`, so no workaround is needed for them.

llama-quantize is built from the llama.cpp that llama-cpp-python 0.3.36 vendors, outside the repo:

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /work/deps
    tar xzf /work/deps/llama_cpp_python-0.3.36.tar.gz -C /work/deps
    cd /work/deps/llama_cpp_python-0.3.36
    cmake -S vendor/llama.cpp -B /work/deps/llama-build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON
    cmake --build /work/deps/llama-build --target llama-quantize -j2

Reproduce the README table (Qwen3-30B-A3B shapes, 4 layers, 6.23 GB of bf16 safetensors in 3 shards):

    python tools/synth_checkpoint.py qwen3-30b-a3b --layers 4 -o /work/synth/q3-4L
    python tools/bench_convert.py --checkpoint /work/synth/q3-4L --work-dir /work/synth/bench \\
        --llama-cpp /work/deps/llama_cpp_python-0.3.36/vendor/llama.cpp \\
        --llama-quantize /work/deps/llama-build/bin/llama-quantize --threads 2

(`--layers N` instead of `--checkpoint` builds the checkpoint into WORK_DIR/synth-NL first.) Big outputs are
deleted after the comparison unless --keep; the results go to WORK_DIR/bench_convert.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from flashmoe_gguf.bench.machine import cpu_busy_seconds, top_processes  # noqa: E402

EXPERT_TENSORS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")


@dataclass
class Step:
    name: str
    cmd: list[str]
    seconds: float = 0.0          # process wall time + the sync after it
    sync_seconds: float = 0.0
    cpu_seconds: float = 0.0      # the child's user + sys
    peak_rss: int = 0             # bytes
    disk_read: int = 0            # bytes the child read from the block device (ru_inblock)
    disk_written: int = 0         # bytes it wrote (ru_oublock)
    bytes_in: int = 0
    bytes_out: int = 0
    load_before: list[float] = field(default_factory=list)   # 1, 5, 15 min load averages
    busy_before: float = 0.0      # cores busy (all processes) just before the step
    others_during: float = 0.0    # cores used by other processes during the step, on average
    top_before: list[str] = field(default_factory=list)
    cold_cache: bool = False      # page cache dropped just before
    attempt: int = 1


def _busy_now(seconds: float = 2.0) -> float:
    b0, t0 = cpu_busy_seconds(), time.monotonic()
    time.sleep(seconds)
    return (cpu_busy_seconds() - b0) / (time.monotonic() - t0)


def wait_idle(max_busy: float, wait: float) -> tuple[float, list[float], list[str]]:
    deadline = time.monotonic() + wait
    while True:
        busy = _busy_now()
        if busy <= max_busy or time.monotonic() > deadline:
            if busy > max_busy:
                print(f"  warning: still {busy:.2f} cores busy after waiting {wait:.0f} s; measuring anyway",
                      file=sys.stderr)
            return busy, list(os.getloadavg()), top_processes(n=5, width=200)
        print(f"  {busy:.2f} cores busy (load {os.getloadavg()[0]:.2f}); waiting for the machine to go idle",
              file=sys.stderr)
        time.sleep(20)


def drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError as exc:
        print(f"  warning: cannot drop the page cache ({exc.strerror}); run as root for cold-cache numbers",
              file=sys.stderr)
        return False


def _attempt(step: Step, env: dict[str, str], log: Path, max_busy: float, wait: float) -> Step:
    step.busy_before, step.load_before, step.top_before = wait_idle(max_busy, wait)
    print(f"[{step.name}] load {step.load_before[0]:.2f}, {step.busy_before:.2f} cores busy: {' '.join(step.cmd)}",
          file=sys.stderr)
    with open(log, "ab") as lf:
        lf.write(f"\n### {step.name}: {' '.join(step.cmd)}\n".encode())
        lf.flush()
        b0, t0 = cpu_busy_seconds(), time.monotonic()
        proc = subprocess.Popen(step.cmd, env=env, stdout=lf, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(proc.pid, 0)   # this child's own rusage, not the accumulated RUSAGE_CHILDREN
        proc.returncode = os.waitstatus_to_exitcode(status)
        t1 = time.monotonic()
        os.sync()
        t2 = time.monotonic()
        busy = cpu_busy_seconds() - b0
    if proc.returncode != 0:
        sys.exit(f"{step.name} failed (exit {proc.returncode}); see {log}")
    step.seconds, step.sync_seconds = t2 - t0, t2 - t1
    step.cpu_seconds = ru.ru_utime + ru.ru_stime
    step.peak_rss = ru.ru_maxrss * 1024
    step.disk_read, step.disk_written = ru.ru_inblock * 512, ru.ru_oublock * 512
    step.others_during = max(0.0, busy - step.cpu_seconds) / step.seconds
    print(f"[{step.name}] {step.seconds:.1f} s (sync {step.sync_seconds:.1f} s), {step.cpu_seconds:.1f} CPU s, "
          f"peak RSS {step.peak_rss / 2**20:.0f} MiB, read {step.disk_read / 1e9:.2f} GB from disk, "
          f"other processes used {step.others_during:.2f} cores",
          file=sys.stderr)
    return step


def run_step(step: Step, env: dict[str, str], log: Path, args: argparse.Namespace,
             prepare: Callable[[], bool] | None = None) -> Step:
    """Runs the step until other processes stay under --max-others cores during it (at most --retries reruns);
    keeps the least disturbed attempt. `prepare` (dropping the page cache) runs before every attempt."""
    best: Step | None = None
    for attempt in range(args.retries + 1):
        cold = prepare() if prepare else False
        s = _attempt(replace(step, cold_cache=cold), env, log, args.max_busy, args.wait)
        s.attempt = attempt + 1
        if best is None or s.others_during < best.others_during:
            best = s
        if s.others_during <= args.max_others:
            break
        last = attempt == args.retries
        print(f"[{step.name}] disturbed ({s.others_during:.2f} cores used by others); "
              f"{'keeping the least disturbed attempt' if last else 're-running'}", file=sys.stderr)
    assert best is not None
    return best


def compare(ours: Path, ref: Path) -> dict[str, object]:
    """Tensor-by-tensor comparison of two GGUFs: names, shapes, types and data bytes."""
    import numpy as np
    from gguf import GGUFReader
    a = {t.name: t for t in GGUFReader(ours).tensors}
    b = {t.name: t for t in GGUFReader(ref).tensors}
    diffs: list[str] = []
    types: dict[str, int] = {}
    identical = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            diffs.append(f"{name}: only in {'ours' if name in a else 'llama.cpp'}")
            continue
        ta, tb = a[name], b[name]
        if ta.tensor_type != tb.tensor_type or list(ta.shape) != list(tb.shape):
            diffs.append(f"{name}: ours {ta.tensor_type.name}{list(ta.shape)}, "
                         f"llama.cpp {tb.tensor_type.name}{list(tb.shape)}")
            continue
        types[ta.tensor_type.name] = types.get(ta.tensor_type.name, 0) + 1
        if np.array_equal(ta.data.reshape(-1).view(np.uint8), tb.data.reshape(-1).view(np.uint8)):
            identical += 1
        else:
            diffs.append(f"{name} ({ta.tensor_type.name}): same type, different bytes")
    return {"tensors_ours": len(a), "tensors_llama_cpp": len(b), "types": types,
            "identical_tensors": identical, "differences": diffs}


def _git_head() -> str:
    """HEAD of this repo, with `+dirty` when converter/ or flashmoe_gguf/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "converter", "flashmoe_gguf"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _size(path: Path) -> int:
    return path.stat().st_size


def _fmt_row(cells: list[str], widths: list[int]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"


def table(rows: list[tuple[str, float, int, int, int, int]]) -> str:
    """rows: (name, seconds, bytes_in, bytes_out, peak_rss, output size)."""
    head = ["step", "wall s", "GB/s in", "GB/s out", "peak RSS MiB", "output GB"]
    cells = [[n, f"{s:.1f}", f"{bi / s / 1e9:.3f}", f"{bo / s / 1e9:.3f}", f"{rss / 2**20:.0f}", f"{out / 1e9:.3f}"]
             for n, s, bi, bo, rss, out in rows]
    widths = [max(len(r[i]) for r in [head, *cells]) for i in range(len(head))]
    lines = [_fmt_row(head, widths), "| " + " | ".join("-" * w for w in widths) + " |"]
    return "\n".join(lines + [_fmt_row(c, widths) for c in cells])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="existing Hugging Face checkpoint directory")
    src.add_argument("--layers", type=int, help="build a Qwen3-30B-A3B-shaped checkpoint with N layers first")
    ap.add_argument("--work-dir", type=Path, default=Path("/work/synth/bench"), help="outputs and the JSON go here")
    ap.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp source dir (convert_hf_to_gguf.py)")
    ap.add_argument("--llama-quantize", type=Path, required=True, help="llama-quantize binary")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="both pipelines (default: all cores)")
    ap.add_argument("--max-busy", type=float, default=0.3, help="wait until other processes use fewer cores")
    ap.add_argument("--wait", type=float, default=900, help="longest wait for an idle machine before a step, s")
    ap.add_argument("--max-others", type=float, default=0.1,
                    help="re-run a step if other processes used more cores than this during it")
    ap.add_argument("--retries", type=int, default=4, help="re-runs of a disturbed step (the least disturbed is kept)")
    ap.add_argument("--keep", action="store_true", help="keep the GGUFs (several GB)")
    args = ap.parse_args()

    convert_py = args.llama_cpp / "convert_hf_to_gguf.py"
    if not convert_py.is_file() or not (args.llama_cpp / "gguf-py").is_dir():
        sys.exit(f"{args.llama_cpp}: no convert_hf_to_gguf.py / gguf-py; pass the llama.cpp source dir, e.g. the "
                 "vendor/llama.cpp of the extracted llama-cpp-python 0.3.36 sdist (see this tool's --help)")
    if not os.access(args.llama_quantize, os.X_OK):
        sys.exit(f"{args.llama_quantize}: not an executable llama-quantize; build it with\n"
                 f"  cmake -S {args.llama_cpp} -B /work/deps/llama-build -DCMAKE_BUILD_TYPE=Release "
                 "-DLLAMA_CURL=OFF -DGGML_NATIVE=ON\n"
                 "  cmake --build /work/deps/llama-build --target llama-quantize -j2")
    work: Path = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    log = work / "bench_convert.log"
    log.write_text("")
    env = dict(os.environ)
    ckpt: Path = args.checkpoint or work / f"synth-{args.layers}L"
    if args.layers is not None and not (ckpt / "config.json").exists():
        subprocess.run([sys.executable, str(REPO / "tools/synth_checkpoint.py"), "qwen3-30b-a3b",
                        "--layers", str(args.layers), "-o", str(ckpt)], check=True)
    shards = sorted(ckpt.glob("*.safetensors"))
    if not shards:
        sys.exit(f"{ckpt}: no .safetensors files")
    ckpt_bytes = sum(_size(p) for p in shards)
    from flashmoe_gguf.converter.checkpoint import Checkpoint
    c = Checkpoint(ckpt)
    largest_name, largest = max(((n, e.end - e.begin) for n, (_, e) in c.entries.items()), key=lambda x: x[1])
    ours, bf16, ref = work / "ours.gguf", work / "ref-bf16.gguf", work / "ref.gguf"
    T = str(args.threads)

    # baseline: the interpreter with numpy, gguf and llama-cpp-python's ggml loaded, converting nothing
    base = _attempt(Step("baseline", [sys.executable, "-c", "import numpy, gguf; from flashmoe_gguf.ggml_lib "
                                      "import Ggml; Ggml.load(); import flashmoe_gguf.converter"]),
                    env, log, args.max_busy, args.wait)
    a = run_step(Step("ours: flashmoe convert", [sys.executable, "-m", "flashmoe_gguf.cli", "convert", str(ckpt),
                                                 "-o", str(ours), "-q", "--threads", T]),
                 env, log, args, drop_caches)
    a.bytes_in, a.bytes_out = ckpt_bytes, _size(ours)

    env_b = dict(env, PYTHONPATH=str(args.llama_cpp / "gguf-py"))
    b1 = run_step(Step("llama.cpp: convert_hf_to_gguf bf16", [sys.executable, str(convert_py), str(ckpt),
                                                               "--outtype", "bf16", "--outfile", str(bf16)]),
                  env_b, log, args, drop_caches)
    b1.bytes_in, b1.bytes_out = ckpt_bytes, _size(bf16)
    overrides = [x for t in EXPERT_TENSORS for x in ("--tensor-type", f"{t}=q4_k")]
    b2 = run_step(Step("llama.cpp: llama-quantize", [str(args.llama_quantize), "--pure", *overrides,
                                                     str(bf16), str(ref), "Q8_0", T]),
                  env, log, args, drop_caches)
    b2.bytes_in, b2.bytes_out = _size(bf16), _size(ref)
    if not args.keep:
        bf16.unlink()

    cmp = compare(ours, ref)
    b_secs = b1.seconds + b2.seconds
    rows = [(a.name, a.seconds, ckpt_bytes, a.bytes_out, a.peak_rss, a.bytes_out),
            (b1.name, b1.seconds, b1.bytes_in, b1.bytes_out, b1.peak_rss, b1.bytes_out),
            (b2.name, b2.seconds, b2.bytes_in, b2.bytes_out, b2.peak_rss, b2.bytes_out),
            ("llama.cpp: total", b_secs, ckpt_bytes, b2.bytes_out, max(b1.peak_rss, b2.peak_rss), b2.bytes_out)]
    result = {
        "checkpoint": str(ckpt), "checkpoint_bytes": ckpt_bytes, "threads": args.threads,
        "cores": os.cpu_count(), "commit": _git_head(),
        "cold_cache": a.cold_cache and b1.cold_cache and b2.cold_cache,
        "largest_tensor": {"name": largest_name, "bytes": largest},
        "ours_rss_over_largest_tensor": a.peak_rss / largest,
        "ours_rss_above_baseline_over_largest_tensor": (a.peak_rss - base.peak_rss) / largest,
        "steps": [asdict(s) for s in (base, a, b1, b2)],
        "llama_cpp_total_seconds": b_secs, "speedup_vs_llama_cpp": b_secs / a.seconds,
        "comparison": cmp, "table": table(rows),
    }
    (work / "bench_convert.json").write_text(json.dumps(result, indent=1))
    if not args.keep:
        ours.unlink()
        ref.unlink()

    print(result["table"])
    print(f"\nthreads {args.threads}; before the three steps: load {a.load_before[0]:.2f} / "
          f"{b1.load_before[0]:.2f} / {b2.load_before[0]:.2f}, other processes busy {a.busy_before:.2f} / "
          f"{b1.busy_before:.2f} / {b2.busy_before:.2f} cores; during them others used {a.others_during:.2f} / "
          f"{b1.others_during:.2f} / {b2.others_during:.2f} cores (attempt {a.attempt} / {b1.attempt} / {b2.attempt})")
    print(f"CPU seconds: ours {a.cpu_seconds:.1f}, llama.cpp {b1.cpu_seconds:.1f} + {b2.cpu_seconds:.1f}; "
          f"read from disk: ours {a.disk_read / 1e9:.2f} GB, convert_hf_to_gguf {b1.disk_read / 1e9:.2f} GB")
    print(f"ours is {b_secs / a.seconds:.2f}x faster than llama.cpp's convert + quantize")
    print(f"largest tensor {largest_name}: {largest / 2**20:.0f} MiB; our peak RSS is "
          f"{a.peak_rss / largest:.2f}x that ({(a.peak_rss - base.peak_rss) / largest:.2f}x above the "
          f"{base.peak_rss / 2**20:.0f} MiB of an idle interpreter with ggml loaded)")
    print(f"tensors: {cmp['identical_tensors']} of {cmp['tensors_ours']} identical ({cmp['types']}); "
          f"{len(cmp['differences'])} differences")  # type: ignore[arg-type]
    for d in cmp["differences"][:20]:  # type: ignore[index]
        print(f"  {d}")
    print(f"results: {work / 'bench_convert.json'}")


if __name__ == "__main__":
    main()
