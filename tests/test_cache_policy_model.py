"""The Python model of the store and its policies (flashmoe_gguf/bench/store_model.py, policy_models.py), used for
the bounds of bench/cache_bounds.py, against the real store (replay_store) hit for hit; the model oracle's trace is
the generator's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flashmoe_gguf.bench.cache_bounds import (
    future_popularity_hazard,
    future_uses,
    hindsight_hazard,
)
from flashmoe_gguf.bench.policy_models import LFU, LRU, Hazard
from flashmoe_gguf.bench.replay import belady, replay_store, slots_for
from flashmoe_gguf.bench.routing import Trace, generate
from flashmoe_gguf.bench.routing_oracle import ModelOracle, generate_with_probabilities
from flashmoe_gguf.bench.store_model import run
from flashmoe_gguf.bench.traces import stored_traces

MODELS = {"lru": LRU, "lfu": LFU, "hazard": Hazard}


def gpt_oss() -> Trace:
    return next(t for t in stored_traces() if t.name == "bmoe-gpt-oss-120b-k2")


@pytest.mark.parametrize("share", [0.05, 0.2, 0.35])
def test_model_gives_the_store_hits_on_a_real_trace(share: float, tmp_path: Path) -> None:
    t = gpt_oss()
    slots = slots_for(t, share)
    for name, model in MODELS.items():
        assert run(t, slots, model()) == replay_store(t, name, slots, tmp_path), (name, share)


def test_model_gives_the_store_hits_on_a_generated_trace(tmp_path: Path) -> None:
    t = generate("deepseek-v2-lite", tokens=40, seed=3)
    for slots in (40, 200):
        for name, model in MODELS.items():
            assert run(t, slots, model()) == replay_store(t, name, slots, tmp_path), (name, slots)


def test_oracle_trace_is_the_generated_one() -> None:
    t, prob = generate_with_probabilities("mixtral-8x7b", tokens=30, seed=0)
    assert np.array_equal(t.experts, generate("mixtral-8x7b", tokens=30, seed=0).experts)
    assert prob.shape == (31, 32, 8) and (prob >= 0).all() and (prob <= 1).all()
    # per slot the probabilities sum to 1, so over the K = 2 slots at most 2 per layer and token
    assert (prob.sum(axis=2) <= 2 + 1e-9).all()
    # what was drawn was, on average, more likely than the rest
    drawn = np.take_along_axis(prob[:30], t.experts.astype(np.int64), axis=2)
    assert drawn.mean() > prob[:30].mean()


def test_references_stay_below_belady() -> None:
    t = gpt_oss()
    f = future_uses(t)
    assert f.sum() == (t.tokens - t.prompt_tokens) * t.layers * t.k
    slots = slots_for(t, 0.1)
    best = belady(t, slots).hits
    assert run(t, slots, hindsight_hazard(t)).hits <= best
    assert run(t, slots, future_popularity_hazard(t)).hits <= best
    g, prob = generate_with_probabilities("mixtral-8x7b", tokens=40, seed=1)
    assert run(g, 20, ModelOracle(prob)).hits <= belady(g, 20).hits
