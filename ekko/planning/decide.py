"""The pool worker's decisions, as pure functions (``ekko.operator.worker`` observes, calls these
and writes).

- ``resumes_recorded`` / ``must_replan``: the restart rule — a worker without a plan keeps the
  plan recorded in the pool's status when its inputs still match, and re-plans otherwise.
- ``Debounce``: the re-plan debounce's bookkeeping (when the first unplanned change came).
- ``refused_text``, ``refusal_notice``, ``pool_problem``, ``refused_backoff``: how writes the API
  server refused are reported on the pool and retried.
- ``unplaceable``: models that cannot be placed on the pool even alone, with the reason.
- ``plan_failure``, ``plan_summary``, ``excluded_problem``, ``planned_message``: what a solve
  means for the pool's status and events.
- ``roll_notices``: the events a template-roll pass posts.
- ``settled`` / ``more_work``: whether a pass leaves work for a follow-up pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
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
    """Whether this pass solves: once the debounce has passed, when there is no plan yet or the
    inputs changed since the last plan. A new pool waits out its debounce too: its models are
    usually created right after it, and a first plan of the few that existed yet was solved (up
    to the solver's time limit) only to be re-planned for the rest."""
    return not debouncing and (not has_plan or inputs != planned_inputs)


DEBOUNCE_MAX_FACTOR = 5
"""A burst of changes postpones the re-plan to a debounce after its last change, but never more
than this many debounces after its first: a steady trickle of edits cannot postpone it forever."""


def debounce_left(
    first_change: float | None, now: float, debounce: float, last_change: float | None = None
) -> float:
    """Seconds a re-plan still waits: until a debounce after the last change not planned yet,
    and at most ``DEBOUNCE_MAX_FACTOR`` debounces after the first (None: no such change, no
    wait). Once a change was planned it never delays again; it once did, re-arming a wake-up
    every debounce forever, so a converged pool ran two passes a second."""
    if first_change is None:
        return 0.0
    last = first_change if last_change is None else max(first_change, last_change)
    due = min(last + debounce, first_change + DEBOUNCE_MAX_FACTOR * debounce)
    return max(0.0, due - now)


@dataclass(frozen=True)
class Debounce:
    """The re-plan debounce of one pool (times are monotonic seconds).

    ``since``: when the first spec change not planned yet arrived (None: none); ``last``: when
    the latest did (None: the first is the latest); ``armed``: a change arrived that no pass has
    yet seen past its debounce. The worker keeps one and replaces it at each step: a change
    (``changed``), the start of a pass (``at_pass``), a re-plan (``planned``), a pass past the
    debounce that found nothing to re-plan (``settled``).

    Changes arriving within a debounce of each other are planned together: ``kubectl apply`` of
    a pool and three hundred models takes seconds at a thousand nodes, and counted from the first
    change the debounce planned whatever had arrived after it, and the rest a solve later.
    """

    since: float | None = None
    armed: bool = False
    last: float | None = None

    def changed(self, now: float) -> Debounce:
        """A spec change arrived: the re-plan waits a debounce from it (see ``debounce_left``)."""
        return Debounce(self.since if self.since is not None else now, True, now)

    def at_pass(self, now: float, debounce: float) -> tuple[Debounce, float]:
        """A pass starts: the seconds the re-plan still waits (0: it may re-plan), and the
        bookkeeping after it (disarmed once the wait is over; ``since`` stays for the re-plan's
        delay metric)."""
        left = debounce_left(self.since if self.armed else None, now, debounce, self.last)
        return (self if left > 0 else replace(self, armed=False)), left

    def planned(self) -> Debounce:
        """A re-plan starts: it covers every change seen so far (one arriving during the solve
        counts from its own arrival)."""
        return Debounce()

    def settled(self) -> Debounce:
        """A pass past the debounce did not re-plan (the changes did not alter the plan's inputs:
        a restart that resumed its recorded plan, an unusable model edit): they are done with,
        unless another arrived during the pass. Keeping ``since`` would let the next change
        re-plan at once, without its debounce, and report the whole interval as its delay."""
        return self if self.armed else Debounce()


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


REFUSED_SHOWN = 3
"""Refused writes named in the pool's ``WriteRefused`` text (the count says how many in all)."""


def refused_text(refused: Sequence[str]) -> str:
    """The pool's text for the writes the API server refused (4xx) in a pass ("" when none)."""
    if not refused:
        return ""
    return f"{len(refused)} write(s) refused by the API server: " + "; ".join(
        refused[:REFUSED_SHOWN]
    )


def refusal_notice(text: str, last: str) -> Notice | None:
    """The ``WriteRefused`` event of a pass: only when the refusals are new (``last``: the text
    of the previous pass), so a write refused pass after pass is said once."""
    if not text or text == last:
        return None
    return Notice("WriteRefused", text, True)


def pool_problem(plan_problem: str, refused: str) -> tuple[str, str]:
    """The problem the pool's status shows, with its condition reason: refused writes when there
    are (the plan cannot be carried out), else the plan's problem."""
    if refused:
        return refused, "WriteRefused"
    return plan_problem, "PlanFailed"


def refused_backoff(previous: float, cap: float) -> float:
    """Seconds until a pass with refused writes is retried: doubling from ``previous`` up to
    ``cap`` (the object may be fixed, but a write refused now is likely refused again)."""
    return min(previous * 2, cap)


def settled(state: PoolState, desired: Desired) -> bool:
    """Every desired replica loaded and served, and nothing left draining.

    By model and shard, not version, on purpose: during a rollout a server holds the canary next
    to the stable version, and one that serves the shard in some version leaves the pool worker
    nothing to do (the agent's report of the new version wakes the pool; the rollout worker
    counts versions itself, ``rollout.observe``). Where a version does matter to the pool — a
    replica moved mid-rollout — converge keeps the old server's replica of each version draining
    until it is served at the new place, and the drain keeps the pool unsettled. Counting
    versions here would poll every second while a bad canary fails to load."""
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
