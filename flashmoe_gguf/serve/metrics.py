"""GET /metrics: the expert store's statistics and the server's request counters in Prometheus' text exposition
format (version 0.0.4): every family with its HELP and TYPE lines, counters named *_total, units in the name.

The model's figures (from flashmoe_stats) restart from zero when the model is reloaded, which Prometheus reads
as a counter reset.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from .gate import Gate
from .proxy import ModelStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# flashmoe_stats key -> (metric name, type, help)
MODEL_STATS: dict[str, tuple[str, str, str]] = {
    "expert_bytes_read": ("flashmoe_expert_read_bytes_total", "counter", "Expert bytes read from the model file."),
    "reads": ("flashmoe_expert_reads_total", "counter", "Expert reads issued to the model file."),
    "cache_hits": ("flashmoe_expert_cache_hits_total", "counter", "Expert uses served from the expert cache."),
    "cache_misses": ("flashmoe_expert_cache_misses_total", "counter", "Expert uses that had to be read."),
    "prefetches": ("flashmoe_expert_prefetches_total", "counter", "Experts read ahead of their use."),
    "not_admitted": ("flashmoe_expert_not_admitted_total", "counter",
                     "Experts read, used and dropped rather than cached (used less than what they would evict)."),
    "expert_bytes_used": ("flashmoe_expert_used_bytes_total", "counter", "Expert bytes multiplied."),
    "mul_mat_id_calls": ("flashmoe_mul_mat_id_calls_total", "counter", "Expert matrix products computed."),
    "io_seconds": ("flashmoe_io_seconds_total", "counter", "Time spent in expert reads (summed over I/O threads)."),
    "io_wait_seconds": ("flashmoe_io_wait_seconds_total", "counter", "Time compute waited for expert reads."),
    "expert_compute_seconds": ("flashmoe_expert_compute_seconds_total", "counter",
                               "Time spent computing expert products, waits excluded."),
    "cache_bytes": ("flashmoe_expert_cache_bytes", "gauge", "Bytes of experts in the cache now."),
    "cache_peak_bytes": ("flashmoe_expert_cache_peak_bytes", "gauge", "Most bytes of experts the cache held."),
    "ram_budget": ("flashmoe_ram_budget_bytes", "gauge", "RAM budget of the expert cache."),
    "load_bytes_read": ("flashmoe_load_read_bytes", "gauge", "Bytes read from the model file when it was loaded."),
}


@dataclass
class RequestCounters:
    """What the server counts itself. Only the event loop writes these."""
    responses: Counter[tuple[str, str]] = field(default_factory=Counter)   # (endpoint, status code)
    disconnects: int = 0          # requests whose client left before the answer was complete
    stream_errors: int = 0        # streams that ended with an error event after their 200
    evals_after_stop: int = 0     # model evaluations that ran after their request was stopped

    def response(self, endpoint: str, code: int) -> None:
        self.responses[(endpoint, str(code))] += 1


@dataclass
class _Family:
    name: str
    kind: str
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(families: list[_Family]) -> str:
    lines: list[str] = []
    for fam in families:
        lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        for labels, value in fam.samples:
            label_text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
            lines.append(f"{fam.name}{{{label_text}}} {_number(value)}" if label_text else
                         f"{fam.name} {_number(value)}")
    return "\n".join(lines) + "\n"


def exposition(model: ModelStatus, gate: Gate, counters: RequestCounters) -> str:
    fams: list[_Family] = []

    def add(name: str, kind: str, help_: str, value: Optional[float] = None,
            labels: Optional[dict[str, str]] = None) -> _Family:
        fam = _Family(name, kind, help_)
        if value is not None:
            fam.samples.append((labels or {}, value))
        fams.append(fam)
        return fam

    on_model = {"model": model.alias}
    add("flashmoe_model_loaded", "gauge", "1 when the model is loaded and can serve.", int(model.loaded), on_model)
    add("flashmoe_model_failed", "gauge", "1 when the model failed or could not be loaded (see GET /health).",
        int(model.failure is not None), on_model)
    add("flashmoe_model_loads_total", "counter", "Model loads, the first one included.", model.loads)
    add("flashmoe_model_failures_total", "counter",
        "Models closed after their expert store failed (read error, file changed or truncated).", model.failures)
    if model.stats is not None:
        st = model.stats
        info = {"model": model.alias, "kernel_isa": str(st.get("kernel_isa")),
                "direct_io": str(bool(st.get("direct_io"))).lower()}
        add("flashmoe_model_info", "gauge", "The loaded model and how its experts are computed and read.", 1, info)
        for key, (name, kind, help_) in MODEL_STATS.items():
            if key in st:
                add(name, kind, help_, st[key], on_model)
        add("flashmoe_tokens_evaluated_total", "counter",
            "Tokens the model evaluated: prompt tokens not reused from the KV cache, and generated tokens.",
            model.tokens_evaluated, on_model)
    add("flashmoe_queue_capacity", "gauge", "Requests that may wait for the model.", gate.capacity)
    add("flashmoe_queue_waiting", "gauge", "Requests waiting for the model now.", gate.waiting)
    add("flashmoe_requests_active", "gauge", "Requests on the model now (0 or 1).", int(gate.active))
    add("flashmoe_requests_rejected_total", "counter", "Requests refused with 503 because the queue was full.",
        gate.rejected)
    fam = add("flashmoe_http_responses_total", "counter", "HTTP responses, by endpoint and status code.")
    for (endpoint, code), n in sorted(counters.responses.items()):
        fam.samples.append(({"endpoint": endpoint, "code": code}, n))
    add("flashmoe_client_disconnects_total", "counter",
        "Requests whose client left before the answer was complete (their generation was stopped).",
        counters.disconnects)
    add("flashmoe_evals_after_stop_total", "counter",
        "Model evaluations (a token, or a prompt batch) that ran after their request was stopped because its "
        "client left: at most the one in flight at that moment.", counters.evals_after_stop)
    add("flashmoe_stream_errors_total", "counter", "Streamed answers that ended with an error event.",
        counters.stream_errors)
    return render(fams)
