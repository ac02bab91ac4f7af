"""Every solver's plan passes the independent checker on random small problems."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    violations,
)

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
