"""Turn the API objects around a ModelVersion into the machine's observations (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from ekko.api.resources import (
    REQUEST_ANNOTATION,
    REQUEST_AT_ANNOTATION,
    REQUEST_VERBS,
    ROLLBACK_TO_ANNOTATION,
    Model,
    ModelVersion,
    ServerAssignment,
    VersionWeight,
)
from ekko.api.units import parse_time
from ekko.rollout.machine import Observed, Request

HOLDING_PHASES = ("Loading", "Progressing", "Paused")
"""Phases in which a version holds its model's rollout: another version must wait (a Pending one
is waiting its turn itself)."""


def current_weights(model: Model) -> tuple[VersionWeight, ...]:
    """The routing weights agents should apply: the status's, or all on the stable version."""
    status = model.status
    if status and status.weights:
        return tuple(status.weights)
    return (VersionWeight(version=model.stable(), weight=100),)


@dataclass(frozen=True)
class RoutingProgress:
    """How far a rollback's weights have reached the model's ready servers."""

    applied: int
    ready: int
    last_applied_at: datetime | None
    pending: tuple[str, ...]

    @property
    def done(self) -> bool:
        return self.ready > 0 and self.applied == self.ready

    def seconds_since(self, requested_at: datetime) -> float | None:
        if self.last_applied_at is None:
            return None
        return max(0.0, (self.last_applied_at - requested_at).total_seconds())


def _weight_set(weights: Iterable[VersionWeight]) -> frozenset[tuple[str, int]]:
    return frozenset((w.version, w.weight) for w in weights if w.weight > 0)


def routing_progress(
    model: str, want: Sequence[VersionWeight], servers: Sequence[tuple[ServerAssignment, bool]]
) -> RoutingProgress:
    """Ready servers of the model whose agent reports ``want`` applied (as the operator judges it)."""
    target = _weight_set(want)
    applied = 0
    ready = 0
    last: datetime | None = None
    pending = []
    for assignment, is_ready in servers:
        if not is_ready:
            continue
        ready += 1
        routing = next(
            (
                r
                for r in (assignment.status.routing if assignment.status else [])
                if r.model == model
            ),
            None,
        )
        if routing is None or _weight_set(routing.weights) != target:
            pending.append(assignment.metadata.name)
            continue
        applied += 1
        if routing.applied_at is not None and (last is None or routing.applied_at > last):
            last = routing.applied_at
    return RoutingProgress(applied, ready, last, tuple(sorted(pending)))


def observe(
    version: ModelVersion,
    model: Model | None,
    siblings: list[ModelVersion],
    servers: list[tuple[ServerAssignment, bool]],
) -> Observed:
    """What the rollout machine needs to know; ``servers`` are the model's, with pod readiness."""
    if model is None:
        return Observed(model_exists=False, stable=None)
    status = model.status
    name = version.metadata.name
    mine = version.spec.version
    others = [
        s.metadata.name
        for s in siblings
        if s.metadata.name != name
        and s.spec.model == model.metadata.name
        and s.status is not None
        and s.status.phase in HOLDING_PHASES
    ]
    if status and status.canary_version and status.canary_version != mine:
        # Siblings are the namespace's versions of every model: another model's "v2" is not
        # this canary's owner.
        owner = next(
            (
                s.metadata.name
                for s in siblings
                if s.spec.model == model.metadata.name and s.spec.version == status.canary_version
            ),
            None,
        )
        others.append(owner or status.canary_version)
    weights = current_weights(model)
    loaded = 0
    errors = []
    for assignment, ready in servers:
        shards = {
            (s.model, s.shard)
            for s in assignment.spec.shards
            if s.model == model.metadata.name and not s.drain
        }
        have = assignment.status.loaded if assignment.status else []
        held = {(s.model, s.shard) for s in have if s.version == mine}
        if ready and shards <= held:
            loaded += 1
        failures = [
            f
            for f in (assignment.status.failed if assignment.status else [])
            if f.model == model.metadata.name and f.version == mine
        ]
        if failures:
            first = failures[0]
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            errors.append(
                f"{assignment.metadata.name}: shard {first.shard} of {mine} failed to load: "
                f"{first.error}{more}"
            )
    routing = routing_progress(model.metadata.name, weights, servers)
    return Observed(
        model_exists=True,
        stable=model.stable(),
        previous=status.previous_version if status else None,
        canary=status.canary_version if status else None,
        weights=weights if status and status.weights else (),
        other_active=sorted(set(others))[0] if others else None,
        servers_wanted=len(servers),
        servers_loaded=loaded,
        load_error=errors[0][:500] if errors else None,
        routing_applied=routing.done,
        routing_applied_at=routing.last_applied_at,
    )


REQUEST_KEY_LENGTH = 100
"""Longest request stamp kept as the handled-request key (status.handledRequest holds 128)."""


def request_of(version: ModelVersion) -> Request | None:
    """The user's request in the annotations. A malformed one is returned with its ``problem``
    (so it is answered with an event once), never silently ignored; None when there is none."""
    notes = version.metadata.annotations
    verb = notes.get(REQUEST_ANNOTATION, "")
    at = notes.get(REQUEST_AT_ANNOTATION, "")
    if not verb and not at:
        return None
    key = at[:REQUEST_KEY_LENGTH] or f"no-stamp:{verb[:40]}"
    if verb not in REQUEST_VERBS:
        return Request(
            verb="pause",  # never acted on: the problem is answered instead
            at=key,
            problem=f"unknown request {verb[:40]!r} in {REQUEST_ANNOTATION}; "
            f"use one of {', '.join(REQUEST_VERBS)} (kubectl ekko writes them)",
        )
    if not at:
        return Request(
            verb=verb,
            at=key,
            problem=f"{verb} has no {REQUEST_AT_ANNOTATION} stamp (RFC 3339, unique per request; "
            "kubectl ekko writes it)",
        )
    if len(at) > REQUEST_KEY_LENGTH:
        return Request(
            verb=verb,
            at=key,
            problem=f"{REQUEST_AT_ANNOTATION} is {len(at)} characters long; give an RFC 3339 time",
        )
    when = parse_time(at)  # None for a naive time (no instant): the operator's clock times it
    return Request(verb=verb, at=at, at_time=when, to=notes.get(ROLLBACK_TO_ANNOTATION) or None)
