"""Model-state manager benchmark: are harmful updates caught, quickly, without false alarms?

    python -m bench.updates_health --quick --json /tmp/h.json       # synthetic, 1 seed, 6 + 6
    python -m bench.updates_health --json /tmp/h.json               # synthetic + MovieLens, 3 seeds

One in-process run per (workload, seed): a trainer (online logistic MF, ``ekko.updates.scoring``)
writes its changed rows into a replica :class:`~ekko.updates.store.Store` after every mini-batch,
through a :class:`~ekko.updates.snapshots.CutLog` that takes a cut every ``cut_every`` events. Every
labelled request is scored by the live tables (served) and by the baseline view (the newest cut
at least ``age`` old, advanced only while Healthy; shadow-scored on a ``shadow`` fraction); the
paired logloss differences of each ``window`` feed :func:`ekko.updates.health.decide`, and its
commands are carried out: serve the baseline view, restore the tables (and the trainer) to the
cut at the next epoch, serve live again.

After a warm-up, the run alternates *episodes* of ``episode`` events in a seeded random order:
``harmful`` episodes start with one injected harmful update, rotating through

- ``flip``: a biased batch — the last ``flip_events`` events arrive again with flipped labels and
  are trained on at once;
- ``explode``: exploding gradients — an ``explode_share`` of the recent items, drawn from the most
  popular, is scaled ×``explode_scale`` and published;
- ``zero``: a feature-logging bug — the rows (embedding and bias) of the ``zero_share`` most popular
  recent items are published as zeros;

and ``clean`` episodes inject nothing. Each episode is preceded by ``settle`` events (the model and
the baseline move on; an alarm there counts as a false alarm too). Reported per workload: caught /
harmful, false alarms / clean, time from the harmful update to the Corrupted decision (events,
and seconds at ``rate`` labelled events per second), served AUC before, during (injection →
decision) and after the restore, the undo log's peak bytes against the model's, and the wall time
of a restore. Traffic-switch and restore latencies across servers belong to the processes/cluster
run; here the switch is immediate.

A benchmark measures and prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from bench.updates_data import Stream, movielens_100k, synthetic_stream
from ekko.updates.health import (
    DetectorSpec,
    GuardCounts,
    GuardSpec,
    HealthState,
    Observation,
    ParamGuard,
    Window,
    choose_baseline,
    decide,
)
from ekko.updates.scoring import DENSE, ITEM, USER, LogisticMF, auc, logloss, score_rows
from ekko.updates.snapshots import CutLog
from ekko.updates.store import Store, TableSpec

Harm = Literal["flip", "explode", "zero"]
HARMS: tuple[Harm, ...] = ("flip", "explode", "zero")


@dataclass(frozen=True)
class Config:
    dim: int = 16
    lr: float = 0.05
    batch: int = 20
    """Events per trainer mini-batch (one write to the replica each)."""
    rate: float = 200.0
    """Labelled events per second (converts event counts to seconds)."""
    window: int = 200
    cut_every: int = 200
    age: int = 1000
    """Baseline age, events."""
    recent_age: int | None = 200
    """Age of the recent view, events (one window; None: no recent view, the detector judges
    only the baseline comparison)."""
    shadow: float = 1.0
    """Share of labelled requests the baseline shadow-scores."""
    warmup: int = 4000
    settle: int = 1000
    episode: int = 1000
    harmful: int = 20
    clean: int = 20
    flip_events: int = 2000
    explode_scale: float = 50.0
    explode_share: float = 0.05
    zero_share: float = 0.3
    cap_bytes: int = 64 << 20
    clean_burst: bool = False
    """Every clean episode starts with a legitimate large update: the last ``flip_events``
    events trained on at once with their true labels (a trainer catching up after a pause) —
    what a guard on update sizes must not roll back."""
    guard: GuardSpec | None = None
    """The parameter guard's thresholds (None: no guard runs; the detector's ``guard_rows``
    decides whether its counts can make the model Corrupted)."""
    material: float = 0.03
    """An injected update whose harm over the first window (the unprotected twin's logloss minus
    the clean twin's) is at least this many nats counts as *material*; smaller harms are within
    the clean windows' own spread and are reported apart (they are still in the totals)."""
    detector: DetectorSpec = field(
        default_factory=lambda: DetectorSpec(
            min_samples=100,
            uncertain=0.02,
            corrupted=0.03,
            z=1.5,
            confirmations=1,
            hysteresis=0.01,
            recover_windows=2,
            cusum_k=0.01,
            cusum_h=6.0,
            repeat_window=0.0,
            recent_uncertain=0.0015,
            recent_corrupted=0.006,
            recent_hysteresis=0.003,
            recent_sigmas=4.0,
        )
    )

    @property
    def events_needed(self) -> int:
        return self.warmup + (self.harmful + self.clean) * (self.settle + self.episode)


@dataclass
class Episode:
    kind: str
    start: int
    caught: bool = False
    decided_at: int | None = None
    alarms: int = 0
    auc_before: float = float("nan")
    auc_during: float = float("nan")
    auc_after: float = float("nan")
    loss_before: float = float("nan")
    loss_during: float = float("nan")
    harm_nats: float = float("nan")
    """Logloss of the harmed model minus the clean twin's over the first window."""
    auc_clean: float = float("nan")
    auc_unprotected: float = float("nan")
    auc_served: float = float("nan")
    window_means: list[float] = field(default_factory=list)
    """Mean paired loss difference of each window that closed in the episode."""
    recent_means: list[float] = field(default_factory=list)
    """The same against the recent view (empty without one)."""
    guard_flagged: list[list[int]] = field(default_factory=list)
    """Each window of the episode: [non-finite, zeroed, exploded] rows the guard flagged."""
    guard_settle_max: int = 0
    """Most rows the guard flagged (zeroed + exploded) in one window of the settling stretch."""

    @property
    def delay_events(self) -> int | None:
        return None if self.decided_at is None else self.decided_at - self.start


class Run:
    """One workload and seed: trainer, replica, cut log, detector."""

    def __init__(self, stream: Stream, seed: int, cfg: Config) -> None:
        self.s, self.cfg, self.seed = stream, cfg, seed
        self.rng = np.random.default_rng(seed + 1000)
        self.model = LogisticMF(cfg.dim, lr=cfg.lr, seed=seed, capacity=1024)
        self.store = Store(cache_capacity=1 << 20)
        self.store.declare(TableSpec(USER, cfg.dim + 1))
        self.store.declare(TableSpec(ITEM, cfg.dim + 1))
        self.store.declare(TableSpec(DENSE, 1, kind="dense", shape=(1,)))
        self.log = CutLog(cap_bytes=cfg.cap_bytes)
        self.state = HealthState()
        self.guard = ParamGuard(cfg.guard) if cfg.guard is not None else None
        self.guard_counts = GuardCounts()
        self.guard_log: list[tuple[int, int, int, int]] = []
        """Every window: (event, non-finite, zeroed, exploded rows the guard flagged in it)."""
        self.epoch = 0
        self.seq = 0
        self.cut_id = 0
        self.serving_baseline = False
        self.served = np.zeros(len(stream), dtype=np.float64)
        self.diffs: list[float] = []
        self.recent_diffs: list[float] = []
        self.decisions: list[tuple[int, str]] = []  # (event, phase) on every Corrupted decision
        self.restores: list[float] = []
        self.switches: list[float] = []
        """Wall seconds from the window's close (the decision) to the next requests scored by
        the baseline view: the decision, carrying out the command and reading the view, in one
        process (no fan-out to servers: that is the cluster bench's)."""
        self._decided_wall = 0.0
        self.restore_rows: list[int] = []
        self.cuts_taken = 0
        self.windows: list[tuple[int, float, str]] = []
        self.recent_means: list[tuple[int, float]] = []
        self.window_log: list[tuple[int, float, float, int, float, float, int, str]] = []
        self.window_diffs: list[tuple[int, list[float], list[float]]] = []
        """With ``--dump-windows``: every window's raw paired differences (event, baseline, recent)
        for offline study of test statistics."""
        """Every window: (event, baseline mean, sd, n, recent mean, sd, n, phase after)."""
        # Counterfactual twins during a harmful episode: the trainer without the harm, and the
        # harmed trainer never rolled back (what serving would be without protection).
        self.twins: dict[str, LogisticMF] = {}
        self.twin_scores = {
            "clean": np.full(len(stream), np.nan),
            "unprotected": np.full(len(stream), np.nan),
        }

    # --- the data plane ------------------------------------------------------------------------

    def _publish(self, table: str, keys: np.ndarray, values: np.ndarray, now: float) -> None:
        self.seq += 1
        if self.guard is not None and table != DENSE:
            old, found = self.store.get(table, keys)
            counts = self.guard.observe(table, old, found, values)
            self.guard_counts = self.guard_counts.merge(counts)
        self.log.before_write(self.store, table, keys)
        self.store.write(
            table, keys, values, epoch=self.epoch, origin=1, seqs=self.seq, publish_time=now
        )

    def _scores(self, users: np.ndarray, items: np.ndarray, cut: int | None) -> np.ndarray:
        """Scores from the live tables, or from the view at ``cut`` when it is held."""
        if cut is not None and self.log.has(cut):
            view = self.log.view(self.store, cut)
            u, _ = view.get(USER, users)
            v, _ = view.get(ITEM, items)
            d, _ = view.get(DENSE, [0])
        else:
            u, _ = self.store.get(USER, users)
            v, _ = self.store.get(ITEM, items)
            d, _ = self.store.get(DENSE, [0])
        return score_rows(u, v, d)

    # --- harms ---------------------------------------------------------------------------------

    def inject(self, harm: Harm | Literal["burst"], at: int) -> None:
        m, cfg, now = self.model, self.cfg, at / self.cfg.rate
        if harm in ("flip", "burst"):
            # A biased batch: the last ``flip_events`` events arrive again with flipped labels
            # (``burst``: with their true labels, a clean catch-up of the same size).
            lo = max(0, at - cfg.flip_events)
            s = self.s
            labels = s.labels[lo:at].astype(np.float64)
            flipped = 1.0 - labels if harm == "flip" else labels
            _, updates = m.train_batch(s.users[lo:at], s.items[lo:at], flipped)
            for u in updates:
                self._publish(u.table, u.keys, u.values, now)
            return
        # Both hit the most popular items of the last 2,000 events (what a bug hurts most).
        recent = self.s.items[max(0, at - 2000) : at]
        ids, counts = np.unique(recent, return_counts=True)
        by_traffic = ids[np.argsort(-counts, kind="stable")]
        if harm == "explode":
            n = max(1, int(cfg.explode_share * ids.size))
            rows = self.rng.choice(by_traffic[: 4 * n], size=n, replace=False)
            m.tables[ITEM][rows] *= cfg.explode_scale
        else:
            rows = by_traffic[: max(1, int(cfg.zero_share * ids.size))]
            m.tables[ITEM][rows] = 0.0
        self._publish(ITEM, rows, m.tables[ITEM][rows].copy(), now)

    # --- commands ------------------------------------------------------------------------------

    def _restore(self, cut: int, epoch: int, now: float) -> None:
        t0 = time.perf_counter()
        view = self.log.view(self.store, cut)
        # The trainer resumes from the cut too (the publisher restores its own tables).
        for table in (USER, ITEM):
            cap = self.model.tables[table].shape[0]
            vals, found = view.get(table, np.arange(cap))
            self.model.tables[table][:] = vals
            self.model.known[table][:] = found
        self.model.tables[DENSE][0, 0] = view.get(DENSE, [0])[0][0, 0]
        result = self.log.restore(self.store, cut, now=now, epoch=epoch)
        self.epoch = result.epoch
        self.restores.append(time.perf_counter() - t0)
        self.restore_rows.append(sum(result.rows.values()))

    def _carry_out(self, commands: tuple[Any, ...], at: int) -> None:
        for c in commands:
            if c.kind == "ServeBaseline":
                self.serving_baseline = True
                # The switch: the next requests are scored by the baseline view.
                nxt = slice(at, min(len(self.s), at + self.cfg.batch))
                self._scores(self.s.users[nxt], self.s.items[nxt], c.cut)
                self.switches.append(time.perf_counter() - self._decided_wall)
            elif c.kind == "Restore":
                self._restore(c.cut, c.epoch, at / self.cfg.rate)
            elif c.kind == "ServeLive":
                self.serving_baseline = False

    def _step_rollback(self, at: int) -> None:
        """Drive the sequence while it runs: one server, so each step is confirmed at once."""
        now = at / self.cfg.rate
        for _ in range(3):
            if self.state.step not in ("ServingBaseline", "Restoring"):
                return
            obs = Observation(
                servers=1,
                serving_baseline=int(self.serving_baseline),
                server_epochs=(self.epoch,),
            )
            d = decide(self.cfg.detector, self.state, obs, now)
            self.state = d.state
            self._carry_out(d.commands, at)

    # --- the loop ------------------------------------------------------------------------------

    def advance(self, start: int, stop: int) -> None:
        cfg, s = self.cfg, self.s
        for lo in range(start, stop, cfg.batch):
            hi = min(stop, lo + cfg.batch)
            us, its, ys = s.users[lo:hi], s.items[lo:hi], s.labels[lo:hi].astype(np.float64)
            now = lo / cfg.rate
            live = self._scores(us, its, None)
            base = self._scores(us, its, self.state.baseline) if self.state.baseline else None
            self.served[lo:hi] = base if self.serving_baseline and base is not None else live
            if base is not None:
                sample = self.rng.random(hi - lo) < cfg.shadow
                l_live = _losses(live, ys)
                self.diffs.extend((l_live - _losses(base, ys))[sample].tolist())
                if self.state.recent is not None and self.log.has(self.state.recent):
                    recent = self._scores(us, its, self.state.recent)
                    self.recent_diffs.extend((l_live - _losses(recent, ys))[sample].tolist())
            for name, twin in self.twins.items():
                self.twin_scores[name][lo:hi] = twin.score_many(us, its)
                twin.train_batch(us, its, ys)
            _, updates = self.model.train_batch(us, its, ys)
            for u in updates:
                self._publish(u.table, u.keys, u.values, now)
            # Cuts, baseline, windows.
            if hi // cfg.cut_every != lo // cfg.cut_every:
                self.cut_id += 1
                self.log.take(self.store, self.cut_id, now=hi / cfg.rate)
                self.cuts_taken += 1
            cuts = [(c.id, c.taken_at) for c in self.log.cuts()]
            baseline = choose_baseline(
                cuts, self.state.baseline, self.state.phase, hi / cfg.rate, cfg.age / cfg.rate
            )
            if baseline != self.state.baseline:
                self.state = replace(self.state, baseline=baseline)
                for c in self.log.cuts():  # cuts older than the baseline are no longer needed
                    if baseline is not None and c.id < baseline:
                        self.log.drop(c.id)
            if cfg.recent_age is not None:
                recent = choose_baseline(
                    cuts,
                    self.state.recent,
                    self.state.phase,
                    hi / cfg.rate,
                    cfg.recent_age / cfg.rate,
                )
                if recent != self.state.recent:
                    self.state = replace(self.state, recent=recent)
            if hi // cfg.window != lo // cfg.window:
                win = Window.of(self.diffs)
                rwin = Window.of(self.recent_diffs) if cfg.recent_age is not None else None
                if DUMP:
                    self.window_diffs.append((hi, self.diffs, self.recent_diffs))
                self.diffs, self.recent_diffs = [], []
                before = self.state.phase
                gc = self.guard_counts if self.guard is not None else None
                self.guard_counts = GuardCounts()
                if gc is not None:
                    self.guard_log.append((hi, gc.nonfinite, gc.zeroed, gc.exploded))
                obs = Observation(window=win, recent=rwin, guard=gc)
                self._decided_wall = time.perf_counter()
                d = decide(cfg.detector, self.state, obs, hi / cfg.rate)
                self.state = d.state
                self.windows.append((hi, win.mean, d.state.phase))
                if rwin is not None:
                    self.recent_means.append((hi, rwin.mean))
                r_ = rwin or Window(0, float("nan"), float("nan"))
                self.window_log.append(
                    (hi, win.mean, win.sd, win.n, r_.mean, r_.sd, r_.n, d.state.phase)
                )
                if d.state.phase == "Corrupted" and before != "Corrupted":
                    self.decisions.append((hi, d.state.phase))
                self._carry_out(d.commands, hi)
                self._step_rollback(hi)


def _losses(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def _quality(run: Run, lo: int, hi: int) -> tuple[float, float]:
    lo, hi = max(0, lo), min(len(run.s), hi)
    y = run.s.labels[lo:hi]
    p = run.served[lo:hi]
    if hi - lo < 20:
        return float("nan"), float("nan")
    return auc(y, p), logloss(y, p)


DUMP: dict[str, str] = {}
"""``{"windows": directory}``: each run also writes its windows' raw paired differences there
(``--dump-windows``)."""


def _dump(run: Run, name: str) -> None:
    if "windows" not in DUMP or not run.window_diffs:
        return
    ends = np.array([w[0] for w in run.window_diffs], dtype=np.int64)
    base = [np.asarray(w[1], dtype=np.float32) for w in run.window_diffs]
    recent = [np.asarray(w[2], dtype=np.float32) for w in run.window_diffs]
    np.savez_compressed(
        os.path.join(DUMP["windows"], f"{name}.npz"),
        ends=ends,
        base=np.concatenate(base),
        base_n=np.array([b.size for b in base]),
        recent=np.concatenate(recent),
        recent_n=np.array([r.size for r in recent]),
        phases=np.array([w[7] for w in run.window_log]),
    )


def run_one(stream: Stream, seed: int, cfg: Config) -> dict[str, Any]:
    t0 = time.perf_counter()
    run = Run(stream, seed, cfg)
    run.advance(0, cfg.warmup)
    kinds = ["clean"] * cfg.clean + [HARMS[i % len(HARMS)] for i in range(cfg.harmful)]
    order = np.random.default_rng(seed).permutation(len(kinds))
    episodes: list[Episode] = []
    pos = cfg.warmup
    for j in order.tolist():
        kind = kinds[j]
        settle_decisions = len(run.decisions)
        run.advance(pos, pos + cfg.settle)
        pos += cfg.settle
        ep = Episode(kind, pos)
        ep.alarms = len(run.decisions) - settle_decisions  # alarms while settling
        ep.guard_settle_max = max(
            (z + x for at, _, z, x in run.guard_log if pos - cfg.settle < at <= pos), default=0
        )
        if kind == "clean" and cfg.clean_burst:
            run.inject("burst", pos)
        if kind != "clean":
            run.twins["clean"] = copy.deepcopy(run.model)
            run.inject(kind, pos)  # type: ignore[arg-type]
            run.twins["unprotected"] = copy.deepcopy(run.model)
        n0 = len(run.decisions)
        run.advance(pos, pos + cfg.episode)
        new = run.decisions[n0:]
        ep.window_means = [round(m, 4) for at, m, _ in run.windows if pos < at <= pos + cfg.episode]
        ep.recent_means = [
            round(m, 4) for at, m in run.recent_means if pos < at <= pos + cfg.episode
        ]
        ep.guard_flagged = [
            [nf, z, x] for at, nf, z, x in run.guard_log if pos < at <= pos + cfg.episode
        ]
        if kind == "clean":
            ep.alarms += len(new)
        else:
            ep.caught = bool(new)
            ep.decided_at = new[0][0] if new else None
        ep.auc_before, ep.loss_before = _quality(run, pos - cfg.settle, pos)
        end = ep.decided_at if ep.decided_at is not None else pos + cfg.episode
        ep.auc_during, ep.loss_during = _quality(run, pos, end)
        if ep.decided_at is not None:
            ep.auc_after, _ = _quality(run, end, pos + cfg.episode)
        if kind != "clean":
            y = stream.labels[pos : pos + cfg.episode]
            clean_p = run.twin_scores["clean"][pos : pos + cfg.episode]
            harmed_p = run.twin_scores["unprotected"][pos : pos + cfg.episode]
            w = cfg.window
            ep.harm_nats = logloss(y[:w], harmed_p[:w]) - logloss(y[:w], clean_p[:w])
            ep.auc_clean = auc(y, clean_p)
            ep.auc_unprotected = auc(y, harmed_p)
            ep.auc_served = auc(y, run.served[pos : pos + cfg.episode])
            run.twins.clear()
        pos += cfg.episode
        episodes.append(ep)
    harmful = [e for e in episodes if e.kind != "clean"]
    clean = [e for e in episodes if e.kind == "clean"]
    material = [e for e in harmful if e.harm_nats >= cfg.material]
    buckets: dict[str, list[int]] = {name: [0, 0] for name, _ in HARM_BUCKETS}
    for e in harmful:
        b = _bucket(e.harm_nats)
        buckets[b][0] += e.caught
        buckets[b][1] += 1
    delays = [e.delay_events for e in harmful if e.delay_events is not None]
    model_bytes = sum(4 * run.store.n_rows(t) * run.store.spec(t).dim for t in (USER, ITEM, DENSE))
    per_kind = {
        k: {
            "caught": sum(e.caught for e in harmful if e.kind == k),
            "runs": sum(e.kind == k for e in harmful),
            "delay_events_median": _median(
                [e.delay_events for e in harmful if e.kind == k and e.delay_events is not None]
            ),
            "harm_nats_median": _median([e.harm_nats for e in harmful if e.kind == k]),
            "auc_loss_unprotected_median": _median(
                [e.auc_clean - e.auc_unprotected for e in harmful if e.kind == k]
            ),
            "auc_loss_served_median": _median(
                [e.auc_clean - e.auc_served for e in harmful if e.kind == k]
            ),
        }
        for k in HARMS
    }
    _dump(run, f"{stream.name}-{seed}")
    return {
        "workload": stream.name,
        "seed": seed,
        "events": pos,
        "harmful_caught": sum(e.caught for e in harmful),
        "harmful_runs": len(harmful),
        "material_caught": sum(e.caught for e in material),
        "material_runs": len(material),
        "harm_buckets": buckets,
        "false_alarms": sum(e.alarms > 0 for e in episodes) - 0,
        "false_alarm_episodes_clean": sum(e.alarms > 0 for e in clean),
        "clean_runs": len(clean),
        "alarms_while_settling": sum(e.alarms for e in harmful),
        "detect_events": delays,
        "detect_events_p50": _median(delays),
        "detect_events_max": max(delays, default=None),
        "auc_before_median": _median([e.auc_before for e in harmful]),
        "auc_during_median": _median([e.auc_during for e in harmful]),
        "auc_after_median": _median([e.auc_after for e in harmful]),
        "episodes": [asdict(e) for e in episodes],
        "loss_increase_during_median": _median([e.loss_during - e.loss_before for e in harmful]),
        "per_kind": per_kind,
        "guard": _guard_summary(episodes) if run.guard is not None else None,
        "undo_peak_bytes": run.log.peak_bytes,
        "undo_drops": run.log.drops,
        "model_bytes": model_bytes,
        "restore_wall_s_max": max(run.restores, default=0.0),
        "restore_wall_s": run.restores,
        "switch_wall_s": run.switches,
        "windows": [
            [
                w[0],
                *(round(x, 5) if np.isfinite(x) else None for x in w[1:3]),
                w[3],
                *(round(x, 5) if np.isfinite(x) else None for x in w[4:6]),
                w[6],
                w[7],
            ]
            for w in run.window_log
        ],
        "restore_rows_median": _median([float(r) for r in run.restore_rows]),
        "wall_s": time.perf_counter() - t0,
    }


def _guard_summary(episodes: list[Episode]) -> dict[str, Any]:
    """What the guard flagged: the most rows (zeroed + exploded) in one window of any clean
    stretch (clean episodes and every settling stretch: the bar ``guard_rows`` must clear), and
    per harm kind the rows flagged in the first window after the injection."""
    clean = [e for e in episodes if e.kind == "clean"]
    clean_max = max(
        [sum(f[1:]) for e in clean for f in e.guard_flagged]
        + [e.guard_settle_max for e in episodes],
        default=0,
    )
    clean_nonfinite = sum(f[0] for e in clean for f in e.guard_flagged)
    first: dict[str, list[list[int]]] = {k: [] for k in HARMS}
    for e in episodes:
        if e.kind != "clean" and e.guard_flagged:
            first[e.kind].append(e.guard_flagged[0])
    return {
        "clean_window_flagged_max": clean_max,
        "clean_nonfinite": clean_nonfinite,
        "first_window_by_kind": first,
    }


HARM_BUCKETS: tuple[tuple[str, float], ...] = (
    ("<0.01", 0.01),
    ("0.01-0.03", 0.03),
    ("0.03-0.1", 0.1),
    (">=0.1", float("inf")),
)
"""Harm in the first window (nats, unprotected − clean twin): upper bounds of the report's
buckets."""


def _bucket(harm: float) -> str:
    for name, upper in HARM_BUCKETS:
        if harm < upper:
            return name
    return HARM_BUCKETS[-1][0]  # NaN (no window closed): the last bucket, visibly


def _p99(xs: list[float]) -> float | None:
    return float(np.percentile(xs, 99)) if xs else None


def _median(xs: list[float] | list[int]) -> float | None:
    vals = [float(x) for x in xs if x is not None and np.isfinite(x)]
    return statistics.median(vals) if vals else None


def summarize(runs: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    delays = [d for r in runs for d in r["detect_events"]]
    out: dict[str, Any] = {
        "mode": "sim",
        "seeds": sorted({r["seed"] for r in runs}),
        "workload": sorted({r["workload"].split("-s")[0] for r in runs}),
        "harmful_caught": sum(r["harmful_caught"] for r in runs),
        "harmful_runs": sum(r["harmful_runs"] for r in runs),
        "material_caught": sum(r["material_caught"] for r in runs),
        "material_runs": sum(r["material_runs"] for r in runs),
        "harm_buckets": {
            name: [sum(r["harm_buckets"][name][i] for r in runs) for i in (0, 1)]
            for name, _ in HARM_BUCKETS
        },
        "false_rollbacks": sum(r["false_alarm_episodes_clean"] for r in runs),
        "clean_runs": sum(r["clean_runs"] for r in runs),
        "alarms_while_settling": sum(r["alarms_while_settling"] for r in runs),
        "detect_p50_events": _median(delays),
        "detect_max_events": max(delays, default=None),
        "detect_p50_s": None if not delays else _median(delays) / cfg.rate,  # type: ignore[operator]
        "detect_max_s": None if not delays else max(delays) / cfg.rate,
        "traffic_switch_p99_s": _p99([x for r in runs for x in r["switch_wall_s"]]),
        "restore_p99_s": _p99([x for r in runs for x in r["restore_wall_s"]]),
        "guard_clean_window_flagged_max": max(
            (r["guard"]["clean_window_flagged_max"] for r in runs if r["guard"]), default=None
        ),
        "undo_peak_bytes_max": max(r["undo_peak_bytes"] for r in runs),
        "model_bytes_max": max(r["model_bytes"] for r in runs),
        "undo_drops": sum(r["undo_drops"] for r in runs),
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("detector", "guard")},
        "guard": None if cfg.guard is None else asdict(cfg.guard),
        "detector": asdict(cfg.detector),
        "runs": runs,
    }
    return out


def _fmt(x: Any, spec: str = ".3f") -> str:
    return "—" if x is None else format(x, spec)


def report(out: dict[str, Any]) -> str:
    cfg = out["config"]
    lines = [
        f"workloads {out['workload']} seeds {out['seeds']}; window {cfg['window']} events, "
        f"rate {cfg['rate']:.0f}/s, cut every {cfg['cut_every']}, baseline age {cfg['age']}",
        f"caught {out['harmful_caught']}/{out['harmful_runs']}, "
        f"false rollbacks {out['false_rollbacks']}/{out['clean_runs']} "
        f"(alarms while settling after an incident: {out['alarms_while_settling']})",
        f"material harms (>= {cfg['material']} nats in the first window) caught "
        f"{out['material_caught']}/{out['material_runs']}; caught by harm: "
        + ", ".join(f"{k} {c}/{n}" for k, (c, n) in out["harm_buckets"].items()),
        f"detection p50 {_fmt(out['detect_p50_events'], '.0f')} events = "
        f"{_fmt(out['detect_p50_s'], '.2f')} s, max {_fmt(out['detect_max_events'], '.0f')} events"
        f" = {_fmt(out['detect_max_s'], '.2f')} s; traffic switch p99 {_fmt(out['traffic_switch_p99_s'], '.4f')} s, restore p99 {_fmt(out['restore_p99_s'], '.4f')} s (wall, in process)",
        f"undo log peak {out['undo_peak_bytes_max'] / 1e6:.2f} MB vs model "
        f"{out['model_bytes_max'] / 1e6:.2f} MB, cuts dropped at the cap {out['undo_drops']}",
    ]
    for r in out["runs"]:
        kinds = ", ".join(
            f"{k} {v['caught']}/{v['runs']} (p50 {_fmt(v['delay_events_median'], '.0f')} ev, "
            f"harm {_fmt(v['harm_nats_median'])} nats, AUC loss unprotected/served "
            f"{_fmt(v['auc_loss_unprotected_median'])}/{_fmt(v['auc_loss_served_median'])})"
            for k, v in r["per_kind"].items()
        )
        lines.append(
            f"  {r['workload']} seed {r['seed']}: caught {r['harmful_caught']}/{r['harmful_runs']}"
            f", false {r['false_alarm_episodes_clean']}/{r['clean_runs']}; AUC before/during/after"
            f" {_fmt(r['auc_before_median'])}/{_fmt(r['auc_during_median'])}/"
            f"{_fmt(r['auc_after_median'])}; {kinds}; {r['wall_s']:.1f} s"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="synthetic stream, 1 seed, 6 harmful + 6 clean"
    )
    ap.add_argument("--workload", choices=("synthetic", "ml-100k", "both"), default=None)
    ap.add_argument("--seeds", default=None, help="comma-separated seeds")
    ap.add_argument("--harmful", type=int, default=None)
    ap.add_argument("--clean", type=int, default=None)
    ap.add_argument("--rate", type=float, default=200.0, help="labelled events per second")
    ap.add_argument("--window", type=int, default=200, help="detector window, events")
    ap.add_argument("--confirmations", type=int, default=1)
    ap.add_argument("--uncertain", type=float, default=0.02, help="Suspect window mean, nats")
    ap.add_argument("--corrupted", type=float, default=0.03, help="Bad window mean, nats")
    ap.add_argument("--age", type=int, default=1000, help="baseline age, events")
    ap.add_argument("--cusum-k", type=float, default=0.01, help="CUSUM slack, nats per sample")
    ap.add_argument("--cusum-h", type=float, default=6.0, help="CUSUM alarm level, nats")
    ap.add_argument("--cut-every", type=int, default=200, help="events between cuts")
    ap.add_argument(
        "--recent-age", type=int, default=200, help="recent view age, events (0: no recent view)"
    )
    ap.add_argument("--recent-uncertain", type=float, default=0.0015)
    ap.add_argument("--recent-hysteresis", type=float, default=0.003)
    ap.add_argument("--recent-sigmas", type=float, default=4.0, help="learnt-scale multiplier")
    ap.add_argument(
        "--recent-corrupted",
        type=float,
        default=0.006,
        help="Bad threshold against the recent view (negative: recorded, not judged)",
    )
    ap.add_argument(
        "--recent-learn",
        choices=("NotBad", "Calm", "Clipped"),
        default="NotBad",
        help="which recent windows feed the learnt scale (see DetectorSpec.recent_learn)",
    )
    ap.add_argument(
        "--recent-pool-shrink",
        type=int,
        choices=(0, 1),
        default=0,
        help="1: the pooled recent test's lift shrinks by the square root of the windows pooled",
    )
    ap.add_argument("--z", type=float, default=1.5, help="standard errors a Bad mean must clear")
    ap.add_argument(
        "--guard-rows",
        type=int,
        default=-1,
        help="parameter guard: rows flagged in a window that make the model Corrupted"
        " (0: the guard runs and its counts are recorded, never judged; -1: no guard)",
    )
    ap.add_argument(
        "--clean-burst",
        action="store_true",
        help="every clean episode starts with a clean catch-up burst (flip_events events"
        " trained at once with true labels): a legitimate large update",
    )
    ap.add_argument("--guard-norm-ratio", type=float, default=GuardSpec.norm_ratio)
    ap.add_argument(
        "--guard-step-ratio",
        type=float,
        default=None,
        help="flag updates above this × the table's mean update (absent or inf: no such test)",
    )
    ap.add_argument("--guard-zero-ratio", type=float, default=GuardSpec.zero_ratio)
    ap.add_argument("--json", default=None, help="write every figure to this file")
    ap.add_argument(
        "--dump-windows", default=None, help="directory for each run's raw window differences"
    )
    a = ap.parse_args(argv)
    if a.dump_windows:
        DUMP["windows"] = a.dump_windows
    workload = a.workload or ("synthetic" if a.quick else "both")
    seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else ([0] if a.quick else [0, 1, 2])
    per_kind = 6 if a.quick else 20
    cfg = Config(
        rate=a.rate,
        window=a.window,
        age=a.age,
        cut_every=a.cut_every,
        recent_age=a.recent_age or None,
        harmful=a.harmful if a.harmful is not None else per_kind,
        clean=a.clean if a.clean is not None else per_kind,
        clean_burst=a.clean_burst,
        guard=None
        if a.guard_rows < 0
        else GuardSpec(
            norm_ratio=a.guard_norm_ratio,
            step_ratio=None
            if a.guard_step_ratio is None or a.guard_step_ratio == float("inf")
            else a.guard_step_ratio,
            zero_ratio=a.guard_zero_ratio,
        ),
    )
    cfg = replace(
        cfg,
        detector=replace(
            cfg.detector,
            confirmations=a.confirmations,
            uncertain=a.uncertain,
            corrupted=a.corrupted,
            cusum_k=a.cusum_k,
            cusum_h=a.cusum_h,
            recent_uncertain=a.recent_uncertain,
            recent_corrupted=a.recent_corrupted if a.recent_corrupted >= 0 else None,
            recent_sigmas=a.recent_sigmas,
            recent_hysteresis=a.recent_hysteresis,
            recent_learn=a.recent_learn,
            recent_pool_shrink=bool(a.recent_pool_shrink),
            z=a.z,
            guard_rows=a.guard_rows if a.guard_rows > 0 else None,
        ),
    )
    runs = []
    for w in ("synthetic", "ml-100k") if workload == "both" else (workload,):
        for seed in seeds:
            if w == "synthetic":
                stream = synthetic_stream(cfg.events_needed, seed=seed)
            else:
                stream = movielens_100k()
                if len(stream) < cfg.events_needed:
                    scale = len(stream) / cfg.events_needed
                    print(f"ml-100k has {len(stream)} events; episodes scaled by {scale:.2f}")
            r = run_one(stream, seed, _fit(cfg, len(stream)))
            runs.append(r)
            print(
                f"{r['workload']} seed {seed}: caught {r['harmful_caught']}/{r['harmful_runs']},"
                f" false {r['false_alarm_episodes_clean']}/{r['clean_runs']} ({r['wall_s']:.1f} s)",
                file=sys.stderr,
            )
    out = summarize(runs, cfg)
    print(report(out))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


BENCH_KEYS: tuple[str, ...] = (
    "harmful_caught",
    "harmful_runs",
    "false_rollbacks",
    "clean_runs",
    "detect_p50_s",
    "traffic_switch_p99_s",
    "restore_p99_s",
)
"""The model-state manager's keys in ``bench/updates.py``'s ``--json`` (issue 12)."""


def updates_bench_keys(quick: bool, workload: str = "synthetic", seed: int = 0) -> dict[str, Any]:
    """The model-state manager's figures for ``python -m bench.updates --mode sim``: one
    in-process run (seed ``seed``) of this bench's default setting, 5 harmful + 5 clean episodes
    on the synthetic stream with ``quick`` (what CI runs), else 20 + 20 on ``workload``.

    ``detect_p50_s`` is the median time from the injected update to the Corrupted decision (events
    ÷ ``rate``); ``traffic_switch_p99_s`` the wall time from a window's close to the next requests
    scored by the baseline view (the decision, the command and the view read, in one process);
    ``restore_p99_s`` the wall time of restoring the replica's tables and the trainer to the cut.
    Neither includes a fan-out to servers: ``bench/state_rollback.py`` measures that on the
    cluster. Everything else the run measured is under ``health``."""
    n = 5 if quick else 20
    cfg = Config(harmful=n, clean=n)
    name = "synthetic" if quick else workload
    stream = synthetic_stream(cfg.events_needed, seed=seed) if name == "synthetic" else None
    if stream is None:
        stream = movielens_100k()
    r = run_one(stream, seed, _fit(cfg, len(stream)))
    out = summarize([r], cfg)
    detail = {
        k: out[k] for k in ("workload", "seeds", "material_caught", "material_runs", "harm_buckets")
    }
    detail |= {
        "per_kind": r["per_kind"],
        "detect_max_s": out["detect_max_s"],
        "detector": out["detector"],
        "recent_age_events": cfg.recent_age,
        "wall_s": r["wall_s"],
    }
    return {**{k: out[k] for k in BENCH_KEYS}, "health": detail}


def health_line(r: dict[str, Any]) -> str:
    """One report line of :func:`updates_bench_keys`' figures."""
    return (
        f"7. harmful updates (in process): caught {r['harmful_caught']}/{r['harmful_runs']}, "
        f"false rollbacks {r['false_rollbacks']}/{r['clean_runs']}, detection p50 "
        f"{_fmt(r['detect_p50_s'], '.2f')} s, switch p99 {_fmt(r['traffic_switch_p99_s'], '.4f')} s"
        f", restore p99 {_fmt(r['restore_p99_s'], '.4f')} s"
    )


def _fit(cfg: Config, n: int) -> Config:
    """Shrink settle/episode lengths so the run fits a stream of ``n`` events."""
    if cfg.events_needed <= n:
        return cfg
    per = (n - cfg.warmup) // (cfg.harmful + cfg.clean)
    settle = max(cfg.window * 2, per // 2)
    return replace(cfg, settle=settle, episode=per - settle)


if __name__ == "__main__":
    raise SystemExit(main())
