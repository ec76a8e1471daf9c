#!/usr/bin/env python
"""Fuzz one of the project's file parsers with structure-aware mutations (issue 15).

    python tools/fuzz.py TARGET --seconds N [--inputs N] [--seed S] [--no-save]
    python tools/fuzz.py --list

Each input runs in a worker process with a memory limit and a timeout; the summary counts ok inputs, clean
errors (the target's documented exception), crashes (any other exception, or a signal), hangs and leaks.
Crashing and hanging inputs are saved to tests/fuzz_corpus/TARGET/ and replayed by tests/test_fuzz.py.
Run campaigns one at a time, e.g. `nice -n 10 python tools/fuzz.py gguf_index --seconds 600`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzzlib.runner import campaign  # noqa: E402
from fuzzlib.targets import TARGETS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", nargs="?", choices=sorted(TARGETS))
    ap.add_argument("--seconds", type=float, default=None, help="stop after this long (default 60 without --inputs)")
    ap.add_argument("--inputs", type=int, default=None, help="stop after this many inputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-save", action="store_true", help="do not save crashing inputs to tests/fuzz_corpus")
    ap.add_argument("--list", action="store_true", help="list the targets")
    ap.add_argument("--verbose", action="store_true", help="print each finding and keep the target's stderr")
    args = ap.parse_args(argv)
    if args.list or not args.target:
        for name, t in sorted(TARGETS.items()):
            print(f"{name:12} {t.description}{' (expensive: a model load per input)' if t.expensive else ''}")
        return 0
    seconds = args.seconds if args.seconds is not None or args.inputs is not None else 60.0
    stats = campaign(TARGETS[args.target], seconds=seconds, inputs=args.inputs, seed=args.seed,
                     save=not args.no_save, quiet=not args.verbose, progress=args.verbose)
    print(stats.line())
    for f in stats.findings[:20]:
        print("  " + f)
    for p in stats.saved:
        print(f"  saved {p}")
    return 1 if stats.crashes or stats.hangs or stats.leaks else 0


if __name__ == "__main__":
    sys.exit(main())
