"""The problem in the solver's integer units: items (size classes), capacities, bounds, reasons.

Shards of one model with the same memory and load are interchangeable, so the optimiser counts
them per server instead of placing each one.  A model with unequal shards is split into *items*
(size classes); each item is treated as a model of equal shards.

Units are exact: decimals are read as the user wrote them (``exact``), scaled by a common
denominator and divided by the gcd of the demands, so two loads of 30 fit under a cap of 60 after
10% headroom exactly as they do on paper.  Only when that would need more than 2^24 units per
server (loads with many decimals), or a model has more than 8 shard shapes, do demands round up
(``Instance.exact`` is then False and the lower bound uses rounded-down demands instead).
"""

from __future__ import annotations

import bisect
import functools
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from fractions import Fraction

import numpy as np
import numpy.typing as npt
from ortools.linear_solver import pywraplp

from ekko.api.units import format_bytes
from ekko.solver.types import ModelId, Problem, SloClassName

# A server holds at most this many units in either dimension: exact scales beyond it are given
# up, because big coefficients stall CP-SAT's presolve (at 2^40 units per server a 1k-replica
# model did not get past presolve in 2 s).
MAX_UNITS = 1 << 24
_DEN_GIVE_UP = 1 << 120
# A model with more distinct (memory, load) shard shapes than this is quantised to a 3% grid.
_MAX_EXACT_SHAPES = 8
_GRID = 1.03


@functools.lru_cache(maxsize=1 << 14)
def exact(x: float) -> Fraction:
    """The number the user wrote: the shortest decimal that reads back as the float (0.1 is
    1/10, not 0.1000000000000000055...).  Cached: a problem repeats its loads, caps and
    headroom (``explain`` asks for them once per model; at 30k replicas parsing them again
    took a fifth of a 1 s limit)."""
    return Fraction(repr(float(x)))


def _scale(demands: Iterable[Fraction], caps: Iterable[Fraction]) -> tuple[Fraction, bool]:
    """Units per unit of the input, and whether the scale is exact.

    Exact: a common denominator of every demand and capacity, divided by the gcd of the
    demands, so demands and capacities are integers and a sum of demands fits under a capacity
    in units exactly when it does in the input.  When that would make a server hold more than
    MAX_UNITS units (loads with many decimals, byte sizes with no common factor), demands round up
    by less than 2^-24 of a server (and capacities down): still valid, and a fit is lost only if
    its slack is below that."""
    ds = {d for d in demands if d > 0}
    cs = [c for c in caps if c > 0]
    den = 1
    for q in (*ds, *cs):
        den = math.lcm(den, q.denominator)
        if den > _DEN_GIVE_UP:  # the gcd would never bring this back under MAX_UNITS
            break
    g = 0
    for d in ds:
        g = math.gcd(g, int(d * den))
    scale = Fraction(den, g or 1)
    top = max(cs, default=Fraction(1))
    if top * scale <= MAX_UNITS:
        return scale, True
    return Fraction(MAX_UNITS) / top, False


@dataclass(frozen=True)
class Item:
    """Interchangeable shards of one model: same memory and load per replica."""

    index: int
    model: ModelId
    shards: tuple[int, ...]
    replicas: int
    mem: int  # units per replica (reserve included); exact, or rounded up
    cpu: int  # units per replica; exact, or rounded up
    mem_bytes: int  # bytes of the largest shard in the item, without reserve (move cost)
    slo: SloClassName
    zone_cap: int  # most replicas of one shard per zone
    mem_lo: int = -1  # units rounded down (for the lower bound); -1: same as mem
    cpu_lo: int = -1
    entries: int = 1  # assignment entries per replica (versions held), against item_cap

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def demand(self) -> int:
        return len(self.shards) * self.replicas

    @property
    def mem_low(self) -> int:
        return self.mem if self.mem_lo < 0 else self.mem_lo

    @property
    def cpu_low(self) -> int:
        return self.cpu if self.cpu_lo < 0 else self.cpu_lo


@dataclass(frozen=True)
class Instance:
    problem: Problem
    items: tuple[Item, ...]
    mem_cap: int  # usable memory per server, in units (rounded down)
    cpu_cap: dict[SloClassName, int]  # usable compute per server when the class is present
    cpu_full: int  # usable compute per server with no class cap
    mem_unit: float  # bytes per unit
    cpu_unit: float  # compute units per unit
    exclusive: tuple[tuple[SloClassName, SloClassName], ...]
    zones: tuple[str, ...]
    lower_bound: int
    # Units are exact (no demand rounded, no shape quantised): the model's optimum and its
    # proven bound are those of the problem.
    exact: bool = True
    # Capacities rounded up (equal to the ones above when exact), for the lower bound.
    mem_cap_hi: int = 0
    cpu_cap_hi: dict[SloClassName, int] = field(default_factory=dict)
    cpu_full_hi: int = 0
    bound_source: str = ""
    # Most shard replicas one server holds (what its ServerAssignment can list).
    item_cap: int = 0

    def items_of(self, model: ModelId) -> list[Item]:
        return [it for it in self.items if it.model == model]


def _grid_up(x: int) -> int:
    if x <= 1:
        return x
    k = math.ceil(math.log(x) / math.log(_GRID) - 1e-12)
    return max(x, math.ceil(_GRID**k))


def _up(q: Fraction) -> int:
    return math.ceil(q)


def _down(q: Fraction) -> int:
    return math.floor(q)


def build_instance(problem: Problem) -> Instance:
    """The problem in integer units (module docstring); ``exact`` says whether any fit was
    rounded away."""
    pool = problem.pool
    keep = 1 - exact(pool.headroom)
    mem_eff = pool.memory_bytes * keep
    cpu = exact(pool.compute_units)
    cpu_eff = cpu * keep
    class_eff = {c.name: cpu * min(keep, exact(c.utilisation_cap)) for c in problem.slo_classes}
    mem_q: dict[int, Fraction] = {}
    load_q: dict[float, Fraction] = {}
    per_model: list[list[tuple[int, float]]] = []
    for m in problem.models:
        if m.shard_sizes is None and m.shard_loads is None:  # equal shards: one shape
            row = [(m.memory_of(0), m.load_of(0))] * m.num_shards
        else:
            row = [(m.memory_of(k), m.load_of(k)) for k in range(m.num_shards)]
        for b, ld in set(row):
            if b not in mem_q:
                mem_q[b] = Fraction(b)
            if ld not in load_q:
                load_q[ld] = exact(ld)
        per_model.append(row)
    mscale, m_exact = _scale(mem_q.values(), [mem_eff])
    cscale, c_exact = _scale(load_q.values(), [cpu_eff, *class_eff.values()])
    mem_cap = _down(mem_eff * mscale)
    cpu_full = _down(cpu_eff * cscale)
    cpu_cap = {c: _down(v * cscale) for c, v in class_eff.items()}
    # Per distinct value, not per shard: shards of a model mostly repeat one size and load.
    mem_up = {b: _up(q * mscale) for b, q in mem_q.items()}
    mem_down = {b: _down(q * mscale) for b, q in mem_q.items()}
    cpu_up = {ld: _up(q * cscale) for ld, q in load_q.items()}
    cpu_down = {ld: _down(q * cscale) for ld, q in load_q.items()}
    quantised = False
    items: list[Item] = []
    for m, row in zip(problem.models, per_model, strict=True):
        shapes: dict[tuple[int, int], list[int]] = defaultdict(list)
        raw = [(mem_up[mb], cpu_up[ld]) for mb, ld in row]
        low = [(mem_down[mb], cpu_down[ld]) for mb, ld in row]
        quantise = len(set(raw)) > _MAX_EXACT_SHAPES
        quantised = quantised or quantise
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
                    mem_bytes=m.size_of(0)
                    if m.shard_sizes is None
                    else max(m.size_of(k) for k in shards),
                    slo=m.slo,
                    zone_cap=problem.spread_cap(m.replicas),
                    mem_lo=max(0, min(low[k][0] for k in shards)),
                    cpu_lo=max(0, min(low[k][1] for k in shards)),
                    entries=m.versions_held,
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
        mem_unit=float(1 / mscale),
        cpu_unit=float(1 / cscale),
        exclusive=exclusive,
        zones=tuple(pool.zones) if pool.zones else ("",),
        lower_bound=0,
        exact=m_exact and c_exact and not quantised,
        # With exact (integer) demands a sum fits a capacity exactly when it fits its floor,
        # so the bound may use the floor; rounded demands need the capacity rounded up.
        mem_cap_hi=mem_cap if m_exact else _up(mem_eff * mscale),
        cpu_cap_hi=cpu_cap if c_exact else {c: _up(v * cscale) for c, v in class_eff.items()},
        cpu_full_hi=cpu_full if c_exact else _up(cpu_eff * cscale),
        item_cap=pool.max_shards_per_server,
    )
    lb, source = bound_with_source(inst)
    return replace(inst, lower_bound=lb, bound_source=source)


def lower_bound(inst: Instance) -> int:
    """A valid lower bound on servers (README, "Lower bound")."""
    return bound_with_source(inst)[0]


def bound_with_source(inst: Instance) -> tuple[int, str]:
    """The lower bound and which argument produced it.  Demands are taken rounded down and
    capacities rounded up, so the bound holds for the problem itself, not only for the units."""
    if not inst.items:
        return 0, "empty"
    mem_cap = inst.mem_cap_hi or inst.mem_cap
    cpu_full = inst.cpu_full_hi or inst.cpu_full
    cpu_cap = inst.cpu_cap_hi or inst.cpu_cap
    mem_total = sum(it.mem_low * it.demand for it in inst.items)
    cpu_total = sum(it.cpu_low * it.demand for it in inst.items)
    found: dict[str, int] = {
        "memory": -(-mem_total // mem_cap) if mem_cap else 0,
        "compute": -(-cpu_total // cpu_full) if cpu_full else 0,
        "replicas": max(it.replicas for it in inst.items),
    }
    if inst.item_cap:  # a server lists at most item_cap entries, whatever their size
        entries = sum(it.entries * it.demand for it in inst.items)
        found["shards per server"] = -(-entries // inst.item_cap)
    mem_s = np.array([it.mem_low for it in inst.items], dtype=np.int64)
    cpu_s = np.array([it.cpu_low for it in inst.items], dtype=np.int64)
    dem = np.array([it.demand for it in inst.items], dtype=np.int64)
    slo = np.array([it.slo for it in inst.items])
    # Bin packing in one dimension (dual-feasible functions): a server holds at most mem_cap
    # of memory and cpu_full of compute whatever else is on it.
    found["bin packing (memory)"] = dff_bound(mem_s, dem, mem_cap)
    found["bin packing (compute)"] = dff_bound(cpu_s, dem, cpu_full)
    # Assignment entries as a third dimension: a replica takes `entries` of a server's item_cap.
    ent_s = np.array([it.entries for it in inst.items], dtype=np.int64)
    count_dim = [(ent_s, inst.item_cap)] if inst.item_cap else []
    found["replicas per server"] = cardinality_bound(
        [(mem_s, mem_cap), (cpu_s, cpu_full), *count_dim], dem
    )
    per_class: dict[SloClassName, int] = {}
    for c in sorted({it.slo for it in inst.items}):
        mine = [it for it in inst.items if it.slo == c]
        mem_c = sum(it.mem_low * it.demand for it in mine)
        cpu_c = sum(it.cpu_low * it.demand for it in mine)
        cap = cpu_cap[c]
        sel = slo == c
        b_c = max(
            -(-mem_c // mem_cap) if mem_cap else 0,
            -(-cpu_c // cap) if cap else 0,
            *(it.replicas for it in mine),
            # servers holding class c: its replicas alone, packed under c's own compute cap
            dff_bound(mem_s[sel], dem[sel], mem_cap),
            dff_bound(cpu_s[sel], dem[sel], cap),
            cardinality_bound(
                [(mem_s[sel], mem_cap), (cpu_s[sel], cap), *((o[sel], k) for o, k in count_dim)],
                dem[sel],
            ),
            -(-sum(it.entries * it.demand for it in mine) // inst.item_cap) if inst.item_cap else 0,
        )
        found[f"bin packing (class {c})"] = b_c
        per_class[c] = b_c
        # Servers holding class c carry at most cap each; the rest at most cpu_full.
        if cpu_full:
            rest = max(0, cpu_total - b_c * cap)
            found["class caps"] = max(found.get("class caps", 0), b_c + -(-rest // cpu_full))
    for a, b in inst.exclusive:
        if a in per_class and b in per_class:
            found["exclusions"] = max(found.get("exclusions", 0), per_class[a] + per_class[b])
    # Replicas above half a server in one dimension never share a server with each other.
    found["big replicas"] = max(
        sum(it.demand for it in inst.items if 2 * it.mem_low > mem_cap),
        sum(it.demand for it in inst.items if 2 * it.cpu_low > cpu_cap[it.slo]),
    )
    found["LP over server types"] = math.ceil(lp_bound(inst, per_class) - 1e-6)
    source = max(found, key=lambda k: found[k])
    return found[source], source


def explain(problem: Problem, inst: Instance | None = None) -> list[str]:
    """Reasons, in words a user can act on, why no valid plan can exist.  Empty when none of the
    common causes applies (the problem may still be infeasible for subtler reasons)."""
    inst = inst or build_instance(problem)
    pool = problem.pool
    out: list[str] = []
    mem_eff = pool.usable_memory()
    hold = (
        f"servers in pool {pool.name} hold {format_bytes(pool.memory_bytes)} "
        f"(after {pool.headroom:.0%} headroom: {format_bytes(mem_eff)})"
    )
    mem_limit = pool.memory_bytes * (1 - exact(pool.headroom))
    cpu_limit = {
        c.name: exact(pool.compute_units) * min(1 - exact(pool.headroom), exact(c.utilisation_cap))
        for c in problem.slo_classes
    }
    for m in problem.models:
        uniform = m.shard_sizes is None and m.shard_loads is None
        worst = 0 if uniform else max(range(m.num_shards), key=m.memory_of)
        if m.memory_of(worst) > mem_limit:
            extra = ""
            if m.reserve_factor or m.reserve_bytes:
                extra = f" ({format_bytes(m.size_of(worst))} plus rollout reserve)"
            out.append(
                f"shard {m.id}/{worst} needs {format_bytes(m.memory_of(worst))}{extra}; {hold}. "
                "Split the model into more shards or use a pool with bigger servers."
            )
        heavy = 0 if uniform else max(range(m.num_shards), key=m.load_of)
        cap = problem.slo(m.slo).utilisation_cap
        limit = pool.usable_compute(cap)
        if exact(m.load_of(heavy)) > cpu_limit[m.slo]:
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
        entries = sum(m.num_shards * m.replicas * m.versions_held for m in problem.models)
        out.append(
            f"the models need at least {inst.lower_bound} servers (memory "
            f"{format_bytes(mem_total)} at {format_bytes(mem_eff)} per server, compute {cpu_total:g} at "
            f"{pool.usable_compute():g} per server, {entries} assignment entries (shard replicas "
            f"times versions held) at most {pool.max_shards_per_server} per server, SLO caps "
            "and exclusions "
            f"included); pool "
            f"{pool.name} allows at most {pool.max_servers}. Raise max_servers or lower replicas."
        )
    return out


# Most distinct (class, memory, load) shapes the LP over server types splits one by one.
LP_SHAPES = 600


def lp_bound(inst: Instance, per_class: dict[SloClassName, int] | None = None) -> float:
    """LP relaxation over server *types* (sets of SLO classes that may share a server): every
    item's replicas are split over the types that contain its class (memory and compute in
    the same proportion, as an item's replicas are alike), a type with classes T has compute
    cap min_{c in T} CAP_c, and the servers holding class c number at least ``per_class[c]``.
    Returns the fractional number of servers (README, "Lower bound").

    The split is per item, not per class: one fraction for a whole class's memory and compute
    claimed 4 servers where 3 suffice (a class's memory-heavy items on servers shared with a
    capped class, its compute-heavy ones on servers of their own)."""
    classes = sorted({it.slo for it in inst.items})
    if not classes:
        return 0.0
    mem_cap = inst.mem_cap_hi or inst.mem_cap
    cpu_cap = inst.cpu_cap_hi or inst.cpu_cap
    if mem_cap <= 0:  # nothing fits a server: explain() reports it
        return 0.0
    # Items of one class with the same memory and load per replica split alike: merge them.
    # Beyond LP_SHAPES shapes, each class's memory, compute and replica count split
    # independently instead (a weaker relaxation of the same LP, still sound, and small).
    shapes: dict[tuple[SloClassName, int, int, int], int] = defaultdict(int)
    for it in inst.items:
        shapes[it.slo, it.mem_low, it.cpu_low, it.entries] += it.demand
    # (class, memory, compute, entries) of each part that splits over server types as one.
    parts_of: list[tuple[SloClassName, int, int, int]] = [
        (c, mem * d, cpu * d, e * d) for (c, mem, cpu, e), d in shapes.items()
    ]
    if len(shapes) > LP_SHAPES:
        per: dict[SloClassName, list[int]] = defaultdict(lambda: [0, 0, 0])
        for c, mem, cpu, d in parts_of:
            per[c][0] += mem
            per[c][1] += cpu
            per[c][2] += d
        parts_of = [
            part
            for c, (mem, cpu, d) in per.items()
            for part in ((c, mem, 0, 0), (c, 0, cpu, 0), (c, 0, 0, d))
        ]
    types = server_types(inst)
    lp = pywraplp.Solver.CreateSolver("GLOP")
    if lp is None:  # GLOP ships with OR-Tools; be safe anyway
        return 0.0
    n = [lp.NumVar(0.0, lp.infinity(), "") for _ in types]
    mem_k: list[list[object]] = [[] for _ in types]
    cpu_k: list[list[object]] = [[] for _ in types]
    cnt_k: list[list[object]] = [[] for _ in types]
    for c, mem, cpu, d in parts_of:
        parts = []
        for k, t in enumerate(types):
            if c in t:
                g = lp.NumVar(0.0, 1.0, "")
                parts.append(g)
                mem_k[k].append(g * (mem / mem_cap))
                cap = min(cpu_cap[x] for x in t)
                if cap > 0:
                    cpu_k[k].append(g * (cpu / cap))
                if inst.item_cap and d:  # a server lists at most item_cap entries
                    cnt_k[k].append(g * (d / inst.item_cap))
        lp.Add(sum(parts) == 1)
    for k in range(len(types)):
        if mem_k[k]:
            lp.Add(sum(mem_k[k]) <= n[k])  # type: ignore[arg-type]
        if cpu_k[k]:
            lp.Add(sum(cpu_k[k]) <= n[k])  # type: ignore[arg-type]
        if cnt_k[k]:
            lp.Add(sum(cnt_k[k]) <= n[k])  # type: ignore[arg-type]
    # Servers that hold class c number at least its own bound B_c (per-class bin packing).
    for c, b_c in (per_class or {}).items():
        lp.Add(sum(n[k] for k, t in enumerate(types) if c in t) >= b_c)
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


# Dual-feasible functions (DFF) tried per dimension: u_k for k = 1..DFF_K, and the threshold
# function U^e for at most DFF_THRESHOLDS thresholds e (README, "Lower bound").
DFF_K = 8
DFF_THRESHOLDS = 24


def dff_bound(sizes: npt.NDArray[np.int64], counts: npt.NDArray[np.int64], cap: int) -> int:
    """A bin-packing lower bound for ``counts[j]`` items of integer size ``sizes[j]`` in bins of
    integer capacity ``cap``: ``ceil(sum f(s/cap))`` for dual-feasible functions f (any f on
    [0, 1] with ``sum x <= 1 => sum f(x) <= 1``), maximised over Fekete and Schepers' families
    u_k (``x`` if ``(k+1)x`` is whole, else ``floor((k+1)x)/k``), the threshold functions U^e
    (1 above ``1-e``, 0 below ``e``, ``x`` between) and their compositions u_k(U^e).  Integer
    arithmetic throughout, so the bound is exact (a bound on items of these sizes, whatever
    else constrains them)."""
    keep = (counts > 0) & (sizes > 0)
    s, d = sizes[keep].astype(np.int64), counts[keep].astype(np.int64)
    if cap <= 0 or len(s) == 0:
        return 0
    s = np.minimum(s, cap)
    best = int(-(-int((s * d).sum()) // cap))
    # Thresholds: distinct sizes up to half the bin (0 = no threshold), spread over the range.
    small = np.unique(s[2 * s <= cap])
    if len(small) > DFF_THRESHOLDS:
        small = small[np.linspace(0, len(small) - 1, DFF_THRESHOLDS).astype(np.int64)]
    for e in (0, *(int(x) for x in small)):
        # U^e in units of cap: cap above cap - e, 0 below e, the size in between.
        v = np.where(s > cap - e, cap, np.where(s < e, 0, s)) if e else s
        best = max(best, int(-(-int((v * d).sum()) // cap)))
        for k in range(1, DFF_K + 1):
            # u_k(v/cap) * k * cap, exactly: k*v if (k+1)v is a multiple of cap, else
            # floor((k+1)v/cap) * cap.
            w = np.where(((k + 1) * v) % cap == 0, k * v, ((k + 1) * v // cap) * cap)
            best = max(best, int(-(-int((w * d).sum()) // (k * cap))))
    return best


# Item counts per server checked one by one by the cardinality bound; larger counts share the
# last one's limit (sound: the limits only fall as the count grows).
CARD_J = 256


class _Smallest:
    """Sum of the r smallest of a multiset of integer sizes (sizes with multiplicities)."""

    def __init__(self, sizes: npt.NDArray[np.int64], counts: npt.NDArray[np.int64]) -> None:
        order = np.argsort(sizes, kind="stable")
        self.sizes = [int(x) for x in sizes[order]]
        self.cum_n = [0]
        self.cum_s = [0]
        for s, c in zip(self.sizes, (int(x) for x in counts[order]), strict=True):
            self.cum_n.append(self.cum_n[-1] + c)
            self.cum_s.append(self.cum_s[-1] + c * s)

    def __call__(self, r: int) -> int:
        k = bisect.bisect_right(self.cum_n, r) - 1  # whole groups below r
        if k >= len(self.sizes):
            return self.cum_s[-1]
        return self.cum_s[k] + (r - self.cum_n[k]) * self.sizes[k]


def cardinality_bound(
    dims: list[tuple[npt.NDArray[np.int64], int]], counts: npt.NDArray[np.int64]
) -> int:
    """Fewest servers for ``counts[j]`` replicas of item j, from how many replicas a server can
    hold: with ``m_j`` servers holding at least j replicas, the j smallest replicas of each
    such server fit its capacity, so the ``j*m_j`` smallest replicas of the whole input sum to
    at most ``m_j * cap`` in every dimension (``dims``: sizes and capacity); that caps ``m_j``
    at ``M_j``.  The replicas number ``sum_j m_j <= sum_j min(B, M_j)`` on B servers, so B is at
    least the smallest value that reaches the replica count."""
    n = int(counts.sum())
    if n == 0:
        return 0
    smallest = [(_Smallest(s, counts), cap) for s, cap in dims]

    def fits(r: int, m: int) -> bool:  # the r smallest replicas fit m servers in every dim
        return all(f(r) <= m * cap for f, cap in smallest)

    limits: list[int] = [n]  # M_1: no limit beyond the replica count
    j = 2
    while j <= min(CARD_J, n):
        if not fits(j, 1):
            break
        lo, hi = 1, n // j  # largest m with fits(j*m, m); fits(j, 1) holds
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(j * mid, mid):
                lo = mid
            else:
                hi = mid - 1
        limits.append(lo)
        j += 1
    extra = 0  # counts above CARD_J share its limit
    if j > CARD_J and j <= n:
        k = j
        step = CARD_J
        while k <= n and fits(k, 1):
            k += step  # coarse: how far counts still fit one server
        extra = k - j

    def reach(b: int) -> int:
        return sum(min(b, m) for m in limits) + extra * min(b, limits[-1])

    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi) // 2
        if reach(mid) >= n:
            hi = mid
        else:
            lo = mid + 1
    return lo
