"""The model-state manager's decisions: is the online model healthy, and what to do when not.

A baseline (the model's state at a cut a few minutes old, see :mod:`ekko.updates.snapshots`)
shadow-scores a sample of live requests, so each labelled request gives a *paired* loss
difference ``loss(online) − loss(baseline)``: same request, both views, far less variance than two
disjoint traffic slices. The detector judges windows of those differences:

- a window with fewer than ``min_samples`` differences is **NoData** and changes nothing (the
  ``noData: Hold`` policy of the rollout analysis);
- **Bad** when its mean is at least ``corrupted`` and ``z`` standard errors above zero;
- **Suspect** when its mean is at least ``uncertain``;
- **Good** when its mean is below ``uncertain − hysteresis``; **Hold** in between (no change);
- optionally a one-sided CUSUM over the samples, ``S ← max(0, S + Σ(d − k))``, declares
  Corrupted when ``S ≥ h`` (slow drifts no single window flags).

States: Healthy → Uncertain (a Suspect or a first Bad window) → Corrupted (``confirmations``
consecutive Bad windows, or the CUSUM); Uncertain → Healthy after ``recover_windows`` Good
windows. On Corrupted the ``action`` decides: ``Alert`` only reports; ``Pause`` stops applying
updates and waits for a person; ``Rollback`` runs the sequence (1) serve the baseline view on
every server, (2) once every server serves it, restore the tables to the baseline's cut at the
next epoch, (3) once every server reports that epoch, serve live again. Corrupted again within
``repeat_window`` seconds of a rollback → Paused for a person.

The baseline is the newest cut at least ``age`` old, advanced only while Healthy
(:func:`choose_baseline`), so a harmful update never reaches it.

Pure, like :mod:`ekko.rollout.machine`: ``decide(spec, state, observation, now) -> Decision``
reads no clock and does no I/O; the caller observes, calls, and carries out the commands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

HealthPhase = Literal["Healthy", "Uncertain", "Corrupted"]
Step = Literal["None", "ServingBaseline", "Restoring", "Paused"]
"""Where the rollback sequence is (``None``: not in one)."""
Action = Literal["Alert", "Pause", "Rollback"]
Verdict = Literal["NoData", "Good", "Hold", "Suspect", "Bad"]
CommandKind = Literal["ServeBaseline", "Restore", "ServeLive", "PauseUpdates", "ResumeUpdates"]


@dataclass(frozen=True)
class DetectorSpec:
    """Thresholds are mean paired logloss differences (online − baseline), in nats."""

    min_samples: int = 100
    uncertain: float = 0.02
    corrupted: float = 0.05
    z: float = 2.0
    confirmations: int = 2
    hysteresis: float = 0.01
    recover_windows: int = 2
    cusum_k: float | None = None
    """Slack per sample of the one-sided CUSUM (None: off); a drift of the mean loss difference
    above ``k`` accumulates."""
    cusum_h: float = 10.0
    action: Action = "Rollback"
    repeat_window: float = 600.0

    def __post_init__(self) -> None:
        if not 0 <= self.uncertain <= self.corrupted:
            raise ValueError("need 0 <= uncertain <= corrupted")
        if self.min_samples < 2 or self.confirmations < 1 or self.recover_windows < 1:
            raise ValueError("need min_samples >= 2, confirmations >= 1, recover_windows >= 1")
        if self.hysteresis < 0 or self.z < 0:
            raise ValueError("hysteresis and z must be non-negative")


@dataclass(frozen=True)
class Window:
    """Summary of one window of paired loss differences: count, mean, sample standard deviation,
    and the sum of ``d − k`` the CUSUM needs (equal to ``n × (mean − k)``)."""

    n: int
    mean: float
    sd: float

    @classmethod
    def of(cls, diffs: npt.ArrayLike) -> Window:
        d = np.asarray(diffs, dtype=np.float64).ravel()
        d = d[np.isfinite(d)]
        if d.size == 0:
            return cls(0, math.nan, math.nan)
        sd = float(d.std(ddof=1)) if d.size > 1 else math.nan
        return cls(int(d.size), float(d.mean()), sd)

    @property
    def stderr(self) -> float:
        return self.sd / math.sqrt(self.n) if self.n > 1 else math.inf


def judge(spec: DetectorSpec, window: Window) -> Verdict:
    """The verdict of one window (see the module docstring)."""
    if window.n < spec.min_samples or math.isnan(window.mean):
        return "NoData"
    lower = window.mean - spec.z * window.stderr
    if window.mean >= spec.corrupted and lower > 0:
        return "Bad"
    if window.mean >= spec.uncertain:
        return "Suspect"
    if window.mean < spec.uncertain - spec.hysteresis:
        return "Good"
    return "Hold"


@dataclass(frozen=True)
class Rollback:
    """Timestamps of the last rollback's steps (seconds, as passed in)."""

    decided_at: float
    cut: int | None
    epoch: int | None = None
    switched_at: float | None = None
    restored_at: float | None = None
    resumed_at: float | None = None


@dataclass(frozen=True)
class HealthState:
    phase: HealthPhase = "Healthy"
    step: Step = "None"
    bad: int = 0
    """Consecutive Bad windows."""
    good: int = 0
    """Consecutive Good windows while Uncertain."""
    cusum: float = 0.0
    since: float = 0.0
    """When the phase last changed."""
    epoch: int = 0
    """The model's epoch (a restore moves it to ``epoch + 1``)."""
    baseline: int | None = None
    """The cut the baseline view reads."""
    last_rollback: Rollback | None = None


@dataclass(frozen=True)
class Observation:
    """What the caller saw since the last decision. ``window`` is None when no window closed;
    ``server_epochs`` are the epochs the servers report; ``serving_baseline`` how many of them
    serve the baseline view; ``resume`` is a person's resume."""

    window: Window | None = None
    servers: int = 0
    serving_baseline: int = 0
    server_epochs: tuple[int, ...] = ()
    resume: bool = False


@dataclass(frozen=True)
class Command:
    kind: CommandKind
    cut: int | None = None
    epoch: int | None = None


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class Decision:
    state: HealthState
    verdict: Verdict | None = None
    commands: tuple[Command, ...] = ()
    events: tuple[Event, ...] = ()


def _detect(
    spec: DetectorSpec, state: HealthState, window: Window, now: float
) -> tuple[HealthState, Verdict, tuple[Event, ...]]:
    """Move Healthy/Uncertain by one window; may enter Corrupted."""
    verdict = judge(spec, window)
    if verdict == "NoData":
        return state, verdict, ()
    cusum = state.cusum
    drift_alarm = False
    if spec.cusum_k is not None:
        cusum = max(0.0, cusum + window.n * (window.mean - spec.cusum_k))
        drift_alarm = cusum >= spec.cusum_h
    phase, bad, good = state.phase, state.bad, state.good
    if verdict == "Bad":
        bad, good = bad + 1, 0
        phase = "Corrupted" if bad >= spec.confirmations else "Uncertain"
    elif verdict == "Suspect":
        bad, good = 0, 0
        phase = "Uncertain" if phase == "Healthy" else phase
    elif verdict == "Hold":
        bad, good = 0, 0
    else:  # Good: Uncertain (and Corrupted under Alert) recover after enough of them
        bad = 0
        if phase != "Healthy":
            good += 1
            if good >= spec.recover_windows:
                phase, good = "Healthy", 0
    if drift_alarm:
        phase = "Corrupted"
    events: tuple[Event, ...] = ()
    if phase != state.phase:
        why = "CUSUM drift" if drift_alarm and verdict != "Bad" else f"window {verdict}"
        events = (
            Event(
                phase,
                f"Became {phase}: {why}, mean loss difference {window.mean:+.4f} over {window.n}",
                warning=phase != "Healthy",
            ),
        )
    new = replace(
        state,
        phase=phase,
        bad=bad,
        good=good,
        cusum=cusum,
        since=now if phase != state.phase else state.since,
    )
    return new, verdict, events


def _recovered(state: HealthState, now: float) -> HealthState:
    return replace(state, phase="Healthy", step="None", bad=0, good=0, cusum=0.0, since=now)


def decide(spec: DetectorSpec, state: HealthState, obs: Observation, now: float) -> Decision:
    """One decision: judge the window (outside a rollback) and move the rollback sequence."""
    if state.step == "Paused":
        if obs.resume:
            return Decision(
                _recovered(state, now),
                commands=(Command("ResumeUpdates"), Command("ServeLive")),
                events=(Event("Resumed", "Resumed by a person"),),
            )
        return Decision(state)
    if state.step == "ServingBaseline":
        if obs.servers and obs.serving_baseline >= obs.servers:
            epoch = state.epoch + 1
            rb = state.last_rollback
            rb = replace(rb, switched_at=now, epoch=epoch) if rb else None
            return Decision(
                replace(state, step="Restoring", last_rollback=rb),
                commands=(Command("Restore", cut=state.baseline, epoch=epoch),),
                events=(
                    Event(
                        "Restoring",
                        f"Every server serves cut {state.baseline}; restoring at epoch {epoch}",
                    ),
                ),
            )
        return Decision(state)
    if state.step == "Restoring":
        target = state.epoch + 1
        if obs.server_epochs and min(obs.server_epochs) >= target:
            rb = state.last_rollback
            rb = replace(rb, restored_at=now, resumed_at=now) if rb else None
            new = replace(_recovered(state, now), epoch=target, last_rollback=rb)
            return Decision(
                new,
                commands=(Command("ServeLive"),),
                events=(Event("Resumed", f"Every server holds epoch {target}; serving live"),),
            )
        return Decision(state)
    if obs.window is None:
        return Decision(state)
    new, verdict, events = _detect(spec, state, obs.window, now)
    if new.phase != "Corrupted" or state.phase == "Corrupted":
        return Decision(new, verdict, events=events)
    # Entering Corrupted: act.
    if spec.action == "Alert":
        return Decision(new, verdict, events=events)
    last = state.last_rollback
    repeated = last is not None and now - last.decided_at < spec.repeat_window
    if spec.action == "Pause" or repeated:
        commands: tuple[Command, ...] = (Command("PauseUpdates"),)
        if state.baseline is not None:
            commands += (Command("ServeBaseline", cut=state.baseline),)
        why = "corrupted again within the repeat window" if repeated else "action is Pause"
        return Decision(
            replace(new, step="Paused"),
            verdict,
            commands,
            (*events, Event("Paused", f"Updates paused for a person: {why}", warning=True)),
        )
    if state.baseline is None:
        return Decision(
            replace(new, step="Paused"),
            verdict,
            (Command("PauseUpdates"),),
            (*events, Event("Paused", "No baseline cut to roll back to", warning=True)),
        )
    return Decision(
        replace(new, step="ServingBaseline", last_rollback=Rollback(now, state.baseline)),
        verdict,
        (Command("ServeBaseline", cut=state.baseline),),
        (*events, Event("ServingBaseline", f"Serving cut {state.baseline} on every server")),
    )


def choose_baseline(
    cuts: Sequence[tuple[int, float]],
    current: int | None,
    phase: HealthPhase,
    now: float,
    age: float,
) -> int | None:
    """The newest cut ``(id, taken_at)`` at least ``age`` old; it only moves forward and only
    while Healthy (a harmful update must never reach the baseline)."""
    if phase != "Healthy":
        return current
    old_enough = [cid for cid, at in cuts if now - at >= age]
    if not old_enough:
        return current
    best = max(old_enough)
    return best if current is None or best > current else current


__all__: Sequence[str] = (
    "Action",
    "Command",
    "Decision",
    "DetectorSpec",
    "Event",
    "HealthPhase",
    "HealthState",
    "Observation",
    "Rollback",
    "Verdict",
    "Window",
    "choose_baseline",
    "decide",
    "judge",
)
