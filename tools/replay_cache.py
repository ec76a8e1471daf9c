"""Hit rates of the expert cache policies on routing traces, real and generated, at budgets from 5 % to 50 % of the
experts: lru, lfu, lrfu and hazard replayed through the real store (StreamedModel.access), the page cache modelled as
an LRU of the same bytes (cache="os" keeps nothing of its own), and Belady's offline optimum.

    python tools/replay_cache.py                       # every stored trace + every generator preset, 512 tokens
    python tools/replay_cache.py --tokens 256 --presets mixtral-8x7b,qwen3-30b-a3b --json out.json

Hit rates count decode steps (a real trace's prompt warms the cache); see flashmoe_gguf/bench/replay.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flashmoe_gguf.bench.replay import belady, page_cache_lru, replay_store, slots_for  # noqa: E402
from flashmoe_gguf.bench.routing import PRESETS, Trace, generate  # noqa: E402
from flashmoe_gguf.bench.traces import stored_traces  # noqa: E402

POLICIES = ("lru", "lfu", "lrfu", "hazard")
NEW = "hazard"       # the policy the summary measures against Belady and max(lru, lfu)
COLUMNS = POLICIES + ("page cache (LRU model)", "belady")


def evaluate(trace: Trace, shares: list[float], workdir: Path) -> list[dict[str, float]]:
    rows = []
    for share in shares:
        slots = slots_for(trace, share)
        row: dict[str, float] = {"share": share}
        for policy in POLICIES:
            row[policy] = replay_store(trace, policy, slots, workdir).rate
        row["page cache (LRU model)"] = page_cache_lru(trace, slots).rate
        row["belady"] = belady(trace, slots).rate
        rows.append(row)
        print(f"  {trace.name} {share:.0%}: " + " ".join(f"{c}={row[c]:.3f}" for c in COLUMNS), file=sys.stderr,
              flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=512, help="tokens per generated trace")
    ap.add_argument("--presets", default=",".join(PRESETS), help="generator presets ('' for none)")
    ap.add_argument("--no-real", action="store_true", help="skip the stored real traces")
    ap.add_argument("--budgets", default="5,10,20,35,50", help="cache sizes, %% of the experts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    shares = [float(x) / 100 for x in a.budgets.split(",")]
    traces = [] if a.no_real else stored_traces()
    traces += [generate(p, a.tokens, a.seed) for p in a.presets.split(",") if p]
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for t in traces:
            results[t.name] = evaluate(t, shares, Path(tmp))
    print("| trace | budget | " + " | ".join(COLUMNS) + f" | {NEW} - belady | {NEW} - max(lru, lfu) |")
    print("| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " | --- | --- |")
    gaps, wins = [], 0
    for name, rows in results.items():
        for r in rows:
            gap, edge = r[NEW] - r["belady"], r[NEW] - max(r["lru"], r["lfu"])
            gaps.append(gap)
            wins += edge >= 0
            print(f"| {name} | {r['share']:.0%} | " + " | ".join(f"{100 * r[c]:.1f}" for c in COLUMNS)
                  + f" | {100 * gap:+.1f} | {100 * edge:+.1f} |")
    for name, rows in results.items():
        mean = sum(r[NEW] - r["belady"] for r in rows) / len(rows)
        print(f"{name}: {NEW} - belady mean {100 * mean:+.1f} points over the budgets")
    print(f"\n{NEW} - belady: mean {100 * sum(gaps) / len(gaps):+.1f} points, worst {100 * min(gaps):+.1f}; "
          f"{NEW} >= max(lru, lfu) in {wins} of {len(gaps)} cases")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
