"""The decomposition, LNS and mapping paths of the search, on problems small enough to be fast."""

from __future__ import annotations

import pytest
from conftest import model, pool

from ekko.solver import ModelId, Problem, ServerId, SolveConfig, search, solve, violations
from ekko.solver.instance import build_instance
from ekko.solver.mapping import sticky, wrap_around


def _many_models() -> Problem:
    models = tuple(
        model(f"m{i}", 6 + i % 5, 1 + i % 6, replicas=1 + i % 3, load=2 + i % 7,
              slo=("critical", "standard", "batch")[i % 3])
        for i in range(24)
    )  # fmt: skip
    return Problem(pool=pool(max_servers=200), models=models)


def test_grouped_then_lns_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search, "GROUP_MIN_SECONDS", 0.05)
    pr = _many_models()
    plan = solve(pr, SolveConfig(time_limit=2.0, group_size=60))
    assert violations(pr, plan) == []
    assert any(n.startswith("groups:") for n in plan.notes), plan.notes
    assert any(n.startswith("LNS:") for n in plan.notes), plan.notes


def test_lns_replan_keeps_shards_in_place() -> None:
    pr = _many_models()
    cfg = SolveConfig(time_limit=1.5, group_size=60)
    first = solve(pr, cfg)
    again = Problem(
        pool=pr.pool.model_copy(update={"servers": first.servers}),
        models=pr.models,
        current=first.assignment,
    )
    plan = solve(again, cfg)
    assert violations(again, plan) == []
    # Moves are only made to save servers: servers + migration cost never exceeds staying put.
    assert plan.objective <= first.servers_used + 1e-9
    assert plan.servers_used <= first.servers_used
    # Every byte moved bought a server: either nothing moved, or the plan uses fewer servers.
    assert plan.bytes_moved == 0 or plan.servers_used < first.servers_used


def test_wrap_around_spreads_over_zones() -> None:
    pr = Problem(pool=pool(), models=(model("m", 4, 1, replicas=3),))
    (item,) = build_instance(pr).items
    counts = [(ServerId(f"s{k}"), "abc"[k % 3], 2) for k in range(6)]
    got = wrap_around(item, counts)
    zone = {f"s{k}": "abc"[k % 3] for k in range(6)}
    for servers in got.values():
        assert len(servers) == 3 == len(set(servers))
        assert len({zone[s] for s in servers}) == 3


def test_sticky_mapping_keeps_current_servers() -> None:
    pr = Problem(pool=pool(zones=()), models=(model("m", 4, 1, replicas=1),))
    (item,) = build_instance(pr).items
    current = {0: [ServerId("b")], 1: [ServerId("a")], 2: [ServerId("b")], 3: [ServerId("a")]}
    got = sticky(item, [(ServerId("a"), "", 2), (ServerId("b"), "", 2)], current)
    assert got == {k: v for k, v in current.items()}
    assert ModelId("m") == item.model


def test_solve_pauses_the_cyclic_collector_and_restores_it() -> None:
    import gc

    seen: list[bool] = []
    real = search.build_instance

    def spy(problem: Problem) -> object:
        seen.append(gc.isenabled())
        return real(problem)

    pr = _many_models()
    for on in (True, False):
        (gc.enable if on else gc.disable)()
        try:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(search, "build_instance", spy)
                assert solve(pr, SolveConfig(time_limit=0.5)).status != "infeasible"
            assert gc.isenabled() is on  # as it was before the call
        finally:
            gc.enable()
    assert seen == [False, False]  # off during the call either way
