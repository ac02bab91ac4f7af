"""The checker finds each broken rule in hand-made plans."""

from __future__ import annotations

from conftest import model, pool

from ekko.solver import ModelId, Plan, Problem, Server, ServerId, ZoneId, violations


def _plan(assign: dict[str, list[list[str]]], servers: dict[str, str]) -> Plan:
    return Plan(
        solver="hand",
        status="feasible",
        assignment={
            ModelId(m): tuple(tuple(ServerId(s) for s in sh) for sh in shards)
            for m, shards in assign.items()
        },
        servers=tuple(Server(id=ServerId(s), zone=ZoneId(z)) for s, z in servers.items()),
    )


def kinds(problem: Problem, plan: Plan) -> set[str]:
    return {v.kind for v in violations(problem, plan)}


def test_valid_plan_passes() -> None:
    pr = Problem(pool=pool(), models=(model("m", 2, 10, replicas=2),))
    plan = _plan({"m": [["s1", "s2"], ["s2", "s3"]]}, {"s1": "a", "s2": "b", "s3": "c"})
    assert violations(pr, plan) == []


def test_missing_replica_and_duplicate_server() -> None:
    pr = Problem(pool=pool(), models=(model("m", 2, 10, replicas=2),))
    plan = _plan({"m": [["s1"], ["s2", "s2"]]}, {"s1": "a", "s2": "b"})
    assert {"replicas", "distinct"} <= kinds(pr, plan)


def test_memory_with_headroom_and_reserve() -> None:
    # 64 GiB, 10% headroom -> 57.6 GiB usable; 2 x 20 GiB x 1.5 reserve = 60 GiB
    pr = Problem(pool=pool(), models=(model("m", 2, 20, reserve_factor=0.5),))
    plan = _plan({"m": [["s1"], ["s1"]]}, {"s1": "a"})
    assert "memory" in kinds(pr, plan)
    pr_ok = Problem(pool=pool(), models=(model("m", 2, 20),))
    assert violations(pr_ok, plan) == []


def test_compute_cap_of_critical_class() -> None:
    # critical caps utilisation at 0.6: 2 x 35 = 70 > 60
    pr = Problem(pool=pool(), models=(model("m", 2, 1, load=35, slo="critical"),))
    plan = _plan({"m": [["s1"], ["s1"]]}, {"s1": "a"})
    assert "compute" in kinds(pr, plan)
    pr_std = Problem(pool=pool(), models=(model("m", 2, 1, load=35, slo="standard"),))
    assert violations(pr_std, plan) == []


def test_colocation_of_exclusive_classes() -> None:
    pr = Problem(
        pool=pool(),
        models=(model("c", 1, 1, slo="critical"), model("b", 1, 1, slo="batch")),
    )
    plan = _plan({"c": [["s1"]], "b": [["s1"]]}, {"s1": "a"})
    assert kinds(pr, plan) == {"colocation"}


def test_zone_spread() -> None:
    pr = Problem(pool=pool(), models=(model("m", 1, 1, replicas=3),))
    plan = _plan({"m": [["s1", "s2", "s3"]]}, {"s1": "a", "s2": "a", "s3": "b"})
    assert kinds(pr, plan) == {"spread"}


def test_max_servers_and_unknown_server() -> None:
    pr = Problem(pool=pool(max_servers=1), models=(model("m", 2, 1),))
    plan = _plan({"m": [["s1"], ["s2"]]}, {"s1": "a", "s2": "b"})
    assert kinds(pr, plan) == {"max-servers"}
    plan2 = _plan({"m": [["s1"], ["s9"]]}, {"s1": "a"})
    assert "unknown-server" in kinds(pr, plan2)


def test_existing_server_cannot_change_zone() -> None:
    p = pool(servers=(Server(id=ServerId("s1"), zone=ZoneId("a")),))
    pr = Problem(pool=p, models=(model("m", 1, 1),))
    plan = _plan({"m": [["s1"]]}, {"s1": "b"})
    assert kinds(pr, plan) == {"zone"}
