"""The desired placement of a pool: from a fresh plan, or recovered from the assignments."""

from __future__ import annotations

import hashlib
import json

from ekko.planning.converge import Desired
from ekko.planning.problem import placement_by_server
from ekko.planning.state import PoolState, ShardKey
from ekko.solver import Plan


def plan_inputs(state: PoolState, excluded: tuple[str, ...] = ()) -> str:
    """Fingerprint of what a plan depends on: pool and model specs, and reserved memory.

    Server pods coming and going do not change it: a lost server is recreated in place, so a
    restarted operator with the same fingerprint keeps the placement it finds (zero moves).
    """
    pool = state.pool
    doc = {
        "pool": [pool.metadata.uid, pool.metadata.generation],
        "models": sorted(
            [
                m.metadata.name,
                m.metadata.uid,
                m.metadata.generation,
                [v.version for v in state.versions(m)],
            ]
            for m in state.models
        ),
        "excluded": sorted(excluded),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]


def desired_from_plan(plan: Plan, state: PoolState) -> Desired:
    """The plan with its new servers given pod names: ``<pool>-<n>``, lowest free n first."""
    existing = {s.name for s in state.servers}
    taken = set(existing)
    rename: dict[str, str] = {}
    index = 0
    for server in plan.servers:
        if server.id in existing:
            continue
        # Every server the plan invents gets a fresh name; solver ids may collide with each other's
        # new names, so they are never kept.
        while f"{state.name}-{index}" in taken:
            index += 1
        rename[server.id] = f"{state.name}-{index}"
        taken.add(rename[server.id])
    by_server = placement_by_server(plan.assignment)
    servers = {rename.get(s.id, s.id): frozenset(by_server.get(s.id, set())) for s in plan.servers}
    zones = {rename.get(s.id, s.id): str(s.zone) for s in plan.servers}
    return Desired(servers={k: v for k, v in servers.items() if v}, zones=zones)


def desired_from_state(state: PoolState) -> Desired:
    """The placement the assignments already carry (drained replicas left out)."""
    servers: dict[str, frozenset[ShardKey]] = {}
    zones: dict[str, str] = {}
    known = {m.metadata.name for m in state.models}
    for server in state.servers:
        keys = frozenset(
            (s.model, s.shard) for s in server.spec_shards if not s.drain and s.model in known
        )
        if keys:
            servers[server.name] = keys
            zones[server.name] = server.zone
    return Desired(servers=servers, zones=zones)
