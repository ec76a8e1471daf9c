"""Convert a BigMoeOnEdge `--route-trace` CSV (route_trace v1) into a routing trace of flashmoe_gguf/bench/traces.

    python tools/traces_from_route_csv.py qwen.route.csv flashmoe_gguf/bench/traces/bmoe-qwen3-30b-a3b-k6.npz \
        --name bmoe-qwen3-30b-a3b-k6 --model Qwen3-30B-A3B --source "..."

The CSV has one row per (turn, phase, step, layer, slot) with the routed expert; phase 0 is the prompt, 1 decode.
Rows of one turn are kept (the first); prompt steps become the trace's prompt batch, decode steps its tokens.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flashmoe_gguf.bench.traces import save_trace  # noqa: E402
from flashmoe_gguf.bench.routing import Trace  # noqa: E402


def convert(path: Path) -> tuple[np.ndarray, int, int]:
    header: dict[str, str] = {}
    rows: list[list[str]] = []
    with open(path, newline="") as f:
        lines = [line for line in f]
    for line in lines:
        if line.startswith("# model="):
            header = dict(kv.split("=", 1) for kv in line[2:].split())
    body = [line for line in lines if not line.startswith("#")]
    reader = csv.reader(body)
    names = next(reader)
    col = {n: i for i, n in enumerate(names)}
    rows = [r for r in reader if r and int(r[col["turn"]]) == 0]
    n_layer, n_expert, k = int(header["n_layer"]), int(header["n_expert"]), int(header["n_expert_used"])
    steps = sorted({(int(r[col["phase"]]), int(r[col["step"]])) for r in rows})
    index = {s: i for i, s in enumerate(steps)}
    out = np.full((len(steps), n_layer, k), -1, dtype=np.int16)
    for r in rows:
        s = index[(int(r[col["phase"]]), int(r[col["step"]]))]
        out[s, int(r[col["layer"]]), int(r[col["slot"]])] = int(r[col["expert"]])
    prompt = sum(1 for phase, _ in steps if phase == 0)
    if (out[prompt:] < 0).any():   # prompt tokens may skip a layer (-1): llama.cpp skips the last layer's FFN
        raise SystemExit(f"{path}: some decode (step, layer, slot) cells have no row")
    return out, prompt, n_expert


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--source", required=True)
    a = ap.parse_args()
    experts, prompt, n_expert = convert(a.csv)
    save_trace(Trace(name=a.name, model=a.model, n_expert=n_expert, experts=experts, prompt_tokens=prompt,
                     source=a.source), a.out)
    print(f"{a.out}: {experts.shape[0]} tokens ({prompt} prompt), {experts.shape[1]} layers, top-{experts.shape[2]}"
          f" of {n_expert}")


if __name__ == "__main__":
    main()
