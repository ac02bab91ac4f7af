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

**The recent view** (optional, ``recent_corrupted`` set): a second shadow view at a cut only a
window or two old, chosen the same way (advanced only while Healthy, so it stays just before a
harm while the detector makes up its mind). The paired difference against the baseline is
``harm + freshness gain``, and the freshness gain of a minutes-old baseline swings by more than a
subtle harm; against a near-fresh view the freshness term is near zero, so small harms stand
out. Each window then carries a second summary, ``Observation.recent`` (online − recent view),
judged with its own thresholds (``recent_uncertain``, ``recent_corrupted``,
``recent_hysteresis``; same ``z``). While Uncertain the recent view is held, so the recent windows
since leaving Healthy all compare against the same cut: they are pooled into one larger test (a
sequential test: a harm too small to be significant in one window becomes so in two or three). The window's verdict is the worse of the two (the CUSUM stays on the baseline
comparison). The recent thresholds can scale with the model's own noise: with
``recent_sigmas > 0`` both are raised by ``recent_sigmas × scale``, where ``scale`` is the
root-mean-square of the positive part of the recent windows' means, learnt while Healthy from
windows the recent comparison did not judge Bad (an EWMA over ``recent_memory`` windows); the
recent comparison judges nothing until ``recent_warmup`` windows have fed the scale. A model whose
clean windows swing (MovieLens's bursts of new users) gets wider thresholds than a steady one,
from the same spec. The rollback still goes to the baseline: the recent
view is a yardstick, not a safe state (a harm may have reached it while it was Healthy). After a
restore the cuts above the baseline are gone, so the recent view restarts at the baseline.

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
    z: float = 1.5
    """Standard errors a Bad window's mean must clear (1.5 since the cluster bench showed no
    false rollback at 1.5, as at 2, and the in-process held-out seeds caught more)."""
    confirmations: int = 2
    hysteresis: float = 0.01
    recover_windows: int = 2
    cusum_k: float | None = None
    """Slack per sample of the one-sided CUSUM (None: off); a drift of the mean loss difference
    above ``k`` accumulates."""
    cusum_h: float = 10.0
    action: Action = "Rollback"
    repeat_window: float = 600.0
    recent_uncertain: float = 0.0
    """Suspect threshold of the online − recent-view window (only with ``recent_corrupted``)."""
    recent_corrupted: float | None = None
    """Bad threshold of the online − recent-view window; None: no recent view is judged."""
    recent_hysteresis: float | None = None
    """Good below ``recent_uncertain − recent_hysteresis`` (None: ``hysteresis``)."""
    recent_sigmas: float = 0.0
    """Raise both recent thresholds by this many times the learnt scale (0: fixed thresholds)."""
    recent_memory: int = 50
    """Windows the learnt scale remembers (EWMA weight ``1/recent_memory``)."""
    recent_warmup: int = 5
    """Windows that must feed the scale before the recent comparison judges (with sigmas > 0)."""
    recent_learn: Literal["NotBad", "Calm", "Clipped"] = "NotBad"
    """Which recent windows feed the learnt scale while Healthy (Bad ones never do). NotBad:
    every other one; Calm: only Good and Hold ones, so a harm that one window shows only in part
    cannot widen the thresholds that should catch it in the next (but the scale can then only
    shrink: a truncated estimate); Clipped: Suspect ones too, their mean clipped at the Suspect
    threshold (the scale can grow, a harm's window only by as much as a borderline clean one)."""
    recent_pool_shrink: bool = False
    """Whether the learnt lift of the pooled recent test shrinks with the windows pooled
    (``lift / √k`` for ``k`` windows against the same held cut: the lift is the spread of one
    window's mean, and k windows' pooled mean spreads √k times less when they are independent)."""

    guard_rows: int | None = None
    """The parameter guard (see :class:`ParamGuard`): this many rows flagged zeroed or exploded
    since the last decision make the model Corrupted at once, whatever the loss says; a
    non-finite row always does. None: the guard is off."""

    def __post_init__(self) -> None:
        if self.guard_rows is not None and self.guard_rows < 1:
            raise ValueError("guard_rows must be at least 1 (None: off)")
        if not 0 <= self.uncertain <= self.corrupted:
            raise ValueError("need 0 <= uncertain <= corrupted")
        if self.recent_corrupted is not None and not (
            0 <= self.recent_uncertain <= self.recent_corrupted
        ):
            raise ValueError("need 0 <= recent_uncertain <= recent_corrupted")
        if self.recent_hysteresis is not None and self.recent_hysteresis < 0:
            raise ValueError("recent_hysteresis must be non-negative")
        if self.recent_learn not in ("NotBad", "Calm", "Clipped"):
            raise ValueError("recent_learn must be NotBad, Calm or Clipped")
        if self.recent_sigmas < 0 or self.recent_memory < 1 or self.recent_warmup < 0:
            raise ValueError("need recent_sigmas >= 0, recent_memory >= 1, recent_warmup >= 0")
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

    def merge(self, other: Window) -> Window:
        """The summary of both windows' samples together (a window without samples adds
        nothing)."""
        if other.n == 0 or math.isnan(other.mean):
            return self
        if self.n == 0 or math.isnan(self.mean):
            return other
        n = self.n + other.n
        mean = (self.n * self.mean + other.n * other.mean) / n
        ss = sum(
            (w.n - 1) * (0.0 if math.isnan(w.sd) else w.sd**2) + w.n * (w.mean - mean) ** 2
            for w in (self, other)
        )
        return Window(n, mean, math.sqrt(ss / (n - 1)))


def judge(
    spec: DetectorSpec, window: Window, recent: Window | None = None, scale: float = 0.0
) -> Verdict:
    """The verdict of one window (see the module docstring): of the baseline comparison, or the
    worse of it and the recent-view comparison when the spec judges one and it has data.
    ``scale`` is the learnt scale of the recent windows (used with ``recent_sigmas``)."""
    verdict = _judge(spec, window, spec.uncertain, spec.corrupted)
    other = judge_recent(spec, recent, scale)
    return max(verdict, other, key=_SEVERITY.index)


def judge_recent(spec: DetectorSpec, recent: Window | None, scale: float = 0.0) -> Verdict:
    """The verdict of the recent-view comparison alone (NoData when the spec judges none)."""
    if recent is None or spec.recent_corrupted is None:
        return "NoData"
    lift = spec.recent_sigmas * scale
    hysteresis = spec.hysteresis if spec.recent_hysteresis is None else spec.recent_hysteresis
    return _judge(
        spec, recent, spec.recent_uncertain + lift, spec.recent_corrupted + lift, hysteresis
    )


_SEVERITY: tuple[Verdict, ...] = ("NoData", "Good", "Hold", "Suspect", "Bad")


def _judge(
    spec: DetectorSpec,
    window: Window,
    uncertain: float,
    corrupted: float,
    hysteresis: float | None = None,
) -> Verdict:
    if window.n < spec.min_samples or math.isnan(window.mean):
        return "NoData"
    lower = window.mean - spec.z * window.stderr
    if window.mean >= corrupted and lower > 0:
        return "Bad"
    if window.mean >= uncertain:
        return "Suspect"
    if window.mean < uncertain - (spec.hysteresis if hysteresis is None else hysteresis):
        return "Good"
    return "Hold"


def _excess(k: float, min_samples: int, window: Window | None) -> float | None:
    """The CUSUM increment of one window, ``n × (mean − k)`` (None without data)."""
    if window is None or window.n < min_samples or math.isnan(window.mean):
        return None
    return window.n * (window.mean - k)


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
    recent: int | None = None
    """The cut the recent view reads (None: no recent view)."""
    recent_sq: float = 0.0
    """EWMA of the squared positive part of the recent windows' means (the scale's square)."""
    recent_fed: int = 0
    """Windows that fed ``recent_sq``."""
    recent_pool: Window | None = None
    """While Uncertain: every recent window since leaving Healthy, pooled (they all compare
    against the same held recent cut, so their samples add up to one larger test)."""
    recent_pooled: int = 0
    """Windows in ``recent_pool``."""

    @property
    def recent_scale(self) -> float:
        return math.sqrt(self.recent_sq)

    last_rollback: Rollback | None = None


@dataclass(frozen=True)
class GuardCounts:
    """What the parameter guard saw in some writes: rows checked, and rows flagged non-finite
    (NaN/Inf), zeroed, or exploded (see :class:`ParamGuard`)."""

    rows: int = 0
    nonfinite: int = 0
    zeroed: int = 0
    exploded: int = 0

    @property
    def flagged(self) -> int:
        """Zeroed or exploded rows (non-finite ones are judged on their own)."""
        return self.zeroed + self.exploded

    def merge(self, other: GuardCounts) -> GuardCounts:
        return GuardCounts(
            self.rows + other.rows,
            self.nonfinite + other.nonfinite,
            self.zeroed + other.zeroed,
            self.exploded + other.exploded,
        )

    def describe(self) -> str:
        return (
            f"{self.nonfinite} non-finite, {self.zeroed} zeroed, {self.exploded} exploded"
            f" of {self.rows} rows written"
        )


@dataclass(frozen=True)
class GuardSpec:
    """Thresholds of the parameter guard, as multiples of a table's running statistics."""

    zero_ratio: float = 0.01
    """A row is *zeroed* when its norm falls to at most this × the table's mean row norm…"""
    zero_from: float = 0.1
    """…from at least this × it (a trained row wiped, not a near-zero row nudged)."""
    norm_ratio: float = 10.0
    """A row is *exploded* when its norm exceeds this × the table's mean row norm…"""
    step_ratio: float | None = None
    """…or its update (the norm of new − old) exceeds this × the table's mean update (None: no
    update-size test). Off by default: it catches a biased batch written at once (5 settled it on
    held-out seeds) but also rolls back a clean catch-up burst of the same size."""
    memory: int = 20000
    """Rows the running means remember (an EWMA, weight rows-written ÷ memory per write)."""
    warmup: int = 500
    """Rows of a table the means must have seen before the guard flags any of them."""

    def __post_init__(self) -> None:
        if not 0 <= self.zero_ratio < self.zero_from:
            raise ValueError("need 0 <= zero_ratio < zero_from")
        if self.norm_ratio <= 1 or (self.step_ratio is not None and self.step_ratio <= 1):
            raise ValueError("norm_ratio and step_ratio must exceed 1")
        if self.memory < 1 or self.warmup < 0:
            raise ValueError("need memory >= 1 and warmup >= 0")


@dataclass
class _TableStats:
    seen: int = 0
    norm: float = 0.0
    step: float = 0.0
    steps_seen: int = 0


class ParamGuard:
    """A second, cheap signal next to the loss: it watches the *updates themselves*. For each
    write to a table it compares every row against the table's running statistics (the mean row
    norm and the mean update magnitude — the data plane's significance is the same ratio) and
    flags rows that became non-finite, were wiped to zero, or exploded. Flagged rows never feed
    the running means (a harm must not widen the bars that catch it). A loss-based detector cannot
    see a harm below its own noise; a wiped or exploded row is visible the moment it is written.

    Pure arithmetic over what the caller passes (the rows before and after a write); no I/O."""

    def __init__(self, spec: GuardSpec | None = None) -> None:
        self.spec = spec or GuardSpec()
        self._tables: dict[str, _TableStats] = {}

    def observe(
        self,
        table: str,
        old: npt.ArrayLike,
        found: npt.ArrayLike,
        new: npt.ArrayLike,
    ) -> GuardCounts:
        """Judge one write: ``old`` the rows before (``found`` False where a row did not exist),
        ``new`` the rows written, both ``[n, dim]``."""
        sp = self.spec
        o = np.atleast_2d(np.asarray(old, dtype=np.float64))
        v = np.atleast_2d(np.asarray(new, dtype=np.float64))
        had = np.asarray(found, dtype=bool).ravel()
        st = self._tables.setdefault(table, _TableStats())
        finite = np.asarray(np.isfinite(v).all(axis=1), dtype=bool)
        had = had & np.isfinite(o).all(axis=1)
        v0 = np.where(finite[:, None], v, 0.0)
        o0 = np.where(had[:, None], o, 0.0)
        moved = finite & had
        norm = np.linalg.norm(v0, axis=1)
        prev = np.linalg.norm(o0, axis=1)
        step = np.where(moved, np.linalg.norm(v0 - o0, axis=1), 0.0)
        zeroed = np.zeros(v.shape[0], dtype=bool)
        exploded = np.zeros(v.shape[0], dtype=bool)
        if st.seen >= sp.warmup and st.norm > 0:
            zeroed = moved & (prev >= sp.zero_from * st.norm) & (norm <= sp.zero_ratio * st.norm)
            exploded = finite & (norm > sp.norm_ratio * st.norm)
            if sp.step_ratio is not None and st.steps_seen >= sp.warmup and st.step > 0:
                exploded |= moved & (step > sp.step_ratio * st.step)
            exploded &= ~zeroed  # a wiped row is counted once, as zeroed
        calm = finite & ~zeroed & ~exploded
        n = int(calm.sum())
        if n:
            w = n / (st.seen + n) if st.seen + n <= sp.memory else min(1.0, n / sp.memory)
            st.norm += w * (float(norm[calm].mean()) - st.norm)
            st.seen += n
        calm_moved = calm & moved
        m = int(calm_moved.sum())
        if m:
            steps = st.steps_seen + m
            w = m / steps if steps <= sp.memory else min(1.0, m / sp.memory)
            st.step += w * (float(step[calm_moved].mean()) - st.step)
            st.steps_seen = steps
        return GuardCounts(
            rows=int(v.shape[0]),
            nonfinite=int((~finite).sum()),
            zeroed=int(zeroed.sum()),
            exploded=int(exploded.sum()),
        )

    def means(self, table: str) -> tuple[float, float]:
        """The table's running mean row norm and mean update magnitude (0, 0 before any)."""
        st = self._tables.get(table)
        return (st.norm, st.step) if st else (0.0, 0.0)


def guard_alarm(spec: DetectorSpec, counts: GuardCounts | None) -> bool:
    """Whether the guard's counts make the model Corrupted under ``spec`` (off: never)."""
    if spec.guard_rows is None or counts is None:
        return False
    return counts.nonfinite > 0 or counts.flagged >= spec.guard_rows


@dataclass(frozen=True)
class Observation:
    """What the caller saw since the last decision. ``window`` is None when no window closed;
    ``server_epochs`` are the epochs the servers report; ``serving_baseline`` how many of them
    serve the baseline view; ``resume`` is a person's resume. ``recent`` is the same window's
    paired differences against the recent view (online − recent), when there is one."""

    window: Window | None = None
    recent: Window | None = None
    servers: int = 0
    serving_baseline: int = 0
    server_epochs: tuple[int, ...] = ()
    resume: bool = False
    guard: GuardCounts | None = None
    """Rows the parameter guard flagged since the last decision (None: not observed)."""


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
    spec: DetectorSpec, state: HealthState, window: Window, now: float, recent: Window | None
) -> tuple[HealthState, Verdict, tuple[Event, ...]]:
    """Move Healthy/Uncertain by one window; may enter Corrupted."""
    if spec.recent_corrupted is None:
        recent = None
    warming = spec.recent_sigmas > 0 and state.recent_fed < spec.recent_warmup
    judged = None if warming else recent
    pooled = 1 if judged is not None else 0
    if judged is not None and state.phase == "Uncertain" and state.recent_pool is not None:
        judged = state.recent_pool.merge(judged)
        pooled = max(state.recent_pooled, 1) + 1
    scale = state.recent_scale
    if spec.recent_pool_shrink and pooled > 1:
        scale /= math.sqrt(pooled)
    verdict = judge(spec, window, judged, scale)
    state = _learn_scale(
        spec, state, recent, "NoData" if warming else judge_recent(spec, recent, state.recent_scale)
    )
    if verdict == "NoData":
        return state, verdict, ()
    recent = judged  # what was judged (pooled while Uncertain), for the pool and the event
    cusum = state.cusum
    drift_alarm = False
    if spec.cusum_k is not None:
        step = _excess(spec.cusum_k, spec.min_samples, window)
        cusum = max(0.0, cusum + (step or 0.0))
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
                f"Became {phase}: {why}, mean loss difference {window.mean:+.4f} over {window.n}"
                + (
                    ""
                    if recent is None
                    else f" ({recent.mean:+.4f} over {recent.n} against the recent view)"
                ),
                warning=phase != "Healthy",
            ),
        )
    new = replace(
        state,
        phase=phase,
        bad=bad,
        good=good,
        cusum=cusum,
        recent_pool=recent if phase == "Uncertain" and recent is not None else None,
        recent_pooled=pooled if phase == "Uncertain" and recent is not None else 0,
        since=now if phase != state.phase else state.since,
    )
    return new, verdict, events


def _learn_scale(
    spec: DetectorSpec, state: HealthState, recent: Window | None, verdict: Verdict
) -> HealthState:
    """Feed the recent window's mean to the learnt scale: only while Healthy, and not a window
    the recent comparison found Bad (a harm must not widen the thresholds); every window while
    warming up (nothing is judged yet)."""
    if spec.recent_sigmas <= 0 or recent is None or state.phase != "Healthy":
        return state
    if recent.n < spec.min_samples or math.isnan(recent.mean) or verdict == "Bad":
        return state
    mean = max(0.0, recent.mean)
    if verdict == "Suspect" and spec.recent_learn == "Calm":
        return state
    if verdict == "Suspect" and spec.recent_learn == "Clipped":
        mean = min(mean, spec.recent_uncertain + spec.recent_sigmas * state.recent_scale)
    fed = state.recent_fed + 1
    weight = 1.0 / min(fed, spec.recent_memory)
    sq = state.recent_sq + weight * (mean**2 - state.recent_sq)
    return replace(state, recent_sq=sq, recent_fed=fed)


def _recovered(state: HealthState, now: float) -> HealthState:
    return replace(
        state,
        phase="Healthy",
        step="None",
        bad=0,
        good=0,
        cusum=0.0,
        since=now,
        recent_pool=None,
        recent_pooled=0,
    )


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
            # The restore drops the cuts above the baseline: the recent view restarts there.
            recent = state.baseline if state.recent is not None else None
            return Decision(
                replace(state, step="Restoring", last_rollback=rb, recent=recent),
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
    alarm = guard_alarm(spec, obs.guard)
    if obs.window is None and not alarm:
        return Decision(state)
    verdict: Verdict | None = None
    new = state
    events: tuple[Event, ...] = ()
    if obs.window is not None:
        new, verdict, events = _detect(spec, state, obs.window, now, obs.recent)
    if alarm and new.phase != "Corrupted" and obs.guard is not None:
        new = replace(new, phase="Corrupted", since=now, recent_pool=None, recent_pooled=0)
        events = (
            Event(
                "Corrupted",
                f"Became Corrupted: parameter guard, {obs.guard.describe()}",
                warning=True,
            ),
        )
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
    "GuardCounts",
    "GuardSpec",
    "HealthPhase",
    "HealthState",
    "Observation",
    "ParamGuard",
    "Rollback",
    "Verdict",
    "Window",
    "choose_baseline",
    "decide",
    "guard_alarm",
    "judge",
)
