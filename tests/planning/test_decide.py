"""The pool worker's decisions (ekko.planning.decide), one table row per branch."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from ekko.api.resources import AssignedShard, Model, PlanSummary
from ekko.planning.converge import Desired, RecreateServer, WriteAssignment, converge
from ekko.planning.decide import (
    EXPLANATION_LIMIT,
    Debounce,
    Notice,
    debounce_left,
    excluded_problem,
    more_work,
    must_replan,
    plan_failure,
    plan_summary,
    planned_message,
    pool_problem,
    refusal_notice,
    refused_backoff,
    refused_text,
    resumes_recorded,
    roll_adopted,
    roll_notices,
    settled,
    status_word,
    unplaceable,
    without,
)
from ekko.planning.problem import build_problem
from ekko.planning.roll import Roll
from ekko.planning.state import PoolState, ResidentVersion, ServerObs
from ekko.solver import Plan, Server, ServerId, Violation
from tests.planning.test_converge import POOL, model

NOW = datetime(2026, 11, 30, 1, 0, tzinfo=UTC)
EMPTY = Desired({}, {})


# --- the restart rule ---------------------------------------------------------------------------


def recorded(inputs: str) -> PlanSummary:
    return PlanSummary(
        status="Optimal",
        servers_used=2,
        lower_bound=2,
        gap_percent=0,
        solve_seconds=0.1,
        bytes_moved=0,
        replicas_moved=0,
        inputs=inputs,
    )


@pytest.mark.parametrize(
    ("record", "inputs", "resume"),
    [
        (None, "abc", False),  # a pool never planned: plan
        (recorded("abc"), "abc", True),  # a restart, nothing changed: keep the plan, move nothing
        (recorded("abc"), "abd", False),  # specs changed while the operator was down: re-plan
        (recorded(""), "abc", False),  # a record from before inputs were recorded: re-plan
    ],
)
def test_a_restarted_worker_resumes_the_recorded_plan_only_for_the_same_inputs(
    record: PlanSummary | None, inputs: str, resume: bool
) -> None:
    assert resumes_recorded(record, inputs) is resume


@pytest.mark.parametrize(
    ("has_plan", "inputs", "planned", "debouncing", "replan"),
    [
        (False, "a", None, False, True),  # no plan yet: solve
        # No plan yet, still debouncing: wait (a new pool's models are created right after it;
        # a plan of the first few was solved, then re-planned a solve later for the rest).
        (False, "a", None, True, False),
        (True, "a", "a", False, False),  # same inputs: converge the plan
        (True, "b", "a", False, True),  # inputs changed, debounce over: re-plan
        (True, "b", "a", True, False),  # inputs changed, still debouncing: wait
        (True, "a", "a", True, False),  # a wake-up without a spec change: nothing
    ],
)
def test_a_pass_solves_without_a_plan_or_when_the_inputs_changed_after_the_debounce(
    has_plan: bool, inputs: str, planned: str | None, debouncing: bool, replan: bool
) -> None:
    assert must_replan(has_plan, inputs, planned, debouncing) is replan


# --- the re-plan debounce ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first_change", "now", "left"),
    [
        (None, 100.0, 0.0),  # no unplanned change: a pass never waits, nor re-arms a wake-up
        (100.0, 100.2, 0.8),  # a change 0.2 s ago, debounce 1 s
        (100.0, 101.5, 0.0),  # due
    ],
)
def test_the_replan_debounce_counts_from_the_first_unplanned_change(
    first_change: float | None, now: float, left: float
) -> None:
    assert debounce_left(first_change, now, 1.0) == pytest.approx(left)


@pytest.mark.parametrize(
    ("before", "now", "after", "left"),
    [
        (Debounce(), 5.0, Debounce(), 0.0),  # no change: no wait
        (Debounce(100.0, True), 100.2, Debounce(100.0, True), 0.8),  # waiting, still armed
        # Over: disarmed (the next pass does not wait), since kept for the re-plan's delay metric.
        (Debounce(100.0, True), 101.0, Debounce(100.0, False), 0.0),
        (Debounce(100.0, False), 100.2, Debounce(100.0, False), 0.0),  # already over: no wait
    ],
)
def test_a_pass_waits_out_the_debounce_then_disarms_it(
    before: Debounce, now: float, after: Debounce, left: float
) -> None:
    state, wait = before.at_pass(now, 1.0)
    assert (state, wait) == (after, pytest.approx(left))


def test_a_burst_of_changes_is_planned_together_and_a_replan_covers_every_change() -> None:
    first = Debounce().changed(100.0)
    assert first == Debounce(100.0, True, 100.0)
    burst = first.changed(100.7)
    assert burst == Debounce(100.0, True, 100.7)  # counts from the last change now
    assert burst.at_pass(101.2, 1.0)[1] == pytest.approx(0.5)
    assert first.planned() == Debounce()
    assert first.planned().changed(103.0) == Debounce(103.0, True, 103.0)  # during the solve


@pytest.mark.parametrize(
    ("first", "last", "now", "left"),
    [
        (100.0, 100.0, 100.5, 0.5),  # one change
        (100.0, 102.0, 102.5, 0.5),  # a burst: a debounce after its last change
        (100.0, 104.8, 104.9, 0.1),  # a trickle: never later than 5 debounces after the first
        (100.0, None, 100.5, 0.5),  # no last recorded: the first is the last
    ],
)
def test_the_debounce_waits_for_a_quiet_debounce_but_at_most_five(
    first: float, last: float | None, now: float, left: float
) -> None:
    assert debounce_left(first, now, 1.0, last) == pytest.approx(left)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (Debounce(100.0, False), Debounce()),  # the change needed no re-plan: done with
        (Debounce(100.0, True), Debounce(100.0, True)),  # another came during the pass: kept
        (Debounce(), Debounce()),
    ],
)
def test_a_pass_that_needs_no_replan_forgets_the_change(before: Debounce, after: Debounce) -> None:
    assert before.settled() == after


def test_after_a_change_that_needed_no_replan_the_next_change_waits_its_own_debounce() -> None:
    """A restart (its start-up events are changes) that resumes its recorded plan, or an unusable
    model edit, changes no plan input: the pass past the debounce does not re-plan. The next real
    change, an hour later, once re-planned at once (the debounce counted from the old change)
    and reported an hour of delay."""
    debounce = Debounce().changed(0.0)
    debounce, left = debounce.at_pass(1.0, 1.0)  # over; must_replan: same inputs, no re-plan
    assert left == 0.0
    debounce = debounce.settled()
    debounce = debounce.changed(3600.0)
    debounce, left = debounce.at_pass(3600.1, 1.0)
    assert left == pytest.approx(0.9)
    assert debounce.since == 3600.0


# --- refused writes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("refused", "text"),
    [
        ([], ""),
        (["a"], "1 write(s) refused by the API server: a"),
        (["a", "b", "c", "d"], "4 write(s) refused by the API server: a; b; c"),
    ],
)
def test_the_refused_writes_text_counts_all_and_names_three(refused: list[str], text: str) -> None:
    assert refused_text(refused) == text


@pytest.mark.parametrize(
    ("text", "last", "notice"),
    [
        ("", "", None),  # nothing refused
        ("", "1 write(s) refused", None),  # refusals over: no event (the condition clears)
        ("1 write(s) refused", "1 write(s) refused", None),  # the same again: said once
        ("1 write(s) refused", "", Notice("WriteRefused", "1 write(s) refused", True)),
        ("2 write(s) refused", "1 write(s) refused", Notice("WriteRefused", "2 write(s) refused", True)),
    ],
)  # fmt: skip
def test_refused_writes_are_posted_when_new(text: str, last: str, notice: Notice | None) -> None:
    assert refusal_notice(text, last) == notice


@pytest.mark.parametrize(
    ("plan_problem", "refused", "shown"),
    [
        ("", "", ("", "PlanFailed")),
        ("cannot place a: too big", "", ("cannot place a: too big", "PlanFailed")),
        ("cannot place a: too big", "1 write(s)", ("1 write(s)", "WriteRefused")),
        ("", "1 write(s)", ("1 write(s)", "WriteRefused")),
    ],
)
def test_refused_writes_come_before_the_plans_problem(
    plan_problem: str, refused: str, shown: tuple[str, str]
) -> None:
    assert pool_problem(plan_problem, refused) == shown


@pytest.mark.parametrize(
    ("previous", "delay"), [(1.0, 2.0), (8.0, 16.0), (16.0, 30.0), (30.0, 30.0)]
)
def test_refused_writes_are_retried_slower_and_slower(previous: float, delay: float) -> None:
    assert refused_backoff(previous, 30.0) == delay


# --- unplaceable models -------------------------------------------------------------------------


def test_a_model_too_big_for_any_server_is_excluded_with_the_reason_and_the_rest_stays() -> None:
    small, huge = (
        model("small"),
        Model.model_validate(
            {
                "kind": "Model",
                "metadata": {"name": "huge"},
                "spec": {
                    "pool": "p",
                    "version": "v1",
                    "artifact": {"uri": "file:///m/huge"},
                    "shards": {"count": 1, "size": "100Gi"},  # servers hold 64Gi
                },
            }
        ),
    )
    problem = build_problem(PoolState(POOL, (small, huge), ()))
    excluded = unplaceable(problem)
    assert list(excluded) == ["huge"]
    assert "64" in excluded["huge"]  # the reason names what a server holds
    assert [str(m.id) for m in without(problem, excluded).models] == ["small"]


def test_placeable_models_are_not_excluded_and_the_problem_is_kept() -> None:
    problem = build_problem(PoolState(POOL, (model("a"), model("b")), ()))
    assert unplaceable(problem) == {}
    assert without(problem, {}) is problem


# --- what a solve means for the status and events -----------------------------------------------


def plan(status: Any = "optimal", servers: int = 3, **fields: Any) -> Plan:
    values: dict[str, Any] = {
        "lower_bound": 2,
        "gap": 1 / 3,
        "solve_seconds": 0.12345,
        "bytes_moved": 2**30,
        "replicas_moved": 4,
    }
    return Plan(
        solver="test",
        status=status,
        servers=tuple(Server(id=ServerId(f"p-{i}")) for i in range(servers)),
        **(values | fields),
    )


@pytest.mark.parametrize(
    ("status", "word"),
    [
        ("optimal", "Optimal"),
        ("feasible", "Feasible"),
        ("fallback", "Fallback"),
        ("infeasible", "Infeasible"),
        ("anything else", "Infeasible"),
    ],
)
def test_the_plan_status_word(status: str, word: str) -> None:
    assert status_word(status) == word


BROKEN = [Violation(kind="memory", message=f"server p-{i} over memory") for i in range(4)]


@pytest.mark.parametrize(
    ("the_plan", "broken", "text"),
    [
        (plan(), [], ""),  # usable
        (plan("fallback"), [], ""),  # a fallback plan is still a plan
        (
            plan("infeasible", explanation=("too big", "too many")),
            [],
            "placement failed (infeasible): too big; too many; the last good plan stays",
        ),
        (
            plan("infeasible"),
            [],
            "placement failed (infeasible): no plan found within the deadline; "
            "the last good plan stays",
        ),
        (  # the checker's violations, the first three
            plan("feasible"),
            BROKEN,
            "placement failed (feasible): server p-0 over memory; server p-1 over memory; "
            "server p-2 over memory; the last good plan stays",
        ),
    ],
)
def test_a_plan_fails_when_infeasible_or_broken(
    the_plan: Plan, broken: list[Violation], text: str
) -> None:
    assert plan_failure(the_plan, broken) == text


@pytest.mark.parametrize(
    ("excluded", "text"),
    [
        ({}, ""),
        ({"huge": "too big"}, "cannot place huge: too big"),
        ({"a": "x", "b": "y"}, "cannot place a: x; b: y"),
    ],
)
def test_the_problem_text_names_each_excluded_model(excluded: dict[str, str], text: str) -> None:
    assert excluded_problem(excluded) == text


def test_the_summary_records_the_plan_its_inputs_and_the_excluded_models() -> None:
    summary = plan_summary(plan(), {"z": "too big", "a": "too wide"}, "fp", NOW)
    assert summary == PlanSummary(
        status="Optimal",
        servers_used=3,
        lower_bound=2,
        gap_percent=33.33,
        solve_seconds=0.123,
        bytes_moved=2**30,
        replicas_moved=4,
        computed_at=NOW,
        explanation="z: too big; a: too wide",
        inputs="fp",
        excluded_models=["a", "z"],
    )


def test_the_summary_of_an_unbounded_gap_is_zero_and_a_long_explanation_is_cut() -> None:
    summary = plan_summary(plan(gap=float("inf")), {"m": "x" * 5000}, "", NOW)
    assert summary.gap_percent == 0.0
    assert len(summary.explanation) == EXPLANATION_LIMIT
    assert summary.explanation.startswith("m: xxx")


def test_the_planned_event_text() -> None:
    assert planned_message(plan("feasible")) == (
        "Planned 3 servers (lower bound 2, feasible) in 0.12s; 4 replicas to load"
    )


# --- the template roll's glue -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rolled", "last_waiting", "adopted", "notices"),
    [
        (Roll(EMPTY), "", False, []),  # nothing outdated
        (
            Roll(EMPTY, replaced=(("p-0", "p-r0"),)),
            "",
            True,
            [Notice("ReplacingServer", "Replacing outdated server p-0 by p-r0 (template h2)")],
        ),
        (
            Roll(EMPTY, recreate=(RecreateServer("p-1"),)),
            "",
            True,
            [Notice("ReplacingServer", "Recreating empty outdated server p-1 (template h2)")],
        ),
        (
            Roll(EMPTY, waiting="at maxServers"),
            "",
            False,
            [Notice("RollWaiting", "Template roll waits: at maxServers", True)],
        ),
        (Roll(EMPTY, waiting="at maxServers"), "at maxServers", False, []),  # said already
        (
            Roll(EMPTY, waiting="at maxServers"),
            "pods not ready",  # a new reason is said again
            False,
            [Notice("RollWaiting", "Template roll waits: at maxServers", True)],
        ),
        (
            Roll(EMPTY, replaced=(("p-0", "p-r0"), ("p-2", "p-r1"))),
            "",
            True,
            [
                Notice("ReplacingServer", "Replacing outdated server p-0 by p-r0 (template h2)"),
                Notice("ReplacingServer", "Replacing outdated server p-2 by p-r1 (template h2)"),
            ],
        ),
    ],
)
def test_a_roll_pass_posts_one_event_per_replacement_and_one_per_new_wait(
    rolled: Roll, last_waiting: str, adopted: bool, notices: list[Notice]
) -> None:
    assert roll_adopted(rolled) is adopted
    assert roll_notices(rolled, "h2", last_waiting) == notices


# --- settled and the follow-up pass -------------------------------------------------------------


def shard(name: str, index: int, drain: bool = False) -> AssignedShard:
    return AssignedShard(
        model=name, shard=index, version="v1", uri=f"file:///m/{name}", bytes=2**30, drain=drain
    )


SERVING = ServerObs(
    "p-0",
    "a",
    pod_ready=True,
    spec_shards=(shard("m", 0),),
    loaded=frozenset({("m", 0, "v1")}),
)
WANT = Desired({"p-0": frozenset({("m", 0)})}, {"p-0": "a"})


@pytest.mark.parametrize(
    ("servers", "want", "is_settled"),
    [
        ((SERVING,), WANT, True),  # loaded and served
        ((), EMPTY, True),  # an empty pool wanting nothing
        ((replace(SERVING, pod_ready=False),), WANT, False),  # loaded, not served yet
        ((replace(SERVING, pod_failed=True),), WANT, False),  # the pod failed
        ((replace(SERVING, loaded=frozenset()),), WANT, False),  # not loaded yet
        (  # an old version loaded still counts (the shard is served)
            (replace(SERVING, loaded=frozenset({("m", 0, "v0")})),),
            WANT,
            True,
        ),
        (  # a draining replica is left
            (replace(SERVING, spec_shards=(shard("m", 0), shard("m", 1, drain=True))),),
            WANT,
            False,
        ),
        (  # draining on a server the plan no longer uses
            (SERVING, ServerObs("p-9", "a", pod_ready=True, spec_shards=(shard("m", 1, True),))),
            WANT,
            False,
        ),
        ((), WANT, False),  # the desired server does not exist yet
        (  # a spare server without work does not hold anything up
            (SERVING, ServerObs("p-9", "a", pod_ready=False)),
            WANT,
            True,
        ),
    ],
)
def test_a_pool_is_settled_when_every_desired_replica_is_served_and_nothing_drains(
    servers: tuple[ServerObs, ...], want: Desired, is_settled: bool
) -> None:
    state = PoolState(POOL, (model("m", shards=2),), servers)
    assert settled(state, want) is is_settled


def test_settled_is_by_shard_during_a_version_rollout_and_drains_carry_the_versions() -> None:
    """A canary holds v2 next to v1 on the same servers. ``settled`` asks about placement (every
    desired shard served in some version), not about versions: a server that loaded v1 but not
    yet v2 is settled (no 1 s follow-up passes), because nothing is left for the pool worker to do
    there — the agent's report of v2 wakes the pool, and the rollout worker counts v2 per server
    (``rollout.observe``). Counting versions would never settle while a bad canary fails to load.
    Where the pool worker does wait on a version (a replica moved during the canary), converge
    keeps the old server's replica of that version draining until it is served at the new place,
    and the drain keeps the pool unsettled."""

    def at(version: str, drain: bool = False) -> AssignedShard:
        uri = "file:///m/m" if version == "v1" else f"file:///{version}"
        return shard("m", 0, drain).evolve(version=version, uri=uri)

    m = model("m", shards=1)
    resident = {"m": (ResidentVersion("v1", "file:///m/m"), ResidentVersion("v2", "file:///v2"))}
    both = (at("v1"), at("v2"))
    loading = replace(SERVING, spec_shards=both, loaded=frozenset({("m", 0, "v1")}))
    state = PoolState(POOL, (m,), (loading,), resident=resident)
    assert settled(state, WANT)
    assert not converge(state, WANT)  # and indeed nothing to do until v2 loads

    # The replica moves from p-1 to p-0 mid-canary; p-0 serves v1 only so far.
    old = ServerObs(
        "p-1",
        "a",
        pod_ready=True,
        spec_shards=both,
        loaded=frozenset({("m", 0, "v1"), ("m", 0, "v2")}),
    )
    moving = PoolState(POOL, (m,), (loading, old), resident=resident)
    written = {a.server: a.shards for a in converge(moving, WANT) if isinstance(a, WriteAssignment)}
    assert written["p-1"] == (at("v2", drain=True),)  # v1 is served at p-0: it goes; v2 stays
    drained = PoolState(
        POOL, (m,), (loading, replace(old, spec_shards=written["p-1"])), resident=resident
    )
    assert not settled(drained, WANT)
    both_loaded = replace(loading, loaded=frozenset({("m", 0, "v1"), ("m", 0, "v2")}))
    done = PoolState(
        POOL, (m,), (both_loaded, replace(old, spec_shards=written["p-1"])), resident=resident
    )
    written = {a.server: a.shards for a in converge(done, WANT) if isinstance(a, WriteAssignment)}
    assert written["p-1"] == ()  # v2 is served at p-0 now: the drain ends


@pytest.mark.parametrize(
    ("acted", "rolled", "is_settled", "more"),
    [
        (False, Roll(EMPTY), True, False),  # converged: wait for the next event
        (True, Roll(EMPTY), True, True),  # acted: look again
        (False, Roll(EMPTY), False, True),  # not settled: look again
        (False, Roll(EMPTY, outdated=("p-0",)), True, True),  # a roll under way
        (False, Roll(EMPTY, in_flight=1), True, True),  # a replacement in flight
        (False, Roll(EMPTY, outdated=("p-0",), on_delete=True), True, False),  # OnDelete
        (False, Roll(EMPTY, outdated=("p-0",), waiting="cap"), True, False),  # waits: an event
    ],
)
def test_a_pass_asks_for_a_follow_up_while_work_is_left(
    acted: bool, rolled: Roll, is_settled: bool, more: bool
) -> None:
    assert more_work(acted, rolled, is_settled) is more
