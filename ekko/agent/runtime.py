"""The agent's state and event handling: assignment and Model events in, engine calls and status
patches out.

Everything runs on one asyncio loop; watch threads hand events over with
``loop.call_soon_threadsafe``. Decisions are delegated to :mod:`ekko.agent.decide`; this module
only keeps state, sequences the I/O and records metrics.

Two paths matter:

* **Routing (the rollback path).** A Model event updates the weight cache; if the routing of a
  held model changes, the new weights are applied in memory at once and one status patch with
  ``routing`` is queued. No listing, no other work.
* **Shards.** A reconcile pass loads newly assigned shards (bounded concurrency), reports, then
  unloads what is no longer assigned, and reports again. Failed loads are retried with backoff.
* **Updates.** When the assignment lists update duties, the agent runs an update node
  (:class:`ekko.updates.node.Node`) in-process over the engine's store, re-wires it when the
  duties change, and reports its data-plane address in status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ekko.agent import decide
from ekko.agent.decide import Fault, FaultKey, ReplicaKey
from ekko.agent.engines import (
    BASELINE_VIEW,
    LIVE_VIEW,
    EmbeddingEngine,
    Engine,
    LoadError,
    ScoringError,
)
from ekko.agent.metrics import AgentMetrics
from ekko.agent.modelstate import ModelStates, guard_spec, paired_differences
from ekko.api.meta import Condition
from ekko.api.resources import (
    AssignedShard,
    ModelRouting,
    ModelStatus,
    ModelUpdateControl,
    ServerAssignment,
    UpdateDuty,
    VersionWeight,
)
from ekko.kube.errors import KubeError, NotFound
from ekko.updates.link import LinkSpec
from ekko.updates.node import Node, NodeConfig, Upstream
from ekko.updates.store import Store, ValueDType

log = logging.getLogger("ekko.agent")

PatchFn = Callable[[dict[str, Any]], Awaitable[None]]


def utcnow() -> datetime:
    # Microseconds kept: appliedAt times measure rollbacks that take a fraction of a second.
    return datetime.now(UTC)


class StatusWriter:
    """Serialises status patches and coalesces those that queue up while one is in flight.

    Each submitted body holds whole top-level status fields, so merging newer over older keeps
    the latest value of every field and patches are never reordered.
    """

    def __init__(
        self,
        patch: PatchFn,
        metrics: AgentMetrics,
        now: Callable[[], datetime] = utcnow,
        retry_delay: float = 0.5,
        pod_uid: str = "",
    ) -> None:
        self._patch = patch
        self.pod_uid = pod_uid
        """Written as status.podUid with every patch: the operator counts only its current pod's."""
        self.orphaned = False
        """Set once the agent found its pod gone or replaced: nothing is written any more."""
        self._metrics = metrics
        self._now = now
        self._retry_delay = retry_delay
        self._pending: dict[str, Any] | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()

    def submit(self, fields: dict[str, Any]) -> asyncio.Future[None]:
        """Queue fields for the next patch; the future resolves once a patch carrying them ends
        (written, or given up because the assignment is gone)."""
        self._pending = {**(self._pending or {}), **fields}
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._wake.set()
        return future

    async def run(self) -> None:
        delay = self._retry_delay
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._pending is None:
                continue
            body, waiters = self._pending, self._waiters
            self._pending, self._waiters = None, []
            if self.orphaned:
                for future in waiters:
                    if not future.done():
                        future.set_result(None)
                continue
            body["heartbeat"] = self._now().isoformat().replace("+00:00", "Z")
            if self.pod_uid:
                body["podUid"] = self.pod_uid
            try:
                await self._patch(body)
                self._metrics.status_writes.inc()
                delay = self._retry_delay
            except NotFound:
                log.info("ServerAssignment is gone; status not written")
            except KubeError as err:
                self._metrics.status_write_errors.inc()
                log.warning("status write failed, retrying in %.1fs: %s", delay, err)
                # Put the body back under anything newer and try again after a pause.
                self._pending = {**body, **(self._pending or {})}
                self._waiters = waiters + self._waiters
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                self._wake.set()
                continue
            for future in waiters:
                if not future.done():
                    future.set_result(None)

    def orphan(self, reason: str) -> None:
        """Stop writing the status for good (logged once): another pod owns the assignment now."""
        if not self.orphaned:
            self.orphaned = True
            log.warning("not writing the ServerAssignment status any more: %s", reason)


async def check_orphan(
    writer: StatusWriter, reported_uid: str, current_uid: Callable[[], Awaitable[str | None]]
) -> None:
    """React to a status written by another pod's agent (``reported_uid`` differs from ours).

    Either this agent's pod was deleted and a same-named one took its place (this agent is an
    orphan, e.g. a force-deleted pod whose container lives on: it stops writing), or this agent is
    the new one and the report is the old agent's last (it goes on). ``current_uid`` reads the UID
    of the pod that now has our name (None when there is none). A failed read changes nothing."""
    if writer.orphaned or not writer.pod_uid or not reported_uid or reported_uid == writer.pod_uid:
        return
    try:
        uid = await current_uid()
    except KubeError as err:
        log.info("could not read this agent's pod to compare UIDs: %s", err)
        return
    if uid != writer.pod_uid:
        writer.orphan(
            f"its pod {writer.pod_uid} is {'gone' if uid is None else f'replaced by {uid}'} "
            f"(the assignment reports pod {reported_uid})"
        )


_DTYPES: dict[str, ValueDType] = {"Float32": "float32", "Float16": "float16", "Int8": "int8"}
MIN_BURST = 1 << 20


def node_config(name: str, listen: str, duties: list[UpdateDuty]) -> NodeConfig:
    """The update node's configuration for the assignment's duties (pure).

    One node serves every table the agent holds, on one listener (the one data-plane address in
    status), and pulls each duty's model from that duty's upstreams: one puller per distinct
    upstream URL, which asks in one request for every model it currently serves (so two streams
    led by the same peer share that link's bytes, ranked by their model weights), and a route per
    model that orders its upstreams (the next pulls a model only while the earlier ones fail). A
    paused duty has no route (keep serving, pull nothing). Settings that are per node (values,
    codec, policy, long-poll, undo cap) follow the first duty that is not paused; each duty whose
    health names a guard has its model guarded (:class:`ekko.updates.node.GuardCounter`).
    """
    health = next((d.health for d in duties if d.health is not None), None)
    undo = health.undo_log_bytes if health is not None else NodeConfig.undo_cap_bytes
    active = [d for d in duties if not d.paused]
    weights = tuple(sorted({d.model: d.weight / 100 for d in duties}.items()))
    guards = tuple(
        sorted(
            {
                d.model: guard_spec(d.health.guard)
                for d in duties
                if d.health is not None and d.health.guard is not None
            }.items()
        )
    )
    if not active:
        return NodeConfig(
            name=name,
            region=duties[0].region if duties else "",
            listen=listen,
            undo_cap_bytes=undo,
            model_weights=weights,
            guards=guards,
        )
    links: dict[str, Upstream] = {}
    routes: dict[str, list[str]] = {}
    for duty in active:
        route = routes.setdefault(duty.model, [])
        for u in duty.upstreams:
            known = links.get(u.url)
            rate = float(u.bandwidth) if u.bandwidth else float("inf")
            if known is None or rate > known.link.rate:  # one link: the widest duty's budget
                links[u.url] = Upstream(
                    u.url,
                    LinkSpec(rate=rate, burst=float(max(MIN_BURST, u.bandwidth))),
                    u.region,
                )
            if u.url not in route:
                route.append(u.url)
    duty = active[0]
    return NodeConfig(
        name=name,
        region=duty.region,
        upstreams=tuple(links.values()),
        listen=listen,
        dtype=_DTYPES[duty.values],
        zstd=duty.codec == "Zstd",
        wait=float(min(d.idle_pull_seconds for d in active)),
        policy="fifo" if duty.policy == "Fifo" else "ekko",
        high_percentile=duty.high_percentile / 100,
        undo_cap_bytes=undo,
        routes=tuple((m, tuple(urls)) for m, urls in sorted(routes.items())),
        model_weights=weights,
        guards=guards,
    )


class UpdatePlane:
    """The agent's update node: started when the assignment first lists a duty, re-wired when
    the duties change, stopped with the agent. Its store is the engine's when the engine keeps
    one (``embedding``), so applied rows are what ``/score`` reads."""

    def __init__(
        self, name: str, listen: str, advertise: str, registry: Any, store: Store | None = None
    ) -> None:
        self.name = name
        self.listen = listen
        self.advertise = advertise
        self.registry = registry
        self.store = store
        self.node: Node | None = None
        self.config: NodeConfig | None = None

    @property
    def address(self) -> str:
        """The URL peers pull from, once the node runs (empty before)."""
        if self.node is None:
            return ""
        return self.advertise or f"http://127.0.0.1:{self.node.port}"

    async def apply(self, duties: list[UpdateDuty]) -> str:
        if not duties and self.node is None:
            return ""
        config = node_config(self.name, self.listen, duties)
        if config == self.config:
            return self.address
        if self.node is None:
            self.node = Node(config, self.registry, self.store)
            await self.node.start()
            log.info("started the update node on %s (%s)", self.listen, self.address)
        else:
            await self.node.reconfigure(config)
        self.config = config
        return self.address

    async def stop(self) -> None:
        if self.node is not None:
            await self.node.stop()
            self.node = None


@dataclass
class LoadFailure:
    attempts: int
    retry_at: float
    error: str


class Agent:
    """The state of one agent and its reactions to events."""

    def __init__(
        self,
        engine: Engine,
        writer: StatusWriter,
        metrics: AgentMetrics,
        *,
        max_concurrent_loads: int = 4,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
        rand: Callable[[], float] = random.random,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        updates: UpdatePlane | None = None,
        unload_grace: float = 0.0,
    ) -> None:
        self.engine = engine
        self.updates = updates
        self.update_duties: list[UpdateDuty] = []
        self.update_address = ""
        self.states = ModelStates(
            lambda: self.updates.node if self.updates is not None else None, now, rand
        )
        self.writer = writer
        self.metrics = metrics
        self._clock = clock
        self._now = now
        self._rand = rand
        self._backoff = (backoff_base, backoff_cap)
        self._load_slots = asyncio.Semaphore(max_concurrent_loads)
        # What the operator asked for.
        self.seen = False
        self.generation: int | None = None
        self.assigned: list[AssignedShard] = []
        # What the engine holds and what failed.
        self.loaded: dict[ReplicaKey, int] = {}
        self.failures: dict[ReplicaKey, LoadFailure] = {}
        self.unload_grace = unload_grace
        self._unwanted_since: dict[ReplicaKey, float] = {}
        """When each loaded replica left the assignment (it is unloaded after the grace)."""
        self.observed_generation: int | None = None
        # Routing: the Models' weights, and what is applied (served and reported).
        self.model_weights: dict[str, list[VersionWeight]] = {}
        self.model_controls: dict[str, ModelUpdateControl | None] = {}
        """Each Model's update control block (status.updates), parsed once with its weights."""
        self.routing: dict[str, list[VersionWeight]] = {}
        # When each model's current weights were applied: the operator measures rollbacks with it.
        self.applied_at: dict[str, datetime] = {}
        self.faults: dict[FaultKey, Fault] = {}
        self._ready: Condition | None = None
        self._last_report: dict[str, Any] | None = None
        self._wake = asyncio.Event()
        self.log_events: deque[str] = deque(maxlen=1000)  # recent load/unload events, for tests

    # -- events (called on the loop) ----------------------------------------------------------

    def on_assignment_relist(self, items: list[dict[str, Any]]) -> None:
        if items:
            self.on_assignment("ADDED", items[0])
        else:
            self.on_assignment("DELETED", {})

    def on_assignment(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            if self.seen:
                # A deleted assignment is more often a mistake or a re-create than an order to
                # drop everything; keep serving what is loaded until a spec says otherwise.
                log.warning(
                    "ServerAssignment was deleted; keeping %d loaded shards", len(self.loaded)
                )
            return
        try:
            assignment = ServerAssignment.model_validate(obj)
        except ValidationError as err:
            log.error("ServerAssignment is invalid; ignored: %s", err)
            return
        generation = assignment.metadata.generation
        if self.seen and generation == self.generation and not self._status_missing(obj):
            return  # a status-only change (often our own write)
        self.seen = True
        self.generation = generation
        self.assigned = list(assignment.spec.shards)
        self.update_duties = list(assignment.spec.updates)
        self.states.health = {
            d.model: d.health for d in reversed(self.update_duties) if d.health is not None
        }
        log.info(
            "observed ServerAssignment generation %s with %d shards", generation, len(self.assigned)
        )
        self._last_report = None if self._status_missing(obj) else self._last_report
        self._wake.set()

    @staticmethod
    def _status_missing(obj: dict[str, Any]) -> bool:
        return not obj.get("status")

    def on_models_relist(self, items: list[dict[str, Any]], observed_at: float) -> None:
        self.model_weights = {}
        self.model_controls = {}
        for obj in items:
            self._cache_model("ADDED", obj)
        self._apply_routing(observed_at)
        for obj in items:
            self._apply_control(obj)

    def on_model(self, kind: str, obj: dict[str, Any], observed_at: float) -> None:
        if self._cache_model(kind, obj):
            self._apply_routing(observed_at)
        self._apply_control(obj)

    def _apply_control(self, obj: dict[str, Any]) -> None:
        """Apply the Model's update control block as cached by :meth:`_cache_model` (serving
        view, epoch); report what changed."""
        name = (obj.get("metadata") or {}).get("name")
        if not isinstance(name, str):
            return
        if self.states.on_control(name, self.model_controls.get(name)) and self.seen:
            self.writer.submit({"updates": self._updates_wire()})

    def _updates_wire(self) -> list[dict[str, Any]]:
        return [u.model_dump(by_alias=True, mode="json") for u in self.states.report()]

    def _cache_model(self, kind: str, obj: dict[str, Any]) -> bool:
        """Update the weight cache; True when the model's weights changed."""
        name = (obj.get("metadata") or {}).get("name")
        if not isinstance(name, str):
            return False
        before = self.model_weights.get(name)
        if kind == "DELETED":
            self.model_weights.pop(name, None)
            self.model_controls.pop(name, None)
        else:
            try:
                status = ModelStatus.model_validate(obj.get("status") or {})
            except ValidationError as err:
                log.error("Model %s has an invalid status; weights ignored: %s", name, err)
                return False
            self.model_weights[name] = status.weights
            self.model_controls[name] = status.updates
        return self.model_weights.get(name) != before

    # -- routing ------------------------------------------------------------------------------

    def _compute_routing(self) -> list[ModelRouting]:
        held = decide.held_versions(self.assigned, self.loaded)
        return decide.routing_for(held, self.model_weights)

    def _apply_routing(self, observed_at: float | None = None, submit: bool = True) -> bool:
        """Apply the routing the caches imply; queue a routing-only patch if it changed (unless
        the caller is about to write the whole status anyway)."""
        routing = self._compute_routing()
        applied = {r.model: r.weights for r in routing}
        if applied == self.routing:
            return False
        stamp = self._now()
        for model, weights in applied.items():
            if self.routing.get(model) != weights:
                self.applied_at[model] = stamp
            for w in weights:
                self.metrics.declare(model, w.version)
        self.routing = applied
        routing = self._stamped_routing()
        if observed_at is not None:
            self.metrics.routing_applied_seconds.observe(max(0.0, self._clock() - observed_at))
        log.info(
            "applied routing %s",
            "; ".join(
                f"{r.model} " + ",".join(f"{w.version}={w.weight}" for w in r.weights)
                for r in routing
            ),
        )
        if submit and self.seen:
            self.writer.submit({"routing": decide.routing_wire(routing)})
        return True

    def _stamped_routing(self) -> list[ModelRouting]:
        return [
            ModelRouting(model=m, weights=w, applied_at=self.applied_at.get(m))
            for m, w in sorted(self.routing.items())
        ]

    # -- shards -------------------------------------------------------------------------------

    def loaded_versions(self, model: str) -> set[str]:
        return {key.version for key in self.loaded if key.model == model}

    @property
    def ready(self) -> bool:
        if not self.seen:
            return False
        to_load, _ = decide.diff(self.assigned, self.loaded)
        return not to_load

    def next_retry_in(self) -> float | None:
        assigned = {decide.key_of(s) for s in self.assigned}
        times = [f.retry_at for k, f in self.failures.items() if k in assigned]
        now = self._clock()
        # An unload that fell due while a pass waited (on a slow status write) is due now; one
        # past due but withheld (its replacement fails to load) waits for the retry: no busy loop.
        failing = {(k.model, k.shard) for k in self.failures if k in assigned}
        times += [
            t + self.unload_grace
            for k, t in self._unwanted_since.items()
            if t + self.unload_grace > now or (k.model, k.shard) not in failing
        ]
        if not times:
            return None
        return max(0.0, min(times) - self._clock())

    async def run(self) -> None:
        """Reconcile whenever the assignment changes or a retry is due."""
        while True:
            timeout = self.next_retry_in()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self.seen:
                await self.reconcile()

    def wake(self) -> None:
        self._wake.set()

    async def _sync_updates(self) -> None:
        """Start or re-wire the update node for the current duties; a failure is logged and
        retried on the next pass (the shards keep serving)."""
        if self.updates is None:
            return
        try:
            had_node = self.updates.node is not None
            self.update_address = await self.updates.apply(self.update_duties)
            if not had_node and self.updates.node is not None:
                self.states.on_node_change()
        except Exception:  # a loop that must survive: the next pass tries again
            log.exception("could not start or re-wire the update node")

    async def reconcile(self) -> None:
        """One pass: load what is new (bounded, concurrent), report, unload what is gone, report."""
        await self._sync_updates()
        to_load, _ = decide.diff(self.assigned, self.loaded)
        assigned_keys = {decide.key_of(s) for s in self.assigned}
        for key in [k for k in self.failures if k not in assigned_keys]:
            del self.failures[key]  # no longer wanted: forget its failures
        now = self._clock()
        due = [s for s in to_load if self._due(decide.key_of(s), now)]
        self._apply_routing(submit=False)
        if due:
            await asyncio.gather(*(self._load(shard) for shard in due))
            self._apply_routing(submit=False)
            await self._report()
        _, to_unload = decide.diff(self.assigned, self.loaded)
        still_failing = [k for k in self.failures if k in {decide.key_of(s) for s in self.assigned}]
        ripe, self._unwanted_since = decide.due_unloads(
            to_unload, self._unwanted_since, self._clock(), self.unload_grace
        )
        unloads = decide.safe_unloads(ripe, still_failing)
        for key in unloads:
            await self._unload(key)
        if unloads:
            self._apply_routing(submit=False)
        remaining, left = decide.diff(self.assigned, self.loaded)
        if not remaining and not left:
            self.observed_generation = self.generation
        await self._report()

    def _due(self, key: ReplicaKey, now: float) -> bool:
        failure = self.failures.get(key)
        return failure is None or failure.retry_at <= now

    async def _load(self, shard: AssignedShard) -> None:
        key = decide.key_of(shard)
        async with self._load_slots:
            started = self._clock()
            try:
                size = await self.engine.load(shard)
            except LoadError as err:
                self._fail(key, str(err))
                return
            except Exception as err:  # an adapter bug must not kill the agent
                log.exception("engine raised while loading %s", key)
                self._fail(key, f"{type(err).__name__}: {err}")
                return
            seconds = self._clock() - started
        self.failures.pop(key, None)
        self.loaded[key] = size
        self.metrics.load_seconds.observe(seconds)
        self._update_gauges()
        self.log_events.append(f"loaded {key}")
        log.info("loaded shard %s (%d bytes in %.3fs)", key, size, seconds)

    def _fail(self, key: ReplicaKey, error: str) -> None:
        attempts = self.failures[key].attempts + 1 if key in self.failures else 1
        delay = decide.backoff_seconds(attempts, *self._backoff)
        self.failures[key] = LoadFailure(attempts, self._clock() + delay, error)
        self.metrics.load_failures.inc()
        self.log_events.append(f"failed {key}")
        log.warning(
            "failed to load shard %s (attempt %d, retry in %.0fs): %s", key, attempts, delay, error
        )

    async def _unload(self, key: ReplicaKey) -> None:
        try:
            await self.engine.unload(key)
        except Exception:
            log.exception("engine raised while unloading %s; dropped from the inventory", key)
        self.loaded.pop(key, None)
        self._update_gauges()
        self.log_events.append(f"unloaded {key}")
        log.info("unloaded shard %s", key)

    def _update_gauges(self) -> None:
        self.metrics.shards_loaded.set(len(self.loaded))
        self.metrics.bytes_loaded.set(sum(self.loaded.values()))

    # -- status -------------------------------------------------------------------------------

    def status_body(self) -> dict[str, Any]:
        to_load, _ = decide.diff(self.assigned, self.loaded)
        assigned_keys = {decide.key_of(s) for s in self.assigned}
        failed = {k: f.error for k, f in self.failures.items() if k in assigned_keys}
        ready = decide.ready_condition(
            seen=self.seen,
            assigned=len(assigned_keys),
            missing=len(to_load),
            failed=failed,
            generation=self.generation,
            previous=self._ready,
            now=self._now(),
        )
        self._ready = ready
        status = decide.build_status(
            observed_generation=self.observed_generation,
            loaded=self.loaded,
            routing=self._stamped_routing(),
            failed=failed,
            ready=ready,
            now=self._now(),
        )
        body = status.to_wire()
        body.pop("heartbeat", None)  # the writer stamps every patch
        body["updateAddress"] = self.update_address
        body["updates"] = self._updates_wire()
        body.setdefault("observedGeneration", None)
        return body

    async def _report(self) -> None:
        """Write the whole status if it differs from the last report, and wait until written."""
        body = self.status_body()
        if body == self._last_report:
            return
        self._last_report = body
        await self.writer.submit(body)

    def heartbeat(self) -> None:
        if self.seen:
            self.writer.submit({})

    # -- inference ----------------------------------------------------------------------------

    def choose(self, model: str) -> str | None:
        """The version a request for ``model`` goes to, by the applied weights."""
        weights = self.routing.get(model)
        if not weights:
            return None
        return decide.pick_version(weights, self.loaded_versions(model), self._rand())

    async def infer(self, model: str) -> tuple[int, dict[str, Any]]:
        """Serve one simulated request: (HTTP status, JSON body)."""
        version = self.choose(model)
        if version is None:
            return 503, {"model": model, "error": f"no loaded version of {model} has weight here"}
        started = time.perf_counter()
        fail, extra_ms = decide.fault_outcome(
            decide.find_fault(self.faults, model, version), self._rand()
        )
        try:
            await self.engine.infer(model, version)
            if extra_ms:
                await asyncio.sleep(extra_ms / 1000)
        except Exception as err:
            fail = True
            log.warning("inference on %s@%s failed: %s", model, version, err)
        seconds = time.perf_counter() - started
        self.metrics.requests.labels(model, version).inc()
        self.metrics.request_seconds.labels(model, version).observe(seconds)
        body: dict[str, Any] = {
            "model": model,
            "version": version,
            "latency_ms": round(seconds * 1000, 3),
        }
        if fail:
            self.metrics.request_errors.labels(model, version).inc()
            body["error"] = "injected fault"
            return 500, body
        return 200, body

    def score(
        self,
        model: str,
        users: list[int],
        items: list[int],
        labels: list[float] | None = None,
        view: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Score (user, item) pairs on the embedding engine: (HTTP status, JSON body). Labelled
        pairs (label 0 or 1; NaN for none) add their loss to the per-view metrics. Without a
        view asked for, the model-state manager chooses (live, or the baseline during a rollback
        and for its traffic sliver); a labelled live request may also be shadow-scored on the
        baseline, which gives the detector its paired loss differences."""
        if not isinstance(self.engine, EmbeddingEngine):
            return 501, {
                "error": f"the {self.engine.name} engine does not score; run --engine embedding"
            }
        chosen = self.states.choose_view(model, view)
        reader = self.states.baseline_reader(model) if chosen == BASELINE_VIEW else None
        try:
            scored = self.engine.score(model, users, items, labels, chosen, reader=reader)
            shadow, recent = (
                self.states.shadow(model)
                if labels is not None and chosen == LIVE_VIEW and view is None
                else (None, None)
            )
            if shadow is not None and labels is not None:
                base = self.engine.score(
                    model, users, items, None, BASELINE_VIEW, reader=shadow, count=False
                )
                diffs = paired_differences(labels, scored.scores, base.scores)
                self.engine.metrics.observe_paired(model, diffs)
                if recent is not None:
                    near = self.engine.score(
                        model, users, items, None, BASELINE_VIEW, reader=recent, count=False
                    )
                    diffs = paired_differences(labels, scored.scores, near.scores)
                    self.engine.metrics.observe_paired(model, diffs, recent=True)
        except ScoringError as err:
            return 503, {"model": model, "error": str(err)}
        body: dict[str, Any] = {
            "model": model,
            "view": scored.view,
            "scores": [round(float(x), 6) for x in scored.scores],
            "coldUsers": scored.cold_users,
            "coldItems": scored.cold_items,
        }
        if scored.logloss is not None:
            body["logloss"] = round(scored.logloss, 6)
        return 200, body
