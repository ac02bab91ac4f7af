"""Every solver's plan passes the independent checker on random small problems."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ekko.api.resources import MAX_ASSIGNED_SHARDS
from ekko.solver import (
    GIB,
    SOLVERS,
    ModelId,
    ModelSpec,
    Pool,
    Problem,
    Server,
    SloClassName,
    SolveConfig,
    ZoneId,
    greedy,
    violations,
)
from ekko.solver.instance import build_instance, explain
from ekko.solver.mapping import realise
from ekko.solver.plans import make_plan

CFG = SolveConfig(time_limit=0.3)


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    zones = draw(st.sampled_from([(), ("a",), ("a", "b"), ("a", "b", "c")]))
    n_models = draw(st.integers(1, 5))
    models = []
    for i in range(n_models):
        explicit = draw(st.booleans())
        replicas = draw(st.integers(1, 3))
        slo = draw(st.sampled_from(["critical", "standard", "batch"]))
        load = draw(st.floats(0, 40))
        reserve = draw(st.sampled_from([0.0, 0.25, 1.0]))
        versions = draw(st.sampled_from([1, 1, 2]))
        if explicit:
            sizes = tuple(draw(st.lists(st.integers(1, 30), min_size=1, max_size=6)))
            models.append(
                ModelSpec(
                    id=ModelId(f"m{i}"),
                    shard_sizes=tuple(s * GIB for s in sizes),
                    replicas=replicas,
                    load=load,
                    slo=SloClassName(slo),
                    reserve_factor=reserve,
                    versions_held=versions,
                )
            )
        else:
            models.append(
                ModelSpec(
                    id=ModelId(f"m{i}"),
                    shard_count=draw(st.integers(1, 8)),
                    shard_bytes=draw(st.integers(1, 30)) * GIB,
                    replicas=replicas,
                    load=load,
                    slo=SloClassName(slo),
                    reserve_factor=reserve,
                    versions_held=versions,
                )
            )
    existing = tuple(
        Server(id=f"s{k}", zone=ZoneId(zones[k % len(zones)]) if zones else ZoneId(""))  # type: ignore[arg-type]
        for k in range(draw(st.integers(0, 4)))
    )
    pool = Pool(
        name="p",
        memory_bytes=64 * GIB,
        compute_units=100.0,
        headroom=draw(st.sampled_from([0.0, 0.1])),
        max_servers=draw(st.integers(1, 30)),
        # Most often the assignment's limit; sometimes a cap that binds (rule (14)).
        max_shards_per_server=draw(st.sampled_from([MAX_ASSIGNED_SHARDS, 3, 5, 12])),
        zones=tuple(ZoneId(z) for z in zones),
        servers=existing,
    )
    pr = Problem(pool=pool, models=tuple(models))
    if existing and draw(st.booleans()):
        # a (possibly invalid) current placement on the existing servers
        current = {}
        for m in models:
            current[m.id] = tuple(
                tuple(draw(st.lists(st.sampled_from([s.id for s in existing]), max_size=3)))
                for _ in range(m.num_shards)
            )
        pr = pr.model_copy(update={"current": current})
    return pr


def _check(name: str, pr: Problem) -> None:
    plan = SOLVERS[name](pr, CFG)
    assert violations(pr, plan) == [], (name, plan.notes)
    if plan.status == "infeasible":
        assert plan.explanation
    else:
        assert plan.servers_used >= plan.lower_bound or plan.servers_used == 0


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(problems())
def test_ekko_plans_are_valid(pr: Problem) -> None:
    _check("ekko", pr)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_baseline_plans_are_valid(pr: Problem) -> None:
    for name in SOLVERS:
        if name != "ekko":
            _check(name, pr)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_highs_backend_plans_are_valid(pr: Problem) -> None:
    plan = SOLVERS["ekko"](pr, SolveConfig(time_limit=0.3, backend="highs"))
    assert violations(pr, plan) == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.sampled_from(["first", "best"]))
def test_whole_item_greedy_plans_are_valid(pr: Problem, how: str) -> None:
    # The solver's fast start (issue 17, deadline at scale): counts per (item, server), mapped
    # back by wrap-around, pass the independent checker whenever every replica was placed.
    inst = build_instance(pr)
    if explain(pr, inst):
        return
    res = greedy.run_counts(inst, sorted(inst.items, key=greedy.item_key(inst)), how)  # type: ignore[arg-type]
    assert all(k <= inst.items[i].num_shards for (i, _), k in res.counts.items())
    if not res.complete:
        assert len(res.servers) <= pr.pool.max_servers
        return
    zones = dict(res.servers)
    placed = realise(list(inst.items), res.counts, zones, {})
    assert placed is not None
    plan = make_plan(
        pr.model_copy(update={"current": {}}), inst, placed, zones, solver="t",
        status="fallback", config=CFG, seconds=0.0, lower_bound=inst.lower_bound, notes=[],
    )  # fmt: skip
    assert violations(pr.model_copy(update={"current": {}}), plan) == []
    assert plan.servers_used == len(res.servers) >= inst.lower_bound


def test_interrupted_greedies_are_never_plans() -> None:
    # A greedy cut by its deadline leaves the rest unplaced instead of returning half a plan.
    pr = Problem(
        pool=Pool(name="p", memory_bytes=64 * GIB, compute_units=100.0, max_servers=50),
        models=(ModelSpec(id=ModelId("m"), shard_count=200, shard_bytes=GIB, replicas=2),),
    )
    inst = build_instance(pr)
    reps = greedy.replicas_of(inst, {})
    assert len(greedy.run(inst, "best", reps, deadline=time.monotonic() - 1).unplaced) == 400
    assert not greedy.run_counts(inst, inst.items, deadline=time.monotonic() - 1).complete
    assert greedy.run_counts(inst, inst.items).complete
