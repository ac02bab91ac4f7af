"""The bin-packing bounds (issue 17, "a tighter, sound lower bound"): never above the optimum,
and tighter than the memory sum where few replicas fit a server."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ekko.solver import GIB, Problem, SolveConfig, solve, violations
from ekko.solver.instance import build_instance, cardinality_bound, dff_bound
from tests.solver.conftest import model, pool


def _optimum(items: list[tuple[int, int]], caps: tuple[int, int]) -> int:
    """Fewest bins for 2-D items by exhaustive search (a handful of items)."""
    best = len(items)
    order = sorted(items, reverse=True)

    def go(k: int, bins: list[list[int]]) -> None:
        nonlocal best
        if len(bins) >= best:
            return
        if k == len(order):
            best = len(bins)
            return
        a, b = order[k]
        for fill in bins:
            if fill[0] + a <= caps[0] and fill[1] + b <= caps[1]:
                fill[0] += a
                fill[1] += b
                go(k + 1, bins)
                fill[0] -= a
                fill[1] -= b
        bins.append([a, b])
        go(k + 1, bins)
        bins.pop()

    go(0, [])
    return best


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(1, 60), st.integers(0, 60)), min_size=1, max_size=8),
    st.integers(60, 100),
    st.integers(60, 100),
)
def test_bounds_never_exceed_the_optimum(
    items: list[tuple[int, int]], mem_cap: int, cpu_cap: int
) -> None:
    opt = _optimum(items, (mem_cap, cpu_cap))
    # the same items as distinct sizes with counts (merged duplicates), as the solver has them
    keys = sorted(set(items))
    mem = np.array([a for a, _ in keys], dtype=np.int64)
    cpu = np.array([b for _, b in keys], dtype=np.int64)
    cnt = np.array([items.count(k) for k in keys], dtype=np.int64)
    assert dff_bound(mem, cnt, mem_cap) <= opt
    assert dff_bound(cpu, cnt, cpu_cap) <= opt
    assert cardinality_bound([(mem, mem_cap), (cpu, cpu_cap)], cnt) <= opt


def test_cardinality_bound_counts_replicas_per_server() -> None:
    # 12 replicas of 40% of a server: two per server, 6 servers; the memory sum says 5.
    sizes = np.array([40], dtype=np.int64)
    assert cardinality_bound([(sizes, 100)], np.array([12], dtype=np.int64)) == 6
    assert dff_bound(sizes, np.array([12], dtype=np.int64), 100) == 6
    # 0.3 and 0.45 mixed: three 0.3s share a server, a 0.45 pairs with anything.
    sizes = np.array([30, 45], dtype=np.int64)
    assert cardinality_bound([(sizes, 100)], np.array([6, 6], dtype=np.int64)) == 5


def test_exact_units_use_the_whole_capacity_in_the_bound() -> None:
    # 9 shards of 40% of usable memory: 2.5 shards' worth of capacity per server.  With exact
    # units a server holds floor(2.5) = 2 of them; the bound used to round the capacity up to 3
    # and said 3 servers where 5 are needed (and the 5-server plan was never called optimal).
    usable = 64 * 0.9
    pr = Problem(pool=pool(max_servers=20, zones=()), models=(model("big", 9, usable * 0.4),))
    inst = build_instance(pr)
    assert inst.exact and inst.lower_bound == 5
    plan = solve(pr, SolveConfig(time_limit=2))
    assert violations(pr, plan) == []
    assert (plan.servers_used, plan.status) == (5, "optimal")


def test_large_shards_bound_is_named_and_proves_the_plan_optimal() -> None:
    # 40% and 35% shards: never three on a server, so 16 replicas need 8 servers; the memory
    # sum says 7 (6.05 servers' worth).  Sizes share no factor, so units are rounded.
    usable = 64 * 0.9 * GIB
    pr = Problem(
        pool=pool(max_servers=30, zones=()),
        models=(
            model("a", 9, (int(usable * 0.4) + 7) / GIB),
            model("b", 7, (int(usable * 0.35) + 3) / GIB),
        ),
    )
    inst = build_instance(pr)
    assert inst.lower_bound == 8, inst.bound_source
    assert inst.bound_source in {"bin packing (memory)", "replicas per server"}
    plan = solve(pr, SolveConfig(time_limit=3))
    assert violations(pr, plan) == []
    assert (plan.servers_used, plan.status) == (8, "optimal")
    assert any(n.startswith(f"lower bound 8 from {inst.bound_source}") for n in plan.notes)


def test_lp_over_server_types_splits_items_not_whole_classes() -> None:
    # Two servers each hold a critical replica (load 60 = critical's cap) and a 99 GiB standard
    # replica with no load; a third holds a standard replica of load 80.  3 servers.  The LP
    # split each class's memory and compute in one proportion and claimed 4 (an unsound
    # bound: the 3-server plan was "below the lower bound").
    pr = Problem(
        pool=pool(max_servers=20, zones=(), memory_bytes=100 * GIB, headroom=0.0),
        models=(
            model("a", 2, 1 / GIB, load=60, slo="critical"),
            model("b1", 2, 99, load=0),
            model("b2", 1, 1 / GIB, load=80),
        ),
    )
    inst = build_instance(pr)
    assert inst.lower_bound <= 3
    plan = solve(pr, SolveConfig(time_limit=3))
    assert violations(pr, plan) == []
    assert (plan.servers_used, plan.status, plan.lower_bound) == (3, "optimal", 3)
