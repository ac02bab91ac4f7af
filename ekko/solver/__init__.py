"""Ekko's placement solver: a pure function from a typed problem to a typed plan.

Public API::

    from ekko.solver import (
        Problem, Pool, Server, ModelSpec, SloClass, SolveConfig, Plan, Violation,
        solve, violations, explain, SOLVERS,
    )

    problem = Problem(
        pool=Pool(
            name="cpu-a",                    # used in messages and new server names
            memory_bytes=64 * GIB,           # per server, for shards
            compute_units=1000.0,            # per server (QPS, cores, ...)
            headroom=0.1,                    # kept free on memory and compute
            max_servers=200,
            zones=(ZoneId("a"), ZoneId("b")),     # () = no spreading
            servers=(Server(id=ServerId("cpu-a-0"), zone=ZoneId("a")), ...),  # existing ones
        ),
        models=(
            ModelSpec(
                id=ModelId("ranking"),
                shard_count=16, shard_bytes=20 * GIB,   # or shard_sizes=(b0, b1, ...)
                shard_loads=None,                       # optional per-shard load
                replicas=2,                             # per shard, on distinct servers
                load=120.0,                             # compute units per shard replica
                slo=SloClassName("critical"),           # a name from slo_classes
                reserve_factor=1.0,                     # previous version resident: 2x memory
                reserve_bytes=0,
            ),
        ),
        slo_classes=DEFAULT_SLO_CLASSES,   # critical (cap 0.6, never with batch),
                                           # standard (0.8), batch (1.0, never with critical)
        current={ModelId("ranking"): ((ServerId("cpu-a-0"), ServerId("cpu-a-1")), ...)},
    )
    plan = solve(problem, SolveConfig(time_limit=10.0))
    assert violations(problem, plan) == []

Every solver (``SOLVERS[name](problem, config)``) returns a :class:`Plan` whose ``status`` is
``optimal``, ``feasible``, ``fallback`` or ``infeasible`` (then ``plan.explanation`` says why).
Compute limits: a server's load stays within ``compute_units * min(1 - headroom, cap)`` where
``cap`` is the lowest utilisation cap of the SLO classes it holds; memory within
``memory_bytes * (1 - headroom)``, each replica taking ``size * (1 + reserve_factor) +
reserve_bytes``.  With k >= 2 zones, no zone holds more than ceil(R / k) replicas of one shard.
The formulation is in ``ekko/solver/README.md``.
"""

from ekko.solver.baselines import BASELINES, SolverFn
from ekko.solver.checker import violations
from ekko.solver.instance import explain
from ekko.solver.search import solve
from ekko.solver.types import (
    DEFAULT_SLO_CLASSES,
    GIB,
    Assignment,
    ModelId,
    ModelSpec,
    Plan,
    PlanStatus,
    Pool,
    Problem,
    Server,
    ServerId,
    SloClass,
    SloClassName,
    SolveConfig,
    Violation,
    ZoneId,
)

SOLVERS: dict[str, SolverFn] = {"ekko": solve, **BASELINES}

__all__ = [
    "BASELINES",
    "DEFAULT_SLO_CLASSES",
    "GIB",
    "SOLVERS",
    "Assignment",
    "ModelId",
    "ModelSpec",
    "Plan",
    "PlanStatus",
    "Pool",
    "Problem",
    "Server",
    "ServerId",
    "SloClass",
    "SloClassName",
    "SolveConfig",
    "SolverFn",
    "Violation",
    "ZoneId",
    "explain",
    "solve",
    "violations",
]
