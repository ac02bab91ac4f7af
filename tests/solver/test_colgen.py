"""The configuration-LP bound (issue 17): never above the optimum or a valid plan, a certificate
that checks out, and strictly tighter than the LP over server types where per-server packing
matters."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ekko.solver import (
    GIB,
    SOLVERS,
    ModelId,
    ModelSpec,
    Pool,
    Problem,
    ServerId,
    SloClassName,
    SolveConfig,
    solve,
    violations,
)
from ekko.solver.colgen import SOURCE, _limit, _types, config_lp_bound, patterns_of, shapes_of
from ekko.solver.instance import build_instance
from tests.solver.conftest import model, pool
from tests.solver.test_properties import problems

CAP = {"critical": 60, "standard": 80, "batch": 100}  # compute 100, DEFAULT_SLO_CLASSES caps
EXCL = {frozenset(("critical", "batch"))}


def _problem(items: list[tuple[int, int, str]]) -> Problem:
    """One model of one shard per item: (memory GiB of 100, load of 100, class); no headroom."""
    return Problem(
        pool=Pool(
            name="p", memory_bytes=100 * GIB, compute_units=100.0, headroom=0.0, max_servers=50
        ),
        models=tuple(
            ModelSpec(
                id=ModelId(f"m{k}"),
                shard_count=1,
                shard_bytes=a * GIB,
                load=float(b),
                slo=SloClassName(c),
            )
            for k, (a, b, c) in enumerate(items)
        ),
    )


def _optimum(items: list[tuple[int, int, str]]) -> int:
    """Fewest servers by exhaustive search: memory 100, compute under the strictest cap of the
    classes present, critical never with batch."""
    best = len(items)
    order = sorted(items, reverse=True)

    def fits(fill: list[tuple[int, int, str]], x: tuple[int, int, str]) -> bool:
        now = [*fill, x]
        classes = {c for _, _, c in now}
        if any(frozenset((a, b)) in EXCL for a in classes for b in classes):
            return False
        return sum(a for a, _, _ in now) <= 100 and sum(b for _, b, _ in now) <= min(
            CAP[c] for c in classes
        )

    def go(k: int, bins: list[list[tuple[int, int, str]]]) -> None:
        nonlocal best
        if len(bins) >= best:
            return
        if k == len(order):
            best = len(bins)
            return
        for fill in bins:
            if fits(fill, order[k]):
                fill.append(order[k])
                go(k + 1, bins)
                fill.pop()
        bins.append([order[k]])
        go(k + 1, bins)
        bins.pop()

    go(0, [])
    return best


ITEMS = st.lists(
    st.tuples(
        st.integers(1, 60),
        st.integers(0, 60),
        st.sampled_from(["critical", "standard", "batch"]),
    ),
    min_size=1,
    max_size=7,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ITEMS)
def test_config_lp_bound_never_exceeds_the_optimum(items: list[tuple[int, int, str]]) -> None:
    # Only items that fit a server alone (else the problem is infeasible).
    items = [(a, b, c) for a, b, c in items if b <= CAP[c]]
    if not items:
        return
    res = config_lp_bound(build_instance(_problem(items)), 5.0)
    assert res.bound <= _optimum(items)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ITEMS)
def test_the_certificate_holds_for_every_server_content(items: list[tuple[int, int, str]]) -> None:
    # Enumerate every server content over the shapes and check sum w_s a_s <= V: the weights
    # and V are the proof, independent of how the LP found them.
    items = [(a, b, c) for a, b, c in items if b <= CAP[c]]
    inst = build_instance(_problem(items))
    res = config_lp_bound(inst, 5.0)
    if not res.weights:
        return
    sh = shapes_of(inst)
    for classes, cap in _types(sh, inst):
        mine = [s for s in range(len(sh)) if sh.slo[s] in classes]
        ranges = [range(_limit(sh, s, cap) + 1) for s in mine]
        for a in itertools.product(*ranges):
            if sum(sh.mem[s] * k for s, k in zip(mine, a, strict=True)) > sh.mem_cap:
                continue
            if sum(sh.cpu[s] * k for s, k in zip(mine, a, strict=True)) > cap:
                continue
            assert sum(res.weights[s] * k for s, k in zip(mine, a, strict=True)) <= res.v


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(problems())
def test_config_lp_bound_is_never_above_a_valid_plan(pr: Problem) -> None:
    # Classes, exclusions, zones, replicas, reserves, versions held, entry caps: whatever a
    # solver returns as a valid plan uses at least the bound's servers.
    inst = build_instance(pr)
    res = config_lp_bound(inst, 2.0)
    for name, fn in SOLVERS.items():
        plan = fn(pr, SolveConfig(time_limit=0.3))
        if plan.status != "infeasible" and not violations(pr, plan):
            assert res.bound <= plan.servers_used, name


def test_strictly_tighter_than_the_lp_over_server_types_and_proves_the_plan_optimal() -> None:
    # Five items no two of which share a server except the light pairs (41,6)+(18,47),
    # (59,5)+(9,49) or (9,49)+(41,6)...: 3 servers.  Memory sum 1.67 and every other bound
    # say 2; the configuration LP sees that only pairs fit and proves 3.
    items = [(41, 6, "batch"), (18, 47, "batch"), (59, 5, "batch"), (9, 49, "batch")]
    items.append((40, 53, "batch"))
    pr = _problem(items)
    inst = build_instance(pr)
    assert inst.exact and inst.lower_bound == 2
    assert _optimum(items) == 3
    assert config_lp_bound(inst, 5.0).bound == 3
    plan = solve(pr, SolveConfig(time_limit=5))
    assert violations(pr, plan) == []
    assert (plan.servers_used, plan.lower_bound, plan.status) == (3, 3, "optimal")
    assert plan.notes[0] == f"lower bound 3 from {SOURCE}"


def test_exact_units_keep_exact_fits() -> None:
    # Bug 1's case: two loads of 30 fit critical's 60 after 10% headroom, so 5 servers.
    pr = Problem(
        pool=pool(max_servers=20, zones=()),
        models=(model("m", 10, 1, replicas=1, load=30, slo="critical"),),
    )
    inst = build_instance(pr)
    assert inst.exact
    assert config_lp_bound(inst, 2.0).bound == 5


def test_start_patterns_become_columns_and_stop_at_stops() -> None:
    # A known plan's servers as columns: the master LP starts at most at the plan's size, and
    # the generation stops once the bound reaches stop_at.
    items = [(41, 6, "batch"), (18, 47, "batch"), (59, 5, "batch"), (9, 49, "batch")]
    inst = build_instance(_problem(items))
    sh = shapes_of(inst)
    a, b = ServerId("a"), ServerId("b")
    counts = {(0, a): 1, (1, a): 1, (2, b): 1, (3, b): 1}
    pats = patterns_of(sh, counts)
    assert sorted(sorted(p.items()) for p in pats) == [
        [(sh.of_item[0], 1), (sh.of_item[1], 1)],
        [(sh.of_item[2], 1), (sh.of_item[3], 1)],
    ]
    res = config_lp_bound(inst, 5.0, patterns=pats, stop_at=2)
    assert res.bound == 2 and res.lp_value <= 2 + 1e-9


def test_bench_study_bound_and_ceiling_bracket_the_lp() -> None:
    # bench.placement --config-lp: the bound alone, started from a plan's servers; the ceiling
    # (master LP value rounded up) is never below the bound nor above the plan.
    from bench.placement import _config_lp

    items = [(41, 6, "batch"), (18, 47, "batch"), (59, 5, "batch"), (9, 49, "batch")]
    items.append((40, 53, "batch"))
    pr = _problem(items)
    plan = solve(pr, SolveConfig(time_limit=1))
    bound, ceiling, _ = _config_lp(pr, plan, 5.0)
    assert bound == 3 <= ceiling <= plan.servers_used == 3
