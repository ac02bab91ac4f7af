"""A server holds at most as many shard replicas as one ServerAssignment can list (rule (14)).

Memory and compute alone would put every tiny shard of several models on one server; the
assignment's ``spec.shards`` would then be longer than the schema allows and the API server
would refuse it.  Every path of the solver keeps the cap, the checker flags a plan above it, and
the lower bound counts it.
"""

from __future__ import annotations

from collections import Counter

import pytest
import yaml
from conftest import model, pool

from ekko.api.resources import MAX_ASSIGNED_SHARDS, Model, ServerAssignmentSpec
from ekko.planning.problem import model_spec
from ekko.solver import (
    BASELINES,
    ModelId,
    Plan,
    Problem,
    Server,
    ServerId,
    SolveConfig,
    ZoneId,
    greedy,
    search,
    solve,
    violations,
)
from ekko.solver.core import Slot, SubProblem, solve_cpsat
from ekko.solver.instance import build_instance, explain
from ekko.solver.io import ProblemFormatError, problem_from_dict


def _tiny(cap: int, shards: int, n_models: int = 5, replicas: int = 1, **kw: object) -> Problem:
    """Models of tiny shards with no load: memory and compute allow all of them on one server."""
    models = tuple(
        model(f"m{i}", shards, 0.001, replicas=replicas, load=0.0) for i in range(n_models)
    )
    return Problem(pool=pool(max_shards_per_server=cap, **kw), models=models)


def _per_server(plan: Plan) -> Counter[str]:
    return Counter(s for shards in plan.assignment.values() for h in shards for s in h)


def test_the_cap_is_the_schemas_item_limit() -> None:
    limits = [
        getattr(m, "max_length", None) for m in ServerAssignmentSpec.model_fields["shards"].metadata
    ]
    assert MAX_ASSIGNED_SHARDS in limits
    assert pool().max_shards_per_server == MAX_ASSIGNED_SHARDS
    with pytest.raises(ValueError, match="max_shards_per_server"):
        pool(max_shards_per_server=MAX_ASSIGNED_SHARDS + 1)


def test_25k_tiny_replicas_are_split_at_the_assignment_limit() -> None:
    # 25,000 replicas of 1 MiB: one 64 GiB server holds them by memory, not by its assignment.
    pr = _tiny(MAX_ASSIGNED_SHARDS, 5000, zones=())
    plan = solve(pr, SolveConfig(time_limit=5.0))
    assert violations(pr, plan) == []
    assert plan.servers_used == 2 and plan.status == "optimal"
    assert max(_per_server(plan).values()) <= MAX_ASSIGNED_SHARDS
    assert plan.lower_bound == 2


@pytest.mark.parametrize("zones", [(), ("a", "b", "c")])
def test_every_solver_keeps_the_cap(zones: tuple[str, ...]) -> None:
    pr = _tiny(10, 7, replicas=2 if zones else 1, zones=zones)
    inst = build_instance(pr)
    assert inst.bound_source == "shards per server"
    assert inst.lower_bound == -(-pr.total_replicas // 10)
    plans = {"ekko": solve(pr, SolveConfig(time_limit=1.0))}
    plans.update({n: fn(pr, SolveConfig(time_limit=1.0)) for n, fn in BASELINES.items()})
    for name, plan in plans.items():
        assert plan.status != "infeasible", name
        assert violations(pr, plan) == [], name
        assert max(_per_server(plan).values()) <= 10, name
    assert plans["ekko"].servers_used == inst.lower_bound


def test_whole_item_greedy_keeps_the_cap() -> None:
    inst = build_instance(_tiny(10, 7))
    for how in ("first", "best"):
        res = greedy.run_counts(inst, inst.items, how)  # type: ignore[arg-type]
        held: Counter[str] = Counter()
        for (_, sid), k in res.counts.items():
            held[sid] += k
        assert res.complete and max(held.values()) == 10


def test_the_optimiser_model_keeps_the_cap() -> None:
    # Constraint (14) in the model itself: CP-SAT from no hint on six empty slots.
    inst = build_instance(_tiny(10, 7, zones=()))
    sub = SubProblem(
        inst=inst,
        items=inst.items,
        demand={it.index: it.demand for it in inst.items},
        zone_room={},
        slots=[Slot(ServerId(f"s{k}"), ZoneId(""), True, new=True) for k in range(6)],
        max_servers=6,
    )
    res = solve_cpsat(sub, 5.0, workers=1)
    assert res.status == "optimal" and res.servers == 4
    held: Counter[str] = Counter()
    for (_, sid), k in res.counts.items():
        held[sid] += k
    assert max(held.values()) <= 10


def test_grouped_search_and_lns_keep_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search, "GROUP_MIN_SECONDS", 0.05)
    # Tiny models (the cap binds) between big ones (memory binds).
    models = tuple(
        model(f"m{i}", 6 + i % 5, 0.01 if i % 2 else 4 + i % 5, replicas=1 + i % 2, load=1 + i % 4)
        for i in range(24)
    )
    pr = Problem(pool=pool(max_servers=200, max_shards_per_server=12), models=models)
    plan = solve(pr, SolveConfig(time_limit=2.0, group_size=60))
    assert violations(pr, plan) == [], plan.notes
    assert any(n.startswith("LNS:") for n in plan.notes), plan.notes
    assert max(_per_server(plan).values()) <= 12


def test_a_current_placement_above_the_cap_is_repaired() -> None:
    base = _tiny(10, 7, zones=())
    servers = tuple(Server(id=ServerId(f"s{k}"), zone=ZoneId("")) for k in range(4))
    everything_on_s0 = {
        m.id: tuple((ServerId("s0"),) for _ in range(m.num_shards)) for m in base.models
    }
    pr = base.model_copy(
        update={
            "pool": base.pool.model_copy(update={"servers": servers}),
            "current": everything_on_s0,
        }
    )
    plan = solve(pr, SolveConfig(time_limit=1.0))
    assert violations(pr, plan) == []
    assert max(_per_server(plan).values()) <= 10
    assert _per_server(plan)["s0"] == 10  # what s0 may keep, it keeps
    assert plan.replicas_moved == pr.total_replicas - 10


def test_checker_flags_a_server_above_the_cap() -> None:
    pr = _tiny(3, 2, n_models=2, zones=())
    one = (ServerId("s1"),)
    plan = Plan(
        solver="hand",
        status="feasible",
        assignment={ModelId("m0"): (one, one), ModelId("m1"): (one, one)},
        servers=(Server(id=ServerId("s1")),),
    )
    found = violations(pr, plan)
    assert [v.kind for v in found] == ["shards-per-server"]
    assert "lists 4 assignment entries" in found[0].message and "limit 3" in found[0].message
    ok = pr.model_copy(update={"pool": pr.pool.model_copy(update={"max_shards_per_server": 4})})
    assert violations(ok, plan) == []


def test_too_few_servers_for_the_cap_is_explained() -> None:
    pr = _tiny(10, 7, max_servers=3)
    reasons = explain(pr)
    assert reasons and "at most 10 per server" in reasons[0]
    plan = solve(pr, SolveConfig(time_limit=0.5))
    assert plan.status == "infeasible" and plan.explanation


def test_problem_file_takes_the_cap() -> None:
    doc = """
pool: {name: p, memory: 64Gi, compute: 100, maxServers: 9, maxShardsPerServer: 4}
models: [{id: m, shards: 10, shardSize: 1Mi}]
"""
    pr = problem_from_dict(yaml.safe_load(doc))
    assert pr.pool.max_shards_per_server == 4
    assert solve(pr, SolveConfig(time_limit=0.5)).servers_used == 3
    with pytest.raises(ProblemFormatError, match="maxShardsPerServer"):
        problem_from_dict(yaml.safe_load(doc.replace("Server: 4", "Server: 2.5")))


def test_each_version_held_is_an_entry() -> None:
    # 14 replicas, 2 versions each while a canary is resident: 28 entries, 3 servers of 10.
    one = _tiny(10, 7, n_models=2, zones=())
    two = one.model_copy(
        update={"models": tuple(m.model_copy(update={"versions_held": 2}) for m in one.models)}
    )
    assert build_instance(one).lower_bound == 2
    assert build_instance(two).lower_bound == 3
    plan = solve(two, SolveConfig(time_limit=1.0))
    assert violations(two, plan) == [] and plan.servers_used == 3
    assert max(_per_server(plan).values()) <= 5
    # The plan for one version is refused once a second one is held.
    single = solve(one, SolveConfig(time_limit=1.0))
    assert {v.kind for v in violations(two, single)} == {"shards-per-server"}


def test_the_operator_counts_resident_versions() -> None:
    manifest = {
        "kind": "Model",
        "metadata": {"name": "m"},
        "spec": {
            "pool": "p",
            "version": "v1",
            "artifact": {"uri": "file:///m/m"},
            "shards": {"count": 3, "size": "1Gi"},
        },
    }
    # keepPreviousResident (the default) keeps room for a second version, in memory and entries.
    assert model_spec(Model.model_validate(manifest)).versions_held == 2
    manifest["spec"]["keepPreviousResident"] = False  # type: ignore[index]
    plain = Model.model_validate(manifest)
    assert model_spec(plain).versions_held == 1
    assert model_spec(plain, resident=2).versions_held == 2
