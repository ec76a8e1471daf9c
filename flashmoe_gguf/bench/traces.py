"""Stored routing traces (flashmoe_gguf/bench/traces/*.npz, provenance in traces/PROVENANCE.md): load and save.

An .npz holds `experts` (int16 [tokens, layers, k]) and the scalars `name`, `model`, `n_expert`,
`prompt_tokens`, `source`; see routing.Trace.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .routing import Trace

TRACE_DIR = Path(__file__).resolve().parent / "traces"


def save_trace(trace: Trace, path: str | Path) -> None:
    np.savez_compressed(path, experts=trace.experts.astype(np.int16), name=trace.name, model=trace.model,
                        n_expert=trace.n_expert, prompt_tokens=trace.prompt_tokens, source=trace.source)


def load_trace(path: str | Path) -> Trace:
    with np.load(path, allow_pickle=False) as z:
        return Trace(name=str(z["name"]), model=str(z["model"]), n_expert=int(z["n_expert"]),
                     experts=z["experts"].astype(np.int16), prompt_tokens=int(z["prompt_tokens"]),
                     source=str(z["source"]))


def stored_traces() -> list[Trace]:
    """Every real trace kept in the package, by file name."""
    return [load_trace(p) for p in sorted(TRACE_DIR.glob("*.npz"))]
