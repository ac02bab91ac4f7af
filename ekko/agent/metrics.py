"""Prometheus metrics of one agent, in its own registry (several agents can share a process in
tests without colliding, and /metrics shows only the agent's series)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
ROUTING_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.shards_loaded = Gauge(
            "ekko_agent_shards_loaded", "Shard replicas loaded on this server.", registry=r
        )
        self.bytes_loaded = Gauge(
            "ekko_agent_bytes_loaded", "Bytes of shards loaded on this server.", registry=r
        )
        self.load_seconds = Histogram(
            "ekko_agent_load_seconds",
            "Time to load one shard replica (successful loads).",
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.load_failures = Counter(
            "ekko_agent_load_failures_total", "Shard loads that failed.", registry=r
        )
        self.requests = Counter(
            "ekko_agent_requests_total",
            "Inference requests served, by model and version.",
            ["model", "version"],
            registry=r,
        )
        self.request_errors = Counter(
            "ekko_agent_request_errors_total",
            "Inference requests that failed, by model and version.",
            ["model", "version"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "ekko_agent_request_seconds",
            "Latency of inference requests, by model and version.",
            ["model", "version"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.routing_applied_seconds = Histogram(
            "ekko_agent_routing_applied_seconds",
            "Time from observing a Model status change to applying its routing weights.",
            buckets=ROUTING_BUCKETS,
            registry=r,
        )
        self.status_writes = Counter(
            "ekko_agent_status_writes_total", "Status patches sent to the API server.", registry=r
        )
        self.status_write_errors = Counter(
            "ekko_agent_status_write_errors_total", "Status patches that failed.", registry=r
        )

    def declare(self, model: str, version: str) -> None:
        """Create a version's request series at zero before its first request.

        A counter that appears with its first increment loses that increment to ``rate()`` and
        makes early error rates read low (or empty): a canary must be judged from zero.
        """
        self.requests.labels(model, version)
        self.request_errors.labels(model, version)
        self.request_seconds.labels(model, version)

    def render(self) -> bytes:
        return generate_latest(self.registry)
