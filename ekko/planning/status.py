"""Status of pools and models, computed from the observed state and the desired placement."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ekko.api.meta import Condition, set_condition
from ekko.api.resources import Model, PlanSummary
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
) -> dict[str, Any]:
    """The placement part of a Model's status (rollout fields are written elsewhere)."""
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
    conditions = set_condition(old, cond, now)
    status: dict[str, Any] = {
        "observedGeneration": gen,
        "replicasWanted": wanted,
        "replicasPlaced": placed,
        "replicasReady": ready,
        "ready": f"{ready}/{wanted}",
        "conditions": [c.to_wire() for c in conditions],
    }
    if not (model.status and model.status.stable_version):
        status["stableVersion"] = model.spec.version
    return status


def pool_status(
    state: PoolState,
    desired: Desired,
    plan: PlanSummary | None,
    now: datetime,
    problem: str = "",
    *,
    problem_reason: str = "PlanFailed",
) -> dict[str, Any]:
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
    status: dict[str, Any] = {
        "observedGeneration": gen,
        "serversWanted": wanted_servers,
        "serversReady": ready_servers,
        "conditions": [c.to_wire() for c in conditions],
    }
    if plan is not None:
        status["plan"] = plan.to_wire()
    return status


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
