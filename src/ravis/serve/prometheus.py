"""Prometheus metrics of the prediction server (prometheus_client, one registry per app).

    ravis_requests_total{endpoint, status}      requests answered
    ravis_request_seconds{endpoint}             whole-request latency (server side)
    ravis_stage_seconds{stage}                  per-stage latency of /predict: decode, queue
                                                (waiting for the model), encode, search, fuse
    ravis_errors_total{kind}                    refusals and failures by kind (not_an_image, ...)
    ravis_edits_total{op, outcome}              memory edits (add, delete, relabel) accepted or refused
    ravis_memory_entries                        live entries in the served memory
"""

from __future__ import annotations

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)

disable_created_metrics()  # no *_created timestamp series beside every counter and histogram

STAGES = ("decode", "queue", "encode", "search", "fuse")
# From 0.5 ms (search over a small memory) to 10 s (a long queue under load).
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
           0.5, 0.75, 1.0, 2.0, 5.0, 10.0)


class ServerMetrics:
    """The server's counters and histograms, in their own registry (tests make many apps)."""

    def __init__(self, memory_size: int):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ravis_requests", "Requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram("ravis_request_seconds", "Whole-request latency, server side",
                                 ["endpoint"], buckets=BUCKETS, registry=r)
        self.stages = Histogram("ravis_stage_seconds", "Per-stage latency of /predict", ["stage"],
                                buckets=BUCKETS, registry=r)
        self.errors = Counter("ravis_errors", "Refused or failed requests by kind", ["kind"], registry=r)
        self.edits = Counter("ravis_edits", "Memory edits by op and outcome (accepted, refused)",
                             ["op", "outcome"], registry=r)
        self.memory_entries = Gauge("ravis_memory_entries", "Live entries in the served memory",
                                    registry=r)
        self.memory_entries.set(memory_size)
        for stage in STAGES:  # present from the start, so a scrape before traffic sees them
            self.stages.labels(stage)

    def observe_stages(self, seconds: dict[str, float]) -> None:
        for stage, s in seconds.items():
            self.stages.labels(stage).observe(s)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def parse_histogram_means(text: str, metric: str = "ravis_stage_seconds", label: str = "stage") -> dict:
    """{label value: (count, mean seconds)} from a Prometheus text exposition (used by tests
    and the load benchmark to compare the server's numbers with the client's)."""
    sums, counts = {}, {}
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(metric):
            continue
        name, _, value = line.rpartition(" ")
        if f'{label}="' not in name:
            continue
        key = name.split(f'{label}="', 1)[1].split('"', 1)[0]
        if name.startswith(f"{metric}_sum"):
            sums[key] = float(value)
        elif name.startswith(f"{metric}_count"):
            counts[key] = float(value)
    return {k: (int(counts[k]), sums[k] / counts[k] if counts[k] else 0.0) for k in counts}


__all__ = ["STAGES", "ServerMetrics", "parse_histogram_means"]
