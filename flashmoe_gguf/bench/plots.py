"""PNG plots of a report (matplotlib, optional: `pip install flashmoe-gguf[bench]`).

1. decode_vs_ram.png: decode tok/s against the RAM cap, flashmoe and stock per K, with the disk bound at 0 %
   hits and at flashmoe's hit rate; the no-cap warm runs at the right edge.
2. time_per_token.png: where a decode token's time goes, per run: I/O wait and expert compute (flashmoe runs,
   from flashmoe_stats()), the fixed part (output head over the vocabulary etc., from the probe of the
   configuration's warm run, when there is one) and the rest (attention, router, shared expert, ...); stock's
   time beyond its fixed part is not divided.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any


def matplotlib_missing() -> str | None:
    """None if matplotlib can be imported, else why not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        return f"matplotlib is not installed ({exc}); pip install 'flashmoe-gguf[bench]'"
    return None


def make_plots(rep: dict[str, Any], out_dir: Path) -> list[str]:
    """Write the PNGs into out_dir; returns their file names."""
    import matplotlib
    matplotlib.use("Agg")
    return [decode_vs_ram(rep, out_dir / "decode_vs_ram.png"), time_per_token(rep, out_dir / "time_per_token.png")]


def _ok(r: dict[str, Any]) -> bool:
    return r["status"] == "ok" and bool(r["decode_tok_s"])


def decode_vs_ram(rep: dict[str, Any], path: Path) -> str:
    import matplotlib.pyplot as plt
    runs = rep["runs"]
    per = rep["per_run"]
    caps = sorted({r["cap_bytes"] for r in runs if r["cap_bytes"] is not None})
    gib = [c / 2**30 for c in caps]
    warm_x = (max(gib) + 0.3 * ((max(gib) - min(gib)) or max(gib))) if caps else 1.0
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    series: dict[tuple[str, int], list[tuple[float, float]]] = {}
    failed: dict[tuple[str, int], list[float]] = {}
    for r in runs:
        key = (r["config"], r["k"])
        x = r["cap_bytes"] / 2**30 if r["cap_bytes"] is not None else warm_x
        if _ok(r):
            series.setdefault(key, []).append((x, r["decode_tok_s"]))
        else:
            failed.setdefault(key, []).append(x)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for key, pts in series.items():   # several rounds (--rounds): their median
        xs = sorted({p[0] for p in pts})
        series[key] = [(x, statistics.median(p[1] for p in pts if p[0] == x)) for x in xs]
    for i, (key, pts) in enumerate(sorted(series.items())):
        c = colors[i % len(colors)]
        capped = [p for p in pts if p[0] != warm_x]
        style = "-" if key[0].startswith("flashmoe") else "--"
        if capped:
            ax.plot([p[0] for p in capped], [p[1] for p in capped], style, marker="o", color=c,
                    label=f"{key[0]} K={key[1]}")
        for p in pts:
            if p[0] == warm_x:
                ax.plot([p[0]], [p[1]], marker="*", markersize=11, color=c,
                        label=None if capped else f"{key[0]} K={key[1]} (no cap, warm)")
        for x in failed.get(key, []):
            ax.plot([x], [0], marker="x", markersize=10, color=c)
    for key, xs in failed.items():
        if key not in series:
            ax.plot(xs, [0] * len(xs), "x", markersize=10, label=f"{key[0]} K={key[1]}: failed (OOM/killed)")
    if any(key in series for key in failed):
        ax.plot([], [], "x", color="black", label="x: that run failed (OOM/killed)")
    # the disk bound per K: at 0 % hits (flat in the cap) and at the first flashmoe configuration's hit rate
    fm = next((r["config"] for r in runs if r["config"].startswith("flashmoe-")), "")
    greys = ["black", "dimgrey", "grey", "darkgrey"]
    for j, k in enumerate(sorted({r["k"] for r in runs})):
        b0 = [per[r["name"]].get("disk_bound_0_hit_tok_s") for r in runs if r["k"] == k]
        b0 = [b for b in b0 if b and math.isfinite(b)]
        if b0 and caps:
            ax.axhline(b0[0], color=greys[j % len(greys)], linestyle=(0, (1, 2 + j)), linewidth=1.2,
                       label=f"disk bound, 0 % hits, K={k}: {b0[0]:.2f} tok/s")
        pts = sorted((r["cap_bytes"] / 2**30, per[r["name"]].get("disk_bound_at_hit_rate_tok_s"))
                     for r in runs if r["k"] == k and r["config"] == fm and r["cap_bytes"] is not None)
        pts = [p for p in pts if p[1] and math.isfinite(p[1])]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ":", marker="^", color=greys[j % len(greys)],
                    linewidth=1, label=f"disk bound at {fm}'s hit rate, K={k}")
    if caps:
        ax.axvline(warm_x - (warm_x - max(caps) / 2**30) / 2, color="lightgrey", linewidth=0.8)
    ticks = [c / 2**30 for c in caps] + [warm_x]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:.2f}" for t in ticks[:-1]] + ["no cap\n(warm)"])
    ax.set_xlabel("RAM cap incl. page cache, GiB")
    ax.set_ylabel("decode tokens/s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{Path(rep['model']['path']).name}: decode speed vs RAM cap", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def time_per_token(rep: dict[str, Any], path: Path) -> str:
    import matplotlib.pyplot as plt
    runs = [r for r in rep["runs"] if _ok(r)]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(runs) + 2), 5), dpi=110)
    names = [r["name"] for r in runs]
    x = list(range(len(runs)))
    fixed_parts = rep.get("fixed_parts") or {}
    io = [r["time_per_token"].get("io_wait", 0.0) * 1e3 for r in runs]
    comp = [r["time_per_token"].get("expert_compute", 0.0) * 1e3 for r in runs]
    total = [1e3 / r["decode_tok_s"] for r in runs]
    fixed = []
    for r, t, a, b in zip(runs, total, io, comp):
        f = fixed_parts.get(f"{r['config']} K={r['k']}")
        fixed.append(min(f["seconds"] * 1e3, max(0.0, t - a - b)) if f else 0.0)
    flash = [r["config"].startswith("flashmoe-") for r in runs]
    rest = [max(0.0, t - a - b - f) if fm else 0.0 for t, a, b, f, fm in zip(total, io, comp, fixed, flash)]
    undivided = [0.0 if fm else max(0.0, t - f) for t, f, fm in zip(total, fixed, flash)]
    base = [a + b for a, b in zip(io, comp)]
    ax.bar(x, io, label="I/O wait (experts)", color="#d62728")
    ax.bar(x, comp, bottom=io, label="expert compute", color="#1f77b4")
    if any(fixed):
        ax.bar(x, fixed, bottom=base, label="fixed part: output head, logits, argmax (probe)", color="#ff7f0e")
    base = [a + f for a, f in zip(base, fixed)]
    ax.bar(x, rest, bottom=base, label="the rest (attention, router, shared expert, ...)", color="#7f7f7f")
    ax.bar(x, undivided, bottom=base, color="white", edgecolor="black", hatch="//",
           linewidth=[1.0 if u else 0.0 for u in undivided], label="stock: the rest, not divided (no flashmoe_stats)")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("ms per decode token")
    ax.set_title("Where the time per token goes", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name
