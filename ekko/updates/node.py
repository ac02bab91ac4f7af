"""An update node: pulls rows from its upstreams, applies them, and serves its own downstreams.

A node is a replica of the tables (held in a :class:`~ekko.updates.store.Store`) that other
nodes pull from in turn, so dissemination is peer to peer: a region's leader pulls from the
origin and other regions' leaders; its followers pull from it. Which is which is configuration
here (part 2 lets the operator choose).

Upstreams form an ordered list: the first is preferred and the next pulls only while every one
before it is failing; a failed upstream is retried with backoff and takes over again when it
answers. Each upstream link has a token bucket (and an emulated one-way delay for tests and the
benchmark) whose level is the byte budget of the next pull, so a capped link carries what the
responder's scheduler ranks highest.

Optional: ``--state FILE.npz`` saves the store on stop (and every ``--save-every`` s) and
resumes from it, so a restarted node pulls only what changed; ``--apply-log FILE`` appends one
CSV line per applied row, ``apply_time,table,key,epoch,origin,seq``, for offline quality.

The node keeps cuts (:mod:`ekko.updates.snapshots`): ``POST /v1/updates/cut`` starts one and
``POST /v1/updates/restore`` writes its pre-images back at a new epoch and fences old-epoch rows
above it; every pulled batch passes the fence and the cut log before it is applied.

    python -m ekko.updates.node --name eu-0 --region eu --listen 0.0.0.0:9500 \\
        --upstream http://origin:9500 --upstream http://eu-1:9500 --rate 2e6 --delay 0.04
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import aiohttp
import numpy as np
from prometheus_client import CollectorRegistry, Counter

from ekko.updates.codec import (
    FORMAT_VERSION,
    CodecError,
    decode_response,
    encode_request,
    fp32_bytes,
)
from ekko.updates.health import GuardCounts, GuardSpec, ParamGuard
from ekko.updates.link import LinkSpec, TokenBucket
from ekko.updates.priority import Policy, Scheduler, SchedulerConfig
from ekko.updates.snapshots import Cut, CutLog, Fence, ModelCuts, RestoreResult, fence, vectors_json
from ekko.updates.store import Batch, ShardId, Store, TableSpec, ValueDType
from ekko.updates.versions import VersionVector
from ekko.updates.wire import (
    DEFAULT_PORT,
    PULL_PATH,
    UpdateMetrics,
    UpdateServer,
    parse_listen,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upstream:
    """A peer to pull from, with its link's cap and emulated one-way delay."""

    url: str
    link: LinkSpec = field(default_factory=LinkSpec)
    region: str = ""


@dataclass(frozen=True)
class NodeConfig:
    """How a node pulls and serves. ``wait`` is the long-poll timeout; ``min_budget`` is the
    smallest pull worth making (the puller waits for its bucket to hold that much)."""

    name: str = "node"
    region: str = ""
    upstreams: tuple[Upstream, ...] = ()
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    dtype: ValueDType = "float32"
    zstd: bool = False
    wait: float = 10.0
    min_budget: int = 4096
    max_budget: int = 64 << 20
    retry: float = 1.0
    policy: Policy = "ekko"
    high_percentile: float = 0.9
    cache_capacity: int = 65536
    state: Path | None = None
    save_every: float = 0.0
    apply_log: Path | None = None
    undo_cap_bytes: int = 256 << 20
    """Bound of each model's cut log's undo memory (the oldest cut is dropped when it is hit)."""
    routes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Per model, the URLs of :attr:`upstreams` it is pulled from, preferred first (a server in
    several streams). An upstream pulls, in one request, every model for which each URL before
    it in that model's route is failing; a model no route names is not pulled. Empty: one route
    over every upstream, for every table (a node in one stream)."""
    model_weights: tuple[tuple[str, float], ...] = ()
    """``p_m`` per model for this node's responses (:attr:`Scheduler.model_weights`)."""
    guards: tuple[tuple[str, GuardSpec], ...] = ()
    """Models whose applied embedding rows the parameter guard judges, each with its thresholds;
    see :class:`GuardCounter`."""


GUARD_KINDS = ("rows", "nonfinite", "zeroed", "exploded")


class GuardCounter:
    """The parameter guard on a node's applied rows: one :class:`ParamGuard` per guarded model,
    its counts in ``ekko_update_guard_rows_total{model, kind}`` (kind ``rows``: rows judged;
    ``nonfinite``, ``zeroed``, ``exploded``: rows flagged), which the model-state manager reads
    from the server's ``/metrics`` per detector window, as it reads the paired-loss series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows = Counter(
            "ekko_update_guard_rows",
            "Applied rows the parameter guard judged (kind rows) and flagged (kind nonfinite, "
            "zeroed, exploded), by model.",
            ["model", "kind"],
            registry=registry,
        )
        self.guards: dict[str, ParamGuard] = {}

    def configure(self, guards: Sequence[tuple[str, GuardSpec]]) -> None:
        """Guard these models (a model whose thresholds are unchanged keeps its running means)."""
        wanted = dict(guards)
        kept = {m: g for m, g in self.guards.items() if m in wanted and g.spec == wanted[m]}
        for model, spec in wanted.items():
            if model not in kept:
                kept[model] = ParamGuard(spec)
                for kind in GUARD_KINDS:
                    self.rows.labels(model, kind)
        self.guards = kept

    def before(self, store: Store, model: str, batch: Batch) -> Any:
        """What the guard needs from before a write: the held rows of the batch's keys."""
        if model not in self.guards or batch.n == 0 or store.spec(batch.table).kind == "dense":
            return None
        keys = np.unique(batch.keys)
        old, found = store.get(batch.table, keys)
        return keys, old, found

    def after(
        self, store: Store, model: str, table: str, before: Any, applied: Any
    ) -> GuardCounts | None:
        """Judge the rows a write applied (``applied``: their keys) and count them."""
        guard = self.guards.get(model)
        if guard is None or before is None:
            return None
        keys, old, found = before
        done = np.asarray(applied, dtype=np.int64)
        if done.size == 0:
            return GuardCounts()
        pos = np.searchsorted(keys, done)
        new, _ = store.get(table, done)
        counts = guard.observe(table, old[pos], found[pos], new)
        for kind, n in zip(
            GUARD_KINDS,
            (counts.rows, counts.nonfinite, counts.zeroed, counts.exploded),
            strict=True,
        ):
            if n:
                self.rows.labels(model, kind).inc(n)
        return counts


@dataclass
class _UpstreamState:
    spec: Upstream
    bucket: TokenBucket | None
    healthy: bool | None = None  # None: not tried yet
    last_complete: float = field(default_factory=time.monotonic)
    source: int = 0
    """The upstream's responder id (from its last response): its pull requests carry the rows
    it delivered that something else has overwritten since."""


class Node:
    """A replica that pulls from its upstreams and serves downstreams."""

    def __init__(
        self,
        config: NodeConfig,
        registry: CollectorRegistry | None = None,
        store: Store | None = None,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.wall = wall
        self.clock = clock
        if store is None and config.state is not None and config.state.exists():
            with np.load(config.state) as data:
                store = Store.from_arrays(dict(data), cache_capacity=config.cache_capacity)
            log.info("Node %s resumed from %s", config.name, config.state)
        self.store = store or Store(cache_capacity=config.cache_capacity)
        registry = registry or CollectorRegistry()
        self.metrics = UpdateMetrics(registry, config.region)
        self.guard = GuardCounter(registry)
        self.guard.configure(config.guards)
        self.server = UpdateServer(
            self.store,
            Scheduler(SchedulerConfig(config.policy, config.high_percentile)),
            self.metrics,
        )
        self.server.scheduler.model_weights = dict(config.model_weights)
        now = clock()
        self.upstreams = [
            _UpstreamState(
                u,
                None if math.isinf(u.link.rate) else TokenBucket(u.link.rate, u.link.burst, now),
            )
            for u in config.upstreams
        ]
        for u in config.upstreams:
            self.metrics.declare_upstream(u.url)
            self.metrics.declare_peer(u.region or "unknown")
        for spec in self.store.specs():
            self.metrics.declare_model(spec.model)
        self.cuts = ModelCuts(config.undo_cap_bytes)
        """Cut logs per model (each stream's model-state manager cuts and restores its own)."""
        self.fence: Fence | None = None
        """A fence on every table besides the per-model ones (set by a caller; tests)."""
        self.server.control = self
        self.port = 0
        self.rows_pulled = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._log: IO[str] | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> int:
        """Serve and start pulling; returns the bound port."""
        if self.config.apply_log is not None:
            new = not self.config.apply_log.exists()
            self._log = self.config.apply_log.open("a", buffering=1 << 16)
            if new:
                self._log.write("apply_time,table,key,epoch,origin,seq\n")
        host, port = parse_listen(self.config.listen)
        self.port = await self.server.start(host, port)
        self._session = aiohttp.ClientSession()
        for i in range(len(self.upstreams)):
            self._tasks.append(asyncio.create_task(self._puller(i), name=f"pull-{i}"))
        if self.config.state is not None and self.config.save_every > 0:
            self._tasks.append(asyncio.create_task(self._saver(), name="save"))
        log.info("Node %s listening on %s:%d", self.config.name, host, self.port)
        return self.port

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.server.stop()
        self.save()
        if self._log is not None:
            self._log.close()
            self._log = None

    async def reconfigure(self, config: NodeConfig) -> None:
        """Pull from new upstreams with new settings, keeping the store, the served endpoint and
        the metrics (the agent calls this when the operator re-wires the topology). The listen
        address, state file and apply log stay as they were started."""
        for t in self._tasks:
            if t.get_name().startswith("pull-"):
                t.cancel()
        for t in self._tasks:
            if t.get_name().startswith("pull-"):
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        self._tasks = [t for t in self._tasks if not t.get_name().startswith("pull-")]
        old = self.config
        self.config = replace(
            config,
            listen=self.config.listen,
            state=self.config.state,
            save_every=self.config.save_every,
            apply_log=self.config.apply_log,
        )
        if (config.policy, config.high_percentile) != (old.policy, old.high_percentile):
            self.server.scheduler = Scheduler(
                SchedulerConfig(config.policy, config.high_percentile)
            )
        self.server.scheduler.model_weights = dict(config.model_weights)
        self.cuts.cap_bytes = config.undo_cap_bytes
        self.guard.configure(config.guards)
        now = self.clock()
        self.upstreams = [
            _UpstreamState(
                u,
                None if math.isinf(u.link.rate) else TokenBucket(u.link.rate, u.link.burst, now),
            )
            for u in config.upstreams
        ]
        for u in config.upstreams:
            self.metrics.declare_upstream(u.url)
            self.metrics.declare_peer(u.region or "unknown")
        if self._session is not None:
            for i in range(len(self.upstreams)):
                self._tasks.append(asyncio.create_task(self._puller(i), name=f"pull-{i}"))
        log.info(
            "Node %s now pulls from %s",
            config.name,
            ", ".join(u.url for u in config.upstreams) or "nobody",
        )

    def save(self) -> None:
        if self.config.state is None:
            return
        tmp = self.config.state.with_suffix(".tmp.npz")
        np.savez(tmp, **self.store.to_arrays())  # type: ignore[arg-type]
        tmp.replace(self.config.state)

    async def _saver(self) -> None:
        while True:
            await asyncio.sleep(self.config.save_every)
            try:
                self.save()
            except Exception:  # a loop that must survive: a failed save is retried next time
                log.exception("Node %s failed to save its state", self.config.name)

    # --- pulling -------------------------------------------------------------------------------

    def active_upstream(self) -> int | None:
        """The upstream pulling now: the first not known to be failing."""
        for i, u in enumerate(self.upstreams):
            if u.healthy is not False:
                return i
        return None

    def _standing_by(self, i: int) -> bool:
        return any(u.healthy is not False for u in self.upstreams[:i])

    def pulling_for(self, i: int) -> tuple[str, ...] | None:
        """The models upstream ``i`` pulls now: None while it stands by, ``()`` for every table
        (a node without routes: the first upstream not failing pulls)."""
        if not self.config.routes:
            return None if self._standing_by(i) else ()
        url = self.upstreams[i].spec.url
        health = {u.spec.url: u.healthy for u in self.upstreams}
        models = [
            model
            for model, urls in self.config.routes
            if url in urls and all(health.get(u) is False for u in urls[: urls.index(url)])
        ]
        return tuple(sorted(models)) or None

    async def _puller(self, i: int) -> None:
        up = self.upstreams[i]
        url = up.spec.url.rstrip("/") + PULL_PATH
        while True:
            try:
                models = self.pulling_for(i)
                if models is None:
                    await asyncio.sleep(min(self.config.retry, 0.2))
                    continue
                await self._pull_once(up, url, models)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a loop that must survive: mark failing, back off, retry
                if up.healthy is not False:
                    log.warning("Node %s: upstream %s failed: %s", self.config.name, up.spec.url, e)
                up.healthy = False
                self.metrics.pulls.labels(up.spec.url, "error").inc()
                await asyncio.sleep(self.config.retry * (0.5 + random.random()))

    async def _pull_once(self, up: _UpstreamState, url: str, models: tuple[str, ...] = ()) -> None:
        cfg = self.config
        budget = cfg.max_budget
        if up.bucket is not None:
            need = min(cfg.min_budget, up.bucket.burst)
            now = self.clock()
            ready = up.bucket.ready_at(need, now)
            if ready > now:
                await asyncio.sleep(ready - now)
            budget = min(budget, up.bucket.budget(self.clock()))
        request = self.store.pull_request(
            budget, cfg.dtype, cfg.zstd, cfg.name, cfg.region, source=up.source, models=models
        )
        # The newest response frame this node decodes (the responder answers in the older of
        # its own and this; Store.pull_request's default predates frame version 4).
        request = replace(request, frame_version=FORMAT_VERSION)
        body = encode_request(request)
        delay = up.spec.link.delay
        if delay > 0:
            await asyncio.sleep(delay)
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=cfg.wait + 10.0, connect=2.0)
        async with self._session.post(
            url, data=body, params={"wait": str(cfg.wait)}, timeout=timeout
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            data = await resp.read()
        if up.bucket is not None:
            up.bucket.consume(len(data), self.clock())
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            response = decode_response(data)
        except CodecError as e:
            raise RuntimeError(f"bad response frame: {e}") from e
        if up.healthy is not True:
            log.info("Node %s pulling from %s", self.config.name, up.spec.url)
        up.healthy = True
        up.source = response.source
        peer = up.spec.region or "unknown"
        self.metrics.observe_bytes("in", peer, len(data), fp32_bytes(response))
        tables = [t for t in response.tables if not models or not t.model or t.model in models]
        if self._apply(tables, response.batches, response.source):
            self.store.acknowledge(response.source, response.number)
        self.metrics.pulls.labels(up.spec.url, "rows" if response.n_rows else "empty").inc()
        now = self.clock()
        if response.complete:
            up.last_complete = now
        # A response omits the catalogue when the puller's matches (PullRequest.catalogue).
        held = {t.model for t in response.tables or self.store.specs()}
        for model in held if not models else held & set(models):
            self.metrics.staleness.labels(model).set(
                0 if response.complete else now - up.last_complete
            )

    # --- cuts and restore -----------------------------------------------------------------------

    def take_cut(
        self,
        cut_id: int,
        vectors: Mapping[ShardId, VersionVector] | None = None,
        model: str | None = None,
    ) -> dict[str, Any]:
        """Start cut ``cut_id`` of ``model``'s tables (None: every table) named by the
        publisher's announced ``vectors`` (default: what this store holds); rows those vectors
        cover that arrive later still belong to the cut (the cut endpoint calls this; the same
        id again answers the cut already taken)."""
        cuts = self.cuts.log(model)
        if cuts.has(cut_id):
            return _cut_json(cuts.cut(cut_id), cuts)
        cut = cuts.take(self.store, cut_id, now=self.wall(), vectors=vectors)
        log.info("Node %s took cut %d%s", self.config.name, cut_id, _of(model))
        return _cut_json(cut, cuts)

    def restore(
        self, cut_id: int, epoch: int | None = None, model: str | None = None
    ) -> dict[str, Any]:
        """Restore ``model``'s tables (None: every table) to cut ``cut_id`` at ``epoch``
        (default: the model's next) and fence its old-epoch rows above the cut; KeyError for an
        unknown cut, ValueError for an epoch that does not fence the model's newest."""
        result: RestoreResult = self.cuts.restore(
            self.store, cut_id, model=model, now=self.wall(), epoch=epoch
        )
        self.server.notifier.notify()
        log.info(
            "Node %s restored cut %d%s at epoch %d (%d rows)",
            self.config.name,
            cut_id,
            _of(model),
            result.epoch,
            sum(result.rows.values()),
        )
        return {"cut": cut_id, "epoch": result.epoch, "rows": dict(result.rows)}

    def _apply(
        self, tables: Sequence[TableSpec], batches: Sequence[Batch], source: int = 0
    ) -> bool:
        """Apply a response's batches; False if a residual row was dropped or a row was
        fenced (then the response is not acknowledged: the responder must not take a row this
        node did not apply as the base of a later residual, and its rows come again in full)."""
        changed = False
        resolved_all = True
        for spec in tables:
            self.store.declare(spec)
            self.metrics.declare_model(spec.model)
        for pulled in batches:
            # Residual rows become values first (fencing and pre-images need values).
            resolved = self.store.resolve(pulled, source)
            b = self.cuts.fence(self.store, fence(resolved, self.fence))
            resolved_all &= b.n == pulled.n
            self.cuts.before_apply(self.store, b)
            model = self.store.spec(b.table).model
            held = self.guard.before(self.store, model, b)
            before = self.store.changes
            result = self.store.apply(b, source)
            self.guard.after(self.store, model, b.table, held, result.keys)
            changed |= self.store.changes != before
            now = self.wall()
            self.metrics.observe_apply(model, result, now)
            self.rows_pulled += result.applied
            if self._log is not None and result.applied:
                self._log.writelines(
                    f"{now:.6f},{b.table},{k},{e},{o},{s}\n"
                    for k, e, o, s in zip(
                        result.keys.tolist(),
                        result.epochs.tolist(),
                        result.origins.tolist(),
                        result.seqs.tolist(),
                        strict=True,
                    )
                )
        if changed:
            self.server.notifier.notify()
        return resolved_all


def _of(model: str | None) -> str:
    return f" of model {model}" if model else ""


def _cut_json(cut: Cut, cuts: CutLog) -> dict[str, Any]:
    return {
        "cut": cut.id,
        "takenAt": cut.taken_at,
        "vectors": vectors_json(cut.vectors),
        "undoBytes": cuts.bytes,
        "retained": [c.id for c in cuts.cuts()],
    }


def parse_args(argv: Sequence[str] | None = None) -> NodeConfig:
    p = argparse.ArgumentParser(
        prog="python -m ekko.updates.node", description=__doc__.split("\n")[0]
    )
    p.add_argument("--name", default="node")
    p.add_argument("--region", default="")
    p.add_argument("--listen", default=f"0.0.0.0:{DEFAULT_PORT}", help="data-plane host:port")
    p.add_argument(
        "--upstream", action="append", default=[], help="upstream URL; repeat, preferred first"
    )
    p.add_argument("--upstream-region", action="append", default=[], help="region of each upstream")
    p.add_argument("--rate", type=float, default=math.inf, help="link cap in bytes/s per upstream")
    p.add_argument("--burst", type=float, default=1 << 20, help="link burst in bytes")
    p.add_argument("--delay", type=float, default=0.0, help="emulated one-way delay in seconds")
    p.add_argument("--dtype", choices=["float32", "float16", "int8"], default="float32")
    p.add_argument("--zstd", action="store_true")
    p.add_argument("--wait", type=float, default=10.0, help="long-poll timeout in seconds")
    p.add_argument("--policy", choices=["ekko", "fifo"], default="ekko")
    p.add_argument("--high-percentile", type=float, default=0.9)
    p.add_argument("--state", type=Path, default=None, help="npz file to resume from and save to")
    p.add_argument("--save-every", type=float, default=0.0)
    p.add_argument("--apply-log", type=Path, default=None)
    a = p.parse_args(argv)
    regions = list(a.upstream_region) + [""] * (len(a.upstream) - len(a.upstream_region))
    link = LinkSpec(a.rate, a.burst, a.delay)
    return NodeConfig(
        name=a.name,
        region=a.region,
        upstreams=tuple(Upstream(u, link, r) for u, r in zip(a.upstream, regions, strict=False)),
        listen=a.listen,
        dtype=a.dtype,
        zstd=a.zstd,
        wait=a.wait,
        policy=a.policy,
        high_percentile=a.high_percentile,
        state=a.state,
        save_every=a.save_every,
        apply_log=a.apply_log,
    )


async def _run(config: NodeConfig) -> None:
    node = Node(config)
    await node.start()
    try:
        await asyncio.Event().wait()
    finally:
        await node.stop()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
