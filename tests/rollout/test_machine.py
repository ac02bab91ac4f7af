"""Table tests of the rollout state machine, with time and observations passed in."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ekko.api.resources import ModelVersionSpec, ModelVersionStatus, VersionWeight
from ekko.rollout.analysis import Measurement
from ekko.rollout.machine import (
    Decision,
    Inputs,
    ModelPatch,
    Observed,
    Request,
    decide,
    metrics_due,
    split,
)

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def spec(steps: list[dict[str, Any]], **extra: Any) -> ModelVersionSpec:
    return ModelVersionSpec.model_validate(
        {
            "model": "rank",
            "version": "v2",
            "artifact": {"uri": "file:///a/v2"},
            "strategy": {"canary": {"steps": steps}},
            "analysis": [
                {
                    "name": "errors",
                    "query": "q",
                    "successCondition": "result < 0.05",
                    "interval": "5s",
                    "count": 2,
                    "noData": "Hold",
                }
            ],
        }
        | extra
    )


class Sim:
    """Feeds decisions back as the cluster would: the model patch lands, agents apply it."""

    def __init__(self, s: ModelVersionSpec, **observed: Any) -> None:
        self.spec = s
        self.status = ModelVersionStatus()
        self.obs = Observed(
            model_exists=True,
            stable="v1",
            weights=(VersionWeight(version="v1", weight=100),),
            servers_wanted=4,
            servers_loaded=4,
            routing_applied=True,
        )
        self.obs = replace(self.obs, **observed)
        self.now = T0
        self.decisions: list[Decision] = []

    def step(
        self,
        seconds: float = 0,
        value: float | str | None = "none",
        request: Request | None = None,
        apply: bool = True,
    ) -> Decision:
        """Advance time, measure due metrics with `value` (None: no data), decide, apply."""
        self.now += timedelta(seconds=seconds)
        measurements: tuple[Measurement, ...] = ()
        if value != "none":
            assert not isinstance(value, str)
            measurements = self.measure(value)
        d = decide(
            Inputs(
                self.spec, self.status, self.obs, self.now, measurements, request, name="rank-v2"
            )
        )
        self.status = d.status
        if d.model is not None:
            m = d.model
            self.obs = replace(
                self.obs,
                weights=m.weights if m.weights is not None else self.obs.weights,
                canary=(m.canary or None) if m.canary is not None else self.obs.canary,
                stable=(m.stable or None) if m.stable is not None else self.obs.stable,
                previous=(m.previous or None) if m.previous is not None else self.obs.previous,
                routing_applied=apply,
            )
        self.decisions.append(d)
        return d

    def measure(self, value: float | None) -> tuple[Measurement, ...]:
        return tuple(
            Measurement(name, self.now, value)
            for name in metrics_due(self.spec, self.status, self.now)
        )


def test_a_healthy_canary_walks_every_step_and_promotes_keeping_the_previous_version() -> None:
    sim = Sim(
        spec(
            [{"setWeight": 10}, {"analysis": {}}, {"pause": {"duration": "30s"}}, {"setWeight": 50}]
        )
    )
    d = sim.step()
    assert sim.status.phase == "Loading" and d.model is not None and d.model.canary == "v2"
    sim.step()
    assert sim.status.phase == "Progressing" and sim.status.current_step == 0
    d = sim.step()
    assert d.model is not None and d.model.weights == split("v1", "v2", 10)
    sim.step()
    assert sim.status.current_step == 1  # routing applied: on to analysis
    sim.step(5, 0.01)
    assert sim.status.analysis[0].successful == 1 and sim.status.current_step == 1
    assert sim.measure(0.01) == ()  # not due until the interval passed
    sim.step(5, 0.01)
    assert sim.status.current_step == 2  # count 2 reached
    sim.step(10)
    assert sim.status.current_step == 2  # pausing 30s
    sim.step(20)
    assert sim.status.current_step == 3
    sim.step()
    sim.step()
    d = sim.step()
    assert sim.status.phase == "Promoted" and d.outcome == "Promoted"
    assert sim.obs.stable == "v2" and sim.obs.previous == "v1" and sim.obs.canary is None
    assert sim.obs.weights == (VersionWeight(version="v2", weight=100),)


def test_failed_analysis_rolls_back_at_once_and_measures_the_rollback() -> None:
    sim = Sim(spec([{"setWeight": 20}, {"analysis": {}}]))
    for _ in range(4):
        sim.step()
    assert sim.status.current_step == 1
    d = sim.step(5, 0.2, apply=False)
    assert sim.status.phase == "RolledBack" and d.outcome == "RolledBack"
    assert d.model is not None and d.model.weights == (VersionWeight(version="v1", weight=100),)
    assert sim.status.rollback_requested_at == sim.now
    assert "errors failed" in sim.status.message
    sim.step(0.3)
    assert sim.status.rollback_completed_at is None  # agents have not applied it yet
    sim.obs = replace(
        sim.obs, routing_applied=True, routing_applied_at=sim.now + timedelta(seconds=0.2)
    )
    d = sim.step(0.5)
    assert sim.status.rollback_seconds == pytest.approx(0.5)
    assert d.rollback_seconds == pytest.approx(0.5)


def test_every_analysis_step_measures_anew_at_its_own_weight() -> None:
    """A tally from an earlier analysis step must not pass a later one unmeasured: a version that
    is fine at 5% and fails at 25% (errors under load) is rolled back at 25%."""
    sim = Sim(spec([{"setWeight": 5}, {"analysis": {}}, {"setWeight": 25}, {"analysis": {}}]))
    for _ in range(4):
        sim.step()
    sim.step(5, 0.01)
    sim.step(5, 0.01)
    assert sim.status.current_step == 2 and sim.status.analysis[0].phase == "Successful"
    sim.step()
    sim.step()
    assert sim.status.current_step == 3 and sim.status.weight == 25
    assert sim.status.phase == "Progressing"  # not passed before measuring at 25%
    d = sim.step(5, 0.3)
    assert sim.status.phase == "RolledBack" and d.outcome == "RolledBack"
    assert "errors failed" in sim.status.message
    assert sim.status.analysis[0].failed == 1 and sim.status.analysis[0].successful == 0


def test_no_data_is_held_until_data_arrives_without_pausing() -> None:
    """noData: Hold keeps measuring while the canary has no data yet (not scraped twice, rate
    window not filled): empty results neither pass, fail nor pause, and data that then arrives
    decides."""
    sim = Sim(spec([{"setWeight": 5}, {"analysis": {}}, {"setWeight": 100}]))
    for _ in range(4):
        sim.step()
    for _ in range(3):
        sim.step(5, None)
        assert sim.status.phase == "Progressing" and sim.status.current_step == 1
    r = sim.status.analysis[0]
    assert (r.phase, r.no_data, r.inconclusive, r.successful) == ("Running", 3, 0, 0)
    d = sim.step(5, 0.3)  # the faulty canary's first real data
    assert sim.status.phase == "RolledBack" and d.outcome == "RolledBack"


def test_no_data_past_the_timeout_is_inconclusive_and_pauses() -> None:
    s = spec([{"setWeight": 5}, {"analysis": {}}, {"setWeight": 100}])
    s = s.model_copy(
        update={"analysis": [s.analysis[0].model_copy(update={"no_data_timeout": "20s"})]}
    )
    sim = Sim(s)
    for _ in range(4):
        sim.step()
    for _ in range(3):
        sim.step(5, None)  # 5, 10, 15 s into the step: held
    assert sim.status.phase == "Progressing"
    sim.step(5, None)  # 20 s: the bound is reached
    assert sim.status.phase == "Paused"
    assert sim.status.analysis[0].inconclusive == 1
    assert "no data" in sim.status.message
    sim.step(0, request=Request("promote", "t1"))
    assert sim.status.phase == "Progressing" and sim.status.current_step == 2


@pytest.mark.parametrize(("policy", "phase"), [("Fail", "RolledBack"), ("Pass", "Progressing")])
def test_the_no_data_policy_is_the_users_choice(policy: str, phase: str) -> None:
    s = spec([{"setWeight": 5}, {"analysis": {}}])
    s = s.model_copy(
        update={"analysis": [s.analysis[0].model_copy(update={"no_data": policy, "count": 1})]}
    )
    sim = Sim(s)
    for _ in range(4):
        sim.step()
    sim.step(5, None)
    assert sim.status.phase == phase


def test_a_pause_without_duration_waits_for_promote_and_requests_act_once() -> None:
    sim = Sim(spec([{"setWeight": 10}, {"pause": {}}, {"setWeight": 60}]))
    for _ in range(5):
        sim.step()
    assert sim.status.phase == "Paused"
    promote = Request("promote", "2026-11-28T12:00:05Z")
    sim.step(0, request=promote)
    assert sim.status.phase == "Progressing" and sim.status.current_step == 2
    step_before = sim.status.current_step
    sim.step(0, request=promote)  # the same request seen again: nothing more happens
    assert sim.status.current_step == step_before
    assert sim.status.handled_request == promote.at


def test_abort_and_retry() -> None:
    sim = Sim(spec([{"setWeight": 30}, {"pause": {}}]))
    for _ in range(3):
        sim.step()
    d = sim.step(0, request=Request("abort", "a"))
    assert sim.status.phase == "Aborted" and d.outcome == "Aborted"
    assert sim.obs.weights == (VersionWeight(version="v1", weight=100),) and sim.obs.canary is None
    d = sim.step(0, request=Request("promote", "b"))
    assert d.events[0].reason == "RequestRefused"
    # The refusal is a field of the status, for kubectl ekko and scripts (not only an event).
    assert (sim.status.handled_request, sim.status.request_refused) == (
        "b",
        "the rollout is Aborted",
    )
    sim.step(0, request=Request("retry", "c"))
    assert sim.status.phase == "Pending"
    assert (sim.status.handled_request, sim.status.request_refused) == ("c", "")  # carried out
    sim.step()
    assert sim.status.phase == "Loading"


def test_manual_pause_and_resume() -> None:
    sim = Sim(spec([{"setWeight": 10}, {"pause": {"duration": "1h"}}, {"setWeight": 50}]))
    for _ in range(3):
        sim.step()
    sim.step(0, request=Request("pause", "p"))
    assert sim.status.phase == "Paused" and sim.status.paused_by_user
    sim.step(7200)
    assert sim.status.phase == "Paused"
    sim.step(0, request=Request("resume", "r"))
    assert sim.status.phase == "Progressing"


def test_rollback_of_a_promoted_version_flips_to_the_resident_previous_one() -> None:
    sim = Sim(spec([{"setWeight": 100}]))
    for _ in range(5):
        sim.step()
    assert sim.status.phase == "Promoted" and sim.obs.previous == "v1"
    at = T0 + timedelta(seconds=100)
    d = sim.step(120, request=Request("rollback", "x", at_time=at), apply=False)
    assert sim.status.phase == "RolledBack"
    assert (
        d.model is not None
        and d.model.stable == "v1"
        and d.model.weights == (VersionWeight(version="v1", weight=100),)
    )
    assert sim.status.rollback_requested_at == at  # the user's request time, not the operator's


def test_rollback_is_refused_when_nothing_is_resident_to_go_back_to() -> None:
    sim = Sim(spec([{"setWeight": 100}], keepPrevious="Never"))
    for _ in range(5):
        sim.step()
    assert sim.status.phase == "Promoted" and sim.obs.previous is None
    d = sim.step(0, request=Request("rollback", "x"))
    assert sim.status.phase == "Promoted"
    assert d.events[0].reason == "RequestRefused" and "no previous version" in d.events[0].message
    d = sim.step(0, request=Request("rollback", "y", to="v0"))
    assert d.events[0].reason == "RequestRefused"


def test_pending_cases() -> None:
    sim = Sim(spec([{"setWeight": 10}]), model_exists=False)
    d = sim.step()
    assert (
        sim.status.phase == "Failed"
        and "does not exist" in sim.status.message
        and d.outcome == "Failed"
    )
    sim = Sim(spec([{"setWeight": 10}]), other_active="rank-v3")
    sim.step()
    assert sim.status.phase == "Pending" and "rank-v3" in sim.status.message


def test_a_failed_load_fails_the_rollout_and_unloads_the_canary() -> None:
    sim = Sim(spec([{"setWeight": 10}]))
    sim.step()
    sim.obs = replace(sim.obs, servers_loaded=2, load_error="digest mismatch on pool-3")
    d = sim.step()
    assert sim.status.phase == "Failed" and "digest mismatch" in sim.status.message
    assert d.model is not None and d.model.canary == ""
    assert sim.status.servers_loaded == 2


def test_weights_wait_for_every_agent_before_the_next_step() -> None:
    sim = Sim(spec([{"setWeight": 10}, {"setWeight": 20}]))
    sim.step()
    sim.step()
    sim.step(apply=False)
    sim.step()
    assert sim.status.current_step == 0  # agents have not applied 10% yet
    sim.obs = replace(sim.obs, routing_applied=True)
    sim.step()
    assert sim.status.current_step == 1


def _conditions(status: ModelVersionStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_conditions_follow_the_rollout_for_kubectl_wait() -> None:
    sim = Sim(spec([{"setWeight": 5}, {"analysis": {}}, {"pause": {}}, {"setWeight": 100}]))
    sim.step()
    c = _conditions(sim.status)
    assert c["Progressing"] == ("True", "Loading") and c["Completed"] == ("False", "Loading")
    for _ in range(3):
        sim.step()
    sim.step(5, 0.01)
    sim.step(5, 0.01)
    sim.step()
    c = _conditions(sim.status)
    assert sim.status.phase == "Paused"
    assert c["Paused"] == ("True", "ManualStep") and c["Progressing"] == ("False", "ManualStep")
    assert c["Healthy"] == ("True", "NoFailures") and c["Degraded"][0] == "False"
    paused_since = next(x for x in sim.status.conditions if x.type == "Paused")
    sim.step(1)
    again = next(x for x in sim.status.conditions if x.type == "Paused")
    assert again.last_transition_time == paused_since.last_transition_time  # no flapping
    sim.step(0, request=Request("promote", "t1"))
    for _ in range(3):
        sim.step()
    c = _conditions(sim.status)
    assert sim.status.phase == "Promoted"
    assert c["Completed"] == ("True", "Promoted") and c["Progressing"][0] == "False"
    assert all(x.observed_generation is None for x in sim.status.conditions)


def test_a_rolled_back_canary_is_completed_and_degraded() -> None:
    sim = Sim(spec([{"setWeight": 20}, {"analysis": {}}]))
    for _ in range(4):
        sim.step()
    sim.step(5, 0.5)
    c = _conditions(sim.status)
    assert c["Completed"] == ("True", "RolledBack")
    assert c["Degraded"] == ("True", "RolledBack") and c["Healthy"] == ("False", "RolledBack")


def test_inconclusive_analysis_pauses_with_its_reason() -> None:
    s = spec([{"setWeight": 5}, {"analysis": {}}])
    s = s.evolve(analysis=[s.analysis[0].evolve(no_data_timeout="5s")])
    sim = Sim(s)
    for _ in range(4):
        sim.step()
    sim.step(5, None)
    assert _conditions(sim.status)["Paused"] == ("True", "AnalysisInconclusive")


def test_a_malformed_request_is_answered_once_with_an_event() -> None:
    sim = Sim(spec([{"setWeight": 5}, {"pause": {}}]))
    for _ in range(4):
        sim.step()
    phase = sim.status.phase
    bad = Request("pause", "k1", problem="unknown request 'rollbak'")
    d = sim.step(0, request=bad)
    assert [e.reason for e in d.events] == ["RequestRefused"]
    assert sim.status.handled_request == "k1" and sim.status.phase == phase
    d = sim.step(1, request=bad)
    assert "RequestRefused" not in [e.reason for e in d.events]  # answered once


@pytest.mark.parametrize(
    ("stamp", "measured_from"),
    [
        (T0 + timedelta(days=3650), "now"),  # in the future: "rolled back in 0.00 s"
        (datetime(1970, 1, 1, tzinfo=UTC), "now"),  # the epoch: "in 1795962338 s"
        (None, "now"),  # unparseable or naive
        ("plausible", "stamp"),
    ],
)
def test_a_rollback_is_timed_from_a_plausible_request_time(
    stamp: datetime | str | None, measured_from: str
) -> None:
    sim = Sim(spec([{"setWeight": 20}, {"pause": {}}]))
    for _ in range(5):
        sim.step()
    now = sim.now + timedelta(seconds=10)
    at = now - timedelta(seconds=2) if stamp == "plausible" else stamp
    assert not isinstance(at, str)
    sim.step(10, request=Request("rollback", "r1", at_time=at))
    assert sim.status.phase == "RolledBack"
    expected = now if measured_from == "now" else now - timedelta(seconds=2)
    assert sim.status.rollback_requested_at == expected


def test_a_timed_pause_shows_paused_until_it_ends_then_goes_on_by_itself() -> None:
    """A pause with a duration is phase Paused with the time it resumes (it read Progressing
    before, so `kubectl ekko status` did not show it), and Progressing again once it ended."""
    sim = Sim(spec([{"setWeight": 10}, {"pause": {"duration": "30s"}}, {"setWeight": 50}]))
    for _ in range(4):
        sim.step()
    assert sim.status.current_step == 1
    d = sim.step()
    until = sim.now + timedelta(seconds=30)
    assert (sim.status.phase, sim.status.paused_until) == ("Paused", until)
    assert "until 2026-11-28T12:00:30Z" in sim.status.message and d.requeue_after == 30
    assert [e.reason for e in d.events] == ["Paused"]
    conditions = {c.type: (c.status, c.reason) for c in sim.status.conditions}
    assert conditions["Paused"] == ("True", "TimedPause")
    assert conditions["Progressing"] == ("False", "TimedPause")
    d = sim.step(10)  # still paused: nothing new to say
    assert sim.status.phase == "Paused" and d.events == () and d.requeue_after == 20
    sim.step(20)
    assert (sim.status.phase, sim.status.current_step, sim.status.paused_until) == (
        "Progressing",
        2,
        None,
    )


@pytest.mark.parametrize(
    ("verb", "phase", "step"),
    [("promote", "Progressing", 2), ("abort", "Aborted", 1), ("pause", "Paused", 1)],
)
def test_requests_during_a_timed_pause(verb: str, phase: str, step: int) -> None:
    sim = Sim(spec([{"setWeight": 10}, {"pause": {"duration": "30s"}}, {"setWeight": 50}]))
    for _ in range(5):
        sim.step()
    assert sim.status.phase == "Paused" and sim.status.paused_until is not None
    sim.step(1, request=Request(verb, "r"))  # type: ignore[arg-type]
    assert (sim.status.phase, sim.status.current_step) == (phase, step)
    if verb == "pause":  # a person's pause outlasts the timed one, until resumed
        assert sim.status.paused_by_user
        sim.step(60)
        assert sim.status.phase == "Paused" and sim.status.current_step == 1
        sim.step(0, request=Request("resume", "r2"))
        sim.step()
        assert (sim.status.phase, sim.status.current_step) == ("Progressing", 2)
    else:
        assert sim.status.paused_until is None


def test_the_model_fields_of_a_decision_are_every_field_the_rollout_worker_owns() -> None:
    """What the rollout worker applies: the observed routing and versions with the decision's
    change (a server-side apply removes what it leaves out)."""
    obs = Observed(
        model_exists=True,
        stable="v1",
        previous="v0",
        weights=(VersionWeight(version="v1", weight=100),),
    )
    loading = ModelPatch(canary="v2", previous="").applied_to(obs)
    assert loading.owned_wire("rollout-worker") == {
        "stableVersion": "v1",
        "canaryVersion": "v2",
        "previousVersion": "",
        "weights": [{"version": "v1", "weight": 100}],
        "canaryWeight": 0,
    }
    canary = ModelPatch(weights=split("v1", "v2", 20), canary="v2").applied_to(obs)
    assert (canary.canary_weight, canary.previous_version) == (20, "v0")
    promoted = ModelPatch(
        weights=(VersionWeight(version="v2", weight=100),), canary="", stable="v2", previous="v1"
    ).applied_to(replace(obs, canary="v2"))
    assert promoted.owned_wire("rollout-worker") == {
        "stableVersion": "v2",
        "canaryVersion": "",
        "previousVersion": "v1",
        "weights": [{"version": "v2", "weight": 100}],
        "canaryWeight": 0,
    }
