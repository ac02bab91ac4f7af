"""The rollout state machine: (spec, status, observations, measurements, request, now) -> decision.

One call moves a ModelVersion at most one transition (or one weight change) forward and says
what to write: the ModelVersion's new status, the Model's routing and version fields, events, and
when to look again. It reads no clock and does no I/O; the operator observes, measures, calls
this, and writes the result.

Routing lives in the Model's status (``weights``): every agent serving the model watches it, so a
rollback is one write that every server applies within a second. The previous stable version
stays loaded (``previousVersion``) so rolling back a promoted version needs no loading either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from ekko.api.meta import Condition, set_condition
from ekko.api.resources import (
    AnalysisMetric,
    AnalysisResult,
    CanaryStep,
    ModelStatus,
    ModelVersionSpec,
    ModelVersionStatus,
    Phase,
    RequestVerb,
    VersionWeight,
)
from ekko.api.units import parse_duration
from ekko.rollout.analysis import Measurement, due, record, seconds_until_due

TERMINAL: frozenset[Phase] = frozenset({"Promoted", "Aborted", "RolledBack", "Failed"})
Verb = RequestVerb
"""The verbs of a request (one Literal, in ``ekko.api.resources``, with ``REQUEST_VERBS``)."""
LOOK_AGAIN = 1.0
"""Seconds between passes while waiting on agents (their status changes also wake the worker)."""


@dataclass(frozen=True)
class Request:
    """A user's request from the ModelVersion's annotations (acted on once per ``at``)."""

    verb: Verb
    at: str
    at_time: datetime | None = None
    to: str | None = None
    problem: str | None = None
    """Why the request cannot be acted on (an unknown verb, no stamp); answered with an event."""


@dataclass(frozen=True)
class Observed:
    """What the operator saw of the model and its servers."""

    model_exists: bool
    stable: str | None
    previous: str | None = None
    canary: str | None = None
    weights: tuple[VersionWeight, ...] = ()
    other_active: str | None = None
    servers_wanted: int = 0
    servers_loaded: int = 0
    load_error: str | None = None
    routing_applied: bool = False
    routing_applied_at: datetime | None = None


@dataclass(frozen=True)
class ModelPatch:
    """A change to the rollout worker's fields of the Model's status (None: as observed; ""
    clears a version)."""

    weights: tuple[VersionWeight, ...] | None = None
    canary: str | None = None
    stable: str | None = None
    previous: str | None = None

    def applied_to(self, observed: Observed) -> ModelStatus:
        """The rollout worker's whole part of the Model's status once this change is made
        (``ModelStatus.OWNERS["rollout-worker"]``): what it sends, since a server-side apply
        removes a field its manager leaves out."""

        def pick(new: str | None, old: str | None) -> str | None:
            return (new or None) if new is not None else old

        weights = self.weights if self.weights is not None else observed.weights
        canary = pick(self.canary, observed.canary)
        return ModelStatus(
            stable_version=pick(self.stable, observed.stable),
            canary_version=canary,
            previous_version=pick(self.previous, observed.previous),
            weights=list(weights),
            canary_weight=next((w.weight for w in weights if canary and w.version == canary), 0),
        )


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class Decision:
    status: ModelVersionStatus
    model: ModelPatch | None = None
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    outcome: Literal["Promoted", "Aborted", "RolledBack", "Failed"] | None = None
    rollback_seconds: float | None = None


@dataclass(frozen=True)
class Inputs:
    spec: ModelVersionSpec
    status: ModelVersionStatus
    observed: Observed
    now: datetime
    measurements: tuple[Measurement, ...] = ()
    request: Request | None = None
    name: str = ""
    generation: int | None = None


def split(stable: str, canary: str, weight: int) -> tuple[VersionWeight, ...]:
    """Weights for stable and canary at a canary weight (a version at 0% is left out)."""
    out = []
    if weight < 100:
        out.append(VersionWeight(version=stable, weight=100 - weight))
    if weight > 0:
        out.append(VersionWeight(version=canary, weight=weight))
    return tuple(out)


def metrics_due(spec: ModelVersionSpec, status: ModelVersionStatus, now: datetime) -> list[str]:
    """Names of the analysis metrics to measure before the next decision."""
    step = _step(spec, status)
    if status.phase != "Progressing" or step is None or step.analysis is None:
        return []
    results = _step_results(status)
    since = status.step_started_at or now
    return [m.name for m in _step_metrics(spec, step) if due(m, results.get(m.name), now, since)]


def _step_results(status: ModelVersionStatus) -> dict[str, AnalysisResult]:
    """The tallies taken in the current step. A tally measured at or before the step began belongs
    to an earlier analysis step: each analysis step judges the canary at its own weight from
    nothing (an earlier step's "Successful" once passed a later step unmeasured)."""
    began = status.step_started_at
    return {
        r.metric: r
        for r in status.analysis
        if began is None or (r.last_measured is not None and r.last_measured > began)
    }


def decide(inp: Inputs) -> Decision:
    """The next transition of a ModelVersion, with its conditions brought up to date."""
    decision = _decide(inp)
    status = decision.status
    if status.phase != "Paused" and status.paused_until is not None:
        status = status.evolve(paused_until=None)  # only a timed pause in progress has one
    return replace(
        decision,
        status=status.evolve(conditions=conditions_of(status, inp.generation, inp.now)),
    )


def conditions_of(
    status: ModelVersionStatus, generation: int | None, now: datetime
) -> list[Condition]:
    """Kubernetes conditions that say where a rollout is, for `kubectl wait --for=condition=…`:

    - Progressing: True while it loads or walks its steps; False when paused or finished.
    - Paused: True while it waits for a person (a manual pause step, inconclusive analysis, or a
      pause request) or for the end of a timed pause step (reason TimedPause; ``pausedUntil``).
    - Healthy / Degraded: whether the canary has failed (failed analysis or load, rolled back).
    - Completed: True once it reached a terminal phase; the reason is that phase (Promoted,
      RolledBack, Aborted or Failed), so a pipeline can wait for Completed, then read why.
    """
    phase = status.phase
    failed = phase in ("RolledBack", "Failed") or any(
        r.phase in ("Failed", "Error") for r in status.analysis
    )
    reason_paused = (
        "PausedByUser"
        if status.paused_by_user
        else "TimedPause"
        if status.paused_until is not None
        else "AnalysisInconclusive"
        if any(r.phase == "Inconclusive" for r in status.analysis)
        else "ManualStep"
    )
    wanted = [
        (
            "Progressing",
            phase in ("Pending", "Loading", "Progressing"),
            reason_paused if phase == "Paused" else phase,
        ),
        ("Paused", phase == "Paused", reason_paused if phase == "Paused" else phase),
        ("Healthy", not failed, phase if failed else "NoFailures"),
        ("Degraded", failed, phase if failed else "NoFailures"),
        ("Completed", phase in TERMINAL, phase),
    ]
    out = list(status.conditions)
    for kind, holds, reason in wanted:
        out = set_condition(
            out,
            Condition(
                type=kind,
                status="True" if holds else "False",
                reason=reason,
                message=status.message[:1024],
                observed_generation=generation,
            ),
            now,
        )
    return out


def _decide(inp: Inputs) -> Decision:
    status = inp.status.evolve(**{"observed_generation": inp.generation})
    request = inp.request if inp.request and inp.request.at != status.handled_request else None
    if request is not None:
        status = status.evolve(**{"handled_request": request.at, "request_refused": ""})
        if request.problem is not None:
            event = Event("RequestRefused", f"Ignored a request: {request.problem}.", True)
            status = status.evolve(**{"request_refused": request.problem})
            return Decision(status, events=(event,), requeue_after=0.0)
        handled = _on_request(inp, status, request)
        if handled is not None:
            return handled
    if status.phase in TERMINAL:
        return _terminal(inp, status)
    if status.phase == "Pending":
        return _pending(inp, status)
    if status.phase == "Loading":
        return _loading(inp, status)
    if status.phase == "Paused" and (status.paused_until is None or status.paused_by_user):
        return Decision(status)  # waits for a person
    return _progressing(inp, status)


# -- phases ---------------------------------------------------------------------------------


def _pending(inp: Inputs, status: ModelVersionStatus) -> Decision:
    obs = inp.observed
    if not obs.model_exists:
        return _fail(inp, status, f"model {inp.spec.model} does not exist in this namespace")
    if obs.other_active:
        message = f"waiting for the rollout of {obs.other_active} to finish"
        return Decision(status.evolve(**{"message": message}), requeue_after=5.0)
    if obs.stable == inp.spec.version:
        return Decision(
            status.evolve(
                **{"phase": "Promoted", "weight": 100, "message": "already the stable version"}
            ),
            outcome="Promoted",
        )
    update = {
        "phase": "Loading",
        "started_at": inp.now,
        "current_step": 0,
        "weight": 0,
        "analysis": [],
        "message": f"loading {inp.spec.version} next to {obs.stable} on every server of the model",
        "rollback_requested_at": None,
        "rollback_completed_at": None,
        "rollback_seconds": None,
        "finished_at": None,
    }
    # The canary takes the place of a resident previous version (memory was reserved for one).
    return Decision(
        status.evolve(**update),
        model=ModelPatch(canary=inp.spec.version, previous=""),
        events=(Event("Loading", f"Started loading {inp.spec.version} of {inp.spec.model}."),),
        requeue_after=LOOK_AGAIN,
    )


def _loading(inp: Inputs, status: ModelVersionStatus) -> Decision:
    obs = inp.observed
    counts = {"servers_loaded": obs.servers_loaded, "servers_wanted": obs.servers_wanted}
    if obs.load_error:
        failed = _fail(inp, status.evolve(**counts), f"loading failed: {obs.load_error}")
        return _with_model(failed, ModelPatch(canary=""))
    if obs.servers_wanted == 0 or obs.servers_loaded < obs.servers_wanted:
        message = f"loaded on {obs.servers_loaded} of {obs.servers_wanted} servers"
        return Decision(status.evolve(**counts | {"message": message}), requeue_after=LOOK_AGAIN)
    update = counts | {
        "phase": "Progressing",
        "current_step": 0,
        "step_started_at": inp.now,
        "message": f"loaded on all {obs.servers_wanted} servers",
    }
    return Decision(
        status.evolve(**update),
        events=(Event("Loaded", f"Loaded {inp.spec.version} on {obs.servers_wanted} servers."),),
        requeue_after=0.0,
    )


def _progressing(inp: Inputs, status: ModelVersionStatus) -> Decision:
    spec, obs = inp.spec, inp.observed
    stable = obs.stable or ""
    step = _step(spec, status)
    if step is None:
        return _promote(inp, status)
    if step.set_weight is not None:
        want = split(stable, spec.version, step.set_weight)
        if tuple(obs.weights) != want:
            return Decision(
                status.evolve(
                    **{
                        "weight": step.set_weight,
                        "message": f"routing {step.set_weight}% to {spec.version}",
                    }
                ),
                model=ModelPatch(weights=want, canary=spec.version),
                events=(
                    Event(
                        "WeightSet", f"Set {spec.version} to {step.set_weight}% of {spec.model}."
                    ),
                ),
                requeue_after=LOOK_AGAIN,
            )
        if not obs.routing_applied:
            return Decision(status, requeue_after=LOOK_AGAIN)
        return _next_step(inp, status)
    if step.pause is not None:
        if step.pause.duration is None:
            message = f"paused at step {status.current_step}; run `kubectl ekko promote {spec.model}` to continue"
            return Decision(
                status.evolve(**{"phase": "Paused", "message": message}),
                events=(
                    Event("Paused", f"Paused {spec.version} at {status.weight}% until promoted."),
                ),
            )
        started = status.step_started_at or inp.now
        until = started + timedelta(seconds=parse_duration(step.pause.duration))
        left = (until - inp.now).total_seconds()
        if left <= 0:
            return _next_step(inp, status)
        if status.phase == "Paused" and status.paused_until == until:
            return Decision(status, requeue_after=left)
        message = (
            f"paused at step {status.current_step} for {step.pause.duration}, until "
            f"{until.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}; `kubectl ekko promote {spec.model}` "
            "continues now"
        )
        return Decision(
            status.evolve(phase="Paused", paused_until=until, message=message),
            events=(
                Event(
                    "Paused",
                    f"Paused {spec.version} at {status.weight}% for {step.pause.duration}.",
                ),
            ),
            requeue_after=left,
        )
    return _analyse(inp, status, step)


def _analyse(inp: Inputs, status: ModelVersionStatus, step: CanaryStep) -> Decision:
    spec = inp.spec
    assert step.analysis is not None
    metrics = _step_metrics(spec, step)
    results = _step_results(status)
    for m in inp.measurements:
        metric = next((x for x in metrics if x.name == m.metric), None)
        if metric is not None:
            results[m.metric] = record(metric, results.get(m.metric), m, status.step_started_at)
    # Earlier steps' tallies of metrics this step does not measure stay visible.
    shown = {r.metric: r for r in status.analysis} | results
    status = status.evolve(analysis=[shown[k] for k in sorted(shown)])
    mine = [results.get(m.name) for m in metrics]
    failed = [r for r in mine if r is not None and r.phase in ("Failed", "Error")]
    if failed:
        r = failed[0]
        why = f"analysis {r.metric} {r.phase.lower()}: {r.failed} failed, {r.errors} errors, last value {r.last_value}"
        return _roll_back(inp, status, why, requested_at=inp.now, automatic=True)
    inconclusive = [r for r in mine if r is not None and r.phase == "Inconclusive"]
    if inconclusive:
        r = inconclusive[0]
        message = f"analysis {r.metric} inconclusive (last value {r.last_value}); paused: promote to continue or abort"
        return Decision(
            status.evolve(**{"phase": "Paused", "message": message}),
            events=(Event("AnalysisInconclusive", f"Paused {spec.version}: {message}.", True),),
        )
    elapsed = (inp.now - (status.step_started_at or inp.now)).total_seconds()
    window = parse_duration(step.analysis.duration) if step.analysis.duration else None
    done = all(
        r is not None
        and (
            r.phase == "Successful"
            or (window is not None and elapsed >= window and r.successful > 0)
            or (window is None and metric.count is None and r.successful >= 1)
        )
        for r, metric in zip(mine, metrics, strict=True)
    )
    if done:
        return _next_step(
            inp,
            status,
            events=(
                Event("AnalysisPassed", f"Analysis passed for {spec.version} at {status.weight}%."),
            ),
        )
    since = status.step_started_at or inp.now
    wait = min(
        (seconds_until_due(m, results.get(m.name), inp.now, since) for m in metrics),
        default=LOOK_AGAIN,
    )
    return Decision(status.evolve(**{"message": "analysing"}), requeue_after=max(wait, 0.05))


def _next_step(inp: Inputs, status: ModelVersionStatus, events: tuple[Event, ...] = ()) -> Decision:
    update = {
        "current_step": status.current_step + 1,
        "step_started_at": inp.now,
        "phase": "Progressing",
        "paused_by_user": False,
    }
    return Decision(status.evolve(**update), events=events, requeue_after=0.0)


def _promote(inp: Inputs, status: ModelVersionStatus) -> Decision:
    spec, obs = inp.spec, inp.observed
    keep = spec.keep_previous == "UntilNextVersion" and obs.stable and obs.stable != spec.version
    patch = ModelPatch(
        weights=(VersionWeight(version=spec.version, weight=100),),
        canary="",
        stable=spec.version,
        previous=obs.stable if keep else "",
    )
    update = {
        "phase": "Promoted",
        "weight": 100,
        "finished_at": inp.now,
        "message": f"promoted; {obs.stable} stays loaded for rollback" if keep else "promoted",
    }
    return Decision(
        status.evolve(**update),
        model=patch,
        events=(Event("Promoted", f"Promoted {spec.version} of {spec.model}."),),
        outcome="Promoted",
    )


def _roll_back(
    inp: Inputs,
    status: ModelVersionStatus,
    why: str,
    *,
    requested_at: datetime,
    automatic: bool,
    to: str | None = None,
) -> Decision:
    """Flip routing to the stable version (or, for a promoted version, back to the previous one)."""
    spec, obs = inp.spec, inp.observed
    if status.phase == "Promoted":
        target = to or obs.previous
        patch = ModelPatch(
            weights=(VersionWeight(version=target or "", weight=100),),
            stable=target,
            previous="",
            canary="",
        )
    else:
        target = obs.stable
        patch = ModelPatch(weights=(VersionWeight(version=target or "", weight=100),), canary="")
    update = {
        "phase": "RolledBack",
        "weight": 0,
        "rollback_requested_at": requested_at,
        "rollback_completed_at": None,
        "rollback_seconds": None,
        "finished_at": inp.now,
        "message": f"rolled back to {target}: {why}",
    }
    return Decision(
        status.evolve(**update),
        model=patch,
        events=(
            Event(
                "RolledBack" if automatic else "RollbackRequested",
                f"Rolled {spec.model} back from {spec.version} to {target}: {why}.",
                True,
            ),
        ),
        requeue_after=0.2,
        outcome="RolledBack",
    )


def _terminal(inp: Inputs, status: ModelVersionStatus) -> Decision:
    obs = inp.observed
    if (
        status.phase == "RolledBack"
        and status.rollback_completed_at is None
        and status.rollback_requested_at is not None
        and obs.routing_applied
        and not any(w.version == inp.spec.version and w.weight > 0 for w in obs.weights)
    ):
        done = obs.routing_applied_at or inp.now
        seconds = max(0.0, (done - status.rollback_requested_at).total_seconds())
        update = {"rollback_completed_at": done, "rollback_seconds": round(seconds, 3)}
        return Decision(
            status.evolve(**update),
            events=(
                Event("RollbackApplied", f"Every server applied the rollback in {seconds:.2f}s."),
            ),
            rollback_seconds=seconds,
        )
    if status.phase == "RolledBack" and status.rollback_completed_at is None:
        return Decision(status, requeue_after=LOOK_AGAIN)
    return Decision(status)


REQUEST_CLOCK_SKEW = 5.0
"""Seconds a request's stamp may lie in the operator's future (clocks of two machines)."""
REQUEST_MAX_AGE = 3600.0
"""Seconds a request's stamp may lie in the past and still be where a rollback is timed from."""


def plausible_request_time(at: datetime | None, now: datetime) -> datetime:
    """When a request was made, for measuring a rollback: the user's stamp when plausible, else
    the operator's own clock (a stamp in the future or at the epoch once gave "rolled back in
    0.00 s" or "in 1795962338 s")."""
    if at is None or at.tzinfo is None:
        return now
    ahead = (at - now).total_seconds()
    if ahead > REQUEST_CLOCK_SKEW or -ahead > REQUEST_MAX_AGE:
        return now
    return min(at, now)


class _RefusedError(Exception):
    """A request the rollout's state does not allow; the message says why."""


def _on_request(inp: Inputs, status: ModelVersionStatus, request: Request) -> Decision | None:
    """Act on a user request (one function per verb); None when the request leaves the normal
    flow to go on. A refusal is an event and ``status.requestRefused``."""
    handler = _VERBS.get(request.verb)
    if handler is None:
        return None
    if status.phase in TERMINAL and request.verb not in ("retry", "rollback"):
        why = f"the rollout is {status.phase}"
    else:
        try:
            return handler(inp, status, request)
        except _RefusedError as err:
            why = str(err)
    return Decision(
        status.evolve(**{"request_refused": why}),
        events=(
            Event(
                "RequestRefused",
                f"Refused {request.verb} of {inp.spec.version}: {why}.",
                True,
            ),
        ),
    )


def _request_rollback(inp: Inputs, status: ModelVersionStatus, request: Request) -> Decision:
    phase = status.phase
    if phase == "Promoted":
        if not (request.to or inp.observed.previous):
            raise _RefusedError("no previous version is still loaded to roll back to")
        if request.to and request.to != inp.observed.previous:
            raise _RefusedError(
                f"version {request.to} is not loaded; only {inp.observed.previous or 'none'} is"
            )
    elif phase in TERMINAL:
        raise _RefusedError(f"the rollout is already {phase}")
    elif phase == "Pending":
        raise _RefusedError("nothing has been routed to it yet")
    return _roll_back(
        inp,
        status,
        "requested",
        requested_at=plausible_request_time(request.at_time, inp.now),
        automatic=False,
        to=request.to,
    )


def _request_retry(inp: Inputs, status: ModelVersionStatus, request: Request) -> Decision:
    if status.phase not in ("Aborted", "RolledBack", "Failed"):
        raise _RefusedError(
            "only an aborted, rolled back or failed rollout can be retried, "
            f"this one is {status.phase}"
        )
    reset = status.evolve(**{"phase": "Pending", "message": "retrying", "analysis": []})
    return Decision(
        reset,
        events=(Event("Retrying", f"Retrying the rollout of {inp.spec.version}."),),
        requeue_after=0.0,
    )


def _request_abort(inp: Inputs, status: ModelVersionStatus, request: Request) -> Decision:
    patch = ModelPatch(
        weights=(VersionWeight(version=inp.observed.stable or "", weight=100),), canary=""
    )
    update = {
        "phase": "Aborted",
        "weight": 0,
        "finished_at": inp.now,
        "message": "aborted by request",
    }
    return Decision(
        status.evolve(**update),
        model=patch,
        events=(
            Event(
                "Aborted",
                f"Aborted {inp.spec.version}; all traffic back on {inp.observed.stable}.",
                True,
            ),
        ),
        outcome="Aborted",
    )


def _request_pause(inp: Inputs, status: ModelVersionStatus, request: Request) -> Decision:
    update = {"phase": "Paused", "paused_by_user": True, "message": "paused by request"}
    return Decision(
        status.evolve(**update),
        events=(Event("Paused", f"Paused {inp.spec.version} by request."),),
    )


def _request_resume(inp: Inputs, status: ModelVersionStatus, request: Request) -> Decision:
    if status.phase != "Paused":
        raise _RefusedError(f"it is {status.phase}, not Paused")
    if not status.paused_by_user and status.paused_until is not None:
        raise _RefusedError(
            "it is in a timed pause step and goes on by itself; promote continues now"
        )
    if not status.paused_by_user:
        raise _RefusedError("it waits for promote, not resume")
    update = {"phase": "Progressing", "paused_by_user": False, "message": "resumed"}
    return Decision(status.evolve(**update), requeue_after=0.0)


def _request_promote(inp: Inputs, status: ModelVersionStatus, request: Request) -> Decision:
    if status.phase in ("Pending", "Loading"):
        raise _RefusedError(f"it is still {status.phase}")
    if request.verb == "promote-full":
        return _promote(inp, status)
    step = _step(inp.spec, status)
    if status.phase != "Paused" and (
        step is None or (step.pause is None and step.analysis is None)
    ):
        raise _RefusedError("the current step is not a pause or an analysis")
    text = f"Moved {inp.spec.version} past step {status.current_step} by request."
    return _next_step(inp, status, events=(Event("Promoted", text),))


_VERBS: dict[str, Callable[[Inputs, ModelVersionStatus, Request], Decision]] = {
    "rollback": _request_rollback,
    "retry": _request_retry,
    "abort": _request_abort,
    "pause": _request_pause,
    "resume": _request_resume,
    "promote": _request_promote,
    "promote-full": _request_promote,
}


# -- helpers --------------------------------------------------------------------------------


def _fail(inp: Inputs, status: ModelVersionStatus, why: str) -> Decision:
    update = {"phase": "Failed", "message": why, "finished_at": inp.now, "weight": 0}
    return Decision(
        status.evolve(**update),
        events=(Event("Failed", f"Rollout of {inp.spec.version} failed: {why}.", True),),
        outcome="Failed",
    )


def _with_model(decision: Decision, patch: ModelPatch) -> Decision:
    return Decision(
        decision.status,
        patch,
        decision.events,
        decision.requeue_after,
        decision.outcome,
        decision.rollback_seconds,
    )


def _step(spec: ModelVersionSpec, status: ModelVersionStatus) -> CanaryStep | None:
    steps = spec.strategy.canary.steps if spec.strategy else []
    return steps[status.current_step] if status.current_step < len(steps) else None


def _step_metrics(spec: ModelVersionSpec, step: CanaryStep) -> list[AnalysisMetric]:
    assert step.analysis is not None
    names = step.analysis.metrics
    return [m for m in spec.analysis if not names or m.name in names]


__all__ = [
    "AnalysisResult",
    "Decision",
    "Event",
    "Inputs",
    "ModelPatch",
    "Observed",
    "Request",
    "decide",
    "metrics_due",
    "split",
]
