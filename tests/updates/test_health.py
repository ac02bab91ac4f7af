"""Detector and rollback sequence: one table row per transition."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from ekko.updates.health import (
    Command,
    DetectorSpec,
    GuardCounts,
    GuardSpec,
    HealthState,
    Observation,
    ParamGuard,
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


# --- the recent view: a second, near-fresh yardstick ---------------------------------------------

RECENT = replace(
    SPEC, recent_uncertain=0.004, recent_corrupted=0.008, recent_hysteresis=0.002, confirmations=1
)
R = replace(H, recent=7)


@pytest.mark.parametrize(
    ("window", "recent", "verdict"),
    [
        (w(0.0), None, "Good"),  # no recent window: the baseline comparison alone
        (w(0.0), w(0.01, sd=0.01), "Bad"),  # the freshness gain no longer hides the harm
        (w(-0.3), w(0.01, sd=0.01), "Bad"),
        (w(0.0), w(0.01, sd=1.0), "Suspect"),  # large but not significant
        (w(0.0), w(0.005), "Suspect"),
        (w(0.0), w(0.003), "Hold"),  # inside the recent hysteresis band below recent_uncertain
        (w(0.0), w(0.001), "Good"),
        (w(0.0), w(-0.01), "Good"),
        (w(0.0), w(0.5, n=10), "Good"),  # a recent window without data judges nothing
        (w(0.5, n=10), w(0.01, sd=0.01), "Bad"),  # nor does a baseline window without data
        (w(0.1), w(-0.01), "Bad"),  # the worse of the two
        (w(0.03), w(-0.01), "Suspect"),
    ],
)
def test_judge_with_a_recent_window(window: Window, recent: Window | None, verdict: str) -> None:
    assert judge(RECENT, window, recent) == verdict


def test_recent_window_ignored_unless_the_spec_judges_it() -> None:
    assert judge(SPEC, w(0.0), w(1.0, sd=0.01)) == "Good"
    d = decide(SPEC, R, Observation(window=w(0.0), recent=w(1.0, sd=0.01)), now=1.0)
    assert d.state.phase == "Healthy" and not d.commands


@pytest.mark.parametrize(
    ("name", "state", "recent", "phase", "bad", "good"),
    [
        ("healthy, recent good", R, w(-0.01), "Healthy", 0, 0),
        ("healthy, recent suspect", R, w(0.005), "Uncertain", 0, 0),
        ("healthy, recent bad rolls back", R, w(0.01, sd=0.01), "Corrupted", 1, 0),
        (
            "uncertain, recent good counts",
            replace(R, phase="Uncertain"),
            w(-0.01),
            "Uncertain",
            0,
            1,
        ),
        (
            "uncertain, recent hold",
            replace(R, phase="Uncertain", good=1),
            w(0.003),
            "Uncertain",
            0,
            0,
        ),
        (
            "uncertain, recent good recovers",
            replace(R, phase="Uncertain", good=1),
            w(0.001),
            "Healthy",
            0,
            0,
        ),
    ],
)
def test_recent_transitions(
    name: str, state: HealthState, recent: Window, phase: str, bad: int, good: int
) -> None:
    d = decide(RECENT, state, Observation(window=w(0.0), recent=recent), now=5.0)
    assert (d.state.phase, d.state.bad, d.state.good) == (phase, bad, good), name
    if phase == "Corrupted":  # the rollback goes to the baseline, never to the recent view
        assert d.commands == (Command("ServeBaseline", cut=3),)
        assert "against the recent view" in d.events[0].message


def test_restore_restarts_the_recent_view_at_the_baseline() -> None:
    d = decide(RECENT, R, Observation(window=w(0.0), recent=w(0.01, sd=0.01)), now=1.0)
    assert d.state.step == "ServingBaseline" and d.state.recent == 7
    d = decide(RECENT, d.state, Observation(servers=2, serving_baseline=2), now=1.1)
    # The restore drops every cut above the baseline: the recent view reads the baseline's cut.
    assert d.commands == (Command("Restore", cut=3, epoch=1),)
    assert (d.state.step, d.state.baseline, d.state.recent) == ("Restoring", 3, 3)
    d = decide(
        RECENT, replace(H, step="Restoring"), Observation(servers=1, serving_baseline=1), 1.2
    )
    assert d.state.recent is None  # no recent view, none made up


def test_cusum_stays_on_the_baseline_comparison() -> None:
    spec = replace(RECENT, cusum_k=0.005, cusum_h=5.0)
    s = decide(spec, R, Observation(window=w(0.012), recent=w(-0.01)), now=1.0).state
    assert s.cusum == pytest.approx(1.4)
    s = decide(spec, R, Observation(window=w(-0.01), recent=w(0.003)), now=1.0).state
    assert s.cusum == 0.0


SCALED = replace(RECENT, recent_sigmas=2.0, recent_memory=4, recent_warmup=2)


def test_learnt_scale_warms_up_before_judging() -> None:
    # The first ``recent_warmup`` windows feed the scale and judge nothing, however high.
    s = R
    for mean in (0.05, 0.0):
        d = decide(SCALED, s, Observation(window=w(0.0), recent=w(mean, sd=0.01)), now=1.0)
        assert (d.verdict, d.state.phase) == ("Good", "Healthy")
        s = d.state
    assert s.recent_fed == 2
    # Running mean while fewer than ``recent_memory`` windows: (0.05² + 0²) / 2.
    assert s.recent_sq == pytest.approx(0.05**2 / 2)
    # Now judged, with the thresholds lifted by 2 × scale ≈ 0.0707: 0.05 is Good...
    d = decide(SCALED, s, Observation(window=w(0.0), recent=w(0.05, sd=0.01)), now=2.0)
    assert d.state.phase == "Healthy"
    # ...and 0.09 (> 0.008 + 0.0707) is Bad; a Bad window does not feed the scale.
    d = decide(SCALED, s, Observation(window=w(0.0), recent=w(0.09, sd=0.01)), now=3.0)
    assert d.state.phase == "Corrupted"
    assert (d.state.recent_fed, d.state.recent_sq) == (s.recent_fed, s.recent_sq)


def test_learnt_scale_only_while_healthy_and_from_the_positive_part() -> None:
    s = replace(R, recent_fed=10, recent_sq=0.0001)
    # Negative means (the online model learning) pull the scale down, never up.
    d = decide(SCALED, s, Observation(window=w(0.0), recent=w(-0.5)), now=1.0)
    assert d.state.recent_sq == pytest.approx(0.0001 * 0.75) and d.state.recent_fed == 11
    # Uncertain: frozen.
    u = replace(s, phase="Uncertain")
    d = decide(SCALED, u, Observation(window=w(0.0), recent=w(0.015, sd=1.0)), now=1.0)
    assert (d.state.recent_sq, d.state.recent_fed) == (0.0001, 10)
    # No data: nothing fed.
    d = decide(SCALED, s, Observation(window=w(0.0), recent=w(0.5, n=5)), now=1.0)
    assert d.state.recent_fed == 10


def test_a_suspect_window_feeds_the_scale_only_when_asked() -> None:
    """A harm one window shows only in part is Suspect, not Bad: fed to the scale it would widen
    the thresholds that should catch it in the next window."""
    s = replace(R, recent_fed=10, recent_sq=0.0001)  # scale 0.01: lift 0.02, Suspect from 0.024
    obs = Observation(window=w(0.0), recent=w(0.025, sd=1.0))  # Suspect (z fails for Bad)
    fed = decide(SCALED, s, obs, now=1.0).state
    assert fed.phase == "Uncertain" and fed.recent_fed == 11 and fed.recent_sq > 0.0001
    strict = replace(SCALED, recent_learn="Calm")
    kept = decide(strict, s, obs, now=1.0).state
    assert kept.phase == "Uncertain" and (kept.recent_fed, kept.recent_sq) == (10, 0.0001)
    # Clipped: fed, but no more than the Suspect threshold (0.004 + 2 × 0.01).
    clipped = decide(replace(SCALED, recent_learn="Clipped"), s, obs, now=1.0).state
    assert clipped.recent_fed == 11
    assert clipped.recent_sq == pytest.approx(0.0001 + (0.024**2 - 0.0001) / 4)  # memory 4
    # A Hold window (inside the band below the lifted uncertain) still feeds it.
    hold = decide(strict, s, Observation(window=w(0.0), recent=w(0.022)), now=1.0).state
    assert hold.phase == "Healthy" and hold.recent_fed == 11


def test_pooled_lift_shrinks_with_the_windows_pooled() -> None:
    """Windows of 0.045 against the same held cut, scale 0.02 (lift 2 × 0.02 = 0.04): each is
    Suspect (≥ 0.004 + 0.04) but not Bad (< 0.008 + 0.04). Pooled, the fixed lift keeps them
    Uncertain; the lift shrunk to 0.04 / √2 ≈ 0.028 makes the pool Bad."""
    s = replace(R, recent_fed=10, recent_sq=0.0004)
    window = Observation(window=w(0.0), recent=w(0.045, sd=0.2))
    fixed = replace(SCALED, recent_learn="Calm")  # the scale stays 0.02
    first = decide(fixed, s, window, now=1.0)
    assert first.state.phase == "Uncertain" and first.state.recent_pooled == 1
    plain = decide(fixed, first.state, window, now=2.0)
    assert plain.state.phase == "Uncertain" and plain.state.recent_pooled == 2
    shrink = replace(fixed, recent_pool_shrink=True)
    first = decide(shrink, s, window, now=1.0)
    assert first.state.phase == "Uncertain"  # one window: the full lift, not Bad
    assert decide(shrink, first.state, window, now=2.0).state.phase == "Corrupted"


def test_recent_spec_checks() -> None:
    with pytest.raises(ValueError, match="recent_uncertain"):
        DetectorSpec(recent_uncertain=0.1, recent_corrupted=0.05)
    with pytest.raises(ValueError, match="recent_sigmas"):
        DetectorSpec(recent_corrupted=0.05, recent_sigmas=-1.0)
    with pytest.raises(ValueError, match="recent_hysteresis"):
        DetectorSpec(recent_hysteresis=-0.1)
    with pytest.raises(ValueError, match="recent_memory"):
        DetectorSpec(recent_memory=0)


@pytest.mark.parametrize(
    ("cuts", "current", "phase", "expected"),
    [
        ([(1, 0.0), (2, 50.0), (3, 95.0)], None, "Healthy", 2),  # 5 s old is not old enough
        ([(1, 0.0), (2, 50.0), (3, 90.0)], 2, "Healthy", 3),
        ([(1, 0.0), (2, 50.0), (3, 90.0)], 2, "Uncertain", 2),  # held just before a harm
    ],
)
def test_choose_recent_view(
    cuts: list[tuple[int, float]], current: int | None, phase: str, expected: int
) -> None:
    # The recent view is chosen like the baseline, only younger (here 10 s).
    assert choose_baseline(cuts, current, phase, 100.0, age=10.0) == expected  # type: ignore[arg-type]


# --- the parameter guard ---------------------------------------------------------------------

GUARD = GuardSpec(zero_ratio=0.01, zero_from=0.1, norm_ratio=10.0, step_ratio=20.0, warmup=100)


def warm_guard(spec: GuardSpec = GUARD, rows: int = 400) -> tuple[ParamGuard, np.ndarray]:
    """A guard that has seen ``rows`` rows of norm ≈ 1 each move by ≈ 0.01."""
    rng = np.random.default_rng(0)
    guard = ParamGuard(spec)
    old = rng.normal(0, 0.25, (rows, 16))
    old /= np.linalg.norm(old, axis=1, keepdims=True)
    guard.observe("t", np.zeros_like(old), np.zeros(rows, dtype=bool), old)  # born
    new = old + rng.normal(0, 0.0025, old.shape)
    assert guard.observe("t", old, np.ones(rows, dtype=bool), new) == GuardCounts(rows=rows)
    return guard, new


def _rows(k: int, value: float, base: np.ndarray) -> np.ndarray:
    out = base[:k].copy()
    out[:] = value
    return out


@pytest.mark.parametrize(
    ("name", "change", "counts"),
    [
        ("a training step", lambda v: v + 0.01 / 4, GuardCounts(rows=5)),
        ("zeroed rows", lambda v: v * 0.0, GuardCounts(rows=5, zeroed=5)),
        ("shrunk a little", lambda v: v * 0.9, GuardCounts(rows=5)),
        ("shrunk a lot (a large update)", lambda v: v * 0.5, GuardCounts(rows=5, exploded=5)),
        ("exploded norm", lambda v: v * 50.0, GuardCounts(rows=5, exploded=5)),
        # A flip: norm unchanged (< norm_ratio) but the update is 2 × the norm ≫ 20 × 0.01.
        ("flipped (a large update)", lambda v: -v, GuardCounts(rows=5, exploded=5)),
        ("NaN", lambda v: v * np.nan, GuardCounts(rows=5, nonfinite=5)),
        ("Inf", lambda v: v * np.inf, GuardCounts(rows=5, nonfinite=5)),
    ],
)
def test_guard_flags(name: str, change: object, counts: GuardCounts) -> None:
    guard, held = warm_guard()
    old = held[:5]
    new = change(old)  # type: ignore[operator]
    assert guard.observe("t", old, np.ones(5, dtype=bool), new) == counts, name


def test_guard_judges_nothing_while_warming_up_and_per_table() -> None:
    guard = ParamGuard(GUARD)
    rows = np.ones((50, 4))
    guard.observe("t", rows, np.zeros(50, dtype=bool), rows)
    # 50 rows seen < warmup 100: a wiped row is not flagged yet.
    assert guard.observe("t", rows[:3], np.ones(3, dtype=bool), rows[:3] * 0).zeroed == 0
    # A warm table does not warm another one.
    warm, held = warm_guard()
    assert warm.observe("u", held[:3], np.ones(3, dtype=bool), held[:3] * 0).zeroed == 0
    # NaN needs no warm-up.
    assert guard.observe("t", rows[:1], np.ones(1, dtype=bool), rows[:1] * np.nan).nonfinite == 1


def test_guard_flagged_rows_do_not_widen_its_bars() -> None:
    guard, held = warm_guard()
    before = guard.means("t")
    for _ in range(20):  # a burst of exploded rows, written again and again
        guard.observe("t", held[:50], np.ones(50, dtype=bool), held[:50] * 50)
    assert guard.means("t") == before
    assert guard.observe("t", held[:5], np.ones(5, dtype=bool), held[:5] * 50).exploded == 5


def test_guard_new_rows_are_judged_by_norm_only() -> None:
    guard, held = warm_guard()
    born = np.zeros(3, dtype=bool)
    # A new row (nothing before) has no update to judge; a huge new row is still exploded.
    assert guard.observe("t", held[:3] * 0, born, held[:3]).flagged == 0
    assert guard.observe("t", held[:3] * 0, born, held[:3] * 50).exploded == 3


def test_guard_spec_is_checked() -> None:
    with pytest.raises(ValueError, match="zero_ratio"):
        GuardSpec(zero_ratio=0.2, zero_from=0.1)
    with pytest.raises(ValueError, match="exceed 1"):
        GuardSpec(step_ratio=1.0)
    with pytest.raises(ValueError, match="guard_rows"):
        DetectorSpec(guard_rows=0)


GSPEC = replace(SPEC, guard_rows=10)
FLAGGED = GuardCounts(rows=500, zeroed=6, exploded=4)
BELOW = GuardCounts(rows=500, zeroed=5, exploded=4)
NAN = GuardCounts(rows=500, nonfinite=1)


@pytest.mark.parametrize(
    ("name", "spec", "state", "obs", "phase", "step", "commands"),
    [
        ("off: counts ignored", SPEC, H, Observation(guard=FLAGGED), "Healthy", "None", ()),
        ("off: NaN ignored", SPEC, H, Observation(guard=NAN), "Healthy", "None", ()),
        ("below guard_rows", GSPEC, H, Observation(guard=BELOW), "Healthy", "None", ()),
        (
            "guard_rows reached, no window",
            GSPEC,
            H,
            Observation(guard=FLAGGED),
            "Corrupted",
            "ServingBaseline",
            (Command("ServeBaseline", cut=3),),
        ),
        (
            "one NaN row",
            GSPEC,
            H,
            Observation(guard=NAN),
            "Corrupted",
            "ServingBaseline",
            (Command("ServeBaseline", cut=3),),
        ),
        (
            "flagged while the loss is Good",
            GSPEC,
            U,
            Observation(window=w(-0.1), guard=FLAGGED),
            "Corrupted",
            "ServingBaseline",
            (Command("ServeBaseline", cut=3),),
        ),
        (
            "the loss decides when the guard is quiet",
            GSPEC,
            replace(U, bad=1),
            Observation(window=w(0.1), guard=BELOW),
            "Corrupted",
            "ServingBaseline",
            (Command("ServeBaseline", cut=3),),
        ),
        (
            "Alert: Corrupted, no command",
            replace(GSPEC, action="Alert"),
            H,
            Observation(guard=FLAGGED),
            "Corrupted",
            "None",
            (),
        ),
        (
            "already Corrupted (Alert): nothing new",
            replace(GSPEC, action="Alert"),
            replace(H, phase="Corrupted"),
            Observation(guard=FLAGGED),
            "Corrupted",
            "None",
            (),
        ),
        (
            "during a rollback: the sequence goes on",
            GSPEC,
            replace(H, phase="Corrupted", step="ServingBaseline"),
            Observation(guard=FLAGGED, servers=2, serving_baseline=1),
            "Corrupted",
            "ServingBaseline",
            (),
        ),
        (
            "Pause",
            replace(GSPEC, action="Pause"),
            H,
            Observation(guard=FLAGGED),
            "Corrupted",
            "Paused",
            (Command("PauseUpdates"), Command("ServeBaseline", cut=3)),
        ),
    ],
)
def test_guard_transitions(
    name: str,
    spec: DetectorSpec,
    state: HealthState,
    obs: Observation,
    phase: str,
    step: str,
    commands: tuple[Command, ...],
) -> None:
    d = decide(spec, state, obs, now=100.0)
    assert (d.state.phase, d.state.step, d.commands) == (phase, step, commands), name
    if phase == "Corrupted" and state.phase != "Corrupted" and obs.window is None:
        assert d.events[0].reason == "Corrupted"
        assert "parameter guard" in d.events[0].message
        assert d.state.since == 100.0


def test_guard_update_size_test_is_off_by_default() -> None:
    # A large update of an ordinary-looking row (a catch-up burst, or a biased batch) is only
    # flagged with a step ratio; wiped and exploded rows are flagged either way.
    off, held = warm_guard(replace(GUARD, step_ratio=None))
    on, _ = warm_guard(GUARD)
    ones = np.ones(5, dtype=bool)
    assert GuardSpec().step_ratio is None
    assert off.observe("t", held[:5], ones, -held[:5]).flagged == 0
    assert on.observe("t", held[:5], ones, -held[:5]).exploded == 5
    assert off.observe("t", held[:5], ones, held[:5] * 0).zeroed == 5
    assert off.observe("t", held[:5], ones, held[:5] * 50).exploded == 5
