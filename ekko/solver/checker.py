"""Independent plan checker.

Every rule of the placement is re-derived here from the raw fields of the problem, without the
helpers the optimiser and the greedy solvers use (not even the convenience methods on the
problem types), so a mistake in the model cannot hide itself.  Tests run it on every plan any
solver returns; the operator runs it again before acting on a plan.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from ekko.solver.types import ModelSpec, Plan, Problem, Violation

# Floating-point slack when comparing sums of loads with a capacity (relative).
_EPS = 1e-9


@dataclass
class _Usage:
    """What the plan puts on each server, summed from the raw fields."""

    memory: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    compute: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    classes: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    replicas: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def violations(problem: Problem, plan: Plan) -> list[Violation]:
    """All rules the plan breaks; an empty list means the plan is valid.

    An infeasible plan carries no assignment and is reported as such only if it claims one.
    """
    if plan.status == "infeasible" and not plan.assignment:
        return []
    zone_of: dict[str, str] = {str(s.id): str(s.zone) for s in plan.servers}
    usage = _Usage()
    out = _zones(problem, zone_of)
    out += _unknown_models(problem, plan)
    for m in problem.models:
        out += _model(problem, plan, m, zone_of, usage)
    for sid in zone_of:
        out += _memory(problem, sid, usage)
        out += _compute(problem, sid, usage)
        out += _colocation(problem, sid, usage)
        out += _shards_per_server(problem, sid, usage)
    out += _max_servers(problem, zone_of, usage)
    return out


def _zones(problem: Problem, zone_of: dict[str, str]) -> list[Violation]:
    """A server keeps its zone, and the zone is one of the pool's."""
    out = []
    existing = {str(s.id): str(s.zone) for s in problem.pool.servers}
    zones = set(problem.pool.zones)
    for sid, zone in zone_of.items():
        if sid in existing and existing[sid] != zone:
            out.append(Violation(kind="zone", message=f"server {sid} moved zone to {zone!r}"))
        if zones and zone not in zones:
            out.append(Violation(kind="zone", message=f"server {sid} in unknown zone {zone!r}"))
    return out


def _unknown_models(problem: Problem, plan: Plan) -> list[Violation]:
    """The plan places only the problem's models."""
    models = {m.id for m in problem.models}
    return [
        Violation(kind="unknown-model", message=f"plan places unknown model {mid}")
        for mid in plan.assignment
        if mid not in models
    ]


def _model(
    problem: Problem, plan: Plan, m: ModelSpec, zone_of: dict[str, str], usage: _Usage
) -> list[Violation]:
    """Every shard of the model has its replicas, on distinct listed servers, spread over the
    zones; what they hold and carry is added to ``usage``."""
    out: list[Violation] = []
    if m.shard_sizes is not None:
        sizes = list(m.shard_sizes)
    else:
        sizes = [m.shard_bytes or 0] * (m.shard_count or 0)
    loads = list(m.shard_loads) if m.shard_loads is not None else [m.load] * len(sizes)
    shards = plan.assignment.get(m.id)
    if shards is None or len(shards) != len(sizes):
        got = "none" if shards is None else str(len(shards))
        message = f"model {m.id}: plan has {got} shards, model has {len(sizes)}"
        return [Violation(kind="replicas", message=message)]
    k_zones = len(problem.pool.zones)
    per_zone_cap = -(-m.replicas // k_zones) if k_zones > 1 else m.replicas
    for k, holders in enumerate(shards):
        if len(holders) != m.replicas:
            message = f"shard {m.id}/{k} has {len(holders)} replicas, wants {m.replicas}"
            out.append(Violation(kind="replicas", message=message))
        if len(set(holders)) != len(holders):
            message = f"shard {m.id}/{k} has two replicas on one server"
            out.append(Violation(kind="distinct", message=message))
        per_zone: dict[str, int] = defaultdict(int)
        for sid in holders:
            if sid not in zone_of:
                message = f"shard {m.id}/{k} on server {sid} not listed in the plan"
                out.append(Violation(kind="unknown-server", message=message))
                continue
            per_zone[zone_of[sid]] += 1
            usage.memory[sid] += math.ceil(sizes[k] * (1.0 + m.reserve_factor)) + m.reserve_bytes
            usage.compute[sid] += loads[k]
            usage.classes[sid].add(m.slo)
            usage.replicas[sid] += m.versions_held
        for zone, n in per_zone.items():
            if n > per_zone_cap:
                message = (
                    f"shard {m.id}/{k} has {n} replicas in zone {zone!r}, "
                    f"at most {per_zone_cap} allowed"
                )
                out.append(Violation(kind="spread", message=message))
    return out


def _memory(problem: Problem, sid: str, usage: _Usage) -> list[Violation]:
    """A server holds at most its memory less the headroom."""
    cap = problem.pool.memory_bytes * (1.0 - problem.pool.headroom)
    if usage.memory[sid] <= cap * (1 + _EPS):
        return []
    message = f"server {sid} holds {usage.memory[sid]:.0f} B, limit {cap:.0f} B"
    return [Violation(kind="memory", message=message)]


def _compute(problem: Problem, sid: str, usage: _Usage) -> list[Violation]:
    """A server carries at most its compute times the tightest utilisation cap of the SLO
    classes on it (and the pool's headroom)."""
    classes = {str(c.name): c for c in problem.slo_classes}
    pool = problem.pool
    cap = 1.0 - pool.headroom
    for name in usage.classes[sid]:
        cap = min(cap, classes[name].utilisation_cap)
    if usage.compute[sid] <= pool.compute_units * cap * (1 + _EPS) + 1e-9:
        return []
    message = (
        f"server {sid} carries {usage.compute[sid]:.3f} compute units, limit "
        f"{pool.compute_units * cap:.3f} (cap {cap:.2f})"
    )
    return [Violation(kind="compute", message=message)]


def _colocation(problem: Problem, sid: str, usage: _Usage) -> list[Violation]:
    """No server mixes two SLO classes that exclude each other."""
    classes = {str(c.name): c for c in problem.slo_classes}
    present = usage.classes[sid]
    return [
        Violation(kind="colocation", message=f"server {sid} mixes SLO classes {a} and {b}")
        for a in present
        for b in present
        if a < b and (b in classes[a].exclusive_with or a in classes[b].exclusive_with)
    ]


def _shards_per_server(problem: Problem, sid: str, usage: _Usage) -> list[Violation]:
    """Rule (14): a server's ServerAssignment lists one entry per shard replica and version
    held, at most the pool's max_shards_per_server (a longer list is refused by the API
    server)."""
    limit = problem.pool.max_shards_per_server
    if usage.replicas[sid] <= limit:
        return []
    message = (
        f"server {sid} lists {usage.replicas[sid]} assignment entries (shard replicas times "
        f"versions held), limit {limit}"
    )
    return [Violation(kind="shards-per-server", message=message)]


def _max_servers(problem: Problem, zone_of: dict[str, str], usage: _Usage) -> list[Violation]:
    """The plan uses at most the pool's servers."""
    used = {sid for sid in zone_of if usage.classes[sid]}
    if len(used) <= problem.pool.max_servers:
        return []
    message = f"plan uses {len(used)} servers, pool allows {problem.pool.max_servers}"
    return [Violation(kind="max-servers", message=message)]
