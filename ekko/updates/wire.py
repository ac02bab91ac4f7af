"""The HTTP side shared by the node and the publisher: the long-poll pull endpoint and metrics.

``POST /v1/updates/pull`` takes a request frame (the caller's knowledge and byte budget, see
:mod:`ekko.updates.codec`) and answers with a response frame as soon as there is something the
caller lacks, or after ``?wait=`` seconds with an empty one. Rows are chosen by the responder's
:class:`~ekko.updates.priority.Scheduler`; a malformed request is a 400.

When a :class:`StateControl` is attached (a node's cut log), ``POST /v1/updates/cut``
(``{"cut": 7}``) starts a cut and ``POST /v1/updates/restore`` (``{"cut": 7, "epoch": 3}``)
restores the tables to it at the new epoch; both answer JSON. An unknown cut is a 404, a bad body
a 400, an epoch that does not fence the current one a 409; without a control, both are 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from ekko.updates.codec import (
    FORMAT_VERSION,
    CodecError,
    Encoding,
    decode_request,
    encode_response,
    fp32_bytes,
)
from ekko.updates.priority import CLASS_NAMES, Scheduler
from ekko.updates.snapshots import vectors_from_json
from ekko.updates.store import ApplyResult, PullResponse, ShardId, Store
from ekko.updates.versions import VersionVector

log = logging.getLogger(__name__)

PULL_PATH = "/v1/updates/pull"
CUT_PATH = "/v1/updates/cut"
RESTORE_PATH = "/v1/updates/restore"
DEFAULT_PORT = 9500
MAX_WAIT_S = 60.0
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 2.4, 3, 5, 10, 30, 60, 300)


class UpdateMetrics:
    """The data plane's series on a registry passed in (the agent's, or a process's own), each
    declared at zero as soon as its labels are known."""

    def __init__(self, registry: CollectorRegistry, region: str = "") -> None:
        self.registry = registry
        self.region = region
        r = registry
        self.lag = Histogram(
            "ekko_update_lag_seconds",
            "Time from publish at the origin to apply on this replica, by model, region and priority class.",
            ["model", "region", "priority_class"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.staleness = Gauge(
            "ekko_update_staleness_seconds",
            "Seconds since this replica last held everything its upstream offered (0 when caught up), by model.",
            ["model"],
            registry=r,
        )
        self.rows_applied = Counter(
            "ekko_update_rows_applied_total",
            "Rows applied (newer than what was held), by model and priority class.",
            ["model", "priority_class"],
            registry=r,
        )
        self.wire_bytes = Counter(
            "ekko_update_wire_bytes_total",
            "Bytes of update frames on the wire, by direction (in: pulled, out: served) and peer region.",
            ["direction", "peer_region"],
            registry=r,
        )
        self.raw_bytes = Counter(
            "ekko_update_raw_bytes_total",
            "The same rows as uncompressed float32 (raw / wire is the compression ratio).",
            ["direction", "peer_region"],
            registry=r,
        )
        self.backlog = Gauge(
            "ekko_update_backlog_rows",
            "Rows a downstream lacks that its last pull could not carry, by downstream.",
            ["downstream"],
            registry=r,
        )
        self.full_scans = Counter(
            "ekko_update_full_scans_total",
            "Pulls answered by scanning a whole shard (the puller was below the recent-keys cache).",
            registry=r,
        )
        self.pulls = Counter(
            "ekko_update_pulls_total",
            "Pulls this node made, by upstream and outcome (rows, empty, error).",
            ["upstream", "outcome"],
            registry=r,
        )
        self._models: set[str] = set()

    def declare_model(self, model: str) -> None:
        if model in self._models:
            return
        self._models.add(model)
        for c in CLASS_NAMES:
            self.lag.labels(model, self.region, c)
            self.rows_applied.labels(model, c)
        self.staleness.labels(model).set(0)

    def declare_peer(self, peer_region: str) -> None:
        for d in ("in", "out"):
            self.wire_bytes.labels(d, peer_region)
            self.raw_bytes.labels(d, peer_region)

    def declare_upstream(self, upstream: str) -> None:
        for outcome in ("rows", "empty", "error"):
            self.pulls.labels(upstream, outcome)

    def observe_apply(self, model: str, result: ApplyResult, now: float) -> None:
        """Lag and rows of one applied batch (``now`` on the same clock as publish times)."""
        self.declare_model(model)
        if result.applied == 0:
            return
        lags: npt.NDArray[np.float64] = np.maximum(now - result.publish_times, 0.0)
        for c, name in enumerate(CLASS_NAMES):
            mine = lags[result.classes == c]
            if len(mine) == 0:
                continue
            hist = self.lag.labels(model, self.region, name)
            for v in mine.tolist():
                hist.observe(v)
            self.rows_applied.labels(model, name).inc(len(mine))

    def observe_bytes(self, direction: str, peer_region: str, wire: int, raw: int) -> None:
        self.wire_bytes.labels(direction, peer_region).inc(wire)
        self.raw_bytes.labels(direction, peer_region).inc(raw)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Notifier:
    """Wakes long polls when the store changed. Take :meth:`current` *before* looking at the
    store, then wait on it: a change in between is never missed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        return self._event

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()


class StateControl(Protocol):
    """What the cut and restore endpoints call (a node implements it over its cut log)."""

    def take_cut(
        self,
        cut_id: int,
        vectors: Mapping[ShardId, VersionVector] | None = None,
        model: str | None = None,
    ) -> dict[str, Any]: ...

    def restore(
        self, cut_id: int, epoch: int | None, model: str | None = None
    ) -> dict[str, Any]: ...


STORE_KEY: web.AppKey[UpdateServer] = web.AppKey("update_server")


class UpdateServer:
    """Serves a store to downstreams: the pull endpoint, /metrics and /healthz."""

    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        metrics: UpdateMetrics,
        notifier: Notifier | None = None,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.metrics = metrics
        self.notifier = notifier or Notifier()
        self._runner: web.AppRunner | None = None
        self._scans_seen = 0
        self.port = 0
        self.control: StateControl | None = None
        """Set by a node that keeps cuts; serves the cut and restore endpoints."""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 << 20)
        app[STORE_KEY] = self
        app.router.add_post(PULL_PATH, _pull)
        app.router.add_post(CUT_PATH, _cut)
        app.router.add_post(RESTORE_PATH, _restore)
        app.router.add_get("/metrics", _metrics)
        app.router.add_get("/healthz", _healthz)
        return app

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (port 0 picks one); returns the bound port."""
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def serve_pull(self, body: bytes, wait: float) -> bytes:
        """Answer one pull: as soon as the caller lacks something, or empty after ``wait``."""
        request = decode_request(body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        version = min(request.frame_version, FORMAT_VERSION)  # what the puller decodes
        encoding = Encoding(request.dtype, request.zstd, version=version)

        def encode(r: PullResponse) -> bytes:
            return encode_response(r, encoding)

        while True:
            changed = self.notifier.current()
            # The budget is the puller's link tokens: filled in encoded bytes, not upper bounds.
            response, data = self.scheduler.respond_encoded(self.store, request, encode)
            self._count_scans()
            remaining = deadline - loop.time()
            if response.batches or remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
        peer = request.region or "unknown"
        self.metrics.declare_peer(peer)
        self.metrics.observe_bytes("out", peer, len(data), fp32_bytes(response))
        self.metrics.backlog.labels(request.peer or "unknown").set(response.backlog)
        return data

    def _count_scans(self) -> None:
        new = self.store.full_scans - self._scans_seen
        if new:
            self.metrics.full_scans.inc(new)
            self._scans_seen = self.store.full_scans


async def _pull(request: web.Request) -> web.Response:
    server = request.app[STORE_KEY]
    try:
        wait = min(max(float(request.query.get("wait", "10")), 0.0), MAX_WAIT_S)
    except ValueError:
        return web.Response(status=400, text="wait must be a number of seconds\n")
    body = await request.read()
    try:
        data = await server.serve_pull(body, wait)
    except CodecError as e:
        return web.Response(status=400, text=f"bad pull request: {e}\n")
    return web.Response(body=data, content_type="application/octet-stream")


async def _control_body(request: web.Request) -> tuple[int, int | None, str | None]:
    """``(cut, epoch, model)`` from a JSON body (``model`` absent: every table); ValueError when
    malformed."""
    try:
        body = json.loads(await request.read() or b"{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    cut, epoch = body.get("cut"), body.get("epoch")
    if not isinstance(cut, int) or isinstance(cut, bool) or cut < 0:
        raise ValueError('"cut" must be a non-negative integer')
    if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool)):
        raise ValueError('"epoch" must be an integer')
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise ValueError('"model" must be a non-empty string')
    return cut, epoch, model


async def _cut(request: web.Request) -> web.Response:
    control = request.app[STORE_KEY].control
    if control is None:
        return web.json_response({"error": "this server keeps no cuts"}, status=404)
    try:
        cut, _, model = await _control_body(request)
        raw = json.loads(await request.read() or b"{}").get("vectors")
        vectors = vectors_from_json(raw) if raw is not None else None
        return web.json_response(control.take_cut(cut, vectors, model))
    except ValueError as e:
        return web.json_response({"error": str(e)}, status=400)


async def _restore(request: web.Request) -> web.Response:
    control = request.app[STORE_KEY].control
    if control is None:
        return web.json_response({"error": "this server keeps no cuts"}, status=404)
    try:
        cut, epoch, model = await _control_body(request)
    except ValueError as e:
        return web.json_response({"error": str(e)}, status=400)
    try:
        return web.json_response(control.restore(cut, epoch, model))
    except KeyError as e:
        return web.json_response({"error": str(e.args[0]) if e.args else "no such cut"}, status=404)
    except ValueError as e:
        return web.json_response({"error": str(e)}, status=409)


async def _metrics(request: web.Request) -> web.Response:
    server = request.app[STORE_KEY]
    return web.Response(body=server.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def parse_listen(value: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host:port``, ``:port`` or ``host`` → ``(host, port)``; the host defaults to 0.0.0.0 so
    other pods can reach the data plane."""
    host, sep, port = value.rpartition(":")
    if not sep:
        return (value or "0.0.0.0", default_port)
    return (host.strip("[]") or "0.0.0.0", int(port))


__all__: Sequence[str] = (
    "CUT_PATH",
    "DEFAULT_PORT",
    "PULL_PATH",
    "RESTORE_PATH",
    "Notifier",
    "StateControl",
    "UpdateMetrics",
    "UpdateServer",
    "parse_listen",
)
