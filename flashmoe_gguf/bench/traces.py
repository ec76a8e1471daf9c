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


ROUTER = "router"    # the model's own router (no replay)


def routing_trace(spec: str, tokens: int = 1024, seed: int = 0) -> Trace | None:
    """What `flashmoe bench --routing SPEC` replays: None for "router" (the model's own choice); a preset of
    routing.PRESETS (a trace generated for that model, `tokens` long); a stored real trace by name (its decode part:
    the bench's prompt is its own); or an .npz file written by save_trace. A ValueError names the choices."""
    from .routing import PRESETS, generate
    if spec in ("", ROUTER):
        return None
    if spec in PRESETS:
        return generate(spec, tokens=tokens, seed=seed)
    stored = {t.name: t for t in stored_traces()}
    if spec in stored:
        t = stored[spec]
        return Trace(name=t.name, model=t.model, n_expert=t.n_expert, experts=t.experts[t.prompt_tokens:],
                     source=t.source)
    if spec.endswith(".npz") and Path(spec).is_file():
        return load_trace(spec)
    raise ValueError(f"--routing {spec!r}: not a preset ({', '.join(PRESETS)}), a stored trace "
                     f"({', '.join(stored)}), an .npz file, or {ROUTER!r}")


def check_fits(trace: Trace, n_expert: int, k: int, moe_layers: int) -> None:
    """A ValueError unless the trace can stand in for this model's router (same experts and K, enough layers)."""
    if trace.n_expert != n_expert:
        raise ValueError(f"routing trace {trace.name} is for {trace.n_expert} experts, the model has {n_expert}")
    if trace.k != k:
        raise ValueError(f"routing trace {trace.name} selects {trace.k} experts per token, the model {k} "
                         f"(--k {trace.k} makes the model select as many)")
    if trace.layers < moe_layers:
        raise ValueError(f"routing trace {trace.name} has {trace.layers} layers, the model {moe_layers}")
