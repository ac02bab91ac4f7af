"""The operator's glue around the detector: windows from cumulative per-server series, the state
round-tripped through status (a restarted operator resumes), servers' reports → observations,
commands → the Model's control block, a person's rollback."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from ekko.api.resources import ModelUpdateControl, ServerUpdateState, UpdateHealth
from ekko.planning.health import (
    Manager,
    apply_commands,
    detector_spec,
    from_status,
    health_condition,
    latest,
    next_cut,
    observe_servers,
    paired_window,
    person_rollback,
    restored,
    to_status,
)
from ekko.updates.health import (
    Command,
    HealthState,
    Rollback,
    Window,
    choose_baseline,
    decide,
)


def sums(d: np.ndarray) -> tuple[float, float, float]:
    return (float(d.size), float(d.sum()), float((d * d).sum()))


def test_window_over_servers_equals_the_pooled_samples() -> None:
    rng = np.random.default_rng(1)
    a0, a1, b1 = rng.normal(0, 1, 50), rng.normal(0.3, 1, 40), rng.normal(0.1, 2, 30)
    before = {"a": sums(a0)}
    now = {"a": sums(np.concatenate([a0, a1])), "b": sums(b1)}  # b: first seen, from zero
    window, n, _, _ = paired_window(now, before)
    pooled = np.concatenate([a1, b1])
    assert n == window.n == 70
    assert window.mean == pytest.approx(pooled.mean())
    assert window.sd == pytest.approx(pooled.std(ddof=1))
    # An agent restarted (its samples went down): it counts from zero, never negative.
    restarted, n, _, _ = paired_window({"a": sums(a1)}, {"a": sums(np.concatenate([a0, a1]))})
    assert n == 40 and restarted.mean == pytest.approx(a1.mean())
    empty, n, _, _ = paired_window({}, {})
    assert n == 0 and math.isnan(empty.mean)


def test_state_round_trips_through_status() -> None:
    rb = Rollback(decided_at=1000.0, cut=3, epoch=2, switched_at=1000.2, restored_at=1001.1)
    state = HealthState(
        phase="Corrupted",
        step="Restoring",
        bad=2,
        cusum=1.5,
        since=1000.0,
        epoch=1,
        baseline=3,
        last_rollback=rb,
    )
    m = Manager(state, cuts=((3, 900.0), (4, 930.0)), trigger="Person", handled_request="x")
    status = to_status(m)
    assert status.last_rollback is not None
    assert status.last_rollback.switch_seconds == pytest.approx(0.2)
    assert status.last_rollback.restore_seconds == pytest.approx(1.1)
    back = from_status(status, epoch=1)
    assert back.state == state
    assert back.cuts == m.cuts and back.trigger == "Person" and back.handled_request == "x"
    assert health_condition(back).reason == "RollingBack"
    assert from_status(None, epoch=5).state == HealthState(epoch=5)


def test_a_restore_ordered_before_the_status_said_so_is_not_ordered_again() -> None:
    """The operator writes the control block (new epoch, restore cut) before the stream's status
    says Restoring; killed in between, its successor must re-issue the restore at that epoch,
    not bump the epoch a second time (found by e2e/test_update_health.py: epoch 2, not 1)."""
    from ekko.planning.health import restore_under_way

    decided = to_status(
        Manager(
            HealthState(
                phase="Corrupted",
                step="ServingBaseline",
                since=1000.0,
                baseline=3,
                last_rollback=Rollback(decided_at=1000.0, cut=3),
            )
        )
    )
    ordered = ModelUpdateControl(epoch=1, restore_cut=3, baseline_cut=3, view="Baseline")
    not_yet = ModelUpdateControl(epoch=0, baseline_cut=3, view="Baseline")
    assert restore_under_way(decided, ordered, recorded_epoch=0)
    assert not restore_under_way(decided, not_yet, recorded_epoch=0)
    # An earlier rollback's restore cut at the current epoch is not this one's.
    assert not restore_under_way(decided, ordered, recorded_epoch=1)
    assert not restore_under_way(decided, ordered.evolve(restore_cut=2), recorded_epoch=0)
    restoring = to_status(Manager(HealthState(phase="Corrupted", step="Restoring", epoch=1)))
    assert restore_under_way(restoring, ordered, recorded_epoch=1)
    assert not restore_under_way(None, ordered, recorded_epoch=0)


def report(view: str = "Live", epoch: int = 0, cuts: list[int] | None = None) -> ServerUpdateState:
    return ServerUpdateState(model="m", view=view, epoch=epoch, cuts=cuts or [1, 2])  # type: ignore[arg-type]


def test_observation_counts_switched_servers_and_epochs() -> None:
    control = ModelUpdateControl(baseline_cut=2, view="Baseline")
    reports = [
        ("a", report("Baseline", 1)),
        ("b", report("Live", 1, cuts=[3])),  # does not hold cut 2: cannot switch, counts as done
        ("c", report("Live", 0)),  # holds it and has not switched yet
        ("d", None),  # has not reported
    ]
    obs = observe_servers(reports, control)
    assert (obs.servers, obs.serving_baseline, obs.server_epochs) == (4, 2, (1, 1, 0, 0))
    t = datetime(2026, 1, 1, tzinfo=UTC)
    stamped = [("a", report().evolve(switched_at=t)), ("b", None)]
    assert latest(stamped, "switched_at") == t.timestamp()
    assert latest(stamped, "restored_at") is None


def test_commands_become_the_control_block() -> None:
    c = ModelUpdateControl(baseline_cut=1)
    c = apply_commands(c, [Command("ServeBaseline", cut=2)])
    assert (c.view, c.baseline_cut) == ("Baseline", 2)
    c = apply_commands(c, [Command("Restore", cut=2, epoch=3)])
    assert (c.epoch, c.restore_cut, c.view) == (3, 2, "Baseline")
    c = apply_commands(c, [Command("ServeLive"), Command("PauseUpdates")])
    assert (c.view, c.epoch) == ("Live", 3)


def test_a_person_rollback_runs_the_same_sequence() -> None:
    health = UpdateHealth()
    spec = detector_spec(health)
    m = Manager(HealthState(epoch=4, baseline=2), cuts=((2, 0.0),))
    m, command = person_rollback(m, 2, now=50.0, request="2026-11-29T00:00:00Z")
    assert command == Command("ServeBaseline", cut=2)
    assert (m.trigger, m.state.step, m.handled_request) == (
        "Person",
        "ServingBaseline",
        m.handled_request,
    )
    # Every server switched → restore at epoch 5 → every server at 5 → live.
    d = decide(spec, m.state, observe_servers([("a", report("Baseline", 4))], None), 51.0)
    assert d.commands == (Command("Restore", cut=2, epoch=5),)
    d = decide(spec, d.state, observe_servers([("a", report("Baseline", 5))], None), 52.0)
    assert d.commands == (Command("ServeLive"),) and d.state.epoch == 5
    assert d.state.step == "None" and d.state.phase == "Healthy"


def test_detector_spec_follows_the_api() -> None:
    h = UpdateHealth.model_validate(
        {
            "action": "Pause",
            "repeatWindow": "90s",
            "detector": {"minSamples": 30, "cusumSlack": 0.01},
        }
    )
    spec = detector_spec(h)
    assert (spec.action, spec.repeat_window, spec.min_samples, spec.cusum_k) == (
        "Pause",
        90.0,
        30,
        0.01,
    )
    assert Window(0, math.nan, math.nan).n == 0


def test_recent_view_spec_state_and_window_status() -> None:
    """The spec's recent block becomes the detector's recent thresholds; its state (cut, learnt
    scale, the pooled windows while Uncertain) survives a restart through status."""
    from ekko.planning.health import recent_age, window_status

    off = UpdateHealth.model_validate({})
    assert detector_spec(off).recent_corrupted is None and recent_age(off) is None
    defaults = UpdateHealth.model_validate({"recent": {}})
    assert recent_age(defaults) == 30.0  # three default windows (10 s)
    d = detector_spec(defaults)
    assert (d.recent_uncertain, d.recent_corrupted, d.recent_sigmas) == (0.0015, 0.006, 4.0)
    h = UpdateHealth.model_validate(
        {"recent": {"age": "4s", "uncertain": 0.01, "corrupted": 0.03, "sigmas": 2}}
    )
    spec = detector_spec(h)
    assert recent_age(h) == 4.0
    assert (spec.recent_uncertain, spec.recent_corrupted, spec.recent_sigmas) == (0.01, 0.03, 2)
    assert (spec.recent_hysteresis, spec.recent_memory, spec.recent_warmup) == (0.003, 50, 5)
    with pytest.raises(ValueError, match="recent uncertain must not exceed"):
        UpdateHealth.model_validate({"recent": {"uncertain": 0.05, "corrupted": 0.03}})

    state = HealthState(
        phase="Uncertain",
        baseline=3,
        recent=5,
        recent_sq=0.0004,
        recent_fed=12,
        recent_pool=Window(300, 0.012, 0.05),
        recent_pooled=2,
    )
    status = to_status(Manager(state))
    assert status.recent is not None and status.recent.scale == pytest.approx(0.02)
    back = from_status(status, epoch=0).state
    assert (back.recent, back.recent_fed, back.recent_pool) == (5, 12, Window(300, 0.012, 0.05))
    assert back.recent_pooled == 2
    assert back.recent_sq == pytest.approx(0.0004)
    assert to_status(Manager(HealthState())).recent is None

    w = window_status(
        Window(200, -0.1, 0.2), "Bad", datetime.now(UTC), recent=Window(200, 0.04, 0.1)
    )
    assert (w.recent_samples, w.recent_mean_loss_difference) == (200, 0.04)
    assert window_status(Window(200, -0.1, 0.2), "Good", datetime.now(UTC)).recent_samples is None
    obs = observe_servers([], None, window=Window(1, 0.0, 0.0), recent=Window(2, 0.1, 0.0))
    assert obs.recent == Window(2, 0.1, 0.0)


def test_the_recent_series_is_read_from_an_agents_metrics() -> None:
    """The agent exports both paired series; the operator's scrape tells them apart."""
    from prometheus_client import CollectorRegistry, generate_latest

    from ekko.agent.engines import ScoreMetrics
    from ekko.planning.updates import parse_scrape

    registry = CollectorRegistry()
    m = ScoreMetrics(registry)
    m.observe_paired("ranker", np.array([0.1, -0.3]))
    m.observe_paired("ranker", np.array([0.5]), recent=True)
    scrape = parse_scrape(generate_latest(registry).decode(), "ranker")
    assert scrape.paired == pytest.approx((2.0, -0.2, 0.1))
    assert scrape.paired_recent == pytest.approx((1.0, 0.5, 0.25))


@pytest.mark.parametrize(
    ("stamp", "seconds"),
    [
        ("2026-11-30T00:00:00Z", 1795996800.0),
        ("2026-11-30T01:00:00+01:00", 1795996800.0),
        ("2026-11-30T00:00:00", 1795996800.0),  # no offset: UTC, whatever the host's zone
        ("yesterday", None),
        ("", None),
    ],
)
def test_annotation_stamps_are_read_by_the_one_rfc3339_parser(
    stamp: str, seconds: float | None
) -> None:
    from ekko.planning.health import parse_stamp

    assert parse_stamp(stamp) == seconds


def test_a_restore_forgets_the_cuts_above_it_and_ids_keep_increasing() -> None:
    """Cuts taken between the harm and the decision hold the harm, and servers drop them as they
    restore: one left in the list became the baseline (seen in the cluster bench: the next
    rollback went to a cut no server held and restored nothing)."""
    m = Manager(HealthState(baseline=3), cuts=((3, 30.0), (4, 35.0), (5, 40.0)), last_cut=5)
    after = restored(m, 3)
    assert after.cuts == ((3, 30.0),)
    assert next_cut(after) == 6  # a reused id would be answered with the dropped cut
    assert choose_baseline(after.cuts, 3, "Healthy", 100.0, 10.0) == 3
    # The newest id survives a restart through status, even with no cut above the restored one.
    again = from_status(to_status(after), 0)
    assert (again.cuts, next_cut(again)) == (((3, 30.0),), 6)
    # An older status without the field: the ids of the listed cuts.
    status = to_status(m).model_copy(update={"last_cut": 0})
    assert next_cut(from_status(status, 0)) == 6
