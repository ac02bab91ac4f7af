"""Update streams: one worker per UpdateStream wires its servers and reports its freshness.

Each pass observes the stream, its model and the namespace's assignments, plans the pull topology
(:func:`ekko.planning.updates.plan_topology`, leaders kept from what the assignments already say,
so a restarted operator churns nothing), writes the duties that changed into the assignments'
``spec.updates``, posts an event when a leader changes, and at most every ``STATUS_SECONDS``
reads the servers' update series and writes ``UpdateStream.status``: from Prometheus when the
operator was given ``--prometheus-url`` (one query per series family for the whole stream, the
window's increases), else — or when Prometheus does not answer, with a warning event — from each
connected agent's ``/metrics`` (its data-plane address), differenced against the window's start. A deleted stream has its duties removed (placement is not touched).

The data plane never needs the operator: agents keep pulling from the upstreams they were given.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

import aiohttp

from ekko.api.meta import Condition
from ekko.api.resources import UpdateStream
from ekko.kube.errors import KubeError
from ekko.kube.promql import PrometheusAuth, QueryError, vector
from ekko.kube.updates import StreamObservation, UpdateKube
from ekko.operator.peering import Gate
from ekko.operator.statemanager import StateManager
from ekko.planning.updates import (
    Scrape,
    StreamServer,
    Topology,
    fixed_weight,
    is_paused,
    merge_duties,
    parse_scrape,
    plan_topology,
    previous_deputies,
    previous_leaders,
    prometheus_queries,
    replaced_servers,
    scrapes_from_prometheus,
    stream_refusal,
    stream_status,
    traffic_query,
    traffic_weight,
)

log = logging.getLogger(__name__)

PASS_SECONDS = 2.0
"""A pass at least this often: pod readiness and agent addresses are re-read."""
ROLLBACK_PASS_SECONDS = 0.25
"""How often a pass runs while a rollback of the model's state is under way."""
STATUS_SECONDS = 5.0
"""Status is written at most this often (it is telemetry; nothing waits on it)."""
WINDOW_SECONDS = 60.0
"""Rates and lag quantiles are over about this window."""
WEIGHT_SECONDS = 15.0
"""A TrafficShare weight is re-read from Prometheus at most this often."""
TRAFFIC_SHARE = "TrafficShare"
SCRAPE_TIMEOUT = 2.0
MAX_BACKOFF_SECONDS = 30.0

StreamKey = tuple[str, str]


def servers_of(obs: StreamObservation) -> list[StreamServer]:
    """The servers holding the stream's model (pool and shards from their assignments)."""
    if obs.stream is None or obs.model is None:
        return []
    model = obs.model.metadata.name
    pool = obs.model.spec.pool
    label = obs.stream.spec.topology.region_label
    out = []
    for a, serving in obs.assignments:
        shards = frozenset(s.shard for s in a.spec.shards if s.model == model)
        if a.spec.pool != pool or not shards:
            continue
        name = a.metadata.name
        out.append(
            StreamServer(
                name=name,
                region=obs.regions.get(name, "") if label else a.spec.zone,
                shards=shards,
                ready=serving,
                address=a.status.update_address if a.status else "",
            )
        )
    return out


def streamed_models_of_pool(obs: StreamObservation) -> list[str]:
    """The models whose traffic shares a TrafficShare weight is normalised over: the stream's
    model and every model with an UpdateStream in the namespace that has shards on the same
    pool's servers (the servers whose budgets they share)."""
    if obs.stream is None:
        return []
    own = obs.stream.spec.model
    pool = obs.model.spec.pool if obs.model is not None else None
    streamed = {s.spec.model for s in obs.streams}
    placed = {
        shard.model
        for a, _ in obs.assignments
        if pool is None or a.spec.pool == pool
        for shard in a.spec.shards
    }
    return sorted((streamed & placed) | {own})


_EVENTS = {
    ("Connected", "False"): ("Disconnected", True),
    ("Connected", "True"): ("Connected", False),
    ("Fresh", "False"): ("Lagging", True),
    ("Fresh", "True"): ("Fresh", False),
}


def condition_events(
    before: Sequence[Condition], after: Sequence[Condition]
) -> list[tuple[str, str, bool]]:
    """Events for conditions that changed: (reason, message, warning). A first True is quiet,
    and so is a first ``Connected=False``: a new stream's servers are still being wired (its
    state says Pending); losing a connection it had is what warns."""
    old = {c.type: c.status for c in before}
    out = []
    for c in after:
        was = old.get(c.type)
        if was == c.status or (was is None and c.status == "True"):
            continue
        if was is None and c.type == "Connected":
            continue
        event = _EVENTS.get((c.type, c.status))
        if event is not None:
            out.append((event[0], c.message or c.reason, event[1]))
    return out


async def scrape(session: aiohttp.ClientSession, address: str, model: str) -> Scrape | None:
    """One agent's update series, or None when it does not answer."""
    url = address.rstrip("/") + "/metrics"
    try:
        timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)
        async with session.get(url, timeout=timeout) as resp:
            if resp.status != 200:
                return None
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
    return parse_scrape(text, model)


class StreamWorker:
    """Keeps one stream wired and its status current."""

    def __init__(
        self,
        key: StreamKey,
        kube: UpdateKube,
        gate: Gate,
        prometheus: str | None = None,
        auth: PrometheusAuth | None = None,
    ) -> None:
        self.key = key
        self.kube = kube
        self.gate = gate
        self.prometheus = prometheus
        self.auth = auth or PrometheusAuth()
        self._prometheus_error = ""
        self.task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.topology: Topology | None = None
        self._history: dict[str, deque[tuple[float, Scrape]]] = {}
        self._status_at = 0.0
        self._last_status: dict[str, Any] | None = None
        self._reported: str = ""
        self._refused = ""
        """The message of the refusal last reported ("" while the stream is wired)."""
        self.health = StateManager(key, kube)
        self._uids: dict[str, str] = {}
        self._weight: int | None = None
        """The TrafficShare weight last chosen (None: not read yet, or Fixed)."""
        self._weight_at = 0.0
        self._weight_condition: Condition | None = None
        self._weight_warned = ""

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        backoff = 1.0
        while True:
            try:
                if await self.run_pass() is None:
                    return
                backoff = 1.0
                self._reported = ""
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a loop that must survive: log, back off, retry
                text = f"{type(err).__name__}: {err}"
                if text != self._reported:
                    if isinstance(err, KubeError):
                        log.warning("UpdateStream %s/%s: pass failed: %s", *self.key, err)
                    else:
                        log.exception("UpdateStream %s/%s: pass failed", *self.key)
                    self._reported = text
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            pause = ROLLBACK_PASS_SECONDS if self.health.busy else PASS_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)
            self._wake.clear()

    async def run_pass(self) -> bool | None:
        """One pass; None when the stream is gone (its duties removed)."""
        namespace, name = self.key
        if not await self.gate.allowed(namespace):
            return True
        obs = await asyncio.to_thread(self.kube.observe, namespace, name)
        stream = obs.stream
        if stream is None or stream.metadata.deletion_timestamp is not None:
            await self._write(obs, Topology(duties={}))
            log.info("UpdateStream %s/%s is gone; its update duties were removed.", *self.key)
            return None
        refusal = stream_refusal(stream, obs.model is not None, obs.streams)
        if refusal is not None:
            await self._refuse(stream, obs, refusal)
            return True
        self._refused = ""
        servers = servers_of(obs)
        current = {a.metadata.name: a.spec.updates for a, _ in obs.assignments}
        before = self.topology
        leaders = before.leaders if before else previous_leaders(current, name)
        deputies = before.deputies if before else previous_deputies(current, name)
        # A server whose pod was replaced (same name, new UID: the pool worker recreates a lost
        # pod within a second) starts with an empty store: it loses its leadership even when no
        # pass saw it missing or unready.
        recorded = {n: d.pod_uid for n, ds in current.items() for d in ds if d.stream == name}
        replaced = replaced_servers(obs.uids, self._uids, recorded)
        self._uids = dict(obs.uids)
        sticky = {k: v for k, v in leaders.items() if v not in replaced}
        deputies = {k: v for k, v in deputies.items() if v not in replaced}
        await self.health.step(stream, obs, servers)
        paused = is_paused(stream.spec, stream.metadata.annotations) or self.health.paused
        written = [d.weight for ds in current.values() for d in ds if d.stream == name]
        weight = await self._model_weight(stream, obs, written[0] if written else None)
        topology = plan_topology(
            name, stream.spec, servers, sticky, deputies, paused=paused, weight=weight
        )
        await self._write(obs, topology)
        for (group, region), leader in topology.leader_changes(leaders).items():
            old = leaders.get((group, region))
            where = f"region {region or '(none)'}" + (f" group {group}" if group else "")
            text = f"Chose {leader} to lead {where}" + (f" (was {old})" if old else "")
            log.info("UpdateStream %s/%s: %s.", namespace, name, text)
            await asyncio.to_thread(self.kube.event, stream, "LeaderChosen", text)
        self.topology = topology
        if time.monotonic() - self._status_at >= STATUS_SECONDS or self.health.changed:
            await self._report(stream, topology, servers, paused)
        return True

    async def _model_weight(
        self, stream: UpdateStream, obs: StreamObservation, written: int | None
    ) -> int:
        """The model weight (percent) for the duties: the Fixed one, or with ``TrafficShare``
        the model's share of the requests served by the namespace's streamed models, read
        from Prometheus at most every ``WEIGHT_SECONDS`` and changed only beyond the
        hysteresis. Without an answering Prometheus: the Fixed weight, a ``TrafficShare=False``
        condition and one warning event per distinct reason."""
        spec = stream.spec
        if spec.priority.model_weight != TRAFFIC_SHARE:
            self._weight, self._weight_condition = None, None
            return fixed_weight(spec)
        now = time.monotonic()
        if self._weight is not None and now - self._weight_at < WEIGHT_SECONDS:
            return self._weight
        self._weight_at = now
        models = streamed_models_of_pool(obs)
        why = ""
        rates: dict[str, float] = {}
        if not self.prometheus:
            why = "the operator has no --prometheus-url"
        else:
            query = traffic_query(models, int(WINDOW_SECONDS))
            try:
                answer = await asyncio.to_thread(vector, self.prometheus, query, self.auth)
                rates = {labels.get("model", ""): value for labels, value in answer}
            except QueryError as err:
                why = f"Prometheus at {self.prometheus} did not answer ({err})"
        if why:
            weight = fixed_weight(spec)
            text = f"{why}; the model weight is the Fixed {weight}%"
            self._weight_condition = Condition(
                type=TRAFFIC_SHARE, status="False", reason="NoTrafficRates", message=text
            )
            if text != self._weight_warned:
                log.warning("UpdateStream %s/%s: %s.", *self.key, text)
                await asyncio.to_thread(self.kube.event, stream, "TrafficShareUnknown", text, True)
                self._weight_warned = text
            self._weight = weight
            return weight
        self._weight_warned = ""
        before = self._weight if self._weight is not None else written
        weight = traffic_weight(spec.model, rates, models, before)
        total = sum(v for m, v in rates.items() if m in models and v > 0)
        share = f"{100 * rates.get(spec.model, 0.0) / total:.0f}%" if total > 0 else "no requests"
        self._weight_condition = Condition(
            type=TRAFFIC_SHARE,
            status="True",
            reason="FromRequestRates",
            message=f"model weight {weight}% (share of the requests of {len(models)} streamed "
            f"models: {share})",
        )
        if weight != before:
            log.info("UpdateStream %s/%s: model weight %s%%.", *self.key, weight)
        self._weight = weight
        return weight

    async def _refuse(self, stream: UpdateStream, obs: StreamObservation, why: Condition) -> None:
        """Wire nothing for a stream the operator will not run, and say why (an event when the
        reason is new)."""
        await self._write(obs, Topology(duties={}))
        self.topology = None
        if why.message == self._refused:
            return
        log.warning("UpdateStream %s/%s: %s.", *self.key, why.message)
        await asyncio.to_thread(self.kube.event, stream, why.reason, why.message, True)
        status = stream_status(
            stream.spec,
            generation=stream.metadata.generation,
            topology=Topology(duties={}),
            servers=[],
            scrapes={},
            baselines={},
            window_seconds=STATUS_SECONDS,
            previous=list(stream.status.conditions if stream.status else []),
            now=dt.datetime.now(dt.UTC),
            paused=False,
            epoch=stream.status.epoch if stream.status else 0,
            extra=[why],
        )
        body = status.model_dump(by_alias=True, mode="json", exclude_none=True)
        await asyncio.to_thread(self.kube.patch_status, self.key[0], self.key[1], body)
        self._last_status = body
        self._refused = why.message

    async def _write(self, obs: StreamObservation, topology: Topology) -> None:
        name = self.key[1]
        for a, _ in obs.assignments:
            uid = obs.uids.get(a.metadata.name, "")
            mine = [d.evolve(pod_uid=uid) for d in topology.duties.get(a.metadata.name, ())]
            new = merge_duties(a.spec.updates, name, mine)
            if new != list(a.spec.updates):
                await asyncio.to_thread(self.kube.write_duties, self.key[0], a.metadata.name, new)

    async def _report(
        self,
        stream: UpdateStream,
        topology: Topology,
        servers: list[StreamServer],
        paused: bool,
    ) -> None:
        self._status_at = time.monotonic()
        connected = [s for s in servers if s.address]
        source: Literal["Prometheus", "Agents"] = "Agents"
        from_prometheus = await self._from_prometheus(stream, connected)
        if from_prometheus is not None:
            scrapes = {
                n: sc for n, sc in from_prometheus.items() if n in {s.name for s in connected}
            }
            baselines: dict[str, Scrape] = {}
            window = WINDOW_SECONDS
            source = "Prometheus"
            self._history.clear()
        else:
            scrapes, baselines, window = await self._from_agents(stream, connected, servers)
        previous = [
            c
            for c in (stream.status.conditions if stream.status else [])
            if c.type != TRAFFIC_SHARE or self._weight_condition is not None
        ]
        status = stream_status(
            stream.spec,
            generation=stream.metadata.generation,
            topology=topology,
            servers=servers,
            scrapes=scrapes,
            baselines=baselines,
            window_seconds=window or STATUS_SECONDS,
            previous=list(previous),
            now=dt.datetime.now(dt.UTC),
            paused=paused,
            epoch=self.health.epoch,
            extra=[self.health.condition(), self._weight_condition],
            source=source,
        )
        for change in condition_events(previous, status.conditions):
            reason, text, warning = change
            log.info("UpdateStream %s/%s: %s.", *self.key, text)
            await asyncio.to_thread(self.kube.event, stream, reason, text, warning)
        body = status.model_dump(by_alias=True, mode="json", exclude_none=True)
        if body != self._last_status:
            await asyncio.to_thread(self.kube.patch_status, self.key[0], self.key[1], body)
            self._last_status = body

    async def _from_prometheus(
        self, stream: UpdateStream, connected: Sequence[StreamServer]
    ) -> dict[str, Scrape] | None:
        """The servers' window from Prometheus; None without one, or when it did not answer
        (a warning event once per distinct error; the agents are read instead)."""
        if not self.prometheus or not connected:
            return None
        queries = prometheus_queries(
            stream.spec.model, (s.name for s in connected), int(WINDOW_SECONDS)
        )
        address = self.prometheus
        try:
            answers = await asyncio.gather(
                *(asyncio.to_thread(vector, address, q, self.auth) for q in queries.values())
            )
        except QueryError as err:
            text = f"Prometheus at {address} did not answer ({err}); reading the agents directly"
            if text != self._prometheus_error:
                log.warning("UpdateStream %s/%s: %s.", *self.key, text)
                await asyncio.to_thread(self.kube.event, stream, "MetricsFromAgents", text, True)
                self._prometheus_error = text
            return None
        self._prometheus_error = ""
        return scrapes_from_prometheus(dict(zip(queries, answers, strict=True)))

    async def _from_agents(
        self,
        stream: UpdateStream,
        connected: Sequence[StreamServer],
        servers: Sequence[StreamServer],
    ) -> tuple[dict[str, Scrape], dict[str, Scrape], float]:
        """Each connected agent's series now, and as they were at the window's start."""
        now = time.monotonic()
        async with aiohttp.ClientSession() as session:
            results = await asyncio.gather(
                *(scrape(session, s.address, stream.spec.model) for s in connected)
            )
        scrapes: dict[str, Scrape] = {}
        baselines: dict[str, Scrape] = {}
        window = 0.0
        for s, result in zip(connected, results, strict=True):
            if result is None:
                continue
            scrapes[s.name] = result
            history = self._history.setdefault(s.name, deque())
            while history and now - history[0][0] > WINDOW_SECONDS:
                history.popleft()
            if history:
                baselines[s.name] = history[0][1]
                window = max(window, now - history[0][0])
            history.append((now, result))
        for gone in set(self._history) - {s.name for s in servers}:
            del self._history[gone]
        return scrapes, baselines, window


class UpdateStreams:
    """The workers of every stream, created on first wake."""

    def __init__(
        self,
        kube: UpdateKube,
        gate: Gate,
        prometheus: str | None = None,
        auth: PrometheusAuth | None = None,
    ) -> None:
        self.kube = kube
        self.gate = gate
        self.prometheus = prometheus
        self.auth = auth
        self.workers: dict[StreamKey, StreamWorker] = {}

    def wake(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        worker = self.workers.get(key)
        if worker is None or worker.task is None or worker.task.done():
            worker = StreamWorker(key, self.kube, self.gate, self.prometheus, self.auth)
            self.workers[key] = worker
            worker.task = asyncio.get_running_loop().create_task(
                worker.run(), name=f"updatestream {namespace}/{name}"
            )
        worker.wake()

    def wake_namespace(self, namespace: str | None) -> None:
        """Something its streams depend on changed (an assignment or a server pod)."""
        for key, worker in list(self.workers.items()):
            if key[0] == namespace and worker.task is not None and not worker.task.done():
                worker.wake()

    async def stop(self) -> None:
        tasks = [w.task for w in self.workers.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
