"""Turn a pool's observed state (or its manifests) into the solver's problem."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ekko.api.resources import MAX_ASSIGNED_SHARDS, Model, ServerPool
from ekko.api.units import parse_duration, quantity_bytes, quantity_float
from ekko.planning.state import PoolState
from ekko.solver import (
    Assignment,
    ModelId,
    ModelSpec,
    Pool,
    Problem,
    Server,
    ServerId,
    SloClassName,
    SolveConfig,
    ZoneId,
)

NEW_SERVER_PREFIX = "~new-"


def model_spec(model: Model, resident: int = 1) -> ModelSpec:
    """The solver's view of one Model (``resident``: versions its servers hold now)."""
    spec = model.spec
    shards = spec.shards
    load = quantity_float(shards.load)
    # With keepPreviousResident every replica always has room for a second version (previous or
    # canary), so a rollout never needs a re-plan. Without it, room is made only while two are held.
    reserve = 1.0 if spec.keep_previous_resident or resident > 1 else 0.0
    # Each version a server holds is one entry of its assignment (ekko.planning.converge).
    versions = max(resident, 2 if spec.keep_previous_resident else 1)
    common: dict[str, Any] = {
        "id": ModelId(model.metadata.name),
        "replicas": spec.replicas,
        "load": load,
        "slo": SloClassName(spec.slo.slo_class),
        "reserve_factor": reserve,
        "versions_held": versions,
    }
    if shards.items is not None:
        return ModelSpec(
            shard_sizes=tuple(quantity_bytes(i.size) for i in shards.items),
            shard_loads=tuple(
                quantity_float(i.load) if i.load is not None else load for i in shards.items
            ),
            **common,
        )
    assert shards.count is not None and shards.size is not None  # the CEL rule guarantees it
    return ModelSpec(shard_count=shards.count, shard_bytes=quantity_bytes(shards.size), **common)


def pool_of(
    pool: ServerPool, servers: tuple[Server, ...] = (), node_zones: tuple[str, ...] = ()
) -> Pool:
    """The solver's view of a ServerPool with the servers it has now."""
    spec = pool.spec
    zones = tuple(spec.zones) or tuple(sorted(set(node_zones)))
    known = set(zones)
    return Pool(
        name=pool.metadata.name,
        memory_bytes=quantity_bytes(spec.capacity.memory),
        compute_units=quantity_float(spec.capacity.compute),
        headroom=spec.placement.headroom_percent / 100.0,
        max_servers=spec.max_servers,
        max_shards_per_server=MAX_ASSIGNED_SHARDS,  # what a ServerAssignment's spec can list
        zones=tuple(ZoneId(z) for z in zones),
        # A server in a zone the pool no longer uses is not offered to the solver: it empties.
        servers=tuple(s for s in servers if not known or s.zone in known),
    )


def solve_config(pool: ServerPool) -> SolveConfig:
    """Solver settings from the pool's placement policy."""
    policy = pool.spec.placement
    return SolveConfig(
        time_limit=parse_duration(policy.solver_time_limit),
        migration_weight=policy.migration_cost_weight,
    )


def build_problem(state: PoolState) -> Problem:
    """The placement problem of a pool: its models, its live servers, their current shards."""
    # An outdated server that holds nothing but drained shards is being replaced (ekko.planning
    # .roll): offering it would let a re-plan mid-roll put shards back on it.
    live = [
        s
        for s in state.servers
        if s.alive
        and s.assignment_exists
        and not (state.outdated(s) and all(x.drain for x in s.spec_shards))
    ]
    servers = tuple(Server(id=ServerId(s.name), zone=ZoneId(s.zone)) for s in live)
    pool = pool_of(state.pool, servers, state.node_zones)
    offered = {s.id for s in pool.servers}
    models = tuple(model_spec(m, len(state.versions(m))) for m in state.models)
    counts = {m.id: m.num_shards for m in models}
    current: dict[ModelId, list[list[ServerId]]] = {
        m.id: [[] for _ in range(m.num_shards)] for m in models
    }
    for server in live:
        if ServerId(server.name) not in offered:
            continue
        seen: set[tuple[str, int]] = set()
        for shard in server.spec_shards:
            key = (shard.model, shard.shard)
            if shard.drain or key in seen:
                continue
            seen.add(key)
            model = ModelId(shard.model)
            if model in counts and shard.shard < counts[model]:
                current[model][shard.shard].append(ServerId(server.name))
    assignment: Assignment = {m: tuple(tuple(s) for s in shards) for m, shards in current.items()}
    return Problem(pool=pool, models=models, current=assignment)


def placement_by_server(assignment: Assignment) -> dict[str, set[tuple[str, int]]]:
    """Invert a plan: server -> {(model, shard)}."""
    out: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for model, shards in assignment.items():
        for index, servers in enumerate(shards):
            for server in servers:
                out[server].add((model, index))
    return dict(out)
