"""Status of pools and models, computed from the observed state and the desired placement.

Statuses are returned as the api types and serialised once, where they are written. A Model's
status has three writers; the pool worker's part is only ``ModelStatus.OWNERS["pool-worker"]``
(counts, ``ready``, conditions): routing and versions are the rollout worker's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ekko.api.meta import Condition, set_condition
from ekko.api.resources import Model, ModelStatus, PlanSummary, ServerPoolStatus
from ekko.planning.converge import Desired
from ekko.planning.state import PoolState


def model_counts(state: PoolState, desired: Desired, model: Model) -> tuple[int, int, int]:
    """(wanted, placed, ready) shard replicas of the model's first resident version."""
    name = model.metadata.name
    shards = model.spec.shards
    count = len(shards.items) if shards.items is not None else (shards.count or 0)
    wanted = count * model.spec.replicas
    placed = sum(1 for keys in desired.servers.values() for m, _ in keys if m == name)
    version = state.versions(model)[0].version
    ready = 0
    for server in state.servers:
        if not server.serving:
            continue
        target = desired.servers.get(server.name, frozenset())
        ready += sum(
            1 for m, i, v in server.loaded if m == name and v == version and (m, i) in target
        )
    return wanted, placed, ready


def model_status(
    state: PoolState,
    desired: Desired,
    model: Model,
    now: datetime,
    unplaceable: str = "",
) -> ModelStatus:
    """The pool worker's part of a Model's status (``ModelStatus.OWNERS["pool-worker"]``); the
    rollout fields are left unset: the rollout worker owns them, even the stable version of a
    model that never had a rollout (see :func:`initial_stable`)."""
    wanted, placed, ready = model_counts(state, desired, model)
    old = list(model.status.conditions) if model.status else []
    gen = model.metadata.generation
    if unplaceable:
        cond = Condition(
            type="Ready",
            status="False",
            reason="Unplaceable",
            message=unplaceable,
            observed_generation=gen,
        )
    elif ready >= wanted and placed >= wanted:
        cond = Condition(
            type="Ready",
            status="True",
            reason="AllReplicasReady",
            message=f"{ready} shard replicas loaded",
            observed_generation=gen,
        )
    else:
        cond = Condition(
            type="Ready",
            status="False",
            reason="Loading" if placed >= wanted else "Placing",
            message=f"{ready} of {wanted} shard replicas loaded",
            observed_generation=gen,
        )
    return ModelStatus(
        observed_generation=gen,
        replicas_wanted=wanted,
        replicas_placed=placed,
        replicas_ready=ready,
        ready=f"{ready}/{wanted}",
        conditions=set_condition(old, cond, now),
    )


def orphan_status(model: Model, message: str, now: datetime) -> ModelStatus:
    """The pool worker's part of the status of a model whose pool does not exist: nothing placed
    or ready, not Ready and Degraded (``PoolNotFound``)."""
    wanted = model.status.replicas_wanted if model.status else 0
    return ModelStatus(
        observed_generation=model.metadata.generation,
        replicas_wanted=wanted,
        replicas_placed=0,
        replicas_ready=0,
        ready=f"0/{wanted}",
        conditions=[
            Condition.model_validate(c)
            for c in failure_conditions("PoolNotFound", message, None, now)
        ],
    )


def initial_stable(model: Model) -> str | None:
    """The stable version to record for a model no rollout has touched yet (its spec's version),
    None once the status has one. The pool worker writes it without taking the field over (a
    non-forced apply under a manager of its own): the API server refuses it once the rollout
    worker has set another value, so it can never undo a promote."""
    if model.status and model.status.stable_version:
        return None
    return model.spec.version


def pool_status(
    state: PoolState,
    desired: Desired,
    plan: PlanSummary | None,
    now: datetime,
    problem: str = "",
    *,
    problem_reason: str = "PlanFailed",
) -> ServerPoolStatus:
    """A ServerPool's status: servers wanted and ready, the last plan, conditions; ``problem``
    (with its one-word reason) makes it Degraded."""
    pool = state.pool
    ready_servers = sum(1 for s in state.servers if s.name in desired.servers and s.serving)
    wanted_servers = len(desired.servers)
    pending = sum(
        1
        for s in state.servers
        if any(x.drain for x in s.spec_shards) or (s.name not in desired.servers and s.alive)
    )
    converged = ready_servers == wanted_servers and pending == 0
    stuck = [s for s in state.servers if s.unschedulable and s.name in desired.servers]
    old = list(pool.status.conditions) if pool.status else []
    gen = pool.metadata.generation
    message = f"{ready_servers}/{wanted_servers} servers ready"
    if stuck:
        message += (
            f"; {len(stuck)} server pod(s) Pending, not schedulable: {stuck[0].name}: "
            f"{stuck[0].unschedulable}"
        )
    conditions = set_condition(
        old,
        Condition(
            type="Ready",
            status="True" if converged and not problem else "False",
            reason="Converged" if converged else "Unschedulable" if stuck else "Migrating",
            message=message[:4000],
            observed_generation=gen,
        ),
        now,
    )
    conditions = set_condition(
        conditions,
        Condition(
            type="Degraded",
            status="True" if problem else "False",
            reason=problem_reason if problem else "PlanApplied",
            message=problem[:4000],
            observed_generation=gen,
        ),
        now,
    )
    return ServerPoolStatus(
        observed_generation=gen,
        servers_wanted=wanted_servers,
        servers_ready=ready_servers,
        plan=plan,
        conditions=conditions,
    )


def failure_conditions(
    reason: str, message: str, generation: int | None, now: datetime
) -> list[dict[str, Any]]:
    """Conditions of an object whose reconcile failed or whose spec Ekko cannot use: not Ready,
    Degraded, with the reason and the message a user acts on."""
    return [
        Condition(
            type=kind,
            status=value,
            reason=reason,
            message=message[:4000],
            observed_generation=generation,
            last_transition_time=now,
        ).to_wire()
        for kind, value in (("Degraded", "True"), ("Ready", "False"))
    ]
