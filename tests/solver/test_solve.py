"""The optimiser: optimal on small cases, explains infeasibility, meets its deadline, re-plans
with few moves, and both backends agree."""

from __future__ import annotations

import time

import pytest
from conftest import model, pool, small_problem

from ekko.solver import (
    SOLVERS,
    ModelId,
    Problem,
    Server,
    SolveConfig,
    explain,
    solve,
    violations,
)

FAST = SolveConfig(time_limit=2.0)


def test_small_problem_is_solved_to_the_bound() -> None:
    pr = small_problem()
    plan = solve(pr, FAST)
    assert violations(pr, plan) == []
    assert plan.status in ("optimal", "feasible")
    assert plan.servers_used >= plan.lower_bound
    assert plan.servers_used <= min(p.servers_used for p in (SOLVERS["ffd"](pr, FAST),))


def test_memory_bound_instance_hits_the_lower_bound() -> None:
    # 30 shards of 10 GiB, 57.6 GiB usable per server -> 5 per server -> 6 servers
    pr = Problem(pool=pool(zones=()), models=(model("m", 30, 10),))
    plan = solve(pr, FAST)
    assert plan.servers_used == plan.lower_bound == 6
    assert plan.status == "optimal"
    assert plan.gap == 0.0


def test_too_big_shard_is_explained() -> None:
    pr = Problem(pool=pool(name="cpu-a"), models=(model("ranking", 20, 80),))
    plan = solve(pr, FAST)
    assert plan.status == "infeasible"
    assert plan.assignment == {}
    text = " ".join(plan.explanation)
    assert "ranking/0 needs 80 GiB" in text
    assert "cpu-a hold 64 GiB (after 10% headroom: 57.6 GiB)" in text


def test_replicas_beyond_max_servers_are_explained() -> None:
    pr = Problem(pool=pool(max_servers=2), models=(model("m", 1, 1, replicas=3),))
    assert any("3 replicas" in r for r in explain(pr))
    assert solve(pr, FAST).status == "infeasible"


def test_total_demand_beyond_pool_is_explained() -> None:
    pr = Problem(pool=pool(max_servers=3), models=(model("m", 40, 10),))
    reasons = explain(pr)
    # 5 shards of 10 GiB fit 57.6 GiB: 8 servers (the memory sum, 6.9, said 7 before the bound
    # used the exact capacity)
    assert reasons and "at least 8 servers" in reasons[0]
    for name, fn in SOLVERS.items():
        plan = fn(pr, FAST)
        assert plan.status == "infeasible", name
        assert plan.explanation


def test_compute_too_high_for_slo_cap_is_explained() -> None:
    pr = Problem(pool=pool(), models=(model("hot", 1, 1, load=70, slo="critical"),))
    reasons = explain(pr)
    assert reasons and "hot/0 needs 70 compute units" in reasons[0]


def test_deadline_returns_a_valid_plan() -> None:
    models = tuple(model(f"m{i}", 20, 1 + i % 7, replicas=2, load=1 + i % 5) for i in range(60))
    pr = Problem(pool=pool(max_servers=500), models=models)
    t = time.monotonic()
    plan = solve(pr, SolveConfig(time_limit=1.0))
    assert time.monotonic() - t < 3.0
    assert plan.status != "infeasible"
    assert violations(pr, plan) == []


def test_replan_without_change_moves_nothing() -> None:
    pr = small_problem()
    first = solve(pr, FAST)
    again = Problem(
        pool=pr.pool.model_copy(update={"servers": first.servers}),
        models=pr.models,
        current=first.assignment,
    )
    plan = solve(again, FAST)
    assert violations(again, plan) == []
    assert plan.bytes_moved == 0
    assert plan.servers_used == first.servers_used


def test_replan_after_losing_a_server_moves_only_what_it_held() -> None:
    pr = small_problem()
    first = solve(pr, FAST)
    lost = first.servers[0].id
    held = sum(1 for shards in first.assignment.values() for h in shards if lost in h)
    again = Problem(
        pool=pr.pool.model_copy(
            update={"servers": tuple(s for s in first.servers if s.id != lost)}
        ),
        models=pr.models,
        current=first.assignment,
    )
    plan = solve(again, FAST)
    assert violations(again, plan) == []
    assert plan.replicas_moved == held
    assert all(lost not in h for shards in plan.assignment.values() for h in shards)


def test_stale_current_placement_is_ignored() -> None:
    pr = small_problem()
    stale = Problem(
        pool=pr.pool,
        models=pr.models,
        current={ModelId("rank"): (("gone-1", "gone-2"),) * 9, ModelId("nope"): ()},  # type: ignore[dict-item]
    )
    plan = solve(stale, FAST)
    assert violations(stale, plan) == []


def test_existing_idle_servers_are_used_before_new_ones() -> None:
    existing = tuple(
        Server.model_validate({"id": f"old-{i}", "zone": "abc"[i % 3]}) for i in range(3)
    )
    pr = Problem(pool=pool(servers=existing), models=(model("m", 6, 10),))
    plan = solve(pr, FAST)
    assert violations(pr, plan) == []
    assert plan.servers_used == 2
    assert {s.id for s in plan.servers} <= {s.id for s in existing}
    assert plan.new_servers == ()


@pytest.mark.parametrize("backend", ["cpsat", "highs"])
def test_backends_agree_on_a_small_problem(backend: str) -> None:
    pytest.importorskip("highspy")
    pr = small_problem()
    plan = solve(pr, SolveConfig(time_limit=2.0, backend=backend))  # type: ignore[arg-type]
    assert violations(pr, plan) == []
    assert plan.servers_used == solve(pr, FAST).servers_used
