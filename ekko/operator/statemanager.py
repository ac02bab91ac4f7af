"""The model-state manager of one update stream: cuts, the baseline, the detector, the rollback.

Runs inside the stream's worker, one step per pass (every two seconds, every quarter second while
a rollback is under way):

1. **Cuts.** Every ``snapshotInterval`` a new cut id is posted to the publishers and to every
   connected server (``POST /v1/updates/cut``); each starts an undo log from its current state.
2. **Baseline.** The newest cut at least ``baseline.age`` old, advanced only while Healthy
   (:func:`ekko.updates.health.choose_baseline`), written to the Model's control block so every
   agent serves its sliver from it and shadow-scores labelled requests on it.
3. **Windows.** Every ``detector.window`` the servers' paired-score series are read (their
   ``/metrics``) and the window since the last one goes to :func:`ekko.updates.health.decide`.
4. **Commands.** ServeBaseline / Restore / ServeLive become the Model's control block (one write
   per transition; the agents apply it from their watch); Restore also asks the publishers to
   restore their own tables at the new epoch; PauseUpdates pauses the stream's topology.

Everything the next step needs is in ``UpdateStream.status.health`` and the control block, so a
restarted operator continues a rollback where the last one stopped. A person's request (the
``kubectl ekko updates rollback`` and ``resume`` annotations) is acted on once per value.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import aiohttp

from ekko.api.meta import Condition
from ekko.api.resources import Model, ModelUpdateControl, ServerUpdateState, UpdateStream
from ekko.api.units import parse_duration
from ekko.kube.updates import StreamObservation, UpdateKube
from ekko.planning.health import (
    MAX_CUT_RECORDS,
    RESUME_ANNOTATION,
    ROLLBACK_ANNOTATION,
    ROLLBACK_CUT_ANNOTATION,
    Manager,
    Paired,
    apply_commands,
    detector_spec,
    from_status,
    guard_window,
    health_condition,
    latest,
    next_cut,
    observe_servers,
    paired_window,
    parse_guard,
    parse_stamp,
    person_rollback,
    recent_age,
    restore_under_way,
    restored,
    to_status,
    window_status,
)
from ekko.planning.updates import StreamServer, parse_scrape
from ekko.updates.health import (
    Command,
    Decision,
    Event,
    GuardCounts,
    Window,
    choose_baseline,
    decide,
)
from ekko.updates.wire import CUT_PATH, RESTORE_PATH

log = logging.getLogger(__name__)

CALL_TIMEOUT = 2.0


async def _call(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> dict[str, Any] | None:
    """POST a JSON body; the JSON answer of a 200, else None."""
    try:
        timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT)
        async with session.post(url, json=body, timeout=timeout) as resp:
            if resp.status != 200:
                return None
            answer = await resp.json()
            return answer if isinstance(answer, dict) else {}
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> bool:
    return await _call(session, url, body) is not None


async def _paired(
    session: aiohttp.ClientSession, address: str, model: str
) -> tuple[Paired, Paired, GuardCounts | None] | None:
    """One server's cumulative paired series for the model: against the baseline and against the
    recent view; and its parameter guard's counts (None: it does not guard the model)."""
    try:
        timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT)
        async with session.get(address.rstrip("/") + "/metrics", timeout=timeout) as resp:
            if resp.status != 200:
                return None
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
    scrape = parse_scrape(text, model)
    return scrape.paired, scrape.paired_recent, parse_guard(text, model)


def _reports(
    obs: StreamObservation, model: str, servers: list[StreamServer]
) -> list[tuple[str, ServerUpdateState | None]]:
    """Each connected server's report for the model (None when it has not reported yet)."""
    by_name = {a.metadata.name: a for a, _ in obs.assignments}
    out: list[tuple[str, ServerUpdateState | None]] = []
    for s in servers:
        if not s.address or not s.ready:
            continue
        a = by_name.get(s.name)
        found = None
        if a is not None and a.status is not None:
            found = next((u for u in a.status.updates if u.model == model), None)
        out.append((s.name, found))
    return out


class StateManager:
    """One stream's model-state manager (see the module docstring)."""

    def __init__(self, key: tuple[str, str], kube: UpdateKube) -> None:
        self.key = key
        self.kube = kube
        self.m: Manager | None = None
        self._window_at = time.monotonic()
        self._window_base: dict[str, Paired] = {}
        self._recent_base: dict[str, Paired] = {}
        self._guard_base: dict[str, GuardCounts] = {}
        self._last_status: dict[str, Any] | None = None
        self.changed = False
        """The last step changed the health status (the stream's condition and epoch follow at
        once, not at the next telemetry write)."""

    @property
    def paused(self) -> bool:
        """Updates stopped for a person (action Pause, or corrupted again after a rollback)."""
        return self.m is not None and self.m.state.step == "Paused"

    @property
    def busy(self) -> bool:
        """A rollback is under way: the worker passes again soon."""
        return self.m is not None and self.m.state.step in ("ServingBaseline", "Restoring")

    def condition(self) -> Condition | None:
        """The stream's ``Healthy`` condition (None when the manager is off)."""
        return health_condition(self.m) if self.m is not None else None

    @property
    def epoch(self) -> int:
        return self.m.state.epoch if self.m is not None else 0

    async def step(
        self, stream: UpdateStream, obs: StreamObservation, servers: list[StreamServer]
    ) -> None:
        self.changed = False
        health = stream.spec.health
        if health is None or obs.model is None:
            self.m = None
            return
        model = obs.model
        control = (model.status.updates if model.status else None) or ModelUpdateControl()
        if self.m is None:
            status = stream.status.health if stream.status else None
            recorded = stream.status.epoch if stream.status else 0
            self.m = from_status(
                status,
                max(0, control.epoch - 1)
                if restore_under_way(status, control, recorded)
                else control.epoch,
            )
        m = self.m
        now = time.time()
        reports = _reports(obs, stream.spec.model, servers)
        connected = [s for s in servers if s.address and s.ready]
        sources = list(stream.spec.source.endpoints)
        commands: list[Command] = []
        events: list[Event] = []
        async with aiohttp.ClientSession() as session:
            # A person's requests.
            annotations = stream.metadata.annotations
            request = annotations.get(ROLLBACK_ANNOTATION, "")
            resume = False
            if request and request != m.handled_request and m.state.step == "None":
                m, asked, said = self._person_rollback(m, request, annotations, now)
                commands += asked
                events += said
            resume_at = annotations.get(RESUME_ANNOTATION, "")
            if resume_at and resume_at != m.handled_request and m.state.step == "Paused":
                stamp = parse_stamp(resume_at)
                resume = stamp is not None and stamp >= m.state.since - 1
                m = replace(m, handled_request=resume_at)
            # Cuts and the baseline, outside a rollback.
            if m.state.step == "None":
                m = await self._cut_if_due(
                    session,
                    m,
                    health.snapshot_interval,
                    connected,
                    sources,
                    model=stream.spec.model,
                )
                baseline = choose_baseline(
                    m.cuts,
                    m.state.baseline,
                    m.state.phase,
                    now,
                    parse_duration(health.baseline.age),
                )
                if baseline != m.state.baseline:
                    m = replace(m, state=replace(m.state, baseline=baseline))
                m = self._choose_recent(m, recent_age(health), now)
            # A window of paired differences.
            window = recent = None
            guard: GuardCounts | None = None
            if m.state.step == "None" and not commands:
                got = await self._window_if_due(session, health.detector.window, connected, model)
                if got is not None:
                    window, recent, guard = got
                    if health.recent is None:
                        recent = None
                    if health.guard is None:
                        guard = None
            decision: Decision = decide(
                detector_spec(health),
                m.state,
                observe_servers(
                    reports, control, window=window, recent=recent, resume=resume, guard=guard
                ),
                now,
            )
            m = self._stamp(m, decision, reports, now)
            if window is not None:
                m = replace(
                    m,
                    last_window=window_status(
                        window, decision.verdict, datetime.now(UTC), recent=recent
                    ),
                )
            commands += decision.commands
            events += decision.events
            new_control = apply_commands(control, commands)
            if m.state.step == "None" and new_control.view == "Live":
                new_control = new_control.evolve(
                    baseline_cut=m.state.baseline, recent_cut=m.state.recent
                )
            restore = next((c for c in commands if c.kind == "Restore"), None)
            if restore is not None:
                if restore.cut is not None:
                    m = restored(m, restore.cut)
                ok = await asyncio.gather(
                    *(
                        _post(
                            session,
                            url.rstrip("/") + RESTORE_PATH,
                            {
                                "cut": restore.cut,
                                "epoch": restore.epoch,
                                "model": stream.spec.model,
                            },
                        )
                        for url in sources
                    )
                )
                m = replace(m, publisher_restored=all(ok))
                if not all(ok):
                    events.append(
                        Event(
                            "PublisherNotRestored",
                            f"A publisher did not restore cut {restore.cut} at epoch "
                            f"{restore.epoch}; servers refuse its older-epoch rows above the cut "
                            "until it publishes at the new epoch",
                            warning=True,
                        )
                    )
        self.m = m
        namespace, name = self.key
        if new_control != control or (model.status is None or model.status.updates is None):
            await asyncio.to_thread(
                self.kube.patch_model_control, namespace, stream.spec.model, new_control
            )
        for event in events:
            log.info("UpdateStream %s/%s: %s: %s", namespace, name, event.reason, event.message)
            await asyncio.to_thread(
                self.kube.event, stream, event.reason, event.message, event.warning
            )
        # Not exclude_none: a merge patch keeps keys it does not name, so a new rollback record
        # must say null for the steps it has not reached (or the last rollback's times stay).
        body = to_status(m).model_dump(by_alias=True, mode="json")
        self.changed = body != self._last_status
        if self.changed:
            await asyncio.to_thread(self.kube.patch_status, namespace, name, {"health": body})
            self._last_status = body

    def _person_rollback(
        self, m: Manager, request: str, annotations: dict[str, str], now: float
    ) -> tuple[Manager, list[Command], list[Event]]:
        wanted = annotations.get(ROLLBACK_CUT_ANNOTATION, "")
        cut = int(wanted) if wanted.isdigit() else m.state.baseline
        held = {c for c, _ in m.cuts}
        if cut is None or (wanted and cut not in held):
            text = (
                f"Rollback requested but cut {wanted} is not retained (retained: "
                f"{sorted(held) or 'none'})"
                if wanted
                else "Rollback requested but there is no baseline cut yet"
            )
            return replace(m, handled_request=request), [], [Event("RollbackRefused", text, True)]
        at = parse_stamp(request)  # the person's time: switch and restore count from it
        m, command = person_rollback(m, cut, min(at, now) if at is not None else now, request)
        return (
            m,
            [command],
            [Event("RollbackRequested", f"A person rolled the state back to cut {cut}")],
        )

    async def _cut_if_due(
        self,
        session: aiohttp.ClientSession,
        m: Manager,
        interval: str,
        connected: list[StreamServer],
        sources: list[str],
        *,
        model: str,
    ) -> Manager:
        last = m.cuts[-1] if m.cuts else None
        now = time.time()
        if last is not None and now - last[1] < parse_duration(interval):
            return m
        cut_id = next_cut(m)
        if not connected:
            return m
        # The publishers first: their vectors name the cut, so a server a few rows behind still
        # counts the rows published before the cut as part of it. The cut is of this stream's
        # model only: another stream on the same servers keeps its own cuts and state.
        ask = {"cut": cut_id, "model": model}
        answers = await asyncio.gather(
            *(_call(session, url.rstrip("/") + CUT_PATH, ask) for url in sources)
        )
        body: dict[str, Any] = dict(ask)
        announced = [v for a in answers if a is not None for v in a.get("vectors") or []]
        if announced:
            body["vectors"] = announced
        ok = await asyncio.gather(
            *(_post(session, s.address.rstrip("/") + CUT_PATH, body) for s in connected)
        )
        if not any(ok):
            return m
        keep = [c for c in m.cuts if m.state.baseline is None or c[0] >= m.state.baseline]
        cuts = (*keep, (cut_id, now))[-MAX_CUT_RECORDS:]
        return replace(m, cuts=tuple(cuts), last_cut=cut_id)

    @staticmethod
    def _choose_recent(m: Manager, age: float | None, now: float) -> Manager:
        """The recent view's cut: like the baseline (newest cut at least ``age`` old, advanced
        only while Healthy), never older than the baseline; None without a recent view."""
        s = m.state
        if age is None:
            recent = None
        else:
            recent = choose_baseline(m.cuts, s.recent, s.phase, now, age)
            if recent is not None and s.baseline is not None and recent < s.baseline:
                recent = s.baseline
        if recent == s.recent:
            return m
        return replace(m, state=replace(s, recent=recent))

    async def _window_if_due(
        self,
        session: aiohttp.ClientSession,
        length: str,
        connected: list[StreamServer],
        model: Model,
    ) -> tuple[Window, Window, GuardCounts | None] | None:
        """The window since the last one, against the baseline and against the recent view, and
        what the parameter guard flagged in it (None: no server guards the model)."""
        now = time.monotonic()
        if now - self._window_at < parse_duration(length):
            return None
        name = model.metadata.name
        results = await asyncio.gather(*(_paired(session, s.address, name) for s in connected))
        current = {s.name: r[0] for s, r in zip(connected, results, strict=True) if r is not None}
        current_recent = {
            s.name: r[1] for s, r in zip(connected, results, strict=True) if r is not None
        }
        current_guard = {
            s.name: r[2]
            for s, r in zip(connected, results, strict=True)
            if r is not None and r[2] is not None
        }
        first = not self._window_base
        window, *_ = paired_window(current, self._window_base)
        recent, *_ = paired_window(current_recent, self._recent_base)
        guard = guard_window(current_guard, self._guard_base)
        self._window_base = {**self._window_base, **current}
        self._recent_base = {**self._recent_base, **current_recent}
        self._guard_base = {**self._guard_base, **current_guard}
        self._window_at = now
        # The first read only sets where windows start.
        return None if first else (window, recent, guard)

    def _stamp(
        self,
        m: Manager,
        decision: Decision,
        reports: list[tuple[str, ServerUpdateState | None]],
        now: float,
    ) -> Manager:
        """The new state, with the rollback's step times as the servers report them (when the
        last server switched or restored), not when this pass noticed."""
        before, after = m.state, decision.state
        rb = after.last_rollback
        if rb is not None and before.step == "ServingBaseline" and after.step == "Restoring":
            switched = latest(reports, "switched_at")
            rb = replace(rb, switched_at=min(now, switched) if switched else now)
        if rb is not None and before.step == "Restoring" and after.step == "None":
            restored = latest(reports, "restored_at")
            rb = replace(rb, restored_at=min(now, restored) if restored else now, resumed_at=now)
        if before.step == "None" and after.step != "None":  # the detector decided (a person's
            m = replace(m, trigger="Detector", publisher_restored=None)  # starts at a step)
        if before.step != "None" and after.step == "None":
            self._window_base = {}  # windows start afresh after a rollback
            self._recent_base = {}
            self._guard_base = {}
            self._window_at = time.monotonic()
        return replace(m, state=replace(after, last_rollback=rb))
