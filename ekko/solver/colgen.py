"""A configuration-LP lower bound by column generation (Gilmore and Gomory), time-boxed.

A *configuration* (pattern) is what one server can hold: a vector ``a`` of replica counts per
shape that fits the server's memory, its compute under the strictest cap of the classes present,
its assignment entries, and at most one replica of each shard.  The configuration LP is::

    min  sum_p x_p      s.t.  sum_p a_{s,p} x_p >= d_s  (every shape s),   x >= 0

and its optimum is a lower bound on the servers of any plan: a plan is an integer x.  It sees
per-server packing, which the LP over server types (``instance.lp_bound``) does not: that one
splits replicas fractionally over server types and never asks whether they fit one server.

The bound is a **certificate**, not the LP's optimum: integer weights ``w_s >= 0`` per shape and
an integer ``V`` that no server's content exceeds (``sum_s w_s a_s <= V`` for every
configuration, proven by the pricing solver's bound), so every plan has at least
``ceil(sum_s w_s d_s / V)`` servers (Farley's bound; the weights are the restricted master LP's
duals scaled up and rounded up).  It is valid at every iteration, so the generation can stop at
any time, and it is exact: integers only, no floating-point tolerance in the proof.

Shapes are the distinct (class, memory, load, entries) of the items, demands rounded down and
capacities up as in ``instance.bound_with_source``.  **Relaxed** (so the bound stays a bound):
zone spread (7) is ignored; items of one shape from different models merge, and a server may
hold as many replicas of the merged shape as the items have shards together (distinct shards
per server are kept per shape, not per model); the class presence bound ``B_c`` of the LP over
server types is not part of it (the solver takes the larger of the bounds).  Kept exactly:
memory, compute with headroom and each class's utilisation cap (a server of class set T gets
the cap of T's strictest class), exclusions (only compatible class sets are server types), the
entries per server (``max_shards_per_server``) and replicas on distinct servers.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from ortools.linear_solver import pywraplp
from ortools.sat.python import cp_model

from ekko.solver.instance import Instance, server_types
from ekko.solver.types import ServerId, SloClassName

# How the plan's notes name this bound.
SOURCE = "configuration LP"
# Duals are scaled by this and rounded up to integer weights (the certificate's w).
WEIGHT_SCALE = 1 << 20
# Weight of the best duals so far in the point priced (dual smoothing).
SMOOTHING = 0.5
# Seconds one pricing problem gets at first (doubled when it could not prove its bound).
PRICING_SECONDS = 0.05
# Most columns added per server type and iteration (solutions CP-SAT found on its way).
COLUMNS_PER_PRICING = 8


@dataclass(frozen=True)
class Shapes:
    """Distinct replica shapes of an instance, with their demand and per-server limit."""

    slo: tuple[SloClassName, ...]
    mem: tuple[int, ...]
    cpu: tuple[int, ...]
    entries: tuple[int, ...]
    demand: tuple[int, ...]
    per_server: tuple[int, ...]  # most replicas of the shape on one server (distinct shards)
    of_item: tuple[int, ...]  # item index -> shape index
    mem_cap: int
    cpu_cap: Mapping[SloClassName, int]
    entry_cap: int  # 0: no limit

    def __len__(self) -> int:
        return len(self.demand)


def shapes_of(inst: Instance) -> Shapes:
    """The instance's items merged by shape (module docstring)."""
    index: dict[tuple[SloClassName, int, int, int], int] = {}
    demand: list[int] = []
    per: list[int] = []
    of_item: list[int] = []
    for it in inst.items:
        key = (it.slo, it.mem_low, it.cpu_low, it.entries)
        s = index.setdefault(key, len(index))
        if s == len(demand):
            demand.append(0)
            per.append(0)
        demand[s] += it.demand
        per[s] += min(it.num_shards, it.demand)
        of_item.append(s)
    keys = list(index)
    return Shapes(
        slo=tuple(k[0] for k in keys),
        mem=tuple(k[1] for k in keys),
        cpu=tuple(k[2] for k in keys),
        entries=tuple(k[3] for k in keys),
        demand=tuple(demand),
        per_server=tuple(per),
        of_item=tuple(of_item),
        mem_cap=inst.mem_cap_hi or inst.mem_cap,
        cpu_cap=dict(inst.cpu_cap_hi or inst.cpu_cap),
        entry_cap=inst.item_cap,
    )


def _types(sh: Shapes, inst: Instance) -> list[tuple[frozenset[SloClassName], int]]:
    """Server types worth pricing: compatible class sets with the cap of their strictest
    class, without those another type contains with a cap at least as high."""
    out = [(frozenset(t), min(sh.cpu_cap[c] for c in t)) for t in server_types(inst)]
    return [
        (t, cap)
        for t, cap in out
        if not any(t < u and cap <= cu for u, cu in out)
        and not any(t == u and cap < cu for u, cu in out)
    ]


def _limit(sh: Shapes, s: int, cap: int) -> int:
    """Most replicas of shape s one server of compute cap ``cap`` holds."""
    top = min(sh.per_server[s], sh.demand[s])
    if sh.mem[s]:
        top = min(top, sh.mem_cap // sh.mem[s])
    if sh.cpu[s]:
        top = min(top, cap // sh.cpu[s])
    if sh.entry_cap and sh.entries[s]:
        top = min(top, sh.entry_cap // sh.entries[s])
    return max(0, top)


@dataclass
class Pricing:
    """Best content of one server type for weights w: columns found and a proven upper bound."""

    columns: list[dict[int, int]]
    bound: int  # no configuration of the type weighs more
    optimal: bool


class _Collect(cp_model.CpSolverSolutionCallback):
    def __init__(self, xs: Sequence[tuple[int, cp_model.IntVar]]) -> None:
        super().__init__()
        self.xs = xs
        self.found: list[dict[int, int]] = []

    def on_solution_callback(self) -> None:
        col = {s: int(self.value(x)) for s, x in self.xs}
        self.found.append({s: a for s, a in col.items() if a})


def price(
    sh: Shapes, classes: frozenset[SloClassName], cap: int, w: Sequence[int], seconds: float
) -> Pricing:
    """Maximise ``sum_s w_s a_s`` over the configurations of one server type (a bounded
    multi-dimensional knapsack, CP-SAT, one worker).  ``bound`` is CP-SAT's proven bound (the
    optimum when ``optimal``), so it holds even when the time runs out."""
    m = cp_model.CpModel()
    xs: list[tuple[int, cp_model.IntVar]] = []
    for s in range(len(sh)):
        if w[s] <= 0 or sh.slo[s] not in classes:
            continue  # a shape of weight 0 adds nothing to the maximum
        top = _limit(sh, s, cap)
        if top > 0:
            xs.append((s, m.new_int_var(0, top, "")))
    if not xs:
        return Pricing([], 0, True)
    m.add(
        cp_model.LinearExpr.weighted_sum([x for _, x in xs], [sh.mem[s] for s, _ in xs])
        <= sh.mem_cap
    )
    m.add(cp_model.LinearExpr.weighted_sum([x for _, x in xs], [sh.cpu[s] for s, _ in xs]) <= cap)
    if sh.entry_cap:
        m.add(
            cp_model.LinearExpr.weighted_sum([x for _, x in xs], [sh.entries[s] for s, _ in xs])
            <= sh.entry_cap
        )
    m.maximize(cp_model.LinearExpr.weighted_sum([x for _, x in xs], [w[s] for s, _ in xs]))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.01, seconds)
    solver.parameters.num_workers = 1
    cb = _Collect(xs)
    status = solver.solve(m, cb)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        # No solution at all within the time: the trivial bound (every shape at its limit).
        return Pricing([], sum(w[s] * _limit(sh, s, cap) for s, _ in xs), False)
    bound = math.floor(solver.best_objective_bound + 1e-6)
    best = max(bound, round(solver.objective_value))
    return Pricing(cb.found[-COLUMNS_PER_PRICING:], best, status == cp_model.OPTIMAL)


@dataclass
class ConfigBound:
    """Result of :func:`config_lp_bound`: the certificate and how it was obtained."""

    bound: int  # ceil(sum w_s d_s / V): a lower bound on servers
    lp_value: float  # last restricted master LP value (an upper bound on the LP optimum)
    iterations: int
    columns: int
    converged: bool  # the pricing proved no column can improve the master LP
    seconds: float
    weights: tuple[int, ...] = ()
    v: int = 0
    shapes: Shapes | None = field(default=None, repr=False)


def certificate_bound(sh: Shapes, w: Sequence[int], v: int) -> int:
    """``ceil(sum_s w_s d_s / V)``: every server holds weight at most V (proven by the
    caller), so the servers number at least that."""
    if v <= 0:
        return 0
    total = sum(w[s] * sh.demand[s] for s in range(len(sh)))
    return -(-total // v)


def patterns_of(sh: Shapes, counts: Mapping[tuple[int, ServerId], int]) -> list[dict[int, int]]:
    """The servers of a plan (item, server) -> replicas as configurations over shapes."""
    per: dict[ServerId, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for (i, sid), k in counts.items():
        if k:
            per[sid][sh.of_item[i]] += k
    seen: set[tuple[tuple[int, int], ...]] = set()
    out: list[dict[int, int]] = []
    for col in per.values():
        key = tuple(sorted(col.items()))
        if key not in seen:
            seen.add(key)
            out.append(dict(col))
    return out


def config_lp_bound(
    inst: Instance,
    seconds: float,
    *,
    patterns: Iterable[Mapping[int, int]] = (),
    stop_at: int | None = None,
    useful: int = 0,
) -> ConfigBound:
    """Column generation on the configuration LP for at most ``seconds`` (module docstring).

    ``patterns``: known server contents over shapes (e.g. a greedy plan's servers, via
    :func:`patterns_of`) to start the master LP with; ``stop_at``: stop as soon as the bound
    reaches it (e.g. the servers of a plan in hand: it is then proven optimal); ``useful``: give
    up at half the time when the bound is still below it (far from converging: on instances of
    hundreds of small shapes the generation needs minutes, and the time is the caller's)."""
    t0 = time.monotonic()
    deadline = t0 + seconds
    sh = shapes_of(inst)
    n = len(sh)
    if n == 0 or sh.mem_cap <= 0:
        return ConfigBound(0, 0.0, 0, 0, True, 0.0, shapes=sh)
    types = _types(sh, inst)
    lp = pywraplp.Solver.CreateSolver("GLOP")
    if lp is None:
        return ConfigBound(0, 0.0, 0, 0, False, 0.0, shapes=sh)
    rows = [lp.Constraint(float(sh.demand[s]), lp.infinity()) for s in range(n)]
    obj = lp.Objective()
    obj.SetMinimization()
    seen: set[tuple[tuple[int, int], ...]] = set()

    def add(col: Mapping[int, int]) -> bool:
        col = {s: min(a, sh.demand[s]) for s, a in col.items() if a > 0}
        key = tuple(sorted(col.items()))
        if not col or key in seen:
            return False
        seen.add(key)
        var = lp.NumVar(0.0, lp.infinity(), "")
        for s, a in col.items():
            rows[s].SetCoefficient(var, float(a))
        obj.SetCoefficient(var, 1.0)
        return True

    # Every shape alone on a server of its own class (keeps the master LP feasible).
    for s in range(n):
        cap = max((c for t, c in types if sh.slo[s] in t), default=0)
        add({s: max(1, _limit(sh, s, cap))})
    for p in patterns:
        if time.monotonic() >= deadline:
            break
        add(p)
    best = ConfigBound(0, math.inf, 0, len(seen), False, 0.0, shapes=sh)
    budget = PRICING_SECONDS
    # Dual smoothing (Wentges): price at a point between the best duals so far (the centre,
    # by the bound they certify) and the master LP's; fewer iterations than pricing at the
    # master's duals, which jump between vertices of a degenerate LP.
    centre: list[float] | None = None
    centre_value = Fraction(-1)
    alpha = SMOOTHING
    duals: list[float] = []
    z = math.inf
    solve_lp = True
    it = 0
    while True:
        it += 1
        if solve_lp:
            if lp.Solve() != pywraplp.Solver.OPTIMAL:
                break
            z = lp.Objective().Value()
            duals = [max(0.0, r.dual_value()) for r in rows]
        smooth = centre is not None and alpha > 0
        pi = duals
        if smooth and centre is not None:
            pi = [alpha * c + (1 - alpha) * d for c, d in zip(centre, duals, strict=True)]
        w = [math.ceil(d * WEIGHT_SCALE) if d > 0 else 0 for d in pi]
        v = 0
        added = 0
        proven = True
        for t, cap in types:
            left = deadline - time.monotonic()
            if left <= 0:
                proven = False
                v = -1
                break
            res = price(sh, t, cap, w, min(budget, left))
            v = max(v, res.bound)
            proven = proven and res.optimal
            for col in res.columns:
                # Improves the master LP only if its reduced cost is negative (master duals).
                if sum(duals[s] * a for s, a in col.items()) > 1.0 + 1e-9 and add(col):
                    added += 1
        if v > 0:
            value = Fraction(sum(w[s] * sh.demand[s] for s in range(n)), v)
            if value > centre_value:
                centre, centre_value = pi, value
            lb = certificate_bound(sh, w, v)
            if lb > best.bound:
                best = ConfigBound(lb, z, it, len(seen), False, 0.0, tuple(w), v, sh)
        best.lp_value = min(best.lp_value, z)
        best.iterations = it
        best.columns = len(seen)
        if v < 0 or time.monotonic() >= deadline:
            break
        if stop_at is not None and best.bound >= stop_at:
            break
        if best.bound < useful and time.monotonic() - t0 > seconds / 2:
            break
        if best.bound >= math.ceil(z - 1e-6):  # the master LP cannot prove more
            best.converged = proven or best.converged
            break
        solve_lp = added > 0
        if not added:
            if smooth:
                alpha = alpha / 2 if alpha > 0.1 else 0.0  # mis-pricing: move towards the master
            elif proven:
                best.converged = True
                break
            else:
                budget *= 2  # the pricing ran out of time before finding or refuting a column
    best.seconds = time.monotonic() - t0
    return best
