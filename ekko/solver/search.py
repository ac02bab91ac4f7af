"""``solve(problem, config) -> Plan``: the optimiser with its deadline and fallbacks.

Steps (README, "Search"):
1. explain obvious infeasibility (a value, not an exception);
2. a start plan that is always valid: the current placement repaired greedily (replicas that no
   longer fit are re-placed best-fit), or the better of FFD and BFD from scratch;
3. optimise: one CP-SAT (or HiGHS) model when the problem is small; otherwise groups of about
   ``config.group_size`` shard replicas solved one by one (from scratch), then large-neighbourhood
   search (LNS) over the whole plan until the deadline: free a few lightly loaded servers plus
   random others, re-solve the counts on them, keep the result if the objective drops;
4. map counts back to shard replicas (keeping shards where they are), check the plan with the
   independent checker, and return the start plan instead if anything went wrong.
"""

from __future__ import annotations

import contextlib
import gc
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from ekko.solver import colgen, greedy
from ekko.solver.checker import violations
from ekko.solver.core import (
    BALANCE_WEIGHT,
    NEW_SERVER_EXTRA,
    SERVER_WEIGHT,
    CoreResult,
    Slot,
    SubProblem,
    evaluate,
    move_weight,
    solve_cpsat,
    solve_highs,
)
from ekko.solver.instance import Instance, Item, build_instance, explain, lower_bound
from ekko.solver.mapping import realise
from ekko.solver.plans import current_placement, infeasible_plan, make_plan
from ekko.solver.types import Plan, PlanStatus, Problem, ServerId, SolveConfig, ZoneId

Counts = dict[tuple[int, ServerId], int]
NAME = "ekko"


def _core(sub: SubProblem, limit: float, config: SolveConfig) -> CoreResult:
    if config.backend == "highs":
        return solve_highs(
            sub, limit, gap=config.relative_gap_limit, seed=config.seed, log=config.log
        )
    return solve_cpsat(
        sub,
        limit,
        workers=config.num_workers,
        gap=config.relative_gap_limit,
        seed=config.seed,
        log=config.log,
    )


def _counts(inst: Instance, placed: Mapping[tuple[str, int], list[ServerId]]) -> Counts:
    item_of: dict[tuple[str, int], int] = {}
    for it in inst.items:
        for s in it.shards:
            item_of[it.model, s] = it.index
    out: Counts = defaultdict(int)
    for key, servers in placed.items():
        for sid in servers:
            out[item_of[key], sid] += 1
    return dict(out)


class _Ids:
    """Fresh slot ids that collide with nothing."""

    def __init__(self, taken: set[ServerId]) -> None:
        self.taken = set(taken)
        self.k = 0

    def new(self) -> ServerId:
        while True:
            sid = ServerId(f"~new-{self.k}")
            self.k += 1
            if sid not in self.taken:
                self.taken.add(sid)
                return sid


def _slots(
    inst: Instance,
    start: Counts | None,
    start_zones: Mapping[ServerId, ZoneId],
    *,
    holding: set[ServerId],
    target_total: int,
    ids: _Ids,
    include_existing: bool = True,
) -> list[Slot]:
    """Existing servers, the start plan's new servers, and spare fresh slots per zone."""
    pool = (
        inst.problem.pool
        if include_existing
        else inst.problem.pool.model_copy(update={"servers": ()})
    )
    k = len(inst.zones)
    used_by_start = {sid for (_, sid) in start} if start else set()
    per_zone_start: dict[str, int] = defaultdict(int)
    for sid in used_by_start:
        per_zone_start[start_zones[sid]] += 1
    slots: list[Slot] = []
    for zone in inst.zones:
        target = max(per_zone_start[zone], math.ceil(target_total / k)) + 1
        fixed = [
            Slot(s.id, s.zone, False) for s in pool.servers if s.zone == zone and s.id in holding
        ]
        fresh_used = [
            Slot(s.id, s.zone, True)
            for s in pool.servers
            if s.zone == zone and s.id not in holding and s.id in used_by_start
        ]
        fresh_used += [
            Slot(sid, ZoneId(zone), True, new=True)
            for sid in sorted(used_by_start)
            if start_zones[sid] == zone and sid not in {x.id for x in pool.servers}
        ]
        idle = [
            Slot(s.id, s.zone, True)
            for s in pool.servers
            if s.zone == zone and s.id not in holding and s.id not in used_by_start
        ]
        zone_slots = fixed + fresh_used + idle
        while len(zone_slots) < target:
            zone_slots.append(Slot(ids.new(), ZoneId(zone), True, new=True))
        slots.extend(zone_slots)
    return slots


def _full_sub(
    inst: Instance,
    items: list[Item],
    slots: list[Slot],
    *,
    old: Counts,
    hint: Counts | None,
    config: SolveConfig,
    lb: int,
    balance: bool,
) -> SubProblem:
    return SubProblem(
        inst=inst,
        items=items,
        demand={it.index: it.demand for it in items},
        zone_room={(it.index, z): it.num_shards * it.zone_cap for it in items for z in inst.zones},
        slots=slots,
        old=old,
        hint=hint,
        max_servers=inst.problem.pool.max_servers,
        lower_bound=lb,
        migration_weight=config.migration_weight,
        balance=balance,
    )


def _objective(inst: Instance, counts: Counts, old: Counts, config: SolveConfig) -> float:
    """The model's objective (without balance) for a count solution."""
    servers = len({sid for (_, sid), k in counts.items() if k})
    sub = SubProblem(inst, inst.items, {}, {}, [], migration_weight=config.migration_weight)
    moved = 0
    for (i, sid), o in old.items():
        lost = o - counts.get((i, sid), 0)
        if lost > 0:
            moved += lost * move_weight(sub, inst.items[i])
    return SERVER_WEIGHT * servers + moved


# Groups are solved only with at least this many seconds each; else straight to LNS.
GROUP_MIN_SECONDS = 3.0
# LNS neighbourhood: servers re-solved together, and seconds per step.
LNS_SERVERS = 8
LNS_STEP_SECONDS = 0.2
# Most z variables (items x slots) one CP-SAT model gets within a deadline of seconds.
VAR_BUDGET = 4000


def _num_groups(inst: Instance, size: int, servers: int) -> int:
    """Groups of about ``size`` replicas, and few enough variables each: G groups have 1/G of
    the items and 1/G of the servers, so 1/G^2 of the variables."""
    total = sum(it.demand for it in inst.items)
    by_vars = math.ceil(math.sqrt(len(inst.items) * max(servers, 1) / VAR_BUDGET))
    return max(1, math.ceil(total / size), by_vars)


def _groups(inst: Instance, g: int) -> list[list[Item]]:
    """Models dealt round-robin (snake order, biggest first) into g groups, so every group has
    a similar mix of big/small, memory-/compute-heavy and SLO classes."""
    models: dict[str, list[Item]] = defaultdict(list)
    for it in inst.items:
        models[it.model].append(it)
    order = sorted(
        models.values(),
        key=lambda its: (
            -sum(it.mem * it.demand for it in its) / inst.mem_cap
            - sum(it.cpu * it.demand for it in its) / max(inst.cpu_full, 1)
        ),
    )
    groups: list[list[Item]] = [[] for _ in range(g)]
    for k, its in enumerate(order):
        r = k % (2 * g)
        groups[r if r < g else 2 * g - 1 - r].extend(its)
    return [grp for grp in groups if grp]


def _grouped(
    inst: Instance,
    *,
    config: SolveConfig,
    deadline: float,
    ids: _Ids,
    notes: list[str],
    num_groups: int,
) -> tuple[Counts, dict[ServerId, ZoneId]] | None:
    groups = _groups(inst, num_groups)
    counts: Counts = {}
    zones: dict[ServerId, ZoneId] = {}
    for gi, items in enumerate(groups):
        sub_inst = replace(inst, items=tuple(items))
        gr = greedy.run_counts(sub_inst, sorted(items, key=greedy.item_key(sub_inst)), "best")
        if not gr.complete:
            return None
        # Greedy ids repeat across groups: give them fresh ones.
        rename = {sid: ids.new() for sid, _ in gr.servers}
        g_counts = {(i, rename[sid]): k for (i, sid), k in gr.counts.items()}
        g_zones = {rename[sid]: z for sid, z in gr.servers}
        left = deadline - time.monotonic()
        limit = left / (len(groups) - gi)
        slots = _slots(
            sub_inst,
            g_counts,
            g_zones,
            holding=set(),
            target_total=len(gr.servers),
            ids=ids,
            include_existing=False,
        )
        sub = _full_sub(
            inst,
            items,
            slots,
            old={},
            hint=g_counts,
            config=config,
            lb=lower_bound(sub_inst),
            balance=False,
        )
        res = _core(sub, limit, config) if limit > 0.2 else None
        if res is not None and res.status != "none" and res.servers <= len(gr.servers):
            for (i, sid), k in res.counts.items():
                counts[i, sid] = k
            for s in slots:
                zones[s.id] = s.zone
        else:
            counts.update(g_counts)
            zones.update(g_zones)
            notes.append(f"group {gi}: optimiser found nothing better than best-fit")
    return counts, zones


def _neighbourhood(
    inst: Instance,
    state: Counts,
    per_server: Mapping[ServerId, list[int]],
    zones: Mapping[ServerId, ZoneId],
    *,
    victim: ServerId,
    partners: list[ServerId],
    old: Counts,
    config: SolveConfig,
) -> tuple[SubProblem, Counts]:
    """The sub-problem that re-places what the chosen servers hold, on those servers."""
    items = inst.items
    chosen = [victim, *partners]
    cset = set(chosen)
    demand: dict[int, int] = defaultdict(int)
    for s in chosen:
        for i in per_server[s]:
            demand[i] += state[i, s]
    outside: dict[tuple[int, str], int] = defaultdict(int)
    for (i, sid), k in state.items():
        if i in demand and sid not in cset:
            outside[i, zones[sid]] += k
    room = {
        (i, z): items[i].num_shards * items[i].zone_cap - outside[i, z]
        for i in demand
        for z in inst.zones
    }
    hint = {(i, s): state[i, s] for s in chosen for i in per_server[s]}
    sub = SubProblem(
        inst=inst,
        items=[items[i] for i in sorted(demand)],
        demand=dict(demand),
        zone_room=room,
        slots=[Slot(s, zones[s], False) for s in chosen],
        old={(i, sid): k for (i, sid), k in old.items() if sid in cset},
        hint=hint,
        migration_weight=config.migration_weight,
        drain=victim,
    )
    return sub, hint


def _spread_ok(
    inst: Instance, state: Counts, zones: Mapping[ServerId, ZoneId], touched: set[int]
) -> bool:
    """Zone spread (7) still holds for these items in the whole state."""
    per_zone: dict[tuple[int, str], int] = defaultdict(int)
    for (i, sid), k in state.items():
        if i in touched:
            per_zone[i, zones[sid]] += k
    return all(
        k <= inst.items[i].num_shards * inst.items[i].zone_cap for (i, _), k in per_zone.items()
    )


def _lns(
    inst: Instance,
    counts: Counts,
    zones: Mapping[ServerId, ZoneId],
    *,
    old: Counts,
    config: SolveConfig,
    deadline: float,
    notes: list[str],
) -> tuple[Counts, int]:
    """Large-neighbourhood search on counts (README, "Search"): drain a light server into
    servers with room in the dimension it needs; with two or more workers, two disjoint
    neighbourhoods are solved at once (CP-SAT releases the GIL), one worker each.  Returns the
    counts and the number of improving steps."""
    rng = random.Random(config.seed)
    state = dict(counts)
    improved = 0
    tries = 0
    items = inst.items
    lanes = 2 if config.num_workers >= 2 and len(counts) > 0 else 1
    sub_config = config.model_copy(update={"num_workers": max(1, config.num_workers // lanes)})
    victims: list[ServerId | None] = [None] * lanes
    pool = ThreadPoolExecutor(max_workers=lanes) if lanes > 1 else None
    try:
        while True:
            left = deadline - time.monotonic()
            if left < 0.3:
                break
            per_server: dict[ServerId, list[int]] = defaultdict(list)
            for (i, sid), k in state.items():
                if k:
                    per_server[sid].append(i)
            lanes_now = 1 if len(per_server) <= 2 * LNS_SERVERS else lanes
            mem_f: dict[ServerId, float] = {}
            cpu_f: dict[ServerId, float] = {}
            for sid, its in per_server.items():
                cap = min([inst.cpu_full, *(inst.cpu_cap[items[i].slo] for i in its)]) or 1
                mem_f[sid] = sum(items[i].mem * state[i, sid] for i in its) / inst.mem_cap
                cpu_f[sid] = sum(items[i].cpu * state[i, sid] for i in its) / cap
            by_fill = sorted(per_server, key=lambda sid: max(mem_f[sid], cpu_f[sid]))
            taken: set[ServerId] = set()
            jobs: list[tuple[int, SubProblem, Counts]] = []
            for lane in range(lanes_now):
                # One light server to drain, plus servers with room in the dimension it needs
                # most; keep draining the same server while that makes progress.
                victim = victims[lane]
                if victim is None or victim not in per_server or victim in taken:
                    light = [s for s in by_fill[: max(6, len(by_fill) // 20)] if s not in taken]
                    if not light:
                        break
                    victim = rng.choice(light)
                    victims[lane] = victim
                taken.add(victim)
                dim = cpu_f if cpu_f[victim] >= mem_f[victim] else mem_f
                roomy = sorted((s for s in per_server if s not in taken), key=lambda x: dim[x])
                partners = rng.sample(
                    roomy[: 3 * LNS_SERVERS], min(LNS_SERVERS - 1, len(roomy[: 3 * LNS_SERVERS]))
                )
                taken.update(partners)
                sub, hint = _neighbourhood(
                    inst, state, per_server, zones, victim=victim, partners=partners, old=old,
                    config=config,
                )  # fmt: skip
                jobs.append((lane, sub, hint))
            limit = min(left - 0.2, LNS_STEP_SECONDS)
            if pool is not None and len(jobs) > 1:
                futures = [pool.submit(_core, sub, limit, sub_config) for _, sub, _ in jobs]
                results = [f.result() for f in futures]
            else:
                results = [_core(sub, limit, config) for _, sub, _ in jobs]
            for (lane, sub, hint), res in zip(jobs, results, strict=True):
                tries += 1
                if res.status == "none" or evaluate(sub, res.counts) >= evaluate(sub, hint) - 0.5:
                    victims[lane] = None
                    continue
                trial = {k: v for k, v in state.items() if k not in hint}
                trial.update(res.counts)
                if not _spread_ok(inst, trial, zones, set(sub.demand)):
                    victims[lane] = None
                    continue
                state = trial
                improved += 1
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    notes.append(f"LNS: {improved} improving steps of {tries}")
    return state, improved


def _adopt_idle(problem: Problem, counts: Counts, zones: dict[ServerId, ZoneId]) -> Counts:
    """Use idle existing servers instead of new ones of the same zone."""
    existing = {s.id for s in problem.pool.servers}
    used = sorted({sid for (_, sid), k in counts.items() if k})
    idle: dict[str, list[ServerId]] = defaultdict(list)
    for s in problem.pool.servers:
        if s.id not in used:
            idle[s.zone].append(s.id)
    rename: dict[ServerId, ServerId] = {}
    for sid in used:
        if sid not in existing and idle[zones[sid]]:
            rename[sid] = idle[zones[sid]].pop(0)
    if not rename:
        return counts
    return {(i, rename.get(sid, sid)): k for (i, sid), k in counts.items()}


def _portfolio(
    inst: Instance,
) -> list[tuple[str, greedy.Choice, Callable[[], list[greedy.Replica]], bool]]:
    """Replica-by-replica greedy starts from scratch, likeliest best first: every greedy of
    ``BASELINES`` (same engine, orders and choices, so ekko is never worse than any of them when
    they all ran) and the capped-classes-first variants.  (label, choice, order, dedicated);
    orders are built only when their greedy runs."""

    def plain() -> list[greedy.Replica]:
        return greedy.replicas_of(inst, {})

    def dec() -> list[greedy.Replica]:
        return sorted(plain(), key=greedy.decreasing(inst))

    def capped() -> list[greedy.Replica]:
        return sorted(plain(), key=greedy.capped_first(inst))

    return [
        ("best-fit, capped classes first", "best", capped, False),
        ("first-fit decreasing", "first", dec, False),
        ("best-fit decreasing", "best", dec, False),
        ("first-fit, capped classes first", "first", capped, False),
        ("most-allocated", "most", plain, False),
        ("dedicated", "first", dec, True),
        ("least-allocated", "least", plain, False),
        ("seldon", "seldon", plain, False),
    ]


@dataclass
class _Start:
    """A start plan: counts, its servers, its shard placement once known, and whether every
    replica was placed."""

    label: str
    counts: Counts
    servers: list[tuple[ServerId, ZoneId]]
    placed: dict[tuple[str, int], list[ServerId]] | None
    complete: bool

    @staticmethod
    def of(label: str, inst: Instance, res: greedy.GreedyResult) -> _Start:
        return _Start(label, _counts(inst, res.placed), res.servers, res.placed, not res.unplaced)

    def realise(
        self, inst: Instance, current: Mapping[tuple[str, int], list[ServerId]]
    ) -> dict[tuple[str, int], list[ServerId]] | None:
        """The shard placement of the counts (kept where the current placement allows)."""
        if self.placed is None:
            self.placed = realise(list(inst.items), self.counts, dict(self.servers), current)
        return self.placed


def _at_bound(inst: Instance, starts: list[_Start], current: object) -> bool:
    """A start already meets the lower bound (and there is nothing to move)."""
    return not current and any(st.complete and len(st.servers) <= inst.lower_bound for st in starts)


@dataclass
class _Run:
    """One call of :func:`solve`: its inputs, clock and notes, shared by its steps."""

    problem: Problem
    inst: Instance
    config: SolveConfig
    t0: float
    current: dict[tuple[str, int], list[ServerId]]
    old: Counts
    notes: list[str]

    @property
    def deadline(self) -> float:
        return self.t0 + self.config.time_limit


@dataclass
class _Outcome:
    """What the optimiser settled on: counts, their servers' zones, status and bound."""

    best: Counts | None
    zones: dict[ServerId, ZoneId]
    status: PlanStatus
    bound: int


def solve(problem: Problem, config: SolveConfig | None = None) -> Plan:
    """Best plan found before ``config.time_limit``; never raises on infeasible input.

    The deadline bounds the whole call (building the instance, starts, optimiser, mapping and
    the final check): further starts and the optimiser stop early enough to leave time for
    mapping and checking (estimated from one greedy pass).  What always runs is the instance
    with its bound, one greedy start, and mapping and checking the plan returned; on inputs where
    those alone take longer than the limit (about 30k replicas at 1 s), the call overruns by
    them.  ``bench/placement.py`` reports the overshoot.
    """
    with _gc_paused():
        return _solve(problem, config or SolveConfig())


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the call: the solver allocates hundreds of
    thousands of short-lived acyclic objects (counts, tuples, pydantic models) that reference
    counting frees, and the collector's full passes over them took about 0.5 s of a 1 s limit at
    30k replicas (mapping and building the plan: 0.5-1.1 s with it, 0.25-0.3 s without, load
    24).  It is turned back on afterwards if it was on, and collects any cycles then."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _solve(problem: Problem, config: SolveConfig) -> Plan:
    t0 = time.monotonic()
    inst = build_instance(problem)
    reasons = explain(problem, inst)
    if reasons:
        return infeasible_plan(NAME, reasons, inst.lower_bound, time.monotonic() - t0)
    current = current_placement(problem)
    notes: list[str] = [f"lower bound {inst.lower_bound} from {inst.bound_source}"]
    run = _Run(problem, inst, config, t0, current, _counts(inst, current), notes)

    # 2. start plans
    starts, one_pass, capped_items = _start_plans(run)
    start = _choose_start(run, starts)
    start_counts = start.counts if start else None
    zones: dict[ServerId, ZoneId] = {s.id: s.zone for s in problem.pool.servers}
    if start:
        zones.update(dict(start.servers))
    else:
        lifted = _lifted_start(run, capped_items)
        if lifted is not None:
            start_counts = lifted.counts
            zones.update(dict(lifted.servers))
            notes.append(f"start above max_servers: {len(lifted.servers)} servers")
    # Mapping back and checking take about three times mapping the start: map the start now
    # (it is the plan returned when nothing better is found) and keep that much of the deadline.
    t_map = time.monotonic()
    if start is not None:
        start.realise(inst, current)
    t_map = time.monotonic() - t_map
    reserve = min(0.5 * config.time_limit, 0.05 * config.time_limit + 3 * t_map + one_pass)
    if start is not None and not _at_bound(inst, [start], current):
        inst = _config_bound(run, starts, len(start.servers), run.deadline - reserve)

    # 3. optimise (skipped when a start already meets the lower bound with nothing to move)
    out = _optimise(run, start, start_counts, zones, run.deadline - reserve)

    if out.best is not None and len({sid for (_, sid), k in out.best.items() if k}) > (
        problem.pool.max_servers
    ):
        notes.append("the optimiser's plan stayed above max_servers")
        out.best = start_counts if start is not None else None
        out.status = "fallback"
    if out.best is None:
        return _no_plan(problem, out.bound, t0, notes)
    servers_used = len({sid for (_, sid), k in out.best.items() if k})
    if servers_used <= out.bound and not run.old and out.status != "optimal":
        out.status = "optimal"
    out.best = _adopt_idle(problem, out.best, out.zones)

    # 4. map back, check, fall back
    return _finish(run, start, out)


# Share of the time limit the configuration LP may take, and the least worth starting.
CONFIG_LP_SHARE = 0.15
CONFIG_LP_MIN_SECONDS = 0.5
# Most shapes worth it under a deadline: beyond a few hundred the generation needs more than
# 10 s (bench families at M: 380-2,000 shapes; on zone-tight M, 379 shapes, 1.5 s gained
# nothing).
CONFIG_LP_MAX_SHAPES = 300


def _config_bound(run: _Run, starts: list[_Start], servers: int, opt_deadline: float) -> Instance:
    """Tighten the lower bound with the configuration LP (``colgen``), time-boxed to
    ``CONFIG_LP_SHARE`` of the limit (on at most ``CONFIG_LP_MAX_SHAPES`` shapes) and started
    from the starts' servers as columns; it stops once it proves the best start optimal.  Returns the instance with the better bound (and
    the first note naming it) or the same instance."""
    inst = run.inst
    seconds = min(CONFIG_LP_SHARE * run.config.time_limit, opt_deadline - time.monotonic() - 1.0)
    if seconds < CONFIG_LP_MIN_SECONDS:
        return inst
    shapes = colgen.shapes_of(inst)
    if len(shapes) > CONFIG_LP_MAX_SHAPES:
        return inst
    patterns = [p for st in starts if st.complete for p in colgen.patterns_of(shapes, st.counts)]
    res = colgen.config_lp_bound(
        inst, seconds, patterns=patterns, stop_at=servers, useful=inst.lower_bound * 9 // 10
    )
    run.notes.append(
        f"configuration LP: bound {res.bound} in {res.seconds:.2f} s, {res.iterations} "
        f"iterations, {res.columns} columns{', converged' if res.converged else ''}"
    )
    if res.bound <= inst.lower_bound:
        return inst
    run.inst = replace(inst, lower_bound=res.bound, bound_source=colgen.SOURCE)
    run.notes[0] = f"lower bound {res.bound} from {colgen.SOURCE}"
    return run.inst


def _start_plans(run: _Run) -> tuple[list[_Start], float, list[Item]]:
    """The start plans, the longest greedy pass, and the items in capped-classes-first order.

    The current placement repaired, and (from scratch, or when the repair fails) a greedy
    portfolio: whole-item greedies first (one vectorised pass per item, fast at any size), then
    every replica-by-replica greedy of BASELINES while the budget allows. Every start is
    deterministic; which ran depends on time only on inputs too large to run them all within 30%
    of the limit.
    """
    inst, current = run.inst, run.current
    budget = run.t0 + 0.3 * run.config.time_limit
    starts: list[_Start] = []
    t_start = time.monotonic()
    if current:
        reps = greedy.replicas_of(inst, current)
        reps.sort(key=greedy.decreasing(inst))
        rep = greedy.run(inst, "best", reps, keep_current=True)
        starts.append(_Start.of("current placement, repaired best-fit", inst, rep))
    by_item = sorted(inst.items, key=greedy.item_key(inst))
    capped_items = sorted(
        inst.items, key=lambda it: (inst.cpu_cap[it.slo], greedy.item_key(inst)(it))
    )
    count_starts = (
        ("first-fit decreasing, whole items", by_item, "first"),
        ("best-fit, capped classes first, whole items", capped_items, "best"),
        ("best-fit decreasing, whole items", by_item, "best"),
    )
    one_pass = 0.0
    for label, items, how_c in count_starts:
        if starts and (_at_bound(inst, starts, current) or time.monotonic() + one_pass > budget):
            break
        t1 = time.monotonic()
        cr = greedy.run_counts(inst, items, how_c)  # type: ignore[arg-type]
        one_pass = max(one_pass, time.monotonic() - t1)
        starts.append(_Start(label, cr.counts, cr.servers, None, cr.complete))
    for label, how, order, dedicated in _portfolio(inst):
        if _at_bound(inst, starts, current) or time.monotonic() + one_pass > budget:
            break
        t1 = time.monotonic()
        rep = greedy.run(inst, how, order(), dedicated=dedicated, deadline=budget)
        starts.append(_Start.of(label, inst, rep))
        one_pass = max(one_pass, time.monotonic() - t1)
    run.notes.append(f"{len(starts)} starts in {time.monotonic() - t_start:.2f} s")
    return starts, one_pass, capped_items


def _choose_start(run: _Run, starts: list[_Start]) -> _Start | None:
    """The best complete start by the objective (None: no start fits under max_servers)."""
    valid = [st for st in starts if st.complete]
    if not valid:
        return None
    # Ties go to replica-by-replica starts: the LNS improved them more than whole-item
    # plans of the same size (bench families, issue 17); whole items win only when better.
    start = min(
        valid,
        key=lambda st: (_objective(run.inst, st.counts, run.old, run.config), st.placed is None),
    )
    run.notes.append(f"start: {start.label}, {len(start.servers)} servers")
    return start


def _lifted_start(run: _Run, capped_items: list[Item]) -> _Start | None:
    """No start fits under max_servers: the best-fit plan with the cap lifted, for the
    optimiser to bring under the cap (None if even that is incomplete)."""
    inst, problem, current = run.inst, run.problem, run.current
    lifted = problem.pool.model_copy(update={"max_servers": problem.total_replicas + 1})
    lifted_inst = replace(inst, problem=problem.model_copy(update={"pool": lifted}))
    if current:
        reps = greedy.replicas_of(inst, current)
        over = greedy.run(
            lifted_inst, "best", sorted(reps, key=greedy.capped_first(inst)), keep_current=True
        )
        over_start = _Start.of("lifted", inst, over)
    else:
        cr = greedy.run_counts(lifted_inst, capped_items, "best")
        over_start = _Start("lifted", cr.counts, cr.servers, None, cr.complete)
    return over_start if over_start.complete else None


def _optimise(
    run: _Run,
    start: _Start | None,
    start_counts: Counts | None,
    zones: dict[ServerId, ZoneId],
    opt_deadline: float,
) -> _Outcome:
    """Improve on the start until ``opt_deadline``: one model when the problem is one group,
    else groups (from scratch) and LNS over the whole plan."""
    inst, problem, config, old, notes = run.inst, run.problem, run.config, run.old, run.notes
    ids = _Ids(set(zones))
    best: Counts | None = start_counts
    over_cap = start is None and start_counts is not None
    status: PlanStatus = "fallback"
    bound = inst.lower_bound
    holding = {sid for (_, sid) in old}
    proven = start is not None and not old and len(start.servers) <= bound
    n_start = len({sid for (_, sid) in start_counts}) if start_counts else 2 * bound + 2
    n_groups = _num_groups(inst, config.group_size, n_start)
    if proven:
        status = "optimal"
        notes.append("start meets the lower bound: proven optimal")
    elif n_groups == 1:
        target = min(problem.pool.max_servers, n_start)
        slots = _slots(inst, start_counts, zones, holding=holding, target_total=target, ids=ids)
        for s in slots:
            zones.setdefault(s.id, s.zone)
        sub = _full_sub(
            inst,
            list(inst.items),
            slots,
            old=old,
            hint=start_counts,
            config=config,
            lb=bound,
            balance=True,
        )
        # One worker: CP-SAT's parallel portfolio answers differently run to run even when it
        # proves optimality; a single worker gives one answer per seed (and proved small.yaml
        # optimal in 0.4 s where two workers took 0.2-2.9 s).
        res = _core(
            sub, opt_deadline - time.monotonic(), config.model_copy(update={"num_workers": 1})
        )
        notes.append(
            f"monolithic {res.backend}: {res.status}, {res.servers} servers, {res.seconds:.2f} s"
        )
        if res.status != "none" and (
            best is None
            or over_cap
            or _objective(inst, res.counts, old, config) <= _objective(inst, best, old, config)
        ):
            best = res.counts
            status = "optimal" if res.status == "optimal" else "feasible"
        if inst.exact and not old and res.status != "none":
            # CP-SAT's bound is the problem's only when the units are exact.
            bound = max(
                bound,
                math.ceil(
                    (res.bound - BALANCE_WEIGHT * 100) / (SERVER_WEIGHT + NEW_SERVER_EXTRA) - 1e-9
                ),
            )
    else:
        t0 = run.t0
        per_group = 0.6 * (opt_deadline - t0) / n_groups
        # Without a valid start the groups are the only way to a plan: run them whatever the
        # share of time (each group then gets what is left, or its best-fit plan).
        if not run.current and per_group >= GROUP_MIN_SECONDS:
            got = _grouped(
                inst,
                config=config,
                deadline=t0 + 0.6 * (opt_deadline - t0),
                ids=ids,
                notes=notes,
                num_groups=n_groups,
            )
            if got is not None:
                g_counts, g_zones = got
                g_servers = len({sid for (_, sid) in g_counts})
                notes.append(f"groups: {g_servers} servers")
                if best is None or over_cap or g_servers < len({sid for (_, sid) in best}):
                    best = g_counts
                    zones.update(g_zones)
                    status = "feasible"
        if best is not None and config.lns:
            # Over max_servers (groups without a start) the LNS drains servers until it fits.
            after, improved = _lns(
                inst, best, zones, old=old, config=config, deadline=opt_deadline, notes=notes
            )
            if improved:
                best = after
            if improved or over_cap:
                status = "feasible"
    return _Outcome(best, zones, status, bound)


def _finish(run: _Run, start: _Start | None, out: _Outcome) -> Plan:
    """Map the counts back to shard replicas, check the plan, and fall back to the start plan
    (checked too) when the optimised one is refused; no plan at all rather than a bad one."""
    problem, inst, current, notes = run.problem, run.inst, run.current, run.notes
    assert out.best is not None
    if start is not None and out.best is start.counts and start.placed is not None:
        placed: dict[tuple[str, int], list[ServerId]] | None = start.placed
    else:
        placed = realise(list(inst.items), out.best, out.zones, current)
    plan = None
    if placed is not None:
        plan = make_plan(
            problem,
            inst,
            placed,
            out.zones,
            solver=NAME,
            status=out.status,
            config=run.config,
            seconds=time.monotonic() - run.t0,
            lower_bound=out.bound,
            notes=notes,
        )
        bad = violations(problem, plan)
        if bad:
            notes.append(f"optimised plan rejected by the checker: {bad[0].message}")
            plan = None
    if plan is None and start is not None and start.realise(inst, current) is not None:
        plan = make_plan(
            problem,
            inst,
            start.realise(inst, current) or {},
            out.zones,
            solver=NAME,
            status="fallback",
            config=run.config,
            seconds=time.monotonic() - run.t0,
            lower_bound=out.bound,
            notes=[*notes, "returned the start plan"],
        )
        bad = violations(problem, plan)
        if bad:  # never hand out a plan the checker refuses, not even the start
            notes.append(f"start plan rejected by the checker: {bad[0].message}")
            plan = None
    if plan is None:
        return _no_plan(problem, out.bound, run.t0, notes)
    return plan


def _no_plan(problem: Problem, bound: int, t0: float, notes: list[str]) -> Plan:
    why = [
        "no valid placement was found before the deadline; the common causes were "
        "checked and do not apply, so the pool is probably too tight: raise "
        f"max_servers of pool {problem.pool.name} (the lower bound is {bound}) or the time limit"
    ]
    return infeasible_plan(NAME, why, bound, time.monotonic() - t0, notes)
