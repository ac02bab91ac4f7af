"""From a plan to named servers, and back from the assignments after a restart."""

from __future__ import annotations

from ekko.api.resources import AssignedShard, Model, ServerPool
from ekko.planning.desired import desired_from_plan, desired_from_state, plan_inputs
from ekko.planning.state import PoolState, ServerObs
from ekko.solver import ModelId, Plan, Server, ServerId, ZoneId
from tests.planning.test_converge import POOL, model


def _plan(
    servers: list[tuple[str, str]], assignment: dict[str, tuple[tuple[str, ...], ...]]
) -> Plan:
    return Plan(
        solver="t",
        status="optimal",
        servers=tuple(Server(id=ServerId(s), zone=ZoneId(z)) for s, z in servers),
        assignment={
            ModelId(m): tuple(tuple(ServerId(x) for x in r) for r in shards)
            for m, shards in assignment.items()
        },
    )


def test_new_servers_get_fresh_names_even_when_solver_ids_collide() -> None:
    m = model("m", shards=4)
    existing = ServerObs("p-1", "b", pod_ready=True)
    state = PoolState(POOL, (m,), (existing,))
    # The solver named its new servers p-0, p-2, p-3 and kept p-1: renaming one must not land on another.
    plan = _plan(
        [("p-0", "a"), ("p-2", "a"), ("p-3", "c"), ("p-1", "b")],
        {"m": (("p-0",), ("p-2",), ("p-3",), ("p-1",))},
    )
    desired = desired_from_plan(plan, state)
    assert len(desired.servers) == 4
    assert desired.servers["p-1"] == frozenset({("m", 3)})
    assert sorted(desired.servers) == ["p-0", "p-1", "p-2", "p-3"]
    assert {frozenset(v) for v in desired.servers.values()} == {
        frozenset({("m", i)}) for i in range(4)
    }
    zones = sorted(desired.zones[n] for n in desired.servers)
    assert zones == ["a", "a", "b", "c"]


def test_desired_from_state_leaves_draining_replicas_and_deleted_models_out() -> None:
    m = model("m")
    shard = AssignedShard(model="m", shard=0, version="v1", uri="file:///m", bytes=1)
    gone = AssignedShard(model="gone", shard=0, version="v1", uri="file:///g", bytes=1)
    server = ServerObs(
        "p-0", "a", spec_shards=(shard, shard.model_copy(update={"shard": 1, "drain": True}), gone)
    )
    desired = desired_from_state(PoolState(POOL, (m,), (server,)))
    assert desired.servers == {"p-0": frozenset({("m", 0)})}


def test_the_plan_fingerprint_ignores_status_but_not_specs() -> None:
    m = model("m")
    base = plan_inputs(PoolState(POOL, (m,), ()))
    moved = PoolState(POOL, (m,), (ServerObs("p-9", "a"),))
    assert plan_inputs(moved) == base  # servers coming and going do not force a re-plan
    changed = Model.model_validate(m.to_wire() | {"metadata": {"name": "m", "generation": 2}})
    assert plan_inputs(PoolState(POOL, (changed,), ())) != base
    bigger = ServerPool.model_validate(
        POOL.to_wire() | {"metadata": {"name": "p", "generation": 5}}
    )
    assert plan_inputs(PoolState(bigger, (m,), ())) != base
