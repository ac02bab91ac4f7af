"""The problem in the solver's integer units: items (size classes), capacities, bounds, reasons.

Shards of one model with the same memory and load are interchangeable, so the optimiser counts
them per server instead of placing each one.  A model with unequal shards is split into *items*
(size classes); each item is treated as a model of equal shards.  Sizes are scaled so a server's
usable memory and compute are about 10^6 units each; demands round up and capacities round down,
so every integer solution is valid in bytes too.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from ortools.linear_solver import pywraplp

from ekko.solver.types import GIB, ModelId, Problem, SloClassName

SCALE = 1_000_000
# A model with more distinct (memory, load) shard shapes than this is quantised to a 3% grid.
_MAX_EXACT_SHAPES = 8
_GRID = 1.03


@dataclass(frozen=True)
class Item:
    """Interchangeable shards of one model: same memory and load per replica."""

    index: int
    model: ModelId
    shards: tuple[int, ...]
    replicas: int
    mem: int  # units per replica (reserve included), rounded up
    cpu: int  # units per replica, rounded up
    mem_bytes: int  # bytes of the largest shard in the item, without reserve (move cost)
    slo: SloClassName
    zone_cap: int  # most replicas of one shard per zone

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def demand(self) -> int:
        return len(self.shards) * self.replicas


@dataclass(frozen=True)
class Instance:
    problem: Problem
    items: tuple[Item, ...]
    mem_cap: int  # usable memory per server, in units
    cpu_cap: dict[SloClassName, int]  # usable compute per server when the class is present
    cpu_full: int  # usable compute per server with no class cap
    mem_unit: float  # bytes per unit
    cpu_unit: float  # compute units per unit
    exclusive: tuple[tuple[SloClassName, SloClassName], ...]
    zones: tuple[str, ...]
    lower_bound: int

    def items_of(self, model: ModelId) -> list[Item]:
        return [it for it in self.items if it.model == model]


def _grid_up(x: int) -> int:
    if x <= 1:
        return x
    k = math.ceil(math.log(x) / math.log(_GRID) - 1e-12)
    return max(x, math.ceil(_GRID**k))


def build_instance(problem: Problem) -> Instance:
    pool = problem.pool
    mem_eff = pool.usable_memory()
    mem_unit = mem_eff / SCALE
    cpu_eff = pool.usable_compute()
    cpu_unit = cpu_eff / SCALE if cpu_eff > 0 else 1.0
    mem_cap = math.floor(mem_eff / mem_unit + 1e-9)
    cpu_full = math.floor(cpu_eff / cpu_unit + 1e-9)
    cpu_cap = {
        c.name: math.floor(pool.usable_compute(c.utilisation_cap) / cpu_unit + 1e-9)
        for c in problem.slo_classes
    }
    items: list[Item] = []
    for m in problem.models:
        shapes: dict[tuple[int, int], list[int]] = defaultdict(list)
        raw = [
            (
                math.ceil(m.memory_of(k) / mem_unit - 1e-9),
                math.ceil(m.load_of(k) / cpu_unit - 1e-9),
            )
            for k in range(m.num_shards)
        ]
        quantise = len(set(raw)) > _MAX_EXACT_SHAPES
        for k, (mu, cu) in enumerate(raw):
            key = (_grid_up(mu), _grid_up(cu)) if quantise else (mu, cu)
            shapes[key].append(k)
        for (mu, cu), shards in sorted(shapes.items(), reverse=True):
            items.append(
                Item(
                    index=len(items),
                    model=m.id,
                    shards=tuple(shards),
                    replicas=m.replicas,
                    mem=max(mu, 0),
                    cpu=max(cu, 0),
                    mem_bytes=max(m.size_of(k) for k in shards),
                    slo=m.slo,
                    zone_cap=problem.spread_cap(m.replicas),
                )
            )
    names = [c.name for c in problem.slo_classes]
    exclusive = tuple(
        (a, b) for i, a in enumerate(names) for b in names[i + 1 :] if problem.exclusive(a, b)
    )
    inst = Instance(
        problem=problem,
        items=tuple(items),
        mem_cap=mem_cap,
        cpu_cap=cpu_cap,
        cpu_full=cpu_full,
        mem_unit=mem_unit,
        cpu_unit=cpu_unit,
        exclusive=exclusive,
        zones=tuple(pool.zones) if pool.zones else ("",),
        lower_bound=0,
    )
    return Instance(**{**inst.__dict__, "lower_bound": lower_bound(inst)})


def lower_bound(inst: Instance) -> int:
    """A valid lower bound on servers (README, "Lower bound")."""
    if not inst.items:
        return 0
    mem_total = sum(it.mem * it.demand for it in inst.items)
    cpu_total = sum(it.cpu * it.demand for it in inst.items)
    best = max(
        math.ceil(mem_total / inst.mem_cap) if inst.mem_cap else 0,
        math.ceil(cpu_total / inst.cpu_full) if inst.cpu_full else 0,
        *(it.replicas for it in inst.items),
    )
    per_class: dict[SloClassName, int] = {}
    for c in {it.slo for it in inst.items}:
        mine = [it for it in inst.items if it.slo == c]
        mem_c = sum(it.mem * it.demand for it in mine)
        cpu_c = sum(it.cpu * it.demand for it in mine)
        cap = inst.cpu_cap[c]
        b_c = max(
            math.ceil(mem_c / inst.mem_cap) if inst.mem_cap else 0,
            math.ceil(cpu_c / cap) if cap else 0,
            *(it.replicas for it in mine),
        )
        per_class[c] = b_c
        # Servers holding class c carry at most cap each; the rest at most cpu_full.
        if inst.cpu_full:
            best = max(best, math.ceil(b_c + (cpu_total - b_c * cap) / inst.cpu_full - 1e-9))
    for a, b in inst.exclusive:
        if a in per_class and b in per_class:
            best = max(best, per_class[a] + per_class[b])
    # Replicas above half a server in one dimension never share a server with each other.
    big_mem = sum(it.demand for it in inst.items if 2 * it.mem > inst.mem_cap)
    big_cpu = sum(it.demand for it in inst.items if 2 * it.cpu > inst.cpu_cap[it.slo])
    return max(best, big_mem, big_cpu, math.ceil(lp_bound(inst) - 1e-6))


def _gib(x: float) -> str:
    return f"{x / GIB:.1f} GiB"


def explain(problem: Problem, inst: Instance | None = None) -> list[str]:
    """Reasons, in words a user can act on, why no valid plan can exist.  Empty when none of the
    common causes applies (the problem may still be infeasible for subtler reasons)."""
    inst = inst or build_instance(problem)
    pool = problem.pool
    out: list[str] = []
    mem_eff = pool.usable_memory()
    hold = (
        f"servers in pool {pool.name} hold {_gib(pool.memory_bytes)} "
        f"(after {pool.headroom:.0%} headroom: {_gib(mem_eff)})"
    )
    for m in problem.models:
        worst = max(range(m.num_shards), key=m.memory_of)
        if m.memory_of(worst) > mem_eff:
            extra = ""
            if m.reserve_factor or m.reserve_bytes:
                extra = f" ({_gib(m.size_of(worst))} plus rollout reserve)"
            out.append(
                f"shard {m.id}/{worst} needs {_gib(m.memory_of(worst))}{extra}; {hold}. "
                "Split the model into more shards or use a pool with bigger servers."
            )
        heavy = max(range(m.num_shards), key=m.load_of)
        cap = problem.slo(m.slo).utilisation_cap
        limit = pool.usable_compute(cap)
        if m.load_of(heavy) > limit:
            out.append(
                f"shard {m.id}/{heavy} needs {m.load_of(heavy):g} compute units per replica; "
                f"servers in pool {pool.name} offer {pool.compute_units:g}, at most {limit:g} "
                f"for SLO class {m.slo} (cap {cap:.0%}, headroom {pool.headroom:.0%}). "
                "Add replicas with less load each or split the shard."
            )
        if m.replicas > pool.max_servers:
            out.append(
                f"model {m.id} wants {m.replicas} replicas of each shard on distinct servers; "
                f"pool {pool.name} allows at most {pool.max_servers} servers."
            )
    if inst.lower_bound > pool.max_servers and not out:
        mem_total = sum(
            m.memory_of(k) * m.replicas for m in problem.models for k in range(m.num_shards)
        )
        cpu_total = sum(
            m.load_of(k) * m.replicas for m in problem.models for k in range(m.num_shards)
        )
        out.append(
            f"the models need at least {inst.lower_bound} servers (memory "
            f"{_gib(mem_total)} at {_gib(mem_eff)} per server, compute {cpu_total:g} at "
            f"{pool.usable_compute():g} per server, SLO caps and exclusions included); pool "
            f"{pool.name} allows at most {pool.max_servers}. Raise max_servers or lower replicas."
        )
    return out


def lp_bound(inst: Instance) -> float:
    """LP relaxation over server *types* (sets of SLO classes that may share a server): every
    class's memory and compute is split over types, a type with classes T has compute cap
    min_{c in T} CAP_c.  Returns the fractional number of servers (README, "Lower bound")."""
    classes = sorted({it.slo for it in inst.items})
    if not classes:
        return 0.0
    mem = {c: sum(it.mem * it.demand for it in inst.items if it.slo == c) for c in classes}
    cpu = {c: sum(it.cpu * it.demand for it in inst.items if it.slo == c) for c in classes}
    types = server_types(inst)
    lp = pywraplp.Solver.CreateSolver("GLOP")
    if lp is None:  # GLOP ships with OR-Tools; be safe anyway
        return 0.0
    n = [lp.NumVar(0.0, lp.infinity(), "") for _ in types]
    f = {(c, k): lp.NumVar(0.0, 1.0, "") for k, t in enumerate(types) for c in t}
    for c in classes:
        lp.Add(sum(f[c, k] for k, t in enumerate(types) if c in t) == 1)
    for k, t in enumerate(types):
        cap = min(inst.cpu_cap[c] for c in t)
        lp.Add(sum(f[c, k] * (mem[c] / inst.mem_cap) for c in t) <= n[k])
        if cap > 0:
            lp.Add(sum(f[c, k] * (cpu[c] / cap) for c in t) <= n[k])
    lp.Minimize(sum(n))
    if lp.Solve() != pywraplp.Solver.OPTIMAL:
        return 0.0
    return float(lp.Objective().Value())


def server_types(inst: Instance) -> list[tuple[SloClassName, ...]]:
    """Sets of SLO classes that may share a server (no exclusive pair), non-empty."""
    classes = sorted({it.slo for it in inst.items})
    excl = {frozenset(p) for p in inst.exclusive}
    types: list[tuple[SloClassName, ...]] = []
    for mask in range(1, 1 << len(classes)):
        t = tuple(c for k, c in enumerate(classes) if mask >> k & 1)
        if all(frozenset((a, b)) not in excl for a in t for b in t if a < b):
            types.append(t)
    return types
