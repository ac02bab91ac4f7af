"""kopf settings chosen on purpose for a seconds-level product, and the operator's shared objects."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import kopf

from ekko.kube.cache import OPERATOR_KINDS, Cache
from ekko.kube.client import connect
from ekko.kube.fleet import WRITE_CONCURRENCY, Fleet
from ekko.operator import metrics
from ekko.operator.peering import PEERING_NAME, Gate
from ekko.operator.rollouts import Rollouts
from ekko.operator.worker import Workers

API_OUTAGE_BACKOFFS: tuple[float, ...] = (0.5, 1, 2, 5, 10, *([15.0] * 24))
"""Seconds between retries of a failed API call: ~6.5 minutes of API-server outage ridden out."""


def configure(settings: kopf.OperatorSettings, memo: kopf.Memo) -> None:
    """Apply Ekko's kopf settings and put the fleet client and pool workers in the memo."""
    # Handlers log to the operator's log; Kubernetes events are posted by the workers, short
    # and deliberate, instead of one per handler run.
    settings.posting.level = logging.WARNING
    # Operators sharing the peering object "ekko" (KopfPeering per namespace, or
    # ClusterKopfPeering with -A) elect the highest priority; the others pause until it is gone.
    settings.peering.name = PEERING_NAME
    # A crashed operator's entry blocks its replacement until it expires: keep that short.
    settings.peering.lifetime = 15
    # Watches are re-established every minute, so a silently dropped connection costs at most that.
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 75
    settings.watching.connect_timeout = 10
    # Short retries first (an API hiccup should delay a rollback by a second, not a minute), then
    # every 15 s for six more minutes: kopf gives up once the list is exhausted, and with only the
    # short part an API-server restart of ~20 s stopped the operator for good.
    settings.networking.error_backoffs = API_OUTAGE_BACKOFFS
    settings.batching.error_delays = [0.5, 1, 2, 5, 10]
    settings.batching.idle_timeout = 30
    settings.batching.batch_window = 0.05
    # The solver runs in this pool (OR-Tools releases the GIL while it searches).
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ekko-solve")
    kubeconfig = os.environ.get("EKKO_KUBECONFIG") or os.environ.get("KUBECONFIG")
    writes = int(os.environ.get("EKKO_WRITE_CONCURRENCY") or WRITE_CONCURRENCY)
    # Room for every write of a pass in flight plus the workers' other calls; the watches of the
    # cache hold their connections for minutes, so they get a client (and a pool) of their own.
    api = connect(kubeconfig, pool_size=writes + 8).api
    cache_api = connect(kubeconfig).api
    cache = Cache(cache_api, list(memo.get("namespaces") or []) or None, kinds=OPERATOR_KINDS)
    fleet = Fleet(
        api,
        operator_image=os.environ.get("EKKO_IMAGE", "ghcr.io/ekko-dev/ekko:0.1.0"),
        cache=cache,
        write_concurrency=writes,
    )
    metrics.CLIENT.clients[:] = [api, cache_api]
    metrics.CLIENT.caches[:] = [cache]
    memo.cache = cache
    memo.executor = executor
    memo.fleet = fleet
    if memo.get("peering_namespaces") is not None:  # --peering
        fleet.ensure_peering(PEERING_NAME, list(memo.peering_namespaces))
    gate = Gate(
        fleet,
        identity=memo.get("identity", ""),
        priority=memo.get("priority", 0),
        clusterwide=memo.get("clusterwide", True),
        enabled=not memo.get("standalone", False),
    )
    memo.workers = Workers(fleet, executor, gate)
    options = memo.get("webhook")
    if options is not None:  # ekko operator --webhook-port imported the webhook handlers
        from ekko.operator.webhook import configure as configure_webhook  # noqa: PLC0415

        configure_webhook(settings, options)
    memo.rollouts = Rollouts(fleet, memo.workers.wake, os.environ.get("EKKO_PROMETHEUS_URL"), gate)
