"""The pool worker's decisions, as pure functions (``ekko.operator.worker`` observes, calls these
and writes).

- ``resumes_recorded`` / ``must_replan``: the restart rule — a worker without a plan keeps the
  plan recorded in the pool's status when its inputs still match, and re-plans otherwise.
- ``unplaceable``: models that cannot be placed on the pool even alone, with the reason.
- ``plan_failure``, ``plan_summary``, ``excluded_problem``, ``planned_message``: what a solve
  means for the pool's status and events.
- ``roll_notices``: the events a template-roll pass posts.
- ``settled`` / ``more_work``: whether a pass leaves work for a follow-up pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from ekko.api.resources import PlanSummary
from ekko.planning.converge import Desired
from ekko.planning.roll import Roll
from ekko.planning.state import PoolState
from ekko.solver import Plan, Problem, Violation, explain

EXPLANATION_LIMIT = 4000
"""Characters of ``PlanSummary.explanation`` kept (the API type allows 4096)."""


def resumes_recorded(recorded: PlanSummary | None, inputs: str) -> bool:
    """A worker starting without a plan (an operator restart) keeps the plan recorded in the
    pool's status when it was made from the same inputs: the assignments already carry it, so
    nothing moves. Otherwise (no record, other inputs) it re-plans."""
    return recorded is not None and recorded.inputs == inputs


def must_replan(has_plan: bool, inputs: str, planned_inputs: str | None, debouncing: bool) -> bool:
    """Whether this pass solves: always without a plan; otherwise when the inputs changed since
    the last plan and the debounce has passed."""
    return not has_plan or (inputs != planned_inputs and not debouncing)


def unplaceable(problem: Problem) -> dict[str, str]:
    """Models that cannot be placed on this pool even alone, with the reason in words."""
    out: dict[str, str] = {}
    for model in problem.models:
        alone = problem.model_copy(update={"models": (model,), "current": {}})
        reasons = explain(alone)
        if reasons:
            out[str(model.id)] = "; ".join(reasons)
    return out


def without(problem: Problem, excluded: Mapping[str, str]) -> Problem:
    """The problem without the excluded models (the problem itself when none is)."""
    if not excluded:
        return problem
    return problem.model_copy(
        update={"models": tuple(m for m in problem.models if m.id not in excluded)}
    )


def status_word(status: str) -> str:
    """The solver's plan status as the API's ``PlanSummary.status``."""
    return {"optimal": "Optimal", "feasible": "Feasible", "fallback": "Fallback"}.get(
        status, "Infeasible"
    )


def plan_failure(plan: Plan, broken: Sequence[Violation]) -> str:
    """Why a solve's plan cannot be used, in words for the pool's status ("" when it can): the
    solver found none, or the checker found violations in it."""
    if plan.status != "infeasible" and not broken:
        return ""
    why = "; ".join(plan.explanation) or "; ".join(v.message for v in broken[:3])
    return (
        f"placement failed ({plan.status}): {why or 'no plan found within the deadline'}; "
        "the last good plan stays"
    )


def _reasons(excluded: Mapping[str, str]) -> str:
    return "; ".join(f"{m}: {why}" for m, why in excluded.items())


def excluded_problem(excluded: Mapping[str, str]) -> str:
    """The pool's problem text when models were left out of its plan ("" when none was)."""
    return "cannot place " + _reasons(excluded) if excluded else ""


def plan_summary(
    plan: Plan, excluded: Mapping[str, str], inputs: str, now: datetime
) -> PlanSummary:
    """The plan as recorded in the pool's status."""
    return PlanSummary(
        status=status_word(plan.status),
        servers_used=plan.servers_used,
        lower_bound=plan.lower_bound,
        gap_percent=round(100 * plan.gap, 2) if plan.gap != float("inf") else 0.0,
        solve_seconds=round(plan.solve_seconds, 3),
        bytes_moved=plan.bytes_moved,
        replicas_moved=plan.replicas_moved,
        computed_at=now,
        explanation=_reasons(excluded)[:EXPLANATION_LIMIT],
        inputs=inputs,
        excluded_models=sorted(excluded),
    )


def planned_message(plan: Plan) -> str:
    """The ``Planned`` event's text."""
    return (
        f"Planned {plan.servers_used} servers (lower bound {plan.lower_bound}, {plan.status}) "
        f"in {plan.solve_seconds:.2f}s; {plan.replicas_moved} replicas to load"
    )


@dataclass(frozen=True)
class Notice:
    """An event to post on the pool (and log): warnings at WARNING, the rest at INFO."""

    reason: str
    message: str
    warning: bool = False


def roll_adopted(rolled: Roll) -> bool:
    """Whether the roll's placement becomes the worker's plan (it replaced or recreated)."""
    return bool(rolled.replaced or rolled.recreate)


def roll_notices(rolled: Roll, template_hash: str, last_waiting: str) -> list[Notice]:
    """The events of one roll pass: one per replaced or recreated server, and one when the roll
    waits for a new reason (``last_waiting``: the reason the previous pass waited for)."""
    out = [
        Notice(
            "ReplacingServer",
            f"Replacing outdated server {old} by {new} (template {template_hash})",
        )
        for old, new in rolled.replaced
    ]
    out += [
        Notice(
            "ReplacingServer",
            f"Recreating empty outdated server {action.name} (template {template_hash})",
        )
        for action in rolled.recreate
    ]
    if rolled.waiting and rolled.waiting != last_waiting:
        out.append(Notice("RollWaiting", f"Template roll waits: {rolled.waiting}", True))
    return out


def settled(state: PoolState, desired: Desired) -> bool:
    """Every desired replica loaded and served, and nothing left draining."""
    for server in state.servers:
        target = desired.servers.get(server.name, frozenset())
        if any(s.drain for s in server.spec_shards):
            return False
        if target and not server.serving:
            return False
        loaded = {(m, i) for m, i, _ in server.loaded}
        if not target <= loaded:
            return False
    return all(state.server(n) is not None for n in desired.servers)


def more_work(acted: bool, rolled: Roll, is_settled: bool) -> bool:
    """Whether a pass (whose writes were not refused) wants a follow-up pass: it acted, a
    template roll is under way (not waiting, not OnDelete), or the pool has not settled."""
    rolling = not rolled.done and not rolled.on_delete and not rolled.waiting
    return acted or rolling or not is_settled
