"""One worker per ServerPool: debounce changes, re-plan off the event loop, converge, report.

Handlers only wake a worker (``Workers.wake``). The worker observes the pool from the API, decides
with pure functions from ``ekko.planning`` and ``ekko.solver``, and writes through ``ekko.kube``.
Every pass is idempotent; a failed pass is retried with backoff.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import Any

from ekko.api.resources import Model, PlanSummary, ServerPool, ServerPoolStatus
from ekko.api.units import parse_duration
from ekko.kube.errors import Conflict, InvalidObjectError, KubeError
from ekko.kube.fleet import POOL_MANAGER, STABLE_MANAGER, Fleet
from ekko.operator import metrics
from ekko.operator.peering import Gate
from ekko.planning.converge import Action, Desired, converge
from ekko.planning.decide import (
    Debounce,
    excluded_problem,
    more_work,
    must_replan,
    plan_failure,
    plan_summary,
    planned_message,
    pool_problem,
    refusal_notice,
    refused_backoff,
    refused_text,
    resumes_recorded,
    roll_adopted,
    roll_notices,
    settled,
    unplaceable,
    without,
)
from ekko.planning.desired import desired_from_plan, desired_from_state, plan_inputs
from ekko.planning.problem import build_problem, solve_config
from ekko.planning.roll import Roll, roll, roll_status
from ekko.planning.state import PoolState
from ekko.planning.status import (
    failure_conditions,
    initial_stable,
    model_status,
    orphan_status,
    pool_status,
    tally,
)
from ekko.solver import Plan, solve, violations

log = logging.getLogger("ekko.operator")

PoolKey = tuple[str, str]
FOLLOW_UP_SECONDS = 1.0
CACHE_SYNC_SECONDS = 30.0
MIN_PASS_INTERVAL = 0.5
"""Seconds between the starts of two passes of one pool: however many events arrive meanwhile
(pods turning Ready, agents reporting loads), they are seen by one pass."""
MAX_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class Quiet:
    """What a pass that changed nothing saw (no action, no status or event written): a pass
    that sees the same again has nothing to do either, and skips converging and reporting."""

    state: PoolState
    desired: Desired
    outcome: Outcome
    refused: str
    more: bool


@dataclass
class Outcome:
    """What a re-plan decided, kept until the next one."""

    summary: PlanSummary | None = None
    problem: str = ""
    excluded: dict[str, str] = field(default_factory=dict)


class PoolWorker:
    """Keeps one pool converged on its plan."""

    def __init__(self, key: PoolKey, fleet: Fleet, executor: Executor | None, gate: Gate) -> None:
        self.key = key
        self.gate = gate
        self.fleet = fleet
        self.executor = executor
        self.desired: Desired | None = None
        self.inputs: str | None = None
        self.outcome = Outcome()
        self._wake = asyncio.Event()
        self._debounce = Debounce()
        self._last_status: dict[str, object] = {}
        self._failure = ""
        self._refused_text = ""
        self._refused_backoff = FOLLOW_UP_SECONDS
        self._last_good: dict[str, Model] = {}
        self._last_start = -MIN_PASS_INTERVAL
        self._rolled: Roll | None = None
        self._roll_waiting = ""
        self._quiet: Quiet | None = None
        self._writes = 0
        """Statuses and events this worker wrote (a pass that wrote none may be quiet)."""
        self.skipped = 0
        """Passes that found what the last quiet pass found, and skipped converge and report."""
        self.task: asyncio.Task[None] | None = None

    def wake(self, replan: bool) -> None:
        if replan:
            self._debounce = self._debounce.changed(time.monotonic())
        self._wake.set()

    async def run(self) -> None:
        """Pass after pass until the pool is gone. Survives everything a pass raises: the error
        is logged (with its traceback when it is not an API error), posted as an event and a
        Degraded condition on the pool, and the pass is retried with backoff and jitter."""
        backoff = 0.5
        while True:
            await self._wake.wait()
            # Coalesce: wake-ups until the interval is over are served by the next pass.
            wait = self._last_start + MIN_PASS_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._wake.clear()
            self._last_start = time.monotonic()
            try:
                metrics.PASSES.labels(self.key[1]).inc()
                more = await self.run_pass()
            except asyncio.CancelledError:
                raise
            except InvalidObjectError as err:
                # The pool's own spec: retrying cannot help until it changes (which wakes us).
                metrics.RECONCILE_ERRORS.labels(self.key[1]).inc()
                log.warning("Pool %s/%s: %s; waiting for a fixed spec", *self.key, err.problem)
                await self._report_failure(err, "InvalidSpec", f"spec not usable: {err.problem}")
                continue
            except Conflict as err:
                # Someone wrote first (a precondition failed): observe again, no failure.
                log.info("Pool %s/%s: %s; observing again", *self.key, err)
                self._wake.set()
                continue
            except Exception as err:
                await self._failed_pass(err, backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            backoff = 0.5
            self._failure = ""
            if more is None:
                return  # the pool is gone
            if more:
                asyncio.get_running_loop().call_later(FOLLOW_UP_SECONDS, self._wake.set)

    async def _failed_pass(self, err: Exception, backoff: float) -> None:
        """Log, report and sleep after a pass that raised; the caller retries."""
        metrics.RECONCILE_ERRORS.labels(self.key[1]).inc()
        delay = backoff * random.uniform(0.8, 1.2)
        text = f"reconcile failed: {_describe(err)}; retrying in {delay:.1f}s"
        if isinstance(err, KubeError):
            log.warning("Pool %s/%s: %s", *self.key, text)
        else:
            log.exception("Pool %s/%s: %s", *self.key, text)
        await self._report_failure(err, "ReconcileFailed", text)
        await asyncio.sleep(delay)
        self._wake.set()

    async def _report_failure(self, err: Exception, reason: str, text: str) -> None:
        """Say on the pool why its pass failed: an event when the problem is new, conditions.
        Best effort: the API may be what failed."""
        namespace, name = self.key
        problem = text.split("; retrying", maxsplit=1)[0]
        if problem == self._failure:
            return
        self._failure = problem
        uid = err.uid if isinstance(err, InvalidObjectError) else None
        now = dt.datetime.now(dt.UTC)
        try:
            await asyncio.to_thread(
                self.fleet.report_failure,
                "ServerPool",
                "serverpools",
                namespace,
                name,
                uid=uid,
                reason=reason,
                message=text,
                conditions=failure_conditions(reason, text, None, now),
            )
            self._last_status.pop(f"serverpools/{name}", None)
        except Exception as report_err:  # the API may be down; the log has it
            log.warning("Pool %s/%s: could not report the failure: %s", *self.key, report_err)

    async def run_pass(self) -> bool | None:
        """One pass; True when more work is expected, None when the pool was deleted."""
        namespace, name = self.key
        # Taken now: a pass that raises, or fails its pool, leaves no quiet record behind.
        quiet, self._quiet = self._quiet, None
        if not await self.gate.allowed(namespace):
            return True  # a peer acts; look again shortly, in case it goes away
        cache = getattr(self.fleet, "cache", None)
        # While the first lists come in, an observation would see half the fleet: wait for them,
        # and say so on the pool when they do not come (a list refused by RBAC would otherwise
        # stall it silently).
        if (
            cache is not None
            and not cache.synced
            and not await asyncio.to_thread(cache.wait_synced, CACHE_SYNC_SECONDS)
        ):
            raise KubeError(f"cache not filled yet: {'; '.join(cache.unsynced())}")
        pool = await asyncio.to_thread(self.fleet.get_pool, namespace, name)
        if pool is None or pool.metadata.deletion_timestamp is not None:
            log.info(
                "Pool %s/%s is gone; its servers go with it (owner references).", namespace, name
            )
            await self._report_orphans()
            return None
        # Debounce without sleeping in the pass: until the debounce has passed since the first
        # change, passes go on converging the current plan (and see every new change, a shorter
        # debounce included); the re-plan waits for a wake at the due time.
        self._debounce, left = self._debounce.at_pass(
            time.monotonic(), parse_duration(pool.spec.placement.replan_debounce)
        )
        debouncing = left > 0
        if debouncing:
            asyncio.get_running_loop().call_later(left, self._wake.set)
        state = self._keep_last_good(await asyncio.to_thread(self.fleet.observe, pool))
        inputs = plan_inputs(state)
        if self.desired is None:
            recorded = pool.status.plan if pool.status else None
            if recorded is not None and resumes_recorded(recorded, inputs):
                # A restart: the assignments already carry this plan; keep it, move nothing.
                self.desired = desired_from_state(state)
                self.inputs = inputs
                self.outcome = Outcome(summary=recorded)
                log.info(
                    "Pool %s/%s: resumed the recorded plan (%s servers).",
                    namespace,
                    name,
                    recorded.servers_used,
                )
        if must_replan(self.desired is not None, inputs, self.inputs, debouncing):
            await self._replan_pool(pool, state, inputs)
            if self.desired is not None:
                # The plan is in status as soon as it is decided, not after the fleet converged.
                await self._report_pool(state, self.desired)
        elif not debouncing:
            self._debounce = self._debounce.settled()
        desired = self.desired or desired_from_state(state)
        if (
            quiet is not None
            and quiet.outcome is self.outcome
            and quiet.refused == self._refused_text
            and quiet.desired == desired
            and quiet.state == state
        ):
            # Nothing observed changed since a pass that had nothing to do (the 60 s resync, a
            # heartbeat-only wake, a follow-up while agents load): the same pure functions would
            # return the same nothing. Node readiness and the roll's waiting are functions of the
            # observation too (a node lost by the clock changes ``state``).
            self._quiet = quiet
            self.skipped += 1
            return quiet.more
        writes = self._writes
        rolled = await self._roll(pool, state, desired)
        desired = rolled.desired
        actions: list[Action] = [*converge(state, desired), *rolled.recreate]
        refused: list[KubeError] = []
        if actions:
            applied = await asyncio.to_thread(self.fleet.apply, pool, actions)
            for action in actions:
                metrics.ACTIONS.labels(name, type(action).__name__).inc()
            done, refused = applied.done, applied.refused
            if done:
                log.info(
                    "Pool %s/%s: %s.",
                    namespace,
                    name,
                    "; ".join(done[:5]) + (" …" if len(done) > 5 else ""),
                )
            if applied.retry:
                # The API is unwell or busy: the pass is retried with backoff (the writes that
                # succeeded are not repeated: the next observation includes them).
                raise applied.retry[0]
        await self._refused(pool, refused)
        await self._report(pool, state, desired)
        if refused:
            # Refused writes are retried (the object may be fixed) but slowly, and said so.
            self._refused_backoff = refused_backoff(self._refused_backoff, MAX_BACKOFF_SECONDS)
            asyncio.get_running_loop().call_later(self._refused_backoff, self._wake.set)
            return False
        self._refused_backoff = FOLLOW_UP_SECONDS
        more = more_work(bool(actions), rolled, settled(state, desired))
        if not actions and self._writes == writes:
            self._quiet = Quiet(state, desired, self.outcome, self._refused_text, more)
        return more

    async def _roll(self, pool: ServerPool, state: PoolState, desired: Desired) -> Roll:
        """Replace the next outdated servers (see ``ekko.planning.roll``); an event for each,
        and one when the roll has to wait."""
        rolled = roll(state, desired)
        self._rolled = rolled
        if roll_adopted(rolled):
            self.desired = rolled.desired
        for notice in roll_notices(rolled, state.template_hash, self._roll_waiting):
            if notice.warning:
                log.warning("Pool %s/%s: %s", *self.key, notice.message)
            else:
                log.info("Pool %s/%s: %s.", *self.key, notice.message)
            await asyncio.to_thread(
                self.fleet.event, pool, notice.reason, notice.message, notice.warning
            )
            self._writes += 1
        self._roll_waiting = rolled.waiting
        return rolled

    async def _refused(self, pool: ServerPool, refused: list[KubeError]) -> None:
        """Writes the API server refused (4xx): an event when new, and Degraded on the pool."""
        text = refused_text([str(e) for e in refused])
        notice = refusal_notice(text, self._refused_text)
        if notice is not None:
            log.warning("Pool %s/%s: %s", *self.key, notice.message)
            await asyncio.to_thread(self.fleet.event, pool, notice.reason, notice.message, True)
            self._writes += 1
        self._refused_text = text

    async def _report_orphans(self) -> None:
        """Models naming a pool that does not exist (deleted under them, or never created) say
        so, instead of keeping a Ready=True from when they had servers."""
        namespace, name = self.key
        models, _ = await asyncio.to_thread(self.fleet.list_models_checked, namespace)
        now = dt.datetime.now(dt.UTC)
        for model in models:
            if model.spec.pool != name or model.metadata.deletion_timestamp is not None:
                continue
            text = f"pool {name} does not exist; no server holds this model"
            ready = next((c for c in (model.status.conditions if model.status else [])
                          if c.type == "Ready"), None)  # fmt: skip
            if ready is not None and ready.reason == "PoolNotFound":
                continue
            await asyncio.to_thread(
                self.fleet.apply_status,
                "models",
                namespace,
                model.metadata.name,
                orphan_status(model, text, now).owned_wire("pool-worker"),
                POOL_MANAGER,
            )
            await asyncio.to_thread(self.fleet.event, model, "PoolNotFound", text, True)

    def _keep_last_good(self, state: PoolState) -> PoolState:
        """A model whose spec became unusable keeps its last usable spec in the plan (its
        replicas keep serving; the bad edit is reported on it), and never stops the others."""
        self._last_good = {m.metadata.name: m for m in state.models} | {
            n: m for n, m in self._last_good.items() if n in state.rejected
        }
        kept = tuple(self._last_good[n] for n in sorted(state.rejected) if n in self._last_good)
        return replace(state, models=state.models + kept) if kept else state

    async def _replan_pool(self, pool: ServerPool, state: PoolState, inputs: str) -> None:
        namespace, name = self.key
        if self._debounce.since is not None:
            metrics.DEBOUNCE_SECONDS.labels(name).observe(time.monotonic() - self._debounce.since)
        # This plan covers every change observed so far; one arriving during the solve counts
        # again (and its inputs differ, so the next pass re-plans after its own debounce).
        self._debounce = self._debounce.planned()
        problem = build_problem(state)
        excluded = unplaceable(problem)
        problem = without(problem, excluded)
        config = solve_config(pool)
        loop = asyncio.get_running_loop()
        plan: Plan = await loop.run_in_executor(self.executor, solve, problem, config)
        metrics.SOLVE_SECONDS.labels(name).observe(plan.solve_seconds)
        metrics.PLANS.labels(name, plan.status).inc()
        broken = violations(problem, plan) if plan.status != "infeasible" else []
        now = dt.datetime.now(dt.UTC)
        self.inputs = inputs
        text = plan_failure(plan, broken)
        if text:
            self.outcome = Outcome(summary=self.outcome.summary, problem=text, excluded=excluded)
            if self.desired is None:
                self.desired = desired_from_state(state)
            log.warning("Pool %s/%s: %s", namespace, name, text)
            await asyncio.to_thread(self.fleet.event, pool, "PlanFailed", text, True)
            return
        self.desired = desired_from_plan(plan, state)
        summary = plan_summary(plan, excluded, inputs, now)
        self.outcome = Outcome(
            summary=summary, problem=excluded_problem(excluded), excluded=excluded
        )
        metrics.UNPLACEABLE.labels(name).set(len(excluded))
        metrics.BYTES_MOVED.labels(name).inc(plan.bytes_moved)
        metrics.PLAN_GAP.labels(name).set(plan.gap if plan.gap != float("inf") else 0)
        metrics.SERVERS.labels(name, "lower_bound").set(plan.lower_bound)
        message = planned_message(plan)
        log.info("Pool %s/%s: %s.", namespace, name, message)
        await asyncio.to_thread(self.fleet.event, pool, "Planned", message)
        for model, why in excluded.items():
            target = next((m for m in state.models if m.metadata.name == model), None)
            if target is not None:
                await asyncio.to_thread(self.fleet.event, target, "Unplaceable", why, True)

    async def _report_pool(self, state: PoolState, desired: Desired) -> None:
        name = self.key[1]
        now = dt.datetime.now(dt.UTC)
        problem, reason = pool_problem(self.outcome.problem, self._refused_text)
        seen = state.pool.status
        # Until this worker has planned, the plan recorded in status stands (the apply would
        # remove a field it leaves out: a restart whose first solve fails keeps the record).
        summary = self.outcome.summary or (seen.plan if seen else None)
        status = pool_status(state, desired, summary, now, problem, problem_reason=reason)
        wire = status.to_wire()
        # The template roll's fields and condition, validated with the rest of the status.
        wire.update(
            roll_status(
                self._rolled or roll(state, desired),
                wire.get("conditions", []),
                state.pool.metadata.generation,
                state.template_hash,
                now,
            )
        )
        status = ServerPoolStatus.model_validate(wire)
        metrics.SERVERS.labels(name, "wanted").set(status.servers_wanted)
        metrics.SERVERS.labels(name, "ready").set(status.servers_ready)
        body = status.to_wire()
        key = f"serverpools/{name}"
        if self._last_status.get(key) == body:
            return
        # The pool worker is the status's only writer: every field, server-side applied under
        # its manager; a field an operator before server-side apply left is deleted.
        stale = sorted(set(seen.to_wire() if seen else {}) - set(body))
        self._writes += 1
        await asyncio.to_thread(
            self.fleet.apply_status,
            "serverpools",
            self.key[0],
            name,
            body,
            POOL_MANAGER,
            stale=stale,
        )
        self._last_status[key] = body

    async def _report(self, pool: ServerPool, state: PoolState, desired: Desired) -> None:
        now = dt.datetime.now(dt.UTC)
        await self._report_pool(state, desired)
        writes: list[tuple[str, dict[str, Any]]] = []
        stables: list[tuple[str, dict[str, Any]]] = []
        counted = tally(state, desired)
        for model in state.models:
            if model.metadata.name in state.rejected:
                continue  # reported below, on the spec as it stands
            why = self.outcome.excluded.get(model.metadata.name, "")
            # Only the pool worker's own fields, every one of them (server-side apply).
            body = model_status(state, desired, model, now, why, counted=counted).owned_wire(
                "pool-worker"
            )
            if self._last_status.get(f"models/{model.metadata.name}") != body:
                writes.append((model.metadata.name, body))
            stable = initial_stable(model)
            if (
                stable is not None
                and self._last_status.get(f"stable/{model.metadata.name}") != stable
            ):
                stables.append((model.metadata.name, {"stableVersion": stable}))
        self._writes += len(writes) + len(stables)
        if writes:
            # In parallel, like the pass's other writes: at 300 models one after another took
            # minutes on a busy API server.
            errors = await asyncio.to_thread(
                self.fleet.apply_statuses, "models", self.key[0], POOL_MANAGER, writes
            )
            for (model_name, body), error in zip(writes, errors, strict=True):
                if error is None:
                    self._last_status[f"models/{model_name}"] = body
            failed = [e for e in errors if e is not None]
            if failed:
                raise failed[0]  # retried with backoff
        if stables:
            # A model no rollout touched yet records its spec's version as stable; not forced,
            # so the API server refuses it (Conflict: observe again) once the rollout worker set
            # a different value; a promote cannot be undone by a stale observation.
            errors = await asyncio.to_thread(
                self.fleet.apply_statuses, "models", self.key[0], STABLE_MANAGER, stables, False
            )
            for (model_name, body), error in zip(stables, errors, strict=True):
                if error is None:
                    self._last_status[f"stable/{model_name}"] = body["stableVersion"]
            failed = [e for e in errors if e is not None]
            if failed:
                raise failed[0]
        for model_name, problem in sorted(state.rejected.items()):
            kept = model_name in self._last_good
            text = f"spec not usable: {problem}" + (
                "; its replicas keep serving the last usable spec" if kept else ""
            )
            rejected: dict[str, object] = {
                "conditions": failure_conditions("InvalidSpec", text, None, now)
            }
            if self._last_status.get(f"models/{model_name}") != rejected:
                self._writes += 1
                last = self._last_good.get(model_name)
                await asyncio.to_thread(
                    self.fleet.event_on,
                    "Model",
                    self.key[0],
                    model_name,
                    uid=last.metadata.uid if last else None,
                    reason="InvalidSpec",
                    message=text,
                    warning=True,
                )
            await self._patch_if_changed("models", model_name, rejected)

    async def _patch_if_changed(self, plural: str, obj: str, status: dict[str, object]) -> None:
        """Merge-patch a refused model's conditions (its spec is not usable: the pool worker's
        apply of its fields is not made), unless it is what the last write sent."""
        key = f"{plural}/{obj}"
        if self._last_status.get(key) == status:
            return
        self._writes += 1
        await asyncio.to_thread(self.fleet.patch_status, plural, self.key[0], obj, status)
        self._last_status[key] = status


POOL_LABEL = "ekko.dev/pool"


def assignment_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
    """Whether an assignment event changes anything but the agent's heartbeat (agents heartbeat
    every few seconds; only a change in what they hold or apply matters)."""
    if old is None or new is None:
        return True

    def essence(body: Mapping[str, Any]) -> tuple[Any, Any]:
        status = {k: v for k, v in (body.get("status") or {}).items() if k != "heartbeat"}
        return body.get("spec"), status

    return essence(old) != essence(new)


def _node_ready_status(node: Mapping[str, Any] | None) -> str:
    conditions = ((node or {}).get("status") or {}).get("conditions") or []
    return next((str(c.get("status")) for c in conditions if c.get("type") == "Ready"), "")


def _describe(err: Exception) -> str:
    """An error in one line for events and conditions."""
    return str(err) if isinstance(err, KubeError) else f"{type(err).__name__}: {err}"


class Workers:
    """The workers of every pool, created on first wake."""

    def __init__(self, fleet: Fleet, executor: Executor | None, gate: Gate) -> None:
        self.fleet = fleet
        self.executor = executor
        self.gate = gate
        self.workers: dict[PoolKey, PoolWorker] = {}
        self.model_pools: dict[PoolKey, str] = {}
        self.generations: dict[tuple[str, str, str], int | None] = {}

    def wake(self, namespace: str, pool: str, replan: bool = False) -> None:
        key = (namespace, pool)
        worker = self.workers.get(key)
        if worker is None or worker.task is None or worker.task.done():
            worker = PoolWorker(key, self.fleet, self.executor, self.gate)
            self.workers[key] = worker
            worker.task = asyncio.get_running_loop().create_task(
                worker.run(), name=f"pool {namespace}/{pool}"
            )
        worker.wake(replan)

    def spec_changed(self, kind: str, namespace: str, name: str, generation: int | None) -> bool:
        """Whether this is a new spec generation (status writes, ours included, are not)."""
        key = (kind, namespace, name)
        if generation is not None and self.generations.get(key) == generation:
            return False
        self.generations[key] = generation
        return True

    def pool_changed(
        self, namespace: str, pool: str, generation: int | None, deleted: bool
    ) -> None:
        if deleted:
            self.generations.pop(("pool", namespace, pool), None)
            self.wake(namespace, pool)
        elif self.spec_changed("pool", namespace, pool, generation):
            self.wake(namespace, pool, replan=True)

    def model_changed(
        self, namespace: str, model: str, pool: str | None, generation: int | None, deleted: bool
    ) -> None:
        """A model changed: re-plan its pool, and its former pool if it moved."""
        key = (namespace, model)
        before = self.model_pools.get(key)
        if deleted:
            self.generations.pop(("model", namespace, model), None)
            self.model_pools.pop(key, None)
            for target in {before, pool} - {None}:
                self.wake(namespace, str(target), replan=True)
            return
        if not self.spec_changed("model", namespace, model, generation) and before == pool:
            return
        if before and before != pool:
            self.wake(namespace, before, replan=True)
        if pool:
            self.model_pools[key] = pool
            self.wake(namespace, pool, replan=True)

    def cache_event(
        self, kind: str, event: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
    ) -> bool:
        """Wake the pool workers a change in the cache concerns; return whether it was more
        than an agent's heartbeat (what other workers care about too)."""
        body = new if new is not None else old
        if body is None:
            return False
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        deleted = event == "DELETED"
        if kind == "serverpools":
            self.pool_changed(namespace, name, meta.get("generation"), deleted)
        elif kind == "models":
            self.model_changed(
                namespace,
                name,
                (body.get("spec") or {}).get("pool"),
                meta.get("generation"),
                deleted,
            )
            pool = (body.get("spec") or {}).get("pool")
            if pool and not deleted:
                # Status too: the rollout's stable/canary/previous versions are what servers hold.
                self.wake(namespace, str(pool))
        elif kind == "modelversions":
            if deleted or (old or {}).get("spec") != (new or {}).get("spec"):
                self.wake_namespace(namespace)
        elif kind == "serverassignments":
            if not assignment_changed(old, new) and not self.fleet.first_report(
                namespace, name, old
            ):
                return False
            pool = (body.get("spec") or {}).get("pool")
            if pool:
                self.wake(namespace, str(pool))
        elif kind == "pods":
            pool = (meta.get("labels") or {}).get(POOL_LABEL)
            if pool:
                self.wake(namespace, str(pool))
        elif kind == "nodes":
            # A node lost or back changes which servers are alive.
            if event != "MODIFIED" or _node_ready_status(old) != _node_ready_status(new):
                self.wake_all()
            else:
                return False
        metrics.WAKEUPS.labels(kind).inc()
        return True

    def wake_namespace(self, namespace: str) -> None:
        for key in list(self.workers):
            if key[0] == namespace:
                self.wake(*key)

    def wake_all(self, replan: bool = False) -> None:
        for key in list(self.workers):
            self.wake(*key, replan=replan)

    async def stop(self) -> None:
        tasks = [w.task for w in self.workers.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
