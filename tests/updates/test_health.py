"""Detector and rollback sequence: one table row per transition."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from ekko.updates.health import (
    Command,
    DetectorSpec,
    HealthState,
    Observation,
    Rollback,
    Window,
    choose_baseline,
    decide,
    judge,
)

SPEC = DetectorSpec(
    min_samples=100, uncertain=0.02, corrupted=0.05, z=2.0, confirmations=2, hysteresis=0.01
)


def w(mean: float, n: int = 200, sd: float = 0.1) -> Window:
    return Window(n, mean, sd)


@pytest.mark.parametrize(
    ("window", "verdict"),
    [
        (w(0.5, n=99), "NoData"),
        (Window(0, math.nan, math.nan), "NoData"),
        (w(0.06), "Bad"),
        (w(0.06, sd=10.0), "Suspect"),  # large but not significant
        (w(0.03), "Suspect"),
        (w(0.015), "Hold"),  # inside the hysteresis band
        (w(0.0), "Good"),
        (w(-0.2), "Good"),
    ],
)
def test_judge(window: Window, verdict: str) -> None:
    assert judge(SPEC, window) == verdict


H = HealthState(baseline=3)
U = replace(H, phase="Uncertain")


@pytest.mark.parametrize(
    ("name", "state", "window", "phase", "bad", "good"),
    [
        ("healthy, no data", H, w(0.5, n=10), "Healthy", 0, 0),
        ("healthy, good", H, w(0.0), "Healthy", 0, 0),
        ("healthy, hold", H, w(0.015), "Healthy", 0, 0),
        ("healthy, suspect", H, w(0.03), "Uncertain", 0, 0),
        ("healthy, first bad", H, w(0.1), "Uncertain", 1, 0),
        ("uncertain, bad confirms", replace(U, bad=1), w(0.1), "Corrupted", 2, 0),
        ("uncertain, suspect resets", replace(U, bad=1), w(0.03), "Uncertain", 0, 0),
        ("uncertain, hold resets", replace(U, bad=1), w(0.015), "Uncertain", 0, 0),
        ("uncertain, first good", U, w(0.0), "Uncertain", 0, 1),
        ("uncertain, good recovers", replace(U, good=1), w(0.0), "Healthy", 0, 0),
        ("uncertain, no data holds", replace(U, bad=1), w(0.5, n=3), "Uncertain", 1, 0),
    ],
)
def test_detector_transitions(
    name: str, state: HealthState, window: Window, phase: str, bad: int, good: int
) -> None:
    d = decide(SPEC, state, Observation(window=window), now=10.0)
    assert (d.state.phase, d.state.bad, d.state.good) == (phase, bad, good), name
    assert bool(d.events) == (phase != state.phase)
    assert d.state.since == (10.0 if phase != state.phase else state.since)


def test_one_confirmation_goes_straight_to_corrupted() -> None:
    d = decide(replace(SPEC, confirmations=1), H, Observation(window=w(0.1)), now=1.0)
    assert d.state.phase == "Corrupted"
    assert d.commands == (Command("ServeBaseline", cut=3),)


def test_cusum_catches_a_slow_drift_no_window_flags() -> None:
    spec = replace(SPEC, cusum_k=0.005, cusum_h=5.0)
    state = H
    phases = []
    for _ in range(4):
        state = decide(spec, state, Observation(window=w(0.012)), now=1.0).state  # Hold
        phases.append(state.phase)
    # 200 × (0.012 − 0.005) = 1.4 per window: the alarm at the 4th window (5.6 ≥ 5).
    assert phases == ["Healthy", "Healthy", "Healthy", "Corrupted"]
    # Without CUSUM the same windows never leave Healthy.
    s = H
    for _ in range(10):
        s = decide(SPEC, s, Observation(window=w(0.012)), now=1.0).state
    assert s.phase == "Healthy"


def test_cusum_resets_on_good_windows() -> None:
    spec = replace(SPEC, cusum_k=0.005, cusum_h=5.0)
    s = decide(spec, H, Observation(window=w(0.012)), now=1.0).state
    assert s.cusum == pytest.approx(1.4)
    s = decide(spec, s, Observation(window=w(-0.1)), now=1.0).state
    assert s.cusum == 0.0


def test_rollback_sequence_in_order() -> None:
    s = replace(U, bad=1, epoch=4)
    d = decide(SPEC, s, Observation(window=w(0.1)), now=100.0)
    assert d.state.phase == "Corrupted" and d.state.step == "ServingBaseline"
    assert d.commands == (Command("ServeBaseline", cut=3),)
    assert d.state.last_rollback == Rollback(100.0, 3)
    # Windows are ignored during the sequence; nothing moves until every server serves baseline.
    d2 = decide(SPEC, d.state, Observation(window=w(0.0), servers=3, serving_baseline=2), 100.5)
    assert d2.state == d.state and not d2.commands
    d3 = decide(SPEC, d.state, Observation(servers=3, serving_baseline=3), now=100.6)
    assert d3.state.step == "Restoring"
    assert d3.commands == (Command("Restore", cut=3, epoch=5),)
    assert d3.state.last_rollback is not None and d3.state.last_rollback.switched_at == 100.6
    # Restoring: wait for every server to report the new epoch.
    d4 = decide(SPEC, d3.state, Observation(server_epochs=(5, 4, 5)), now=101.0)
    assert d4.state == d3.state and not d4.commands
    d5 = decide(SPEC, d3.state, Observation(server_epochs=(5, 5, 6)), now=101.5)
    assert d5.commands == (Command("ServeLive"),)
    assert (d5.state.phase, d5.state.step, d5.state.epoch) == ("Healthy", "None", 5)
    rb = d5.state.last_rollback
    assert rb == Rollback(100.0, 3, epoch=5, switched_at=100.6, restored_at=101.5, resumed_at=101.5)


def test_corrupted_again_within_repeat_window_pauses() -> None:
    last = Rollback(100.0, 3, epoch=5, switched_at=100.5, restored_at=101.0, resumed_at=101.0)
    s = replace(U, bad=1, last_rollback=last)
    d = decide(SPEC, s, Observation(window=w(0.1)), now=200.0)
    assert d.state.step == "Paused"
    assert d.commands == (Command("PauseUpdates"), Command("ServeBaseline", cut=3))
    # Outside the window, a new rollback.
    d = decide(SPEC, s, Observation(window=w(0.1)), now=100.0 + SPEC.repeat_window + 1)
    assert d.state.step == "ServingBaseline"


def test_paused_waits_for_a_person() -> None:
    p = replace(H, phase="Corrupted", step="Paused")
    assert decide(SPEC, p, Observation(window=w(-1.0)), now=1.0).state == p
    d = decide(SPEC, p, Observation(resume=True), now=2.0)
    assert d.commands == (Command("ResumeUpdates"), Command("ServeLive"))
    assert (d.state.phase, d.state.step) == ("Healthy", "None")


def test_action_pause_and_no_baseline() -> None:
    s = replace(U, bad=1)
    d = decide(replace(SPEC, action="Pause"), s, Observation(window=w(0.1)), now=1.0)
    assert d.state.step == "Paused"
    assert d.commands[0] == Command("PauseUpdates")
    d = decide(SPEC, replace(s, baseline=None), Observation(window=w(0.1)), now=1.0)
    assert d.state.step == "Paused" and d.commands == (Command("PauseUpdates"),)


def test_action_alert_reports_and_recovers() -> None:
    spec = replace(SPEC, action="Alert")
    d = decide(spec, replace(U, bad=1), Observation(window=w(0.1)), now=1.0)
    assert d.state.phase == "Corrupted" and d.state.step == "None" and not d.commands
    assert d.events[0].reason == "Corrupted" and d.events[0].warning
    s = decide(spec, d.state, Observation(window=w(0.03)), now=2.0).state
    assert s.phase == "Corrupted"
    s = decide(spec, s, Observation(window=w(0.0)), now=3.0).state
    s = decide(spec, s, Observation(window=w(0.0)), now=4.0).state
    assert s.phase == "Healthy"


def test_no_window_no_change() -> None:
    assert decide(SPEC, U, Observation(), now=1.0).state == U


@pytest.mark.parametrize(
    ("cuts", "current", "phase", "now", "expected"),
    [
        ([], None, "Healthy", 100.0, None),
        ([(1, 0.0), (2, 50.0), (3, 90.0)], None, "Healthy", 100.0, 2),
        ([(1, 0.0), (2, 50.0), (3, 90.0)], 1, "Uncertain", 100.0, 1),  # frozen unless Healthy
        ([(1, 0.0), (2, 50.0), (3, 90.0)], 1, "Corrupted", 200.0, 1),
        ([(1, 0.0), (2, 50.0), (3, 90.0)], 3, "Healthy", 100.0, 3),  # never moves back
        ([(2, 50.0)], 1, "Healthy", 60.0, 1),  # not old enough yet
    ],
)
def test_choose_baseline(
    cuts: list[tuple[int, float]], current: int | None, phase: str, now: float, expected: int | None
) -> None:
    assert choose_baseline(cuts, current, phase, now, age=30.0) == expected  # type: ignore[arg-type]


def test_window_of_and_spec_checks() -> None:
    win = Window.of([0.1, 0.3, float("nan")])
    assert win.n == 2 and win.mean == pytest.approx(0.2)
    assert Window.of([]).n == 0
    assert Window.of([1.0]).stderr == math.inf
    with pytest.raises(ValueError, match="uncertain"):
        DetectorSpec(uncertain=0.1, corrupted=0.05)
    with pytest.raises(ValueError, match="min_samples"):
        DetectorSpec(min_samples=1)


# The setting bench/updates_health.py uses (chosen on held-out seeds, see docs/benchmarks.md):
# one significant window at 0.03 nats rolls back; smaller excesses must add up in the CUSUM.
TUNED = replace(SPEC, corrupted=0.03, confirmations=1, cusum_k=0.01, cusum_h=6.0)


def test_tuned_one_significant_window_rolls_back() -> None:
    d = decide(TUNED, H, Observation(window=w(0.035)), now=1.0)  # 0.035 − 2 × 0.007 > 0
    assert (d.verdict, d.state.phase, d.state.step) == ("Bad", "Corrupted", "ServingBaseline")
    assert d.commands == (Command("ServeBaseline", cut=3),)


def test_tuned_noisy_windows_add_up_in_the_cusum() -> None:
    # Too noisy to be Bad on its own: Suspect, and 200 × (0.035 − 0.01) = 5 < 6 in the CUSUM.
    d = decide(TUNED, H, Observation(window=w(0.035, sd=1.0)), now=1.0)
    assert (d.verdict, d.state.phase) == ("Suspect", "Uncertain")
    assert d.state.cusum == pytest.approx(5.0)
    # A second, smaller excess tips it over (5 + 200 × 0.01 = 7 ≥ 6).
    d = decide(TUNED, d.state, Observation(window=w(0.02, sd=1.0)), now=2.0)
    assert (d.state.phase, d.state.step) == ("Corrupted", "ServingBaseline")
    assert "CUSUM" in d.events[0].message


def test_tuned_isolated_high_clean_windows_do_not_accumulate() -> None:
    # Clean windows reach +0.02 now and then (MovieLens p99) but the online model's freshness
    # gain pulls the next ones below zero: the CUSUM drains and never alarms.
    state = H
    for mean in (0.02, -0.01, 0.02, -0.01, 0.025, -0.005, 0.02, -0.01):
        state = decide(TUNED, state, Observation(window=w(mean, sd=0.3)), now=1.0).state
        assert state.phase != "Corrupted"
    assert state.cusum < TUNED.cusum_h
