"""The counters a running qasr keeps, as Prometheus metrics (prometheus-client).

One `Metrics` per runtime, each with its own registry (no process-wide globals: tests and benchmarks
build several runtimes in one process). Everything is a counter, a gauge or a histogram with fixed
buckets, so memory stays bounded however long the server runs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The metrics of one runtime; `registry` is what `/metrics` exposes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.batch_size = Histogram(
            "qasr_model_batch_size",
            "Requests per model batch.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "qasr_model_batch_seconds",
            "Time one model batch took.",
            ["model"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "qasr_queue_wait_seconds",
            "Time a request waited for the model, by priority class.",
            ["model", "priority"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "qasr_rejected",
            "Requests refused for load (429) or dropped past their queue deadline, by priority class.",
            ["model", "priority"],
            registry=r,
        )
