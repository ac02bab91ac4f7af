"""Baseline placements behind the same interface as :func:`ekko.solver.solve`.

- ``dedicated``: every model on servers of its own (first-fit decreasing within the model);
- ``ffd`` / ``bfd``: multi-dimensional first-fit / best-fit decreasing (larger of memory and
  compute share first; best fit = least memory plus compute slack left);
- ``spread``: kube-scheduler's default LeastAllocated scoring, pods in arrival order, a server
  added (like the cluster autoscaler) when no existing one fits;
- ``mostallocated``: kube-scheduler's NodeResourcesFit MostAllocated (bin-packing) profile;
- ``seldon``: Seldon Core 2 style filter-and-sort: keep a replica on its current server if it
  still fits, else the server with the most free memory.
All of them obey every rule the checker knows (they are baselines for cost, not for validity).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ekko.solver import greedy
from ekko.solver.instance import build_instance, explain
from ekko.solver.plans import current_placement, infeasible_plan, make_plan
from ekko.solver.types import Plan, Problem, ServerId, SolveConfig, ZoneId

SolverFn = Callable[[Problem, SolveConfig], Plan]


def _greedy(name: str, how: greedy.Choice, sort: bool, dedicated: bool = False) -> SolverFn:
    def run(problem: Problem, config: SolveConfig) -> Plan:
        t0 = time.monotonic()
        inst = build_instance(problem)
        reasons = explain(problem, inst)
        if reasons:
            return infeasible_plan(name, reasons, inst.lower_bound, time.monotonic() - t0)
        reps = greedy.replicas_of(inst, current_placement(problem))
        if sort:
            reps.sort(key=greedy.decreasing(inst))
        res = greedy.run(inst, how, reps, dedicated=dedicated)
        if res.unplaced:
            r = res.unplaced[0]
            why = (
                f"{name} could not place {len(res.unplaced)} shard replicas (first: "
                f"{r.item.model}/{r.shard}) within {problem.pool.max_servers} servers of pool "
                f"{problem.pool.name}"
            )
            return infeasible_plan(name, [why], inst.lower_bound, time.monotonic() - t0)
        zones: dict[ServerId, ZoneId] = dict(res.servers)
        return make_plan(
            problem,
            inst,
            res.placed,
            zones,
            solver=name,
            status="feasible",
            config=config,
            seconds=time.monotonic() - t0,
        )

    run.__name__ = f"solve_{name}"
    run.__doc__ = f"Baseline {name!r}: greedy placement, see module docstring."
    return run


solve_dedicated = _greedy("dedicated", "first", sort=True, dedicated=True)
solve_ffd = _greedy("ffd", "first", sort=True)
solve_bfd = _greedy("bfd", "best", sort=True)
solve_spread = _greedy("spread", "least", sort=False)
solve_mostallocated = _greedy("mostallocated", "most", sort=False)
solve_seldon = _greedy("seldon", "seldon", sort=False)

BASELINES: dict[str, SolverFn] = {
    "dedicated": solve_dedicated,
    "ffd": solve_ffd,
    "bfd": solve_bfd,
    "spread": solve_spread,
    "mostallocated": solve_mostallocated,
    "seldon": solve_seldon,
}
