"""`flashmoe bench`'s command-line arguments and their parsing (light: imports nothing heavy, so building the
`flashmoe` parser stays fast)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..units import parse_size
from .worker import STOCK_CONFIGS, default_cache_mode, flashmoe_cache_modes


def parse_caps(text: str, file_bytes: int) -> tuple[int, ...]:
    """"6G,3G" or "35%,50%" (of the file size); "none" or "" for no capped runs."""
    if text.strip().lower() in ("", "none", "0"):
        return ()
    caps = []
    for part in text.split(","):
        part = part.strip()
        if part.endswith("%"):
            pct = float(part[:-1])
            if not 0 < pct <= 1000:
                raise ValueError(f"--ram: bad percentage {part!r}")
            caps.append(int(file_bytes * pct / 100))
        else:
            v = parse_size(part)
            if v <= 0:
                raise ValueError(f"--ram: a cap must be positive, not {part!r}")
            caps.append(v)
    return tuple(sorted(set(caps), reverse=True))


def parse_ks(text: str | None) -> tuple[int | None, ...]:
    """"4,10" -> (4, 10); None -> (None,): the file's own K."""
    if not text:
        return (None,)
    ks = []
    for part in text.split(","):
        k = int(part)
        if k <= 0:
            raise ValueError(f"--k must be positive, not {k}")
        ks.append(k)
    return tuple(dict.fromkeys(ks))


def parse_configs(cache: str | None, compare: str) -> tuple[str, ...]:
    """--cache and --compare -> configuration names: flashmoe-<mode> (flashmoe-<mode>-direct for O_DIRECT reads;
    "direct" alone is the default mode with O_DIRECT), then the stock ones."""
    modes = flashmoe_cache_modes()
    default = default_cache_mode()
    caches = [c.strip() for c in (cache or default).split(",") if c.strip()]
    caches = [f"{default}-direct" if c == "direct" else c for c in caches]
    bad = [c for c in caches if c.removesuffix("-direct").removesuffix("-buffered") not in modes]
    if bad:
        raise ValueError(f"--cache: unknown {bad}; choose from {', '.join(modes)} (add -direct to force O_DIRECT "
                         "reads, -buffered to force page-cache reads)")
    compared = [] if compare.strip().lower() in ("", "none") else [c.strip() for c in compare.split(",")]
    bad = [c for c in compared if c not in STOCK_CONFIGS]
    if bad:
        raise ValueError(f"--compare: unknown {bad}; choose from {', '.join(STOCK_CONFIGS)} or none")
    return tuple(dict.fromkeys([f"flashmoe-{c}" for c in caches] + compared))


def add_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("file", type=Path, help="the GGUF (any MoE GGUF; a streaming one from convert/synth is best)")
    b.add_argument("--ram", default="35%",
                   help="RAM caps incl. page cache, comma-separated: sizes (6G,3G) or %% of the file (35%%); "
                        "'none': only the no-cap run (default 35%%)")
    b.add_argument("--tokens", type=int, default=32, help="decode steps per run (default 32)")
    b.add_argument("--prompt-tokens", type=int, default=32, help="prompt length (default 32)")
    b.add_argument("--k", default=None, help="experts per token, comma-separated (e.g. 4,10): llama.cpp's "
                   "<arch>.expert_used_count override, for flashmoe and stock (default: the file's)")
    b.add_argument("--compare", default="stock", help="stock configurations to run: stock (default), "
                   "stock-norepack (CPU_REPACK off: experts paged from the mmap), stock-exps-cpu (CPU_REPACK off, "
                   "routed experts overridden to the CPU: llama.cpp's -ot exps=CPU, with --gpu-layers the reference "
                   "of GPU hybrid mode), stock-exps-cpu-repack (the same with CPU_REPACK on: the reference of "
                   "--resident-repack), comma-separated, or none")
    b.add_argument("--cache", default=None, help="flashmoe cache modes, comma-separated: the runtime's (e.g. lru, os; "
                   "MODE-direct forces O_DIRECT reads, MODE-buffered page-cache reads; direct: the default mode with O_DIRECT) (default: the runtime's "
                   "default mode)")
    b.add_argument("--report", type=Path, default=None,
                   help="report directory (default ./flashmoe-bench-<file>-<time>)")
    b.add_argument("--threads", type=int, default=1,
                   help="n_threads for every run (default 1: ggml's threads spin at barriers when cores are shared)")
    b.add_argument("--n-ctx", type=int, default=0,
                   help="context size (default: 512, or what the prompt, the decode steps and the probe need, "
                        "rounded up to 256)")
    b.add_argument("--n-batch", type=int, default=0,
                   help="llama.cpp's n_batch, tokens per llama_decode of a prompt (default: --n-ubatch, else "
                        "llama-cpp-python's 512)")
    b.add_argument("--n-ubatch", type=int, default=0,
                   help="llama.cpp's n_ubatch, tokens per micro-batch (one pass over the routed experts) (default: "
                        "llama-cpp-python's 512)")
    b.add_argument("--gpu-layers", type=int, default=0,
                   help="llama.cpp's n_gpu_layers for every run (-1: all; needs a GPU build of llama.cpp): flashmoe "
                        "keeps the routed experts streamed on the CPU, stock puts them on the GPU unless "
                        "stock-exps-cpu (default 0)")
    b.add_argument("--no-op-offload", action="store_true",
                   help="llama.cpp's op_offload off: a big batch's ops on host weights (stock-exps-cpu's experts) stay "
                        "on the CPU instead of being copied to the GPU")
    b.add_argument("--resident-repack", action="store_true",
                   help="flashmoe runs with llama.cpp's extra buffer types (CPU_REPACK, AMX) for the resident weights "
                        "(flashmoe_gguf.Llama's resident_repack; compare with stock-exps-cpu-repack)")
    b.add_argument("--flash-attn", action="store_true",
                   help="flash attention (its compute buffer does not grow with n_ctx x n_ubatch)")
    b.add_argument("--headroom", default="768M", help="part of a cap kept for the interpreter and libraries, the "
                   "reads in flight and the page cache: ram_budget = cap - resident - llama.cpp's context (KV cache, "
                   "compute and output buffers, measured as it is created) - headroom (default 768M)")
    b.add_argument("--rounds", type=int, default=1,
                   help="run every configuration N times, in rounds with a rotated order; ratios compare medians "
                        "and same-round pairs (for machines whose speed drifts between runs; default 1)")
    b.add_argument("--no-warm", action="store_true", help="skip the no-cap, warm-cache setting")
    b.add_argument("--full-layers", type=int, default=None,
                   help="layers of the full model this file is a slice of (default: from its metadata)")
    b.add_argument("--slice", type=Path, default=None, metavar="FILE2",
                   help="another slice of the same model with a different layer count: its warm flashmoe run gives "
                        "the fixed part of a token's time by a two-point fit (default: the in-run probe only)")
    b.add_argument("--feed", choices=("greedy", "random"), default="greedy",
                   help="decode input: the argmax (default) or seeded random token ids (less expert reuse)")
    b.add_argument("--routing", default="router",
                   help="which experts flashmoe's streamed products read: 'router' (the model's own choice, default), "
                        "a generated trace calibrated to a real model (qwen3-30b-a3b, mixtral-8x7b, deepseek-v2-lite, "
                        "olmoe-1b-7b, gpt-oss-120b, qwen35-397b-a17b; flashmoe_gguf/bench/routing.py), a stored real "
                        "trace by name (bench/traces/), or an .npz trace. For random-weight models, whose routers "
                        "route near uniformly: the cache then sees real routing's reuse and skew. Stock runs keep "
                        "their router's choice")
    b.add_argument("--probe-pairs", type=int, default=8,
                   help="fixed-part probe steps (with/without output) in every warm run; 0: none")
    b.add_argument("--disk-reads", type=int, default=200, help="expert reads per disk measurement (default 200)")
    b.add_argument("--disk-threads", type=int, default=8, help="parallel reads (default 8)")
    b.add_argument("--disk-repeats", type=int, default=3, help="measurements per round, 0: none (default 3)")
    b.add_argument("--wait", type=float, default=900,
                   help="longest wait for a quiet machine before each run, s (default 900; 0: do not wait)")
    b.add_argument("--max-busy", type=float, default=0.25, help="cores other processes may use (default 0.25)")
    b.add_argument("--retries", type=int, default=1, help="reruns of a run other processes disturbed (default 1)")
    b.add_argument("--timeout", type=float, default=1800, help="seconds per run before it is killed")
    b.add_argument("--stall", type=float, default=120, help="a run with no CPU and no reads this long is hung")
    b.add_argument("--unprivileged", action="store_true", help=argparse.SUPPRESS)   # as if not root (tests)
    b.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
