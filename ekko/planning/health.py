"""The model-state manager's glue between the API and the pure detector (pure).

:mod:`ekko.updates.health` decides (windows → Healthy / Uncertain / Corrupted → the rollback
sequence); this module translates around it for the operator's stream worker:

- the spec's ``health`` → a :class:`~ekko.updates.health.DetectorSpec`;
- ``UpdateStream.status.health`` ↔ :class:`~ekko.updates.health.HealthState`, so a restarted
  operator resumes a rollback where the last one left it;
- the servers' reports (``ServerAssignment.status.updates``) → an
  :class:`~ekko.updates.health.Observation`, and their cumulative paired-score series → a
  :class:`~ekko.updates.health.Window`;
- the detector's commands → the Model's control block (:class:`ModelUpdateControl`), which the
  agents apply: serve the baseline, restore at an epoch, serve live.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ekko.api.meta import Condition
from ekko.api.resources import (
    RESUME_ANNOTATION,
    ROLLBACK_ANNOTATION,
    ROLLBACK_CUT_ANNOTATION,
    CutRecord,
    HealthWindow,
    ModelUpdateControl,
    PooledWindow,
    RecentViewStatus,
    ServerUpdateState,
    UpdateHealth,
    UpdateHealthStatus,
    UpdateRollbackRecord,
)
from ekko.api.units import parse_duration, parse_time
from ekko.updates.health import (
    Command,
    DetectorSpec,
    GuardCounts,
    HealthState,
    Observation,
    Rollback,
    Verdict,
    Window,
)

MAX_CUT_RECORDS = 64

Paired = tuple[float, float, float]
"""Cumulative (samples, sum of differences, sum of squares) of one server."""


def detector_spec(health: UpdateHealth) -> DetectorSpec:
    d = health.detector
    spec = DetectorSpec(
        min_samples=d.min_samples,
        uncertain=d.uncertain,
        corrupted=d.corrupted,
        z=d.z,
        confirmations=d.confirmations,
        hysteresis=d.hysteresis,
        recover_windows=d.recover_windows,
        cusum_k=d.cusum_slack,
        cusum_h=d.cusum_threshold,
        action=health.action,
        repeat_window=parse_duration(health.repeat_window),
        guard_rows=health.guard.rows if health.guard is not None else None,
    )
    r = health.recent
    if r is None:
        return spec
    return replace(
        spec,
        recent_uncertain=r.uncertain,
        recent_corrupted=r.corrupted,
        recent_hysteresis=r.hysteresis,
        recent_sigmas=r.sigmas,
        recent_memory=r.memory,
        recent_warmup=r.warmup,
    )


def recent_age(health: UpdateHealth) -> float | None:
    """Seconds the recent view's cut must be old (None: no recent view)."""
    return None if health.recent is None else parse_duration(health.recent.age)


def _ts(t: datetime | None) -> float | None:
    return None if t is None else t.timestamp()


def _dt(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


@dataclass(frozen=True)
class Manager:
    """Everything the worker carries between passes, rebuilt from status after a restart."""

    state: HealthState
    cuts: tuple[tuple[int, float], ...] = ()
    """Cuts taken: (id, wall time), oldest first."""
    trigger: str = "Detector"
    handled_request: str = ""
    """The last person's request (annotation value) acted on."""
    last_window: HealthWindow | None = None
    publisher_restored: bool | None = None
    last_cut: int = 0
    """The newest cut id ever taken: ids only increase, also past a restore that dropped the
    cuts above its own (a server answers a reused id with the cut it already holds)."""


def next_cut(m: Manager) -> int:
    """The id of the next cut."""
    return max(m.last_cut, max((c for c, _ in m.cuts), default=0)) + 1


def restored(m: Manager, cut: int) -> Manager:
    """The manager once a restore to ``cut`` is ordered: the cuts above it are forgotten. They
    hold the state being undone, and every server and publisher drops them as it restores, so
    one must never become the baseline (a rollback to it would switch and restore nothing)."""
    return replace(
        m, cuts=tuple(c for c in m.cuts if c[0] <= cut), last_cut=max(m.last_cut, next_cut(m) - 1)
    )


def from_status(status: UpdateHealthStatus | None, epoch: int) -> Manager:
    """The manager's state as the last status recorded it."""
    if status is None:
        return Manager(HealthState(epoch=epoch))
    rb = status.last_rollback
    rollback = None
    if rb is not None:
        rollback = Rollback(
            decided_at=rb.decided_at.timestamp(),
            cut=rb.cut,
            epoch=rb.epoch,
            switched_at=_ts(rb.switched_at),
            restored_at=_ts(rb.restored_at),
            resumed_at=_ts(rb.resumed_at),
        )
    state = HealthState(
        phase=status.phase,
        step=status.step,
        bad=status.bad_windows,
        good=status.good_windows,
        cusum=status.cusum,
        since=_ts(status.since) or 0.0,
        epoch=epoch,
        baseline=status.baseline_cut,
        last_rollback=rollback,
        **_recent_state(status.recent),
    )
    return Manager(
        state,
        cuts=tuple((c.id, c.taken_at.timestamp()) for c in status.cuts),
        trigger=rb.trigger if rb is not None else "Detector",
        handled_request=status.handled_request,
        last_window=status.last_window,
        publisher_restored=rb.publisher_restored if rb is not None else None,
        last_cut=max([status.last_cut, *(c.id for c in status.cuts)]),
    )


def _recent_state(r: RecentViewStatus | None) -> dict[str, Any]:
    if r is None:
        return {}
    pool = None
    if r.pool is not None and r.pool.samples > 0:
        pool = Window(r.pool.samples, r.pool.mean, math.nan if r.pool.sd is None else r.pool.sd)
    return {
        "recent": r.cut,
        "recent_sq": r.scale * r.scale,
        "recent_fed": r.windows_learnt,
        "recent_pool": pool,
        "recent_pooled": r.pool.windows if pool is not None and r.pool is not None else 0,
    }


def _recent_status(s: HealthState) -> RecentViewStatus | None:
    if s.recent is None and s.recent_fed == 0 and s.recent_pool is None:
        return None
    pool = s.recent_pool
    return RecentViewStatus(
        cut=s.recent,
        scale=round(s.recent_scale, 9),
        windows_learnt=s.recent_fed,
        pool=None
        if pool is None or pool.n == 0
        else PooledWindow(
            samples=pool.n,
            mean=round(pool.mean, 9),
            sd=None if math.isnan(pool.sd) else round(pool.sd, 9),
            windows=s.recent_pooled,
        ),
    )


def restore_under_way(
    status: UpdateHealthStatus | None, control: ModelUpdateControl, recorded_epoch: int
) -> bool:
    """Whether the restore of the current rollback was already ordered at ``control.epoch`` (so
    a restarted manager re-issues it at that epoch instead of bumping it again): the status says
    Restoring, or it still says ServingBaseline while the control block — written first — already
    carries a newer epoch than the stream's status recorded, restoring this rollback's cut."""
    if status is None:
        return False
    if status.step == "Restoring":
        return True
    rollback = status.last_rollback
    return (
        status.step == "ServingBaseline"
        and rollback is not None
        and control.restore_cut == rollback.cut
        and control.epoch > recorded_epoch
    )


def to_status(m: Manager) -> UpdateHealthStatus:
    s = m.state
    rb = s.last_rollback
    record = None
    if rb is not None:
        record = UpdateRollbackRecord(
            trigger="Person" if m.trigger == "Person" else "Detector",
            cut=rb.cut,
            epoch=rb.epoch,
            decided_at=_dt(rb.decided_at) or datetime.fromtimestamp(0, UTC),
            switched_at=_dt(rb.switched_at),
            restored_at=_dt(rb.restored_at),
            resumed_at=_dt(rb.resumed_at),
            switch_seconds=_after(rb.decided_at, rb.switched_at),
            restore_seconds=_after(rb.decided_at, rb.restored_at),
            publisher_restored=m.publisher_restored,
        )
    return UpdateHealthStatus(
        phase=s.phase,
        step=s.step,
        since=_dt(s.since) if s.since else None,
        baseline_cut=s.baseline,
        cuts=[
            CutRecord(id=i, taken_at=_dt(at) or datetime.fromtimestamp(0, UTC))
            for i, at in m.cuts[-MAX_CUT_RECORDS:]
        ],
        bad_windows=s.bad,
        good_windows=s.good,
        cusum=round(s.cusum, 6),
        last_window=m.last_window,
        recent=_recent_status(s),
        last_rollback=record,
        handled_request=m.handled_request,
        last_cut=next_cut(m) - 1,
    )


def _after(start: float, end: float | None) -> float | None:
    return None if end is None else round(max(0.0, end - start), 3)


def health_condition(m: Manager) -> Condition:
    s = m.state
    if s.step == "Paused":
        return Condition(
            type="Healthy",
            status="False",
            reason="PausedForAPerson",
            message="updates are paused after a corrupted state; `kubectl ekko updates resume` "
            "continues",
        )
    if s.step in ("ServingBaseline", "Restoring"):
        return Condition(
            type="Healthy",
            status="False",
            reason="RollingBack",
            message=f"serving the baseline (cut {s.baseline}); {s.step}",
        )
    if s.phase == "Healthy":
        return Condition(type="Healthy", status="True", reason="Healthy", message=_window_text(m))
    return Condition(type="Healthy", status="False", reason=s.phase, message=_window_text(m))


def _window_text(m: Manager) -> str:
    w = m.last_window
    if w is None or w.mean_loss_difference is None:
        return "no window judged yet"
    return (
        f"last window {w.verdict}: mean loss difference {w.mean_loss_difference:+.4f} "
        f"over {w.samples} paired samples"
    )


# --- windows -------------------------------------------------------------------------------------


def paired_window(
    now: Mapping[str, Paired], before: Mapping[str, Paired]
) -> tuple[Window, int, float, float]:
    """The window since ``before`` over every server (a server seen for the first time, or whose
    samples went down because its agent restarted, counts from zero). Also returns the totals
    (n, sum, sum of squares) for the status."""
    n = total = squares = 0.0
    for server, (cn, cs, cq) in now.items():
        bn, bs, bq = before.get(server, (0.0, 0.0, 0.0))
        if cn < bn:
            bn = bs = bq = 0.0
        n += cn - bn
        total += cs - bs
        squares += cq - bq
    count = round(n)
    if count == 0:
        return Window(0, math.nan, math.nan), 0, 0.0, 0.0
    mean = total / n
    var = (squares - total * total / n) / (n - 1) if count > 1 else math.nan
    sd = math.sqrt(max(var, 0.0)) if not math.isnan(var) else math.nan
    return Window(count, mean, sd), count, total, squares


GUARD_SERIES = "ekko_update_guard_rows_total"
"""The servers' parameter-guard counter (:class:`ekko.updates.node.GuardCounter`)."""


def parse_guard(text: str, model: str) -> GuardCounts | None:
    """One server's cumulative guard counts for ``model`` in its /metrics text (None: the server
    does not guard the model)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == GUARD_SERIES and s.labels.get("model") == model:
                found[s.labels.get("kind", "")] = s.value
    if not found:
        return None
    return GuardCounts(
        rows=round(found.get("rows", 0.0)),
        nonfinite=round(found.get("nonfinite", 0.0)),
        zeroed=round(found.get("zeroed", 0.0)),
        exploded=round(found.get("exploded", 0.0)),
    )


def guard_window(
    now: Mapping[str, GuardCounts], before: Mapping[str, GuardCounts]
) -> GuardCounts | None:
    """What the guard flagged since ``before``, judged per server (every server of a stream
    applies the same rows, so summing would count a row once per replica): the counts of the
    server that flagged the most (non-finite first, then zeroed + exploded). A server seen for
    the first time, or whose rows went down because its agent restarted, counts from zero.
    None when no server reports guard counts."""
    if not now:
        return None
    worst: GuardCounts | None = None
    for server, cur in now.items():
        base = before.get(server, GuardCounts())
        if cur.rows < base.rows:
            base = GuardCounts()
        delta = GuardCounts(
            cur.rows - base.rows,
            cur.nonfinite - base.nonfinite,
            cur.zeroed - base.zeroed,
            cur.exploded - base.exploded,
        )
        if worst is None or (delta.nonfinite, delta.flagged) > (worst.nonfinite, worst.flagged):
            worst = delta
    return worst


def window_status(
    window: Window, verdict: Verdict | None, at: datetime, recent: Window | None = None
) -> HealthWindow:
    mean = None if math.isnan(window.mean) else round(window.mean, 6)
    if recent is None:
        return HealthWindow(
            samples=window.n, mean_loss_difference=mean, verdict=verdict or "", at=at
        )
    return HealthWindow(
        samples=window.n,
        mean_loss_difference=mean,
        verdict=verdict or "",
        at=at,
        recent_samples=recent.n,
        recent_mean_loss_difference=None if math.isnan(recent.mean) else round(recent.mean, 6),
    )


# --- servers -------------------------------------------------------------------------------------


def observe_servers(
    reports: Iterable[tuple[str, ServerUpdateState | None]],
    control: ModelUpdateControl | None,
    *,
    window: Window | None = None,
    recent: Window | None = None,
    resume: bool = False,
    guard: GuardCounts | None = None,
) -> Observation:
    """What the servers of the model report, for :func:`ekko.updates.health.decide`. A server
    that does not hold the baseline cut cannot serve it and counts as switched (it says so in its
    report); one that has not reported yet counts as not switched and at epoch 0."""
    baseline = control.baseline_cut if control is not None else None
    servers = switched = 0
    epochs = []
    for _, report in reports:
        servers += 1
        if report is None:
            epochs.append(0)
            continue
        epochs.append(report.epoch)
        if report.view == "Baseline" or (baseline is not None and baseline not in report.cuts):
            switched += 1
    return Observation(
        window=window,
        recent=recent,
        servers=servers,
        serving_baseline=switched,
        server_epochs=tuple(epochs),
        resume=resume,
        guard=guard,
    )


def latest(reports: Iterable[tuple[str, ServerUpdateState | None]], field: str) -> float | None:
    """The newest ``switched_at`` or ``restored_at`` the servers report (wall seconds)."""
    times = [
        t.timestamp() for _, r in reports if r is not None and (t := getattr(r, field)) is not None
    ]
    return max(times, default=None)


# --- commands → control block ----------------------------------------------------------------


def apply_commands(control: ModelUpdateControl, commands: Sequence[Command]) -> ModelUpdateControl:
    """The control block after the detector's commands (pause and resume act on the topology,
    not here)."""
    out = control
    for c in commands:
        if c.kind == "ServeBaseline":
            out = out.evolve(view="Baseline", baseline_cut=c.cut)
        elif c.kind == "ServeLive":
            out = out.evolve(view="Live")
        elif c.kind == "Restore" and c.epoch is not None:
            out = out.evolve(epoch=c.epoch, restore_cut=c.cut)
    return out


def person_rollback(m: Manager, cut: int, now: float, request: str) -> tuple[Manager, Command]:
    """A person's rollback to ``cut``: the sequence starts at ServingBaseline (the plugin already
    switched the view, so this is idempotent)."""
    state = replace(
        m.state,
        phase="Corrupted",
        step="ServingBaseline",
        baseline=cut,
        bad=0,
        good=0,
        since=now,
        last_rollback=Rollback(now, cut),
    )
    return (
        replace(m, state=state, trigger="Person", handled_request=request, publisher_restored=None),
        Command("ServeBaseline", cut=cut),
    )


def parse_stamp(value: str) -> float | None:
    """Seconds since the epoch of an RFC 3339 annotation value, or None (one parser:
    ``api.units.parse_time``; a time without an offset is read as UTC, not the host's zone)."""
    when = parse_time(value, naive_as_utc=True)
    return when.timestamp() if when is not None else None


__all__: Sequence[str] = (
    "GUARD_SERIES",
    "RESUME_ANNOTATION",
    "ROLLBACK_ANNOTATION",
    "ROLLBACK_CUT_ANNOTATION",
    "Manager",
    "apply_commands",
    "detector_spec",
    "from_status",
    "guard_window",
    "health_condition",
    "latest",
    "next_cut",
    "observe_servers",
    "paired_window",
    "parse_guard",
    "parse_stamp",
    "person_rollback",
    "recent_age",
    "restored",
    "to_status",
    "window_status",
)
