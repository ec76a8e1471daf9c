"""The `flashmoe` command: a thin layer over the library. Every failure is one line on stderr and exit 1."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _size(text: str) -> int:
    from .units import parse_size
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _budget(text: str) -> int | str:
    return "auto" if text == "auto" else _size(text)


def _cmd_convert(args: argparse.Namespace) -> int:
    from .converter import archs, convert
    if args.list_archs:
        for model_type, gguf_arch in archs.supported():
            print(f"{model_type:14s} -> {gguf_arch}")
        return 0
    if not args.src or not args.output:
        print("flashmoe convert: error: SRC and -o OUT.gguf are required", file=sys.stderr)
        return 2
    report = convert(args.src, args.output, experts=args.experts, dense=args.dense, router=args.router,
                     align=args.align, threads=args.threads, progress=not args.quiet, vocab_pre=args.vocab_pre,
                     revision=args.revision)
    print(report.summary())
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .inspection import inspect_gguf
    info = inspect_gguf(args.file)
    print(info.render(verbose=args.verbose))
    return 0


def _cmd_repack(args: argparse.Namespace) -> int:
    from .repack import repack
    report = repack(args.file, args.output, align=args.align, split_max_size=args.split_max_size,
                    progress=not args.quiet)
    print(report.summary())
    return 0


def _cmd_pull(args: argparse.Namespace) -> int:
    from .pull import pull, streaming_name
    path = pull(args.model, args.output, revision=args.revision, progress=not args.quiet)
    if args.repack:
        from .repack import repack
        out = streaming_name(path)
        print(repack(path, out, progress=not args.quiet).summary(), file=sys.stderr)
        path = out
    print(path)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .run import run
    run(str(args.file), args.prompt, args.tokens, args.ram_budget, args.ctx, args.threads, args.temp, args.cache,
        verbose=args.verbose, gpu_layers=args.gpu_layers, tensor_overrides=args.override_tensor,
        resident_repack=args.resident_repack)
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from .terminal_chat import chat
    chat(str(args.file), args.ram_budget, args.ctx, args.threads, args.cache, args.temp, args.tokens, args.system,
         verbose=args.verbose, gpu_layers=args.gpu_layers, tensor_overrides=args.override_tensor,
         resident_repack=args.resident_repack)
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synth import PRESETS, synth
    if args.list or not args.preset:
        for name, p in PRESETS.items():
            print(f"{name:18s} {p.description}")
        if not args.list:
            print("flashmoe synth: error: PRESET and -o OUT.gguf are required", file=sys.stderr)
            return 2
        return 0
    if not args.output:
        print("flashmoe synth: error: -o OUT.gguf is required", file=sys.stderr)
        return 2
    report = synth(args.preset, args.output, layers=args.layers, experts=args.experts, dense=args.dense,
                   seed=args.seed, pool=args.pool, threads=args.threads, progress=not args.quiet, tiny=args.tiny)
    print(report.summary())
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench.command import main as bench_main
    return bench_main(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve.command import settings_from_args
    from .serve.server import serve
    server, models = settings_from_args(args)
    stopped_by = serve(server, models)
    print(f"flashmoe serve: stopped ({stopped_by})", file=sys.stderr)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    run_demo(cache_dir=args.cache_dir, prompt=args.prompt, n_tokens=args.tokens)
    return 0


def _version() -> str:
    """this package's version, and the llama-cpp-python it runs in"""
    from importlib import metadata
    try:
        ours = metadata.version("flashmoe-gguf")
    except metadata.PackageNotFoundError:
        ours = "(not installed)"
    try:
        lcpp = metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        lcpp = "not installed"
    return f"{ours} (llama-cpp-python {lcpp})"


def _override_list(text: str) -> list[tuple[str, str]]:
    from .offload import TensorOverrideError, parse_overrides
    try:
        return parse_overrides(text)
    except TensorOverrideError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


class _Extend(argparse.Action):
    """-ot given several times: one list of (regex, buffer type) pairs, in order"""

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: object,
                 option: str | None = None) -> None:
        setattr(ns, self.dest, (getattr(ns, self.dest) or []) + list(values))  # type: ignore[call-overload]


RESIDENT_REPACK_HELP = ("llama.cpp's extra buffer types (CPU_REPACK, AMX) for the resident weights, as stock "
                        "loads them: faster where they apply; logits then equal stock's with them on and -ot "
                        "exps=CPU instead of stock's -nr (default off)")


def _offload_arguments(p: argparse.ArgumentParser, default_layers: int | None, serve: bool = False) -> None:
    p.add_argument("--gpu-layers", "-ngl", type=int, default=default_layers,
                   help="layers to offload to the GPU (-1: all; needs a GPU build of llama-cpp-python): everything "
                        "but the routed experts, which stay streamed (default 0)")
    p.add_argument("--override-tensor", "-ot", type=_override_list, action=_Extend, default=None,
                   metavar="REGEX=BUFT[,...]", help="llama.cpp's tensor buffer-type overrides, e.g. 'attn=CPU' "
                   "(routed experts cannot be sent to a GPU)")
    p.add_argument("--resident-repack", action="store_true", default=None if serve else False,
                   help=RESIDENT_REPACK_HELP)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flashmoe", description=__doc__)
    p.add_argument("--version", action="version", version=f"flashmoe-gguf {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="Hugging Face MoE checkpoint -> streaming GGUF")
    c.add_argument("src", nargs="?", help="model directory or Hugging Face repo id (owner/name)")
    c.add_argument("-o", "--output", type=Path, help="output .gguf")
    c.add_argument("--experts", default=None, help="routed experts' type (default Q4_K; Q4_1 for MLX 4-bit input), or llama.cpp's mix Q3_K_M, Q4_K_M or Q5_K_M")
    c.add_argument("--dense", default="Q8_0", help="attention, shared experts, embeddings, output (default Q8_0)")
    c.add_argument("--router", default="F32", help="routers and shared-expert gates: F32, F16 or BF16 (default F32)")
    c.add_argument("--align", type=_size, default=16 * 1024, help="general.alignment in bytes (default 16K)")
    c.add_argument("--threads", type=int, default=None, help="quantization threads (default: all cores)")
    c.add_argument("--vocab-pre", default=None, help="override the pre-tokenizer name llama.cpp should use")
    c.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    c.add_argument("--list-archs", action="store_true", help="list supported architectures and exit")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_cmd_convert)

    i = sub.add_parser("inspect", help="types, sizes and streaming layout of a GGUF")
    i.add_argument("file", type=Path)
    i.add_argument("-v", "--verbose", action="store_true", help="list every tensor")
    i.set_defaults(func=_cmd_inspect)

    rp = sub.add_parser("repack", help="any MoE GGUF (split or not) -> the streaming layout, bytes unchanged")
    rp.add_argument("file", type=Path, help="the GGUF (a split one: its first shard)")
    rp.add_argument("-o", "--output", type=Path, required=True, help="output .gguf (split: shards named after it)")
    rp.add_argument("--align", type=_size, default=16 * 1024, help="general.alignment in bytes (default 16K)")
    rp.add_argument("--split-max-size", type=_size, default=None, help="write shards of at most this size (e.g. 50G)")
    rp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    rp.set_defaults(func=_cmd_repack)

    pl = sub.add_parser("pull", help="download one quant of a GGUF repository from the Hugging Face hub")
    pl.add_argument("model", help="OWNER/REPO[:QUANT], e.g. unsloth/Qwen3-30B-A3B-GGUF:Q4_K_M")
    pl.add_argument("-o", "--output", type=Path, default=Path("."), help="download directory (default: here)")
    pl.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    pl.add_argument("--repack", action="store_true", help="then rewrite it in the streaming layout (flashmoe repack)")
    pl.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    pl.set_defaults(func=_cmd_pull)

    r = sub.add_parser("run", help="generate from a GGUF with routed experts streamed from disk")
    r.add_argument("file", type=Path)
    r.add_argument("-p", "--prompt", required=True)
    r.add_argument("-n", "--tokens", type=int, default=64)
    r.add_argument("--ram-budget", type=_budget, default="auto",
                   help="RAM for cached experts, e.g. 8G (default auto: what is available beyond the resident weights)")
    r.add_argument("--cache", choices=["lfu", "lru", "os", "lrfu", "hazard"], default="lfu",
                   help="our expert cache evicting the least often (lfu) or least recently (lru) used, or the OS page cache")
    r.add_argument("-c", "--ctx", type=int, default=2048)
    r.add_argument("-t", "--threads", type=int, default=None)
    r.add_argument("--temp", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    r.add_argument("-v", "--verbose", action="store_true", help="llama.cpp's log on stderr")
    _offload_arguments(r, 0)
    r.set_defaults(func=_cmd_run)

    ch = sub.add_parser("chat", help="chat with a model in the terminal (its own chat template, streamed experts)")
    ch.add_argument("file", type=Path)
    ch.add_argument("--ram-budget", default="auto", help="RAM for cached experts, e.g. 8G (default auto)")
    ch.add_argument("--ctx", type=int, default=4096, help="context size in tokens (default 4096)")
    ch.add_argument("-t", "--threads", type=int, default=None, help="threads (default: llama.cpp's)")
    ch.add_argument("--cache", choices=["lfu", "lru", "os", "lrfu", "hazard"], default="lfu", help="expert cache policy (default lfu)")
    ch.add_argument("--temp", type=float, default=0.7, help="sampling temperature (default 0.7)")
    ch.add_argument("-n", "--tokens", type=int, default=None, help="at most this many tokens per answer")
    ch.add_argument("--system", default=None, help="a system message")
    ch.add_argument("-v", "--verbose", action="store_true", help="llama.cpp's log on stderr")
    _offload_arguments(ch, 0)
    ch.set_defaults(func=_cmd_chat)

    s = sub.add_parser("synth", help="random-weight streaming GGUF at a real model's shapes (for benchmarks)")
    s.add_argument("preset", nargs="?", help="qwen3-30b-a3b, qwen35-397b-a17b or mixtral-8x7b (--list)")
    s.add_argument("-o", "--output", type=Path, help="output .gguf")
    s.add_argument("--layers", type=int, default=None, help="keep the first N layers (default: all)")
    s.add_argument("--experts", default="Q4_K", help="routed experts' type (default Q4_K), or llama.cpp's mix Q3_K_M, Q4_K_M or Q5_K_M")
    s.add_argument("--dense", default="Q8_0", help="attention, shared experts, embeddings, output (default Q8_0)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--pool", type=int, default=16,
                   help="encode N experts per routed tensor and repeat their bytes for the rest (default 16; "
                        "0: encode every expert, slow)")
    s.add_argument("--threads", type=int, default=None, help="quantization threads (default: all cores)")
    s.add_argument("--list", action="store_true", help="list the presets and exit")
    s.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)   # small test variant of the preset
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_synth)

    b = sub.add_parser("bench", help="decode speed: flashmoe vs stock llama-cpp-python under RAM caps, with the "
                                     "disk bound; writes a report (JSON, Markdown, PNG)")
    from .bench.arguments import add_arguments as _bench_arguments
    _bench_arguments(b)
    b.set_defaults(func=_cmd_bench)

    sv = sub.add_parser("serve", help="OpenAI-compatible HTTP server (llama-cpp-python's) with experts streamed "
                                      "from disk: /v1/chat/completions, /v1/completions, /v1/models, "
                                      "/v1/embeddings, /health, /metrics")
    sv.add_argument("file", type=Path, nargs="?", help="the GGUF (a split one: its first shard); or --config")
    sv.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=None, help="listen port (default 8080; 0: any free port)")
    sv.add_argument("--ram-budget", type=_budget, default=None,
                    help="RAM for cached experts, e.g. 8G (default auto: what is available beyond the resident weights)")
    sv.add_argument("-c", "--ctx", type=int, default=None, help="context size in tokens (default 2048)")
    sv.add_argument("-t", "--threads", type=int, default=None,
                    help="threads for generation and prompt processing (default: llama-cpp-python's)")
    sv.add_argument("--cache", choices=["lfu", "lru", "os", "lrfu", "hazard"], default=None,
                    help="expert cache: lfu (default), lru, or os (the page cache)")
    sv.add_argument("--isa", choices=["auto", "avx512", "avx2", "scalar", "ggml"], default=None,
                    help="code computing the expert products (default: FLASHMOE_ISA, else auto)")
    sv.add_argument("--embedding", action="store_true", help="also serve /v1/embeddings (mean pooling)")
    sv.add_argument("--alias", default=None, help="the model's name in /v1/models (default: the file's name)")
    sv.add_argument("--queue", type=int, default=None,
                    help="requests that may wait while the model serves one (default 8); one more gets 503")
    sv.add_argument("--api-key", default=None, help="require this bearer token on /v1/*")
    sv.add_argument("--config", type=Path, default=None,
                    help="llama-cpp-python's server config file (JSON or YAML) with flashmoe's model settings "
                         "(ram_budget, expert_cache, direct_io, io_threads, isa, kernels); several models")
    _offload_arguments(sv, None, serve=True)
    sv.set_defaults(func=_cmd_serve)

    d = sub.add_parser("demo", help="build a tiny random MoE, convert it and run it through llama-cpp-python")
    d.add_argument("--cache-dir", type=Path, default=None, help="where the demo checkpoint and GGUF are kept")
    d.add_argument("-p", "--prompt", default="The capital of France is")
    d.add_argument("-n", "--tokens", type=int, default=16)
    d.set_defaults(func=_cmd_demo)
    return p


# the commands that run models in this process (serve keeps llama.cpp's log, as llama-cpp-python's server does)
_LLAMA_COMMANDS = ("run", "chat", "demo")


def main(argv: list[str] | None = None) -> int:
    from .converter.errors import ConversionError
    from .ggml_lib import GgmlLibraryError
    from .inspection import InspectError
    from .pull import PullError
    from .repack import RepackError
    from .runtime_errors import FlashMoeError
    args = build_parser().parse_args(argv)
    _terminate_as_interrupt()
    if args.command in _LLAMA_COMMANDS and not getattr(args, "verbose", False):
        from .llama_log import quiet
        quiet()     # llama.cpp's log stays off stderr: a failure is our one line (its reason is in that line)
    try:
        return int(args.func(args))
    except (ConversionError, InspectError, GgmlLibraryError, FlashMoeError, RepackError, PullError, OSError,
            ValueError) as exc:
        print(f"flashmoe {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"flashmoe {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"flashmoe {args.command}: terminated", file=sys.stderr)
        return 143


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt, so that what a command was writing is removed
    on the way out (the converter's, repack's and pull's cleanup handlers see it)"""


def _terminate_as_interrupt() -> None:
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated()
    signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main())
