"""The aggregated placement model (README, "Formulation"), built once and solved by CP-SAT or HiGHS.

Variables count shards per (item, server) instead of placing each replica.  Each numbered
constraint of the README is one function below with the same number in its docstring.  The model
is built into a small backend-neutral linear container so CP-SAT and HiGHS solve exactly the same
thing and their numbers can be compared.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from ortools.sat.python import cp_model

from ekko.solver.instance import Instance, Item
from ekko.solver.types import ServerId, SloClassName, ZoneId

# Objective weight of one server.  Moves and balance are scaled below it (lexicographic-ish).
SERVER_WEIGHT = 100_000
BALANCE_WEIGHT = 1  # per percent of memory on the fullest server
NEW_SERVER_EXTRA = 200  # a new server costs a bit more than an idle existing one
DRAIN_WEIGHT = 1000  # LNS: cost of a full server's memory + compute left on the drained one


@dataclass(frozen=True)
class Slot:
    """A server the model may use: an existing one (with an id) or a fresh one."""

    id: ServerId
    zone: ZoneId
    fresh: bool  # empty and interchangeable with the other fresh slots of its zone
    new: bool = False  # does not exist yet (costs a little more than an idle existing one)
    classes: frozenset[SloClassName] | None = None  # fixed server type: the classes it may hold


@dataclass
class SubProblem:
    """Place ``demand[i]`` replicas of each item on ``slots``."""

    inst: Instance
    items: Sequence[Item]
    demand: Mapping[int, int]  # item index -> replicas to place here
    zone_room: Mapping[tuple[int, str], int]  # (item, zone) -> most replicas allowed in zone
    slots: Sequence[Slot]
    old: Mapping[tuple[int, ServerId], int] = field(default_factory=dict)  # current counts
    hint: Mapping[tuple[int, ServerId], int] | None = None
    max_servers: int | None = None
    lower_bound: int = 0
    migration_weight: float = 0.5
    balance: bool = False
    drain: ServerId | None = None  # LNS: charge what stays on this server (see (13))


@dataclass
class Lin:
    """Backend-neutral integer linear model."""

    lb: list[float] = field(default_factory=list)
    ub: list[float] = field(default_factory=list)
    rows: list[tuple[list[int], list[int], float, float]] = field(default_factory=list)
    cost: dict[int, int] = field(default_factory=dict)
    hint: dict[int, int] = field(default_factory=dict)

    def var(self, lb: int, ub: int) -> int:
        self.lb.append(lb)
        self.ub.append(ub)
        return len(self.lb) - 1

    def row(self, idx: list[int], coef: list[int], lo: float, hi: float) -> None:
        self.rows.append((idx, coef, lo, hi))


INF = math.inf


@dataclass
class Built:
    lin: Lin
    sub: SubProblem
    z: dict[tuple[int, int], int]  # (item index, slot position) -> var
    y: list[int]
    x: dict[tuple[SloClassName, int], int]


@dataclass
class CoreResult:
    status: Literal["optimal", "feasible", "none"]
    counts: dict[tuple[int, ServerId], int]
    servers: int
    objective: float
    bound: float
    seconds: float
    backend: str


def move_weight(sub: SubProblem, it: Item) -> int:
    """Objective weight of moving one replica of the item (server-equivalents, scaled)."""
    return max(1, round(SERVER_WEIGHT * sub.migration_weight * it.mem / sub.inst.mem_cap))


def _classes_needing_x(sub: SubProblem) -> set[SloClassName]:
    """SLO classes that need a presence variable: capped below full compute, or exclusive."""
    present = {it.slo for it in sub.items if sub.demand.get(it.index, 0) > 0}
    excl = {c for pair in sub.inst.exclusive for c in pair}
    return {c for c in present if sub.inst.cpu_cap[c] < sub.inst.cpu_full or c in excl}


def build(sub: SubProblem) -> Built:
    lin = Lin()
    inst = sub.inst
    items = [it for it in sub.items if sub.demand.get(it.index, 0) > 0]
    y = [lin.var(0, 1) for _ in sub.slots]
    z: dict[tuple[int, int], int] = {}
    for it in items:
        top = min(it.num_shards, sub.demand[it.index])
        for n, s in enumerate(sub.slots):
            typed_out = s.classes is not None and it.slo not in s.classes
            z[it.index, n] = lin.var(0, 0 if typed_out else top)
    x: dict[tuple[SloClassName, int], int] = {}
    for c in sorted(_classes_needing_x(sub)):
        for n, s in enumerate(sub.slots):
            if s.classes is None:
                x[c, n] = lin.var(0, 1)
    b = Built(lin=lin, sub=sub, z=z, y=y, x=x)
    c1_demand(b, items)
    c2_link(b, items)
    c3_memory(b, items)
    c4_compute(b, items)
    c5_class_presence(b)
    c6_exclusion(b)
    c7_zone_spread(b, items)
    c8_max_servers(b)
    c9_lower_bound(b)
    c10_symmetry(b)
    c11_migration(b, items)
    if sub.balance:
        c12_balance(b, items)
    c13_drain(b, items)
    c14_shards_per_server(b, items)
    for n, s in enumerate(sub.slots):
        lin.cost[y[n]] = SERVER_WEIGHT + (NEW_SERVER_EXTRA if s.new else 0)
    _hint(b, items)
    del inst
    return b


def c1_demand(b: Built, items: list[Item]) -> None:
    """Constraint (1): every item gets its replicas: sum_n z[i,n] = D_i."""
    for it in items:
        idx = [b.z[it.index, n] for n in range(len(b.sub.slots))]
        d = b.sub.demand[it.index]
        b.lin.row(idx, [1] * len(idx), d, d)


def c2_link(b: Built, items: list[Item]) -> None:
    """Constraint (2): at most P_i distinct shards of an item per server, none on unused ones:
    z[i,n] <= min(P_i, D_i) * y[n] (via the class variable when the class has one, see (5))."""
    for it in items:
        top = min(it.num_shards, b.sub.demand[it.index])
        for n in range(len(b.sub.slots)):
            gate = b.x.get((it.slo, n), b.y[n])
            b.lin.row([b.z[it.index, n], gate], [1, -top], -INF, 0)


def c3_memory(b: Built, items: list[Item]) -> None:
    """Constraint (3): memory with reserves within usable memory: sum_i m_i z[i,n] <= MEM y[n]."""
    for n in range(len(b.sub.slots)):
        idx = [b.z[it.index, n] for it in items if it.mem > 0]
        coef = [it.mem for it in items if it.mem > 0]
        b.lin.row([*idx, b.y[n]], [*coef, -b.sub.inst.mem_cap], -INF, 0)


def c4_compute(b: Built, items: list[Item]) -> None:
    """Constraint (4): compute within usable compute, and within the cap of every capped class
    present: sum_i c_i z[i,n] <= CPU y[n] - (CPU - CAP_c) x[c,n] for each class c."""
    inst = b.sub.inst
    for n, s in enumerate(b.sub.slots):
        idx = [b.z[it.index, n] for it in items if it.cpu > 0]
        coef = [it.cpu for it in items if it.cpu > 0]
        if not idx:
            continue
        full = inst.cpu_full
        if s.classes is not None:  # a typed slot: its cap is fixed
            full = min([inst.cpu_full, *(inst.cpu_cap[c] for c in s.classes)])
        b.lin.row([*idx, b.y[n]], [*coef, -full], -INF, 0)
        for (c, m), xv in b.x.items():
            if m == n and inst.cpu_cap[c] < inst.cpu_full:
                cut = inst.cpu_full - inst.cpu_cap[c]
                b.lin.row([*idx, b.y[n], xv], [*coef, -inst.cpu_full, cut], -INF, 0)


def c5_class_presence(b: Built) -> None:
    """Constraint (5): a class is present only on used servers: x[c,n] <= y[n]."""
    for (_, n), xv in b.x.items():
        b.lin.row([xv, b.y[n]], [1, -1], -INF, 0)


def c6_exclusion(b: Built) -> None:
    """Constraint (6): exclusive SLO classes never share a server: x[a,n] + x[b,n] <= 1."""
    for a, c in b.sub.inst.exclusive:
        for n in range(len(b.sub.slots)):
            if (a, n) in b.x and (c, n) in b.x:
                b.lin.row([b.x[a, n], b.x[c, n]], [1, 1], -INF, 1)


def c7_zone_spread(b: Built, items: list[Item]) -> None:
    """Constraint (7): zone spread: sum_{n in zone} z[i,n] <= room[i,zone] (P_i * ceil(R_i/k)
    from scratch; less what other servers of the zone hold in a neighbourhood)."""
    zones = sorted({s.zone for s in b.sub.slots})
    if len(b.sub.inst.zones) <= 1:
        return
    for it in items:
        for zone in zones:
            room = b.sub.zone_room.get((it.index, zone))
            if room is None or room >= b.sub.demand[it.index]:
                continue
            idx = [b.z[it.index, n] for n, s in enumerate(b.sub.slots) if s.zone == zone]
            b.lin.row(idx, [1] * len(idx), -INF, max(room, 0))


def c8_max_servers(b: Built) -> None:
    """Constraint (8): at most max_servers servers: sum_n y[n] <= N_max."""
    if b.sub.max_servers is not None and b.sub.max_servers < len(b.y):
        b.lin.row(list(b.y), [1] * len(b.y), -INF, b.sub.max_servers)


def c9_lower_bound(b: Built) -> None:
    """Constraint (9): the lower-bound cut: sum_n y[n] >= LB."""
    if b.sub.lower_bound > 0:
        b.lin.row(list(b.y), [1] * len(b.y), b.sub.lower_bound, INF)


def c10_symmetry(b: Built) -> None:
    """Constraint (10): fresh slots of one zone are interchangeable: y[n] >= y[n+1]."""
    last: dict[str, int] = {}
    for n, s in enumerate(b.sub.slots):
        if not s.fresh:
            continue
        if s.zone in last:
            b.lin.row([b.y[last[s.zone]], b.y[n]], [1, -1], 0, INF)
        last[s.zone] = n


def c11_migration(b: Built, items: list[Item]) -> None:
    """Constraint (11): replicas moved away from a server: d[i,n] >= old[i,n] - z[i,n]; the
    objective charges each by its bytes (as a share of a server's memory)."""
    for it in items:
        w = move_weight(b.sub, it)
        for n, s in enumerate(b.sub.slots):
            o = b.sub.old.get((it.index, s.id), 0)
            if o <= 0:
                continue
            d = b.lin.var(0, o)
            b.lin.row([d, b.z[it.index, n]], [1, 1], o, INF)
            b.lin.cost[d] = w
            hv = b.sub.hint.get((it.index, s.id), 0) if b.sub.hint is not None else None
            if hv is not None:
                b.lin.hint[d] = max(0, o - hv)


def c12_balance(b: Built, items: list[Item]) -> None:
    """Constraint (12): t >= memory percent of every server; the objective charges t lightly."""
    t = b.lin.var(0, 100)
    b.lin.cost[t] = BALANCE_WEIGHT
    top = 0
    for n, s in enumerate(b.sub.slots):
        idx = [b.z[it.index, n] for it in items if it.mem > 0]
        coef = [100 * it.mem for it in items if it.mem > 0]
        b.lin.row([*idx, t], [*coef, -b.sub.inst.mem_cap], -INF, 0)
        if b.sub.hint is not None:
            used = sum(100 * it.mem * b.sub.hint.get((it.index, s.id), 0) for it in items)
            top = max(top, math.ceil(used / b.sub.inst.mem_cap))
    if b.sub.hint is not None:
        b.lin.hint[t] = min(100, top)  # a complete hint: HiGHS rejects partial ones


def drain_weight(sub: SubProblem, it: Item) -> int:
    inst = sub.inst
    share = it.mem / inst.mem_cap + it.cpu / max(inst.cpu_full, 1)
    return max(1, round(DRAIN_WEIGHT * share))


def c13_drain(b: Built, items: list[Item]) -> None:
    """Objective term (13), LNS only: charge every replica left on the server being drained, so a
    neighbourhood that cannot empty it yet still makes progress towards emptying it."""
    if b.sub.drain is None:
        return
    for n, s in enumerate(b.sub.slots):
        if s.id == b.sub.drain:
            for it in items:
                v = b.z[it.index, n]
                b.lin.cost[v] = b.lin.cost.get(v, 0) + drain_weight(b.sub, it)


def c14_shards_per_server(b: Built, items: list[Item]) -> None:
    """Constraint (14): a server's ServerAssignment lists at most K entries, one per shard
    replica and version held: sum_i e_i z[i,n] <= K y[n].  Left out when no server could
    exceed K anyway."""
    cap = b.sub.inst.item_cap
    top = sum(it.entries * min(it.num_shards, b.sub.demand[it.index]) for it in items)
    if not cap or top <= cap:
        return
    for n in range(len(b.sub.slots)):
        idx = [b.z[it.index, n] for it in items]
        b.lin.row([*idx, b.y[n]], [it.entries for it in items] + [-cap], -INF, 0)


def evaluate(sub: SubProblem, counts: Mapping[tuple[int, ServerId], int]) -> float:
    """The model's objective (without balance) for counts on the sub-problem's slots."""
    by_id = {it.index: it for it in sub.items}
    used = {sid for (_, sid), k in counts.items() if k}
    total = 0.0
    for s in sub.slots:
        if s.id in used:
            total += SERVER_WEIGHT + (NEW_SERVER_EXTRA if s.new else 0)
    for (i, sid), o in sub.old.items():
        lost = o - counts.get((i, sid), 0)
        if lost > 0 and i in by_id:
            total += lost * move_weight(sub, by_id[i])
    if sub.drain is not None:
        for (i, sid), k in counts.items():
            if sid == sub.drain and i in by_id:
                total += k * drain_weight(sub, by_id[i])
    return total


def _hint(b: Built, items: list[Item]) -> None:
    h = b.sub.hint
    if h is None:
        return
    used = [False] * len(b.sub.slots)
    for it in items:
        for n, s in enumerate(b.sub.slots):
            v = h.get((it.index, s.id), 0)
            b.lin.hint[b.z[it.index, n]] = v
            if v:
                used[n] = True
    for n in range(len(b.sub.slots)):
        b.lin.hint[b.y[n]] = int(used[n])
    for (c, n), xv in b.x.items():
        b.lin.hint[xv] = int(
            any(h.get((it.index, b.sub.slots[n].id), 0) for it in items if it.slo == c)
        )


def _result(
    b: Built,
    *,
    values: list[float],
    status: Literal["optimal", "feasible"],
    objective: float,
    bound: float,
    seconds: float,
    backend: str,
) -> CoreResult:
    counts: dict[tuple[int, ServerId], int] = {}
    for (i, n), v in b.z.items():
        k = round(values[v])
        if k:
            counts[i, b.sub.slots[n].id] = k
    servers = len({sid for (_, sid) in counts})
    return CoreResult(
        status=status,
        counts=counts,
        servers=servers,
        objective=objective,
        bound=bound,
        seconds=seconds,
        backend=backend,
    )


def solve_cpsat(
    sub: SubProblem,
    time_limit: float,
    *,
    workers: int = 2,
    gap: float = 0.0,
    seed: int = 0,
    log: bool = False,
) -> CoreResult:
    t0 = time.monotonic()
    b = build(sub)
    lin = b.lin
    m = cp_model.CpModel()
    vs = [m.new_int_var(int(lo), int(hi), "") for lo, hi in zip(lin.lb, lin.ub, strict=True)]
    for idx, coef, lo, hi in lin.rows:
        expr = cp_model.LinearExpr.weighted_sum([vs[i] for i in idx], coef)
        if lo == hi:
            m.add(expr == int(lo))
        elif lo == -INF:
            m.add(expr <= int(hi))
        elif hi == INF:
            m.add(expr >= int(lo))
        else:
            m.add_linear_constraint(expr, int(lo), int(hi))
    m.minimize(cp_model.LinearExpr.weighted_sum([vs[i] for i in lin.cost], list(lin.cost.values())))
    for i, v in lin.hint.items():
        m.add_hint(vs[i], v)
    solver = cp_model.CpSolver()
    p = solver.parameters
    p.max_time_in_seconds = max(0.05, time_limit - (time.monotonic() - t0))
    p.num_workers = workers
    p.relative_gap_limit = gap
    # Balance (12) is a tie-break worth at most 100: once servers and moves are proven, stop.
    p.absolute_gap_limit = BALANCE_WEIGHT * 100 if sub.balance else 0.0
    # Deterministic parallel search (same answer for a seed whatever the thread timing) when it
    # finishes before the time limit.
    p.interleave_search = True
    p.random_seed = seed
    p.log_search_progress = log
    st = solver.solve(m)
    secs = time.monotonic() - t0
    if st not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return CoreResult("none", {}, 0, INF, solver.best_objective_bound, secs, "cpsat")
    values = [float(solver.value(v)) for v in vs]
    return _result(
        b,
        values=values,
        status="optimal" if st == cp_model.OPTIMAL else "feasible",
        objective=solver.objective_value,
        bound=solver.best_objective_bound,
        seconds=secs,
        backend="cpsat",
    )


def solve_highs(
    sub: SubProblem,
    time_limit: float,
    *,
    gap: float = 0.0,
    seed: int = 0,
    log: bool = False,
) -> CoreResult:
    # highspy is an optional (dev) dependency: import it only when asked for.
    import highspy  # noqa: PLC0415

    t0 = time.monotonic()
    b = build(sub)
    lin = b.lin
    h = highspy.Highs()  # type: ignore[no-untyped-call]  # highspy ships no stubs
    h.setOptionValue("output_flag", log)
    h.setOptionValue("time_limit", max(0.05, time_limit - (time.monotonic() - t0)))
    h.setOptionValue("mip_rel_gap", gap if gap > 0 else 1e-9)
    h.setOptionValue("random_seed", seed)
    if sub.balance:  # see solve_cpsat: stop once only the balance tie-break is open
        h.setOptionValue("mip_abs_gap", float(BALANCE_WEIGHT * 100))
    n = len(lin.lb)
    inf = highspy.kHighsInf
    h.addVars(n, np.array(lin.lb, dtype=float), np.array(lin.ub, dtype=float))
    h.changeColsIntegrality(
        n, np.arange(n, dtype=np.int32), np.full(n, highspy.HighsVarType.kInteger)
    )
    cost = np.zeros(n)
    for i, c in lin.cost.items():
        cost[i] = c
    h.changeColsCost(n, np.arange(n, dtype=np.int32), cost)
    starts: list[int] = []
    index: list[int] = []
    value: list[float] = []
    lower: list[float] = []
    upper: list[float] = []
    for idx, coef, lo, hi in lin.rows:
        starts.append(len(index))
        index.extend(idx)
        value.extend(coef)
        lower.append(-inf if lo == -INF else lo)
        upper.append(inf if hi == INF else hi)
    h.addRows(
        len(lower),
        np.array(lower, dtype=float),
        np.array(upper, dtype=float),
        len(index),
        np.array(starts, dtype=np.int32),
        np.array(index, dtype=np.int32),
        np.array(value, dtype=float),
    )
    if lin.hint:
        sol = highspy.HighsSolution()
        vals = [0.0] * n
        for i, v in lin.hint.items():
            vals[i] = float(v)
        sol.col_value = vals
        sol.value_valid = True
        h.setSolution(sol)
    h.run()
    secs = time.monotonic() - t0
    info = h.getInfo()
    ms = h.getModelStatus()
    if info.primal_solution_status != 2:  # kSolutionStatusFeasible
        return CoreResult("none", {}, 0, INF, info.mip_dual_bound, secs, "highs")
    values = list(h.getSolution().col_value)
    status: Literal["optimal", "feasible"] = (
        "optimal" if ms == highspy.HighsModelStatus.kOptimal else "feasible"
    )
    return _result(
        b,
        values=values,
        status=status,
        objective=info.objective_function_value,
        bound=info.mip_dual_bound,
        seconds=secs,
        backend="highs",
    )
