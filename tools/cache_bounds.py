"""How far can an online cache policy get towards Belady on the routing traces? Replays, through a Python model of
the store (flashmoe_gguf/bench/store_model.py, checked against the store by tests/test_cache_policy_model.py), the
hazard policy as it runs and with knowledge no online policy has, next to Belady:

    python tools/cache_bounds.py                                  # the stored real traces
    python tools/cache_bounds.py --no-real --presets mixtral-8x7b,qwen3-30b-a3b --tokens 256

Real traces: hazard, hazard with its table learned on the whole trace beforehand ("hindsight"), and with every
expert's true number of decode uses as its count ("future popularity"). Generated traces: hazard, and every
expert ranked by its probability under the generator that drew the trace ("model oracle"). See
flashmoe_gguf/bench/cache_bounds.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flashmoe_gguf.bench.cache_bounds import future_popularity_hazard, hindsight_hazard  # noqa: E402
from flashmoe_gguf.bench.policy_models import Hazard  # noqa: E402
from flashmoe_gguf.bench.replay import belady, slots_for  # noqa: E402
from flashmoe_gguf.bench.routing_oracle import ModelOracle, generate_with_probabilities  # noqa: E402
from flashmoe_gguf.bench.store_model import run  # noqa: E402
from flashmoe_gguf.bench.traces import stored_traces  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="", help="generator presets, comma-separated")
    ap.add_argument("--tokens", type=int, default=256, help="tokens per generated trace")
    ap.add_argument("--no-real", action="store_true", help="skip the stored real traces")
    ap.add_argument("--budgets", default="5,10,20,35,50", help="cache sizes, %% of the experts")
    a = ap.parse_args()
    shares = [float(x) / 100 for x in a.budgets.split(",")]
    cases = [] if a.no_real else [(t, {"hindsight": lambda t=t: hindsight_hazard(t),
                                       "future popularity": lambda t=t: future_popularity_hazard(t)})
                                  for t in stored_traces()]
    for p in (x for x in a.presets.split(",") if x):
        t, prob = generate_with_probabilities(p, a.tokens)
        cases.append((t, {"model oracle": lambda prob=prob: ModelOracle(prob)}))
    print("| trace | budget | hazard | reference | reference's rate | Belady |")
    print("| --- | --- | --- | --- | --- | --- |")
    for t, refs in cases:
        gaps: dict[str, list[float]] = {"hazard": [], **{name: [] for name in refs}}
        for share in shares:
            slots = slots_for(t, share)
            best = belady(t, slots).rate
            hz = run(t, slots, Hazard()).rate
            gaps["hazard"].append(hz - best)
            for name, make in refs.items():
                r = run(t, slots, make()).rate
                gaps[name].append(r - best)
                print(f"| {t.name} | {share:.0%} | {100 * hz:.1f} | {name} | {100 * r:.1f} | {100 * best:.1f} |",
                      flush=True)
        print(f"{t.name}: mean - Belady over the budgets: " +
              ", ".join(f"{name} {100 * sum(g) / len(g):+.1f}" for name, g in gaps.items()), flush=True)


if __name__ == "__main__":
    main()
