"""The counters a running qasr keeps, as Prometheus metrics (prometheus-client).

One `Metrics` per runtime, each with its own registry (no process-wide globals: tests and benchmarks
build several runtimes in one process). Everything is a counter, a gauge or a histogram with fixed
buckets, so memory stays bounded however long the server runs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5, 10)


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
        self.queue_depth = Gauge(
            "qasr_queue_depth",
            "Requests waiting for the model now, by priority class.",
            ["model", "priority"],
            registry=r,
        )
        self.model = Info("qasr_model", "The model being served and how it runs.", ["role"], registry=r)
        # --- the HTTP edge (qasr.api.edge) ---
        self.requests = Counter(
            "qasr_http_requests",
            "HTTP requests answered, by API, route and status (499: the client left first).",
            ["api", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "qasr_http_request_seconds",
            "Time from a request's arrival to the end of its answer (streams included).",
            ["api", "route"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.first_result_seconds = Histogram(
            "qasr_http_first_result_seconds",
            "Time to the first byte of an answer's body: a stream's first event, else the whole answer.",
            ["api", "route"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.audio_seconds = Counter(
            "qasr_audio_seconds", "Seconds of audio transcribed, by API.", ["api"], registry=r
        )
        self.real_time_factor = Histogram(
            "qasr_real_time_factor",
            "Processing time over audio duration per request (below 1: faster than real time).",
            ["api"],
            buckets=_RTF_BUCKETS,
            registry=r,
        )
        self.draining = Gauge("qasr_draining", "1 while the server drains before it stops.", registry=r)
        self.live_sessions = Gauge(
            "qasr_live_sessions", "Live recognition (realtime WebSocket) sessions open now.", registry=r
        )
        self.jobs = Gauge(
            "qasr_jobs", "Async file jobs in the task store, by status (issue 15).", ["status"], registry=r
        )
        self.rejected = Counter(
            "qasr_rejected",
            "Requests refused for load (429) or dropped past their queue deadline, by priority class.",
            ["model", "priority"],
            registry=r,
        )
