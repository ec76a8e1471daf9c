"""Decode benchmark, old interface: now a thin front end to `flashmoe bench` (flashmoe_gguf/bench/).

Translates this tool's options to `flashmoe bench`'s and runs it; everything it measured is measured there
(capped cold runs under a cgroup v1 memory cap, no-cap warm runs, each configuration in a fresh process, the
disk's cold random-read bandwidth for expert reads and the decode bound it implies, quiet-machine waits,
disturbed-run retries, hang detection), and the report (JSON, Markdown, PNG) goes to --report or next to --json.

    --model M                    FILE
    --configs a,b                stock / stock-norepack -> --compare; flashmoe-MODE -> --cache MODE;
                                 flashmoe-direct -> --cache lru-direct
    --cap X                      --ram X (default: routed-expert bytes / 3, as before)
    --settings capped,nocap      without capped: --ram none; without nocap: --no-warm
    --json PATH                  --report PATH without its suffix (a directory; report.json inside)
    anything else (--tokens, --prompt-tokens, --feed, --n-ctx, --headroom, --disk-*, --timeout, --stall,
    --max-busy, --wait, --retries, ...) is passed on unchanged: see `flashmoe bench --help`.

Differences from the version that produced README's figures (commit 0adcc81): the flashmoe budget also subtracts
the KV cache (ram_budget = cap - resident - KV cache - headroom; --headroom 256M instead of 250M), one thread count
per run of the tool, no py-spy stacks for hung workers, and --max-disk, --max-others-disk, --max-load and
--hang-retries are fixed inside (5 % disk busy, 50 MB of others' disk traffic, no load-average gate, 2 reruns).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence


def translate(argv: Sequence[str]) -> list[str]:
    """This tool's arguments -> `flashmoe bench`'s (anything not translated is passed on as it is)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/work/synth/q3-12L.gguf")
    ap.add_argument("--configs", default="stock,stock-norepack,flashmoe-lru,flashmoe-os")
    ap.add_argument("--cap", default=None)
    ap.add_argument("--settings", default="capped,nocap")
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", default="1")
    args, rest = ap.parse_known_args(argv)
    if "," in args.threads:
        ap.error("one thread count per run now (run the tool once per count)")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    stock = [c for c in configs if c in ("stock", "stock-norepack")]
    modes = ["lru-direct" if c == "flashmoe-direct" else c.removeprefix("flashmoe-")
             for c in configs if c.startswith("flashmoe-")]
    bad = [c for c in configs if c not in stock and not c.startswith("flashmoe-")]
    if bad:
        ap.error(f"unknown configs {bad}")
    settings = set(args.settings.split(","))
    out = ["bench", args.model, "--threads", args.threads, "--compare", ",".join(stock) or "none"]
    if modes:
        out += ["--cache", ",".join(modes)]
    if "capped" not in settings:
        out += ["--ram", "none"]
    else:
        if args.cap is None:
            from flashmoe_gguf.bench.model import model_info
            args.cap = str(model_info(args.model).expert_bytes // 3)
        out += ["--ram", args.cap]
    if "nocap" not in settings:
        out.append("--no-warm")
    if args.json:
        out += ["--report", str(Path(args.json).with_suffix(""))]
    return out + list(rest)


def main(argv: Sequence[str] | None = None) -> int:
    from flashmoe_gguf.cli import main as cli_main
    cmd = translate(sys.argv[1:] if argv is None else argv)
    print("flashmoe " + " ".join(cmd), file=sys.stderr)
    return cli_main(cmd)


if __name__ == "__main__":
    sys.exit(main())
