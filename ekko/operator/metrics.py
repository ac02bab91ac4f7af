"""Prometheus metrics of the operator itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ekko.kube.cache import Cache
from ekko.kube.client import CountingApiClient

REGISTRY = CollectorRegistry()

SOLVE_SECONDS = Histogram(
    "ekko_solve_seconds",
    "Wall time of placement solves.",
    ["pool"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
    registry=REGISTRY,
)
SERVERS = Gauge(
    "ekko_pool_servers",
    "Servers of a pool by kind: wanted, ready, lower_bound.",
    ["pool", "kind"],
    registry=REGISTRY,
)
PLAN_GAP = Gauge(
    "ekko_plan_gap_ratio", "Last plan's gap above the lower bound.", ["pool"], registry=REGISTRY
)
BYTES_MOVED = Counter(
    "ekko_plan_bytes_moved_total",
    "Shard bytes that plans loaded anew.",
    ["pool"],
    registry=REGISTRY,
)
UNPLACEABLE = Gauge(
    "ekko_models_unplaceable",
    "Models of a pool that cannot be placed at all (left out of its plan).",
    ["pool"],
    registry=REGISTRY,
)
PLANS = Counter(
    "ekko_plans_total", "Placement plans by status.", ["pool", "status"], registry=REGISTRY
)
RECONCILE_ERRORS = Counter(
    "ekko_reconcile_errors_total", "Reconcile passes that failed.", ["pool"], registry=REGISTRY
)
ACTIONS = Counter(
    "ekko_actions_total", "Actions carried out, by kind.", ["pool", "kind"], registry=REGISTRY
)
DEBOUNCE_SECONDS = Histogram(
    "ekko_replan_delay_seconds",
    "Time from the first change to the start of its re-plan (debounce and queueing).",
    ["pool"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30),
    registry=REGISTRY,
)
ROLLOUTS = Counter(
    "ekko_rollouts_total",
    "Rollouts that ended, by namespace, model and outcome.",
    ["namespace", "model", "outcome"],
    registry=REGISTRY,
)
ROLLOUT_SECONDS = Histogram(
    "ekko_rollout_duration_seconds",
    "Time from the start of a rollout to its end, by namespace, model and outcome.",
    ["namespace", "model", "outcome"],
    buckets=(10, 30, 60, 120, 300, 600, 1800, 3600, 7200),
    registry=REGISTRY,
)
ROLLBACK_SECONDS = Histogram(
    "ekko_rollback_seconds",
    "Time from a rollback's request (or detection) until every server applied it.",
    ["namespace", "model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
    registry=REGISTRY,
)
ANALYSIS = Counter(
    "ekko_analysis_measurements_total",
    "Analysis measurements taken, by namespace, model, metric and result.",
    ["namespace", "model", "metric", "result"],
    registry=REGISTRY,
)
PASSES = Counter(
    "ekko_pool_passes_total",
    "Reconcile passes of a pool (wake-ups are coalesced: at most one pass per interval).",
    ["pool"],
    registry=REGISTRY,
)

WAKEUPS = Counter(
    "ekko_pool_wakeups_total",
    "Changes in the operator's cache that woke pool workers, by kind of object (heartbeats and "
    "readiness-neutral node updates wake nothing and are not counted).",
    ["kind"],
    registry=REGISTRY,
)


class ClientCollector(Collector):
    """The API requests the operator's client made and what its cache holds, read at scrape
    time: ``ekko_api_requests_total`` divided by ``ekko_pool_passes_total`` is what a pass costs."""

    def __init__(self) -> None:
        self.clients: list[CountingApiClient] = []
        self.caches: list[Cache] = []

    def collect(self) -> Iterator[Any]:
        requests = CounterMetricFamily(
            "ekko_api_requests",
            "Kubernetes API requests of the operator's client (kopf's own watches excluded), "
            "by RBAC verb and resource.",
            labels=["verb", "resource"],
        )
        totals: dict[tuple[str, str], int] = {}
        for api in self.clients:
            for key, count in api.snapshot().items():
                totals[key] = totals.get(key, 0) + count
        for (verb, resource), count in sorted(totals.items()):
            requests.add_metric([verb, resource], count)
        yield requests
        objects = GaugeMetricFamily(
            "ekko_cache_objects", "Objects in the operator's cache, by kind.", labels=["kind"]
        )
        relists = CounterMetricFamily(
            "ekko_cache_lists",
            "Lists made by the cache's informers (one at start, one after each expired or "
            "failed watch), by kind.",
            labels=["kind"],
        )
        for cache in self.caches:
            for kind, store in sorted(cache.stores.items()):
                objects.add_metric([kind], len(store))
                count = sum(i.relists for i in cache.informers if i.kind.name == kind)
                relists.add_metric([kind], count)
        yield objects
        yield relists


CLIENT = ClientCollector()
REGISTRY.register(CLIENT)
