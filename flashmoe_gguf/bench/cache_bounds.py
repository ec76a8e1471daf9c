"""How close can an online cache policy get to Belady on a trace? References that know more than any online
policy, replayed through the store model (bench/store_model.py):

- hindsight table: the hazard policy with its probability table learned on the whole trace beforehand (the best
  estimate its features allow);
- future popularity: the same, with each expert's decayed count replaced by its true number of uses in the
  trace's decode part (knows every expert's popularity in advance);
- model oracle (generated traces): each expert ranked by its probability under the generator that drew the trace
  (bench/routing_oracle.py).
"""

from __future__ import annotations

import numpy as np

from .policy_models import Hazard
from .routing import Trace

FUTURE_EDGES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96], dtype=float)


def _learn(trace: Trace, policy: Hazard) -> tuple[np.ndarray, np.ndarray]:
    """The (events, exposures) the policy has learned after the whole trace (they do not depend on the cache)."""
    policy.create(trace.layers * trace.n_expert, trace.n_expert)
    for _, step in trace.steps():
        for layer in range(step.shape[0]):
            ids = [int(e) for e in step[layer] if e >= 0]
            if ids:
                policy.on_acquire(layer)
                for e in ids:
                    policy.on_use(layer * trace.n_expert + e)
    return policy.events.copy(), policy.exposures.copy()


def hindsight_hazard(trace: Trace) -> Hazard:
    return Hazard(table=_learn(trace, Hazard()))


def future_uses(trace: Trace) -> np.ndarray:
    """Per key (layer x experts + expert): its uses in the decode part."""
    e = trace.experts[trace.prompt_tokens:]
    out = np.zeros(trace.layers * trace.n_expert)
    for layer in range(trace.layers):
        ids = e[:, layer].ravel()
        out[layer * trace.n_expert:(layer + 1) * trace.n_expert] = np.bincount(ids[ids >= 0],
                                                                                minlength=trace.n_expert)
    return out


def future_popularity_hazard(trace: Trace) -> Hazard:
    f = future_uses(trace)
    table = _learn(trace, Hazard(count_of=f, count_edges=FUTURE_EDGES))
    return Hazard(table=table, count_of=f, count_edges=FUTURE_EDGES)
