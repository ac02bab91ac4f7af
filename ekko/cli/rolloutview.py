"""What ``kubectl ekko`` shows and decides, as pure functions of API objects and times.

The plugin's I/O (:mod:`ekko.kube.rollouts`) fetches objects; this module renders them, picks the
ModelVersion a command acts on, refuses requests the operator would refuse, and judges whether a
``--wait`` has reached its goal. Nothing here reads a clock or talks to the API server, so every
rule is table-tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from ekko.api.resources import (
    REQUEST_ANNOTATION,
    REQUEST_AT_ANNOTATION,
    ROLLBACK_TO_ANNOTATION,
    CanaryStep,
    Model,
    ModelVersion,
    ModelVersionStatus,
    VersionWeight,
)
from ekko.api.units import parse_time
from ekko.rollout.machine import TERMINAL, Inputs, Observed, Request, Verb, decide
from ekko.rollout.observe import RoutingProgress

LIVE_PHASES = ("Pending", "Loading", "Progressing", "Paused")
"""Phases of a version a status line is about before the stable one: the rollout's holder and one
just applied and still waiting (Pending)."""
RETRYABLE = ("Aborted", "RolledBack", "Failed")
_CHECK_AT = "kubectl-ekko-refusal-check"
"""The request stamp of the dry run of the machine; never a real RFC 3339 time."""


class RefusedError(Exception):
    """A command the state does not allow; the message says why, in a few words."""


# -- picking objects ------------------------------------------------------------------------


def versions_of(model: str, versions: Iterable[ModelVersion]) -> list[ModelVersion]:
    """The model's ModelVersions, oldest first (by creation time, then name)."""
    far_past = datetime.min.replace(tzinfo=UTC)
    mine = [v for v in versions if v.spec.model == model]
    return sorted(mine, key=lambda v: (v.metadata.creation_timestamp or far_past, v.metadata.name))


def _phase(mv: ModelVersion) -> str:
    return mv.status.phase if mv.status else "Pending"


def _by_version(versions: Sequence[ModelVersion], version: str | None) -> ModelVersion | None:
    """The ModelVersion of a version name; a live one before a finished one, newest first."""
    if not version:
        return None
    matches = [v for v in versions if v.spec.version == version]
    live = [v for v in matches if _phase(v) not in TERMINAL]
    return (live or matches)[-1] if matches else None


def active_version(model: Model, versions: Sequence[ModelVersion]) -> ModelVersion | None:
    """The ModelVersion a status line is about: the canary's, a live one, the stable's, or the newest."""
    mine = versions_of(model.metadata.name, versions)
    status = model.status
    canary = _by_version(mine, status.canary_version if status else None)
    if canary is not None:
        return canary
    live = [v for v in mine if _phase(v) in LIVE_PHASES]
    if live:
        return live[-1]
    stable = _by_version(mine, stable_of(model))
    return stable or (mine[-1] if mine else None)


def stable_of(model: Model) -> str:
    return model.stable()


def choose_target(
    verb: Verb, model: Model, versions: Sequence[ModelVersion], to: str | None = None
) -> ModelVersion:
    """The ModelVersion a command acts on; raises RefusedError when there is none.

    Requests go to the canary's ModelVersion. A rollback with no canary in progress goes to the
    stable version's (promoted) ModelVersion; a retry to the newest aborted, rolled back or failed
    one.
    """
    name = model.metadata.name
    mine = versions_of(name, versions)
    status = model.status
    canary = status.canary_version if status else None
    if verb == "retry":
        done = [v for v in mine if _phase(v) in RETRYABLE]
        if not done:
            raise RefusedError(
                f"model {name} has no aborted, rolled back or failed rollout to retry"
            )
        return max(done, key=_finished_key)
    if canary:
        target = _by_version(mine, canary)
        if target is None:
            raise RefusedError(f"model {name} has canary {canary} but no ModelVersion of it")
        return target
    if verb != "rollback":
        raise RefusedError(
            f"model {name} has no rollout in progress (stable is {stable_of(model)})"
        )
    previous = status.previous_version if status else None
    if not previous:
        raise RefusedError(
            f"nothing to roll back to: model {name} has no canary in progress and no previous"
            " version loaded"
        )
    target = _by_version(mine, stable_of(model))
    if target is None or _phase(target) != "Promoted":
        raise RefusedError(
            f"nothing to roll back to: no promoted ModelVersion of {name}'s stable version"
            f" {stable_of(model)}"
        )
    if to and to != previous:
        raise RefusedError(f"version {to} is not loaded on {name}'s servers; only {previous} is")
    return target


def _finished_key(mv: ModelVersion) -> datetime:
    far_past = datetime.min.replace(tzinfo=UTC)
    status = mv.status
    return (status.finished_at if status else None) or mv.metadata.creation_timestamp or far_past


def check_request(
    verb: Verb, model: Model, mv: ModelVersion, now: datetime, to: str | None = None
) -> None:
    """Raise RefusedError when the operator would refuse the request in the current state.

    The rules are the rollout machine's own: the request is run through
    :func:`ekko.rollout.machine.decide` on a copy of the status, and a ``RequestRefused`` event is
    a refusal. The plugin only adds what it must judge before it flips routing itself (rollback
    targets). The decision's status says why (``requestRefused``), as the operator writes it.
    """
    status = mv.status or ModelVersionStatus()
    model_status = model.status
    if verb == "rollback" and status.phase not in TERMINAL and status.phase != "Pending":
        stable = stable_of(model)
        if to and to != stable:
            raise RefusedError(
                f"during a canary a rollback returns to the stable version {stable}, not {to}"
            )
    observed = Observed(
        model_exists=True,
        stable=stable_of(model),
        previous=model_status.previous_version if model_status else None,
        canary=model_status.canary_version if model_status else None,
        weights=tuple(model_status.weights) if model_status else (),
    )
    decision = decide(
        Inputs(
            spec=mv.spec,
            status=status.evolve(handled_request=""),
            observed=observed,
            now=now,
            request=Request(verb=verb, at=_CHECK_AT, at_time=now, to=to),
            name=mv.metadata.name,
        )
    )
    if decision.status.handled_request == _CHECK_AT and decision.status.request_refused:
        raise RefusedError(decision.status.request_refused)


def rollback_target(model: Model, mv: ModelVersion, to: str | None = None) -> str:
    """The version a rollback routes all traffic to."""
    status = model.status
    if _phase(mv) == "Promoted":
        target = to or (status.previous_version if status else None)
        if not target:
            raise RefusedError(
                f"nothing to roll back to: model {model.metadata.name} has no previous"
            )
        return target
    return stable_of(model)


def rollback_routing(target: str) -> dict[str, object]:
    """The Model status fields the plugin writes itself, so a rollback works without the operator."""
    return {"weights": [{"version": target, "weight": 100}], "canaryWeight": 0}


def request_annotations(verb: Verb, at: str, to: str | None = None) -> dict[str, str | None]:
    """The annotations of a request (a merge patch: None removes a stale rollback-to)."""
    return {
        REQUEST_ANNOTATION: verb,
        REQUEST_AT_ANNOTATION: at,
        ROLLBACK_TO_ANNOTATION: to if verb == "rollback" and to else None,
    }


def request_stamp(now: datetime, previous: str | None = None) -> str:
    """RFC 3339 UTC with microseconds; never equal to the previous request's (the operator acts
    once per distinct value)."""
    when = now.astimezone(UTC)
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    while stamp == previous:
        when += timedelta(microseconds=1)
        stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return stamp


def parse_stamp(text: str) -> datetime | None:
    """A request's RFC 3339 stamp; None when unreadable or without an offset."""
    return parse_time(text)


# -- rendering ------------------------------------------------------------------------------


def format_weights(weights: Iterable[VersionWeight]) -> str:
    """``v1 90% / v2 10%``; ``-`` when there are none."""
    text = " / ".join(f"{w.version} {w.weight}%" for w in weights)
    return text or "-"


def model_weights(model: Model) -> tuple[VersionWeight, ...]:
    """The weights agents apply: the status's, or everything on the stable version."""
    if model.status and model.status.weights:
        return tuple(model.status.weights)
    return (VersionWeight(version=stable_of(model), weight=100),)


def step_kind(step: CanaryStep) -> str:
    if step.set_weight is not None:
        return f"setWeight {step.set_weight}"
    if step.pause is not None:
        return f"pause {step.pause.duration}" if step.pause.duration else "pause (until promoted)"
    assert step.analysis is not None  # the CEL rule: exactly one of the three
    names = ", ".join(step.analysis.metrics) or "all metrics"
    return f"analysis ({names})"


def step_text(mv: ModelVersion) -> str:
    """``i/n kind`` of the step being run; ``n/n done`` once past the last."""
    steps = mv.spec.strategy.canary.steps if mv.spec.strategy else []
    if not steps:
        return "- (no strategy: promoted once loaded)"
    status = mv.status or ModelVersionStatus()
    i = status.current_step
    if i >= len(steps):
        return f"{len(steps)}/{len(steps)} done"
    return f"{i + 1}/{len(steps)} {step_kind(steps[i])}"


def analysis_lines(status: ModelVersionStatus) -> list[str]:
    """``error-rate: 3 ok, 0 failed, last 0.004`` per metric."""
    out = []
    for r in status.analysis:
        parts = [f"{r.successful} ok", f"{r.failed} failed"]
        if r.inconclusive:
            parts.append(f"{r.inconclusive} inconclusive")
        if r.errors:
            parts.append(f"{r.errors} errors")
        parts.append(f"last {r.last_value if r.last_value is not None else '-'}")
        out.append(f"{r.metric}: {', '.join(parts)} ({r.phase})")
    return out


def last_rollback(versions: Iterable[ModelVersion]) -> ModelVersion | None:
    """The ModelVersion rolled back most recently, if any."""
    done = [
        (v.status.rollback_requested_at, v)
        for v in versions
        if v.status is not None and v.status.rollback_requested_at is not None
    ]
    return max(done, key=lambda pair: pair[0])[1] if done else None


def _time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def rollback_text(mv: ModelVersion | None) -> str:
    if mv is None or mv.status is None or mv.status.rollback_requested_at is None:
        return "-"
    status = mv.status
    text = f"{_time(status.rollback_requested_at)} from {mv.spec.version}"
    if status.rollback_seconds is not None:
        text += f", applied on every server in {status.rollback_seconds:.3f}s"
    else:
        text += ", not yet applied on every server"
    return text


def phase_text(status: ModelVersionStatus) -> str:
    """The phase, and why a Paused rollout waits: a pause request, or a timed pause step (with
    when it goes on by itself)."""
    if status.paused_by_user:
        return f"{status.phase} (by request)"
    if status.phase == "Paused" and status.paused_until is not None:
        return f"{status.phase} (until {_time(status.paused_until)})"
    return status.phase


def render_model(model: Model, versions: Sequence[ModelVersion]) -> str:
    """The status table of one model."""
    mine = versions_of(model.metadata.name, versions)
    status = model.status
    mv = active_version(model, mine)
    mv_status = (mv.status if mv else None) or ModelVersionStatus()
    rows: list[tuple[str, str]] = [
        ("Model", f"{model.metadata.name} (namespace {model.metadata.namespace or '-'})"),
        ("Pool", model.spec.pool),
        ("Stable", stable_of(model)),
        ("Canary", (status.canary_version if status else None) or "-"),
        ("Previous", (status.previous_version if status else None) or "-"),
        ("Weights", format_weights(model_weights(model))),
        ("Replicas", f"{status.replicas_ready}/{status.replicas_wanted} ready" if status else "-"),
    ]
    if mv is None:
        rows.append(("Version", "- (no ModelVersion)"))
    else:
        rows += [
            ("Version", f"{mv.spec.version} ({mv.metadata.name})"),
            ("Phase", phase_text(mv_status)),
            ("Step", step_text(mv)),
            ("Weight", f"{mv_status.weight}%"),
            ("Servers", f"{mv_status.servers_loaded}/{mv_status.servers_wanted} loaded"),
        ]
        lines = analysis_lines(mv_status)
        rows += [("Analysis", line) for line in lines] or [("Analysis", "-")]
    rows.append(("Rollback", rollback_text(last_rollback(mine))))
    rows.append(("Message", mv_status.message or "-"))
    width = max(len(k) for k, _ in rows) + 2
    out = []
    last = ""
    for key, value in rows:
        label = f"{key}:" if key != last else ""
        out.append(f"{label:<{width}}{value}".rstrip())
        last = key
    return "\n".join(out) + "\n"


def render_list(models: Sequence[Model], versions: Sequence[ModelVersion]) -> str:
    """One line per model."""
    if not models:
        return ""
    header = ("MODEL", "STABLE", "CANARY", "WEIGHTS", "PHASE", "STEP", "SERVERS", "MESSAGE")
    rows = [header]
    for model in sorted(models, key=lambda m: m.metadata.name):
        mv = active_version(model, versions)
        st = (mv.status if mv else None) or ModelVersionStatus()
        status = model.status
        rows.append(
            (
                model.metadata.name,
                stable_of(model),
                (status.canary_version if status else None) or "-",
                format_weights(model_weights(model)).replace(" / ", ","),
                st.phase if mv else "-",
                step_text(mv).split(" ", 1)[0] if mv else "-",
                f"{st.servers_loaded}/{st.servers_wanted}" if mv else "-",
                (st.message or "-")[:80],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return "".join(
        "   ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True))
        + "   "
        + row[-1]
        + "\n"
        for row in rows
    )


# -- --wait ---------------------------------------------------------------------------------

WaitState = Literal["waiting", "reached", "failed"]


@dataclass(frozen=True)
class Progress:
    """Where a --wait stands; ``line`` is printed when it changes."""

    state: WaitState
    line: str


def describe(mv: ModelVersion) -> str:
    status = mv.status or ModelVersionStatus()
    return f"{status.phase}, step {step_text(mv)}, weight {status.weight}%" + (
        f": {status.message}" if status.message else ""
    )


def judge(verb: Verb, at: str, before: ModelVersionStatus, mv: ModelVersion | None) -> Progress:
    """Whether a request other than rollback has reached its goal.

    promote: moved past the step it was on (or Promoted); promote-full: Promoted; pause: Paused;
    resume: running again; abort: Aborted; retry: started over. The operator writes the request's
    stamp (``handledRequest``) in the same status as its result, so a handled request whose goal
    is not met was refused.
    """
    if mv is None:
        return Progress("failed", "the ModelVersion was deleted")
    status = mv.status or ModelVersionStatus()
    handled = status.handled_request == at
    phase = status.phase
    goals: dict[str, bool] = {
        "promote": phase == "Promoted"
        or (handled and status.current_step > before.current_step and phase != "Failed"),
        "promote-full": phase == "Promoted",
        "pause": handled and phase == "Paused",
        # Resumed into a timed pause step is resumed too (it goes on by itself).
        "resume": handled
        and not status.request_refused
        and phase not in TERMINAL
        and (phase != "Paused" or (status.paused_until is not None and not status.paused_by_user)),
        "abort": phase == "Aborted",
        "retry": handled and phase not in RETRYABLE,
    }
    if goals.get(verb, False):
        return Progress("reached", describe(mv))
    if phase == "Failed" and verb != "retry":
        return Progress("failed", f"the rollout failed: {status.message or 'no message'}")
    if phase in TERMINAL and verb in ("promote", "promote-full", "abort") and handled:
        return Progress("failed", f"the rollout ended {phase}: {status.message or 'no message'}")
    if handled:
        why = status.request_refused or "see kubectl describe modelversion " + mv.metadata.name
        return Progress("failed", f"the operator refused the request: {why}; {describe(mv)}")
    return Progress("waiting", describe(mv))


def rollback_summary(
    model: str,
    target: str,
    routing: RoutingProgress,
    requested_at: datetime | None,
    seen_at: datetime,
) -> str:
    """The measured rollback time: request to the last agent's ``appliedAt`` (what the operator
    records), and request to the poll that saw every server applied (an upper bound that does not
    depend on the agents' clocks or the resolution of their stamps)."""
    head = f"rolled back {model} to {target} on {routing.ready} servers"
    if requested_at is None:
        return head
    applied = routing.seconds_since(requested_at)
    seen = max(0.0, (seen_at - requested_at).total_seconds())
    stamp = (
        f"in {applied:.3f}s (request to the last agent's appliedAt)"
        if applied is not None
        else ("(the agents report no appliedAt)")
    )
    last = routing.last_applied_at
    if last is not None and last.microsecond == 0:
        stamp += " (appliedAt has whole seconds only)"
    return f"{head} {stamp}; seen applied on every server {seen:.3f}s after the request"


def judge_rollback(at: str, mv: ModelVersion | None, routing: RoutingProgress) -> Progress:
    """A rollback is reached when every ready server applies the new weights; it failed when the
    operator handled the request without rolling back (refused: the state changed meanwhile)."""
    line = f"applied on {routing.applied}/{routing.ready} servers"
    status = mv.status if mv else None
    if status and status.handled_request == at and status.phase != "RolledBack":
        why = status.request_refused or f"it is {status.phase}"
        return Progress("failed", f"the operator refused the rollback: {why}")
    if routing.ready == 0:
        return Progress("waiting", "no ready server holds the model")
    return Progress("reached" if routing.done else "waiting", line)


def operator_seconds(mv: ModelVersion | None, at: datetime | None) -> float | None:
    """The operator's measured rollback time, once it recorded this rollback."""
    status = mv.status if mv else None
    if status is None or status.phase != "RolledBack" or status.rollback_seconds is None:
        return None
    requested = status.rollback_requested_at
    if at is not None and requested is not None and abs((requested - at).total_seconds()) > 0.001:
        return None  # a rollback recorded from an earlier request is not this one's
    return status.rollback_seconds


# -- watching until a rollout ends, and machine-readable status --------------------------------

EXIT_BY_PHASE: dict[str, int] = {"Promoted": 0, "RolledBack": 1, "Failed": 1, "Aborted": 3}
"""Exit codes of `status --watch` when the watched rollout ends (2 is a timeout)."""


def watched_version(model: Model, versions: Sequence[ModelVersion]) -> ModelVersion | None:
    """The rollout `status --watch` follows to its end: the newest live one, else the newest
    (just applied and not yet seen by the operator counts as live: it is Pending)."""
    mine = versions_of(model.metadata.name, versions)
    live = [v for v in mine if _phase(v) not in TERMINAL]
    candidates = live or mine
    return candidates[-1] if candidates else None


def finished(mv: ModelVersion | None) -> int | None:
    """The exit code once the rollout is over, None while it goes on."""
    if mv is None:
        return None
    return EXIT_BY_PHASE.get(_phase(mv))


def status_document(model: Model, versions: Sequence[ModelVersion]) -> dict[str, object]:
    """`status -o json|yaml`: the same facts as the table, under stable names."""
    status = model.status
    mv = active_version(model, versions_of(model.metadata.name, versions))
    doc: dict[str, object] = {
        "model": model.metadata.name,
        "namespace": model.metadata.namespace,
        "pool": model.spec.pool,
        "stableVersion": stable_of(model),
        "canaryVersion": (status.canary_version if status else None) or None,
        "previousVersion": (status.previous_version if status else None) or None,
        "weights": [w.to_wire() for w in model_weights(model)],
        "replicasReady": status.replicas_ready if status else 0,
        "replicasWanted": status.replicas_wanted if status else 0,
        "rollout": None,
    }
    if mv is not None:
        doc["rollout"] = {
            "name": mv.metadata.name,
            "version": mv.spec.version,
            **(mv.status or ModelVersionStatus()).to_wire(),
        }
    return doc
