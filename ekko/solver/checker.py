"""Independent plan checker.

Every rule of the placement is re-derived here from the raw fields of the problem, without the
helpers the optimiser and the greedy solvers use (not even the convenience methods on the
problem types), so a mistake in the model cannot hide itself.  Tests run it on every plan any
solver returns; the operator runs it again before acting on a plan.
"""

from __future__ import annotations

import math
from collections import defaultdict

from ekko.solver.types import Plan, Problem, Violation

# Floating-point slack when comparing sums of loads with a capacity (relative).
_EPS = 1e-9


def violations(problem: Problem, plan: Plan) -> list[Violation]:
    """All rules the plan breaks; an empty list means the plan is valid.

    An infeasible plan carries no assignment and is reported as such only if it claims one.
    """
    out: list[Violation] = []
    if plan.status == "infeasible" and not plan.assignment:
        return out
    pool = problem.pool
    zone_of: dict[str, str] = {str(s.id): str(s.zone) for s in plan.servers}
    existing = {str(s.id): str(s.zone) for s in pool.servers}
    zones = set(pool.zones)
    for sid, zone in zone_of.items():
        if sid in existing and existing[sid] != zone:
            out.append(Violation(kind="zone", message=f"server {sid} moved zone to {zone!r}"))
        if zones and zone not in zones:
            out.append(Violation(kind="zone", message=f"server {sid} in unknown zone {zone!r}"))

    classes = {str(c.name): c for c in problem.slo_classes}
    mem_used: dict[str, float] = defaultdict(float)
    cpu_used: dict[str, float] = defaultdict(float)
    classes_on: dict[str, set[str]] = defaultdict(set)
    models = {m.id: m for m in problem.models}

    for mid in plan.assignment:
        if mid not in models:
            out.append(Violation(kind="unknown-model", message=f"plan places unknown model {mid}"))

    for m in problem.models:
        if m.shard_sizes is not None:
            sizes = list(m.shard_sizes)
        else:
            sizes = [m.shard_bytes or 0] * (m.shard_count or 0)
        loads = list(m.shard_loads) if m.shard_loads is not None else [m.load] * len(sizes)
        shards = plan.assignment.get(m.id)
        if shards is None or len(shards) != len(sizes):
            got = "none" if shards is None else str(len(shards))
            out.append(
                Violation(
                    kind="replicas",
                    message=f"model {m.id}: plan has {got} shards, model has {len(sizes)}",
                )
            )
            continue
        k_zones = len(pool.zones)
        per_zone_cap = -(-m.replicas // k_zones) if k_zones > 1 else m.replicas
        for k, holders in enumerate(shards):
            if len(holders) != m.replicas:
                out.append(
                    Violation(
                        kind="replicas",
                        message=f"shard {m.id}/{k} has {len(holders)} replicas, wants {m.replicas}",
                    )
                )
            if len(set(holders)) != len(holders):
                out.append(
                    Violation(
                        kind="distinct", message=f"shard {m.id}/{k} has two replicas on one server"
                    )
                )
            per_zone: dict[str, int] = defaultdict(int)
            for sid in holders:
                if sid not in zone_of:
                    out.append(
                        Violation(
                            kind="unknown-server",
                            message=f"shard {m.id}/{k} on server {sid} not listed in the plan",
                        )
                    )
                    continue
                per_zone[zone_of[sid]] += 1
                mem_used[sid] += math.ceil(sizes[k] * (1.0 + m.reserve_factor)) + m.reserve_bytes
                cpu_used[sid] += loads[k]
                classes_on[sid].add(m.slo)
            for zone, n in per_zone.items():
                if n > per_zone_cap:
                    out.append(
                        Violation(
                            kind="spread",
                            message=f"shard {m.id}/{k} has {n} replicas in zone {zone!r}, "
                            f"at most {per_zone_cap} allowed",
                        )
                    )

    mem_cap = pool.memory_bytes * (1.0 - pool.headroom)
    for sid in zone_of:
        if mem_used[sid] > mem_cap * (1 + _EPS):
            out.append(
                Violation(
                    kind="memory",
                    message=f"server {sid} holds {mem_used[sid]:.0f} B, limit {mem_cap:.0f} B",
                )
            )
        present = classes_on[sid]
        cap = 1.0 - pool.headroom
        for name in present:
            cap = min(cap, classes[name].utilisation_cap)
        if cpu_used[sid] > pool.compute_units * cap * (1 + _EPS) + 1e-9:
            out.append(
                Violation(
                    kind="compute",
                    message=f"server {sid} carries {cpu_used[sid]:.3f} compute units, limit "
                    f"{pool.compute_units * cap:.3f} (cap {cap:.2f})",
                )
            )
        for a in present:
            for b in present:
                if a < b and (b in classes[a].exclusive_with or a in classes[b].exclusive_with):
                    out.append(
                        Violation(
                            kind="colocation",
                            message=f"server {sid} mixes SLO classes {a} and {b}",
                        )
                    )
    used = {sid for sid in zone_of if classes_on[sid]}
    if len(used) > pool.max_servers:
        out.append(
            Violation(
                kind="max-servers",
                message=f"plan uses {len(used)} servers, pool allows {pool.max_servers}",
            )
        )
    return out
