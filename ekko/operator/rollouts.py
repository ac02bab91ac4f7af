"""One worker per ModelVersion: observe, measure due metrics, decide, write.

The decisions are :func:`ekko.rollout.machine.decide`'s; this module only gathers what it needs and
writes what it returns. Routing weights go to the Model's status in one patch, which every agent of
the model watches; the pool worker is woken so that versions to load or unload reach assignments.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import random
from collections.abc import Callable
from typing import Any

from ekko.api.resources import Model, ModelVersionStatus
from ekko.kube.errors import Conflict, InvalidObjectError, KubeError
from ekko.kube.fleet import ROLLOUT_MANAGER, Fleet
from ekko.kube.promql import PrometheusAuth, measure, render
from ekko.operator import metrics
from ekko.operator.peering import Gate
from ekko.planning.status import failure_conditions
from ekko.rollout.analysis import Measurement, address_allowed, evaluate
from ekko.rollout.machine import Decision, Inputs, Observed, decide, metrics_due
from ekko.rollout.observe import observe, request_of

log = logging.getLogger("ekko.operator")

VersionKey = tuple[str, str]
DEFAULT_PROMETHEUS = "http://prometheus-operated.monitoring:9090"
CONFLICT_RETRY = 0.1
"""Seconds before deciding again after the Model changed under a decision (no hot loop)."""


class RolloutWorker:
    def __init__(
        self,
        key: VersionKey,
        fleet: Fleet,
        wake_pool: Callable[[str, str], None],
        prometheus: str,
        gate: Gate,
        *,
        allowed: tuple[str, ...] = (),
        auth: PrometheusAuth | None = None,
    ) -> None:
        self.key = key
        self.gate = gate
        self.fleet = fleet
        self.wake_pool = wake_pool
        self.prometheus = prometheus
        self.allowed = allowed
        self.auth = auth or PrometheusAuth()
        self._wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.model: str | None = None
        self._last_status: dict[str, Any] | None = None
        self._failure = ""

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Decide, write, wait; until the version is gone. Survives everything a pass raises:
        logged (with the traceback unless it is an API error), posted as an event and a Degraded
        condition on the version, retried with backoff and jitter."""
        backoff = 0.5
        while True:
            requeue: float | bool | None
            try:
                requeue = await self.run_pass()
                backoff = 0.5
                self._failure = ""
            except asyncio.CancelledError:
                raise
            except Exception as err:
                own = _own_spec_error(err)
                delay = backoff * random.uniform(0.8, 1.2)
                if own is not None:  # its own spec: no retry until it changes (an event wakes us)
                    text = f"spec not usable: {own.problem}"
                    requeue = None
                else:
                    text = f"rollout pass failed: {_describe(err)}; retrying in {delay:.1f}s"
                    requeue = delay
                    backoff = min(backoff * 2, 30.0)
                if isinstance(err, KubeError):
                    log.warning("ModelVersion %s/%s: %s", *self.key, text)
                else:
                    log.exception("ModelVersion %s/%s: %s", *self.key, text)
                await self._report_failure(err, "InvalidSpec" if own else "RolloutPassFailed", text)
            if requeue is False:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=requeue)
            self._wake.clear()

    async def _report_failure(self, err: Exception, reason: str, text: str) -> None:
        """An event when the problem is new, and conditions; best effort."""
        namespace, name = self.key
        problem = text.split("; retrying", maxsplit=1)[0]
        if problem == self._failure:
            return
        self._failure = problem
        own = _own_spec_error(err)
        try:
            await asyncio.to_thread(
                self.fleet.report_failure,
                "ModelVersion",
                "modelversions",
                namespace,
                name,
                uid=own.uid if own is not None else None,
                reason=reason,
                message=text,
                conditions=failure_conditions(reason, text, None, dt.datetime.now(dt.UTC)),
            )
            self._last_status = None
        except Exception as report_err:  # the API may be what failed; the log has it
            log.warning(
                "ModelVersion %s/%s: could not report the failure: %s", *self.key, report_err
            )

    async def run_pass(self) -> float | bool | None:
        """One decision; the seconds until the next look, None to wait for an event, False to stop."""
        namespace, name = self.key
        if not await self.gate.allowed(namespace):
            return 1.0  # a peer acts
        mv = await asyncio.to_thread(self.fleet.get_version, namespace, name)
        if mv is None:
            return False
        self.model = mv.spec.model
        model = await asyncio.to_thread(self.fleet.get_model, namespace, mv.spec.model)
        siblings = await asyncio.to_thread(self.fleet.list_versions, namespace)
        servers = (
            await asyncio.to_thread(
                self.fleet.model_servers, namespace, model.metadata.name, model.spec.pool
            )
            if model is not None
            else []
        )
        observed = observe(mv, model, siblings, servers)
        status = mv.status or ModelVersionStatus()
        now = dt.datetime.now(dt.UTC)
        measurements = await self._measure(mv.spec, status, now, observed.stable or "")
        decision = decide(
            Inputs(
                spec=mv.spec,
                status=status,
                observed=observed,
                now=now,
                measurements=tuple(measurements),
                request=request_of(mv),
                name=name,
                generation=mv.metadata.generation,
            )
        )
        try:
            await self._write(decision, observed, model, mv)
        except Conflict as err:
            # The Model changed after we read it (a rollback by kubectl ekko, another writer):
            # decide again on what it is now, rather than overwrite it.
            log.info("ModelVersion %s/%s: %s; deciding again", namespace, name, err)
            return CONFLICT_RETRY
        return decision.requeue_after

    async def _measure(
        self, spec: Any, status: ModelVersionStatus, now: dt.datetime, stable: str
    ) -> list[Measurement]:
        out = []
        for metric_name in metrics_due(spec, status, now):
            metric = next(m for m in spec.analysis if m.name == metric_name)
            address = metric.prometheus.address or self.prometheus
            query = render(metric.query, spec.model, spec.version, stable)
            if address_allowed(address, self.prometheus, self.allowed):
                result = await asyncio.to_thread(
                    measure, address, metric.name, query, now, self.auth
                )
            else:
                result = Measurement(
                    metric.name,
                    now,
                    error=f"prometheus address {address} is not allowed; the operator queries "
                    f"{self.prometheus} and addresses under --allow-prometheus-address",
                )
            metrics.ANALYSIS.labels(
                self.key[0], spec.model, metric.name, evaluate(metric, result)
            ).inc()
            out.append(result)
        return out

    async def _write(
        self, decision: Decision, observed: Observed, target: Model | None, mv: Any
    ) -> None:
        namespace, name = self.key
        model = mv.spec.model
        if decision.model is not None and target is not None:
            # Every field the rollout worker owns, applied only onto the Model as it was read
            # (a resourceVersion precondition): a change made meanwhile is a Conflict, never
            # overwritten with what this decision assumed.
            await asyncio.to_thread(
                self.fleet.apply_status,
                "models",
                namespace,
                model,
                decision.model.applied_to(observed).owned_wire("rollout-worker"),
                ROLLOUT_MANAGER,
                resource_version=target.metadata.resource_version,
            )
            self.wake_pool(namespace, target.spec.pool)
        status = decision.status.to_wire()
        if status != self._last_status:
            # The rollout worker is the ModelVersion status's only writer (kubectl ekko writes
            # requests as annotations): every field, server-side applied under its manager; a
            # field it no longer sends that an operator before server-side apply set is deleted.
            seen = mv.status.to_wire() if mv.status else {}
            await asyncio.to_thread(
                self.fleet.apply_status,
                "modelversions",
                namespace,
                name,
                status,
                ROLLOUT_MANAGER,
                stale=sorted(set(seen) - set(status)),
            )
            self._last_status = status
        for event in decision.events:
            log.info("ModelVersion %s/%s: %s", namespace, name, event.message)
            await asyncio.to_thread(
                self.fleet.event, mv, event.reason, event.message, event.warning
            )
        if decision.outcome is not None and decision.status.started_at is not None:
            metrics.ROLLOUTS.labels(namespace, model, decision.outcome).inc()
            ended = decision.status.finished_at or dt.datetime.now(dt.UTC)
            metrics.ROLLOUT_SECONDS.labels(namespace, model, decision.outcome).observe(
                (ended - decision.status.started_at).total_seconds()
            )
        if decision.rollback_seconds is not None:
            metrics.ROLLBACK_SECONDS.labels(namespace, model).observe(decision.rollback_seconds)


def allowed_addresses() -> tuple[str, ...]:
    """Prometheus addresses a ModelVersion may name besides the operator's own (env
    EKKO_PROMETHEUS_ALLOW, comma-separated prefixes; set by --allow-prometheus-address)."""
    raw = os.environ.get("EKKO_PROMETHEUS_ALLOW", "")
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def prometheus_auth() -> PrometheusAuth:
    """Headers, bearer token file and CA for analysis queries (env EKKO_PROMETHEUS_HEADERS as
    JSON, EKKO_PROMETHEUS_TOKEN_FILE, EKKO_PROMETHEUS_CA_FILE; set by the operator's flags)."""
    headers = json.loads(os.environ.get("EKKO_PROMETHEUS_HEADERS") or "{}")
    return PrometheusAuth(
        headers=tuple(sorted((str(k), str(v)) for k, v in headers.items())),
        bearer_token_file=os.environ.get("EKKO_PROMETHEUS_TOKEN_FILE") or None,
        ca_file=os.environ.get("EKKO_PROMETHEUS_CA_FILE") or None,
    )


def _own_spec_error(err: Exception) -> InvalidObjectError | None:
    """The error when it is about the ModelVersion's own spec."""
    if isinstance(err, InvalidObjectError) and err.kind == "ModelVersion":
        return err
    return None


def _describe(err: Exception) -> str:
    return str(err) if isinstance(err, KubeError) else f"{type(err).__name__}: {err}"


class Rollouts:
    """The rollout workers of every ModelVersion, created on first wake."""

    def __init__(
        self,
        fleet: Fleet,
        wake_pool: Callable[[str, str], None],
        prometheus: str | None,
        gate: Gate,
    ) -> None:
        self.gate = gate
        self.fleet = fleet
        self.wake_pool = wake_pool
        self.prometheus = prometheus or os.environ.get("EKKO_PROMETHEUS_URL") or DEFAULT_PROMETHEUS
        # Read once: every rollout worker queries with the same settings.
        self.allowed = allowed_addresses()
        self.auth = prometheus_auth()
        self.workers: dict[VersionKey, RolloutWorker] = {}

    def wake(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        worker = self.workers.get(key)
        if worker is None or worker.task is None or worker.task.done():
            worker = RolloutWorker(
                key,
                self.fleet,
                self.wake_pool,
                self.prometheus,
                self.gate,
                allowed=self.allowed,
                auth=self.auth,
            )
            self.workers[key] = worker
            worker.task = asyncio.get_running_loop().create_task(
                worker.run(), name=f"rollout {namespace}/{name}"
            )
        worker.wake()

    def wake_all(self) -> None:
        """Wake every live rollout worker (a resync)."""
        for worker in list(self.workers.values()):
            if worker.task and not worker.task.done():
                worker.wake()

    def wake_model(self, namespace: str, model: str | None = None) -> None:
        """Wake the workers of a model's versions (all of a namespace's when model is None)."""
        for (ns, _), worker in list(self.workers.items()):
            if (
                ns == namespace
                and (model is None or worker.model == model)
                and worker.task
                and not worker.task.done()
            ):
                worker.wake()

    async def stop(self) -> None:
        tasks = [w.task for w in self.workers.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
