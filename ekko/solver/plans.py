"""Turning per-replica placements into :class:`Plan` values (shared by every solver)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ekko.solver.instance import Instance
from ekko.solver.types import (
    Assignment,
    ModelId,
    Plan,
    PlanStatus,
    Problem,
    Server,
    ServerId,
    SolveConfig,
    ZoneId,
)

Placed = Mapping[tuple[str, int], Sequence[ServerId]]


def current_placement(problem: Problem) -> dict[tuple[str, int], list[ServerId]]:
    """The usable part of the current placement: known models, shards and servers only."""
    known = {s.id for s in problem.pool.servers}
    out: dict[tuple[str, int], list[ServerId]] = {}
    for m in problem.models:
        shards = problem.current.get(m.id, ())
        for k, holders in enumerate(shards[: m.num_shards]):
            seen: list[ServerId] = []
            for sid in holders:
                if sid in known and sid not in seen:
                    seen.append(sid)
            if seen:
                out[m.id, k] = seen
    return out


def moves(problem: Problem, placed: Placed) -> tuple[int, int]:
    """(bytes, replicas) loaded onto servers that do not hold them now, for shards the current
    placement lists (also on servers that are gone); first loads of new shards are not moves."""
    cur = current_placement(problem)
    nbytes = 0
    nrep = 0
    for m in problem.models:
        listed = problem.current.get(m.id, ())
        for k in range(m.num_shards):
            if k >= len(listed) or not listed[k]:
                continue
            have = set(cur.get((m.id, k), ()))
            for sid in placed.get((m.id, k), ()):
                if sid not in have:
                    nbytes += m.size_of(k)
                    nrep += 1
    return nbytes, nrep


def make_plan(
    problem: Problem,
    inst: Instance,
    placed: Placed,
    zones: Mapping[ServerId, ZoneId],
    *,
    solver: str,
    status: PlanStatus,
    config: SolveConfig,
    seconds: float,
    lower_bound: int | None = None,
    notes: Sequence[str] = (),
    rename: bool = True,
) -> Plan:
    """Build the plan; new servers are renamed ``<pool>-<k>`` in order, skipping existing ids."""
    existing = {s.id for s in problem.pool.servers}
    # New names never reuse an id the current placement mentions (a lost server's name would
    # read as "already loaded there").
    taken = existing | {sid for shards in problem.current.values() for h in shards for sid in h}
    used: list[ServerId] = []
    seen: set[ServerId] = set()
    for m in problem.models:
        for k in range(m.num_shards):
            for sid in placed.get((m.id, k), ()):
                if sid not in seen:
                    seen.add(sid)
                    used.append(sid)
    names: dict[ServerId, ServerId] = {}
    nxt = 0
    for sid in used:
        if sid in existing or not rename:
            names[sid] = sid
            continue
        while ServerId(f"{problem.pool.name}-{nxt}") in taken:
            nxt += 1
        names[sid] = ServerId(f"{problem.pool.name}-{nxt}")
        nxt += 1
    assignment: Assignment = {}
    renamed: dict[tuple[str, int], list[ServerId]] = {}
    for m in problem.models:
        shards = []
        for k in range(m.num_shards):
            hs = [names[s] for s in placed.get((m.id, k), ())]
            renamed[m.id, k] = hs
            shards.append(tuple(hs))
        assignment[ModelId(m.id)] = tuple(shards)
    servers = tuple(
        sorted(
            (Server(id=names[s], zone=zones[s]) for s in used),
            key=lambda s: (s.zone, len(s.id), s.id),
        )
    )
    nbytes, nrep = moves(problem, renamed)
    lb = inst.lower_bound if lower_bound is None else lower_bound
    n = len(servers)
    objective = n + config.migration_weight * nbytes / max(problem.pool.memory_bytes, 1)
    return Plan(
        solver=solver,
        status=status,
        assignment=assignment,
        servers=servers,
        new_servers=tuple(s.id for s in servers if s.id not in existing),
        objective=objective,
        lower_bound=lb,
        gap=(n - lb) / n if n else 0.0,
        solve_seconds=seconds,
        bytes_moved=nbytes,
        replicas_moved=nrep,
        notes=tuple(notes),
    )


def infeasible_plan(
    solver: str,
    reasons: Sequence[str],
    lower_bound: int,
    seconds: float,
    notes: Sequence[str] = (),
) -> Plan:
    return Plan(
        solver=solver,
        status="infeasible",
        lower_bound=lower_bound,
        solve_seconds=seconds,
        explanation=tuple(reasons),
        notes=tuple(notes),
    )
