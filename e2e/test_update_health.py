"""The model-state manager on a real API server with real agents and a real operator process.

A publisher (in this process, so the test decides when the harmful update happens) streams a
model's rows; agents with the embedding engine serve labelled /score traffic, which they also
shadow-score on the baseline view. Then:

1. A clean stream: windows are judged, cuts are taken, a baseline is chosen; nothing rolls back.
2. A harmful update (every item row flipped and magnified): Uncertain → Corrupted → every server
   serves the baseline; the operator is killed right after the decision and started again; the
   state is restored at epoch 1 on every server and on the publisher; live serving resumes with
   the clean rows, and new rows (of the new epoch) flow again.
3. A person's rollback with ``kubectl ekko updates rollback --wait``: same sequence, trigger
   Person, epoch 2.

And with the recent view (``spec.health.recent``): a model that just got much better (the baseline
is the poor state from before) takes a subtle harm. Against the baseline the harmed model is still
better (the freshness gain hides the harm: the baseline comparison alone judges it Good); against
the recent view, a cut a few seconds old, it is worse: Corrupted, rolled back to the baseline. The
clean stretch before it (the improvement itself included) raises no alarm.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import numpy as np
import pytest

from e2e.agents import AgentFleet
from e2e.conftest import REPO, Cluster
from e2e.objects import Api, converged, model_manifest, pool_manifest
from e2e.operator_harness import OperatorProcess
from e2e.statehelpers import (
    DIM,
    ITEMS,
    LABELS,
    PAIRS,
    USERS,
    LivePublisher,
    Traffic,
    clean_scores,
    holders,
    rows,
    score,
    start_publisher,
    stream_manifest,
    urls_of,
)
from e2e.waiting import wait_for
from ekko.updates.scoring import pair_logloss, score_rows

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

log = logging.getLogger("e2e.update_health")


@pytest.fixture
def publisher() -> Iterator[LivePublisher]:
    live, close = start_publisher()
    try:
        yield live
    finally:
        close()


HEALTH = {
    "action": "Rollback",
    "snapshotInterval": "5s",
    "baseline": {"age": "15s", "trafficPercent": 0.5, "shadowPercent": 100},
    "detector": {
        "window": "2s",
        "minSamples": 40,
        "uncertain": 0.05,
        "corrupted": 0.2,
        "confirmations": 2,
    },
}


def all_score(fleet: AgentFleet, names: list[str], want: np.ndarray, view: str | None) -> bool:
    for name in names:
        body = score(fleet.url(name), labelled=False, view=view)
        if body is None or "scores" not in body or body["coldUsers"] or body["coldItems"]:
            return False
        if not np.allclose(body["scores"], want, atol=1e-5):
            return False
    return True


def health(api: Api, stream: str = "ranker") -> dict[str, Any]:
    return (api.get("updatestreams", stream).get("status") or {}).get("health") or {}


def control(api: Api) -> dict[str, Any]:
    return (api.get("models", "ranker").get("status") or {}).get("updates") or {}


def resumed(api: Api, operator: OperatorProcess) -> dict[str, Any]:
    """Wait until the stream's last rollback has resumed live serving; its health status."""
    done: dict[str, Any] = wait_for(
        lambda: h if ((h := health(api)).get("lastRollback") or {}).get("resumedAt") else None,
        "the state restored and live again",
        timeout=90,
        describe=lambda: (health(api), control(api), operator.logs()[-3000:]),
    )
    return done


def judged_good(api: Api, operator: OperatorProcess, stream: str = "ranker") -> None:
    """Wait until the stream has a baseline cut and its last window was judged Good."""
    wait_for(
        lambda: (
            health(api, stream).get("baselineCut") is not None
            and (health(api, stream).get("lastWindow") or {}).get("verdict") == "Good"
        ),
        f"a baseline cut and a Good window of {stream}",
        timeout=90,
        describe=lambda: (health(api, stream), control(api), operator.logs()[-3000:]),
    )


def stream_events(api: Api) -> list[str]:
    return [
        e.reason
        for e in api.core.list_namespaced_event(api.ns).items
        if e.involved_object.kind == "UpdateStream"
    ]


def streaming(
    api: Api,
    fleet: AgentFleet,
    operator: OperatorProcess,
    publisher: LivePublisher,
    health_spec: dict[str, Any],
    expect: np.ndarray,
    what: str,
) -> list[str]:
    """The set-up every test here shares: a pool, the ranker (2 shards x 2 replicas) placed and
    loaded, its UpdateStream with ``health_spec``, and every holder scoring ``expect`` from the
    publisher's rows on its live view. Returns the holders."""
    api.create(pool_manifest(memory="20Gi"))
    api.create(model_manifest("ranker", 2, "8Gi", 2))
    wait_for(
        lambda: converged(api, models=["ranker"]),
        "model placed and loaded",
        timeout=120,
        describe=operator.logs,
    )
    api.create(stream_manifest(publisher.url, health_spec))
    names = holders(api)
    wait_for(
        lambda: all_score(fleet, names, expect, "live"),
        what,
        timeout=90,
        describe=lambda: (health(api), operator.logs()[-2000:]),
    )
    return names


def test_harmful_update_is_caught_and_the_state_rolled_back(
    cluster: Cluster,
    api: Api,
    namespace: str,
    operator: OperatorProcess,
    publisher: LivePublisher,
) -> None:
    clean = clean_scores()
    with AgentFleet(cluster.kubeconfig, namespace, engine="embedding") as fleet:
        names = streaming(
            api,
            fleet,
            operator,
            publisher,
            HEALTH,
            clean,
            "every agent scoring from the publisher's rows",
        )

        with Traffic(urls_of(fleet, names)):
            # 1. Clean: cuts, a baseline 15 s old, windows judged Good, no rollback.
            judged_good(api, operator)
            assert control(api).get("baselineCut") == health(api)["baselineCut"]
            wait_for(  # the agents apply the control block from their watch: not instantly
                lambda: all_score(fleet, names, clean, "baseline"),
                "the baseline view served on every agent, as clean as live",
                timeout=30,
            )
            time.sleep(6)  # a few more clean windows
            h = health(api)
            assert h["phase"] == "Healthy" and "lastRollback" not in h, h
            assert "Corrupted" not in stream_events(api)

            # 2. A harmful update: every item row flipped and magnified.
            items = publisher.call(lambda: publisher.pub.store.get("ranker.item", range(ITEMS))[0])
            harmed_at = time.time()
            publisher.publish("ranker.item", np.arange(ITEMS), -4 * items)
            decided = wait_for(
                lambda: h if (h := health(api)).get("step", "None") != "None" else None,
                "the detector's decision",
                timeout=60,
                interval=0.02,  # the whole rollback can take 0.17 s: do not poll past it
                describe=lambda: (health(api), operator.logs()[-3000:]),
            )
            operator.stop(hard=True)  # right after the decision
            log.info(
                "decision %s; operator killed at step %s", decided["lastRollback"], decided["step"]
            )
            assert decided["phase"] == "Corrupted"
            cut = decided["lastRollback"]["cut"]
            assert cut == decided["baselineCut"]
            # The agents serve the baseline (the control block was written with the decision;
            # the restore may have been ordered too if the operator got that far).
            wait_for(
                lambda: all_score(fleet, names, clean, None),
                "every agent serving the clean baseline with the operator down",
                timeout=30,
            )
            operator.start()
            done = resumed(api, operator)
            rb = done["lastRollback"]
            log.info(
                "harm → decision %.1fs; switch %ss, restore %ss after it; publisher restored %s",
                _stamp(rb["decidedAt"]) - harmed_at,
                rb.get("switchSeconds"),
                rb.get("restoreSeconds"),
                rb.get("publisherRestored"),
            )
            assert (rb["trigger"], rb["cut"], rb["epoch"]) == ("Detector", cut, 1), (
                done,
                operator.logs()[-6000:],
            )
            assert rb["publisherRestored"] is True
            assert control(api)["epoch"] == 1 and control(api)["view"] == "Live"
            assert done["step"] == "None"
            # Live serving is the clean state again, on every server, from the live view.
            wait_for(
                lambda: all_score(fleet, names, clean, "live"),
                "every agent's live rows restored",
                timeout=30,
            )
            for a in api.assignments():
                if a.metadata.name in names:
                    (report,) = [u for u in a.status.updates if u.model == "ranker"]
                    assert report.epoch == 1 and report.view == "Live"
            # New rows of the new epoch flow again (the publisher restored and moved on).
            # (a benign change: the labels follow the clean model, so a large one would be a
            # harmful update too and, this soon after a rollback, pause the stream for a person)
            newer = rows(1, USERS) + np.random.default_rng(9).normal(0, 0.01, (USERS, DIM + 1))
            publisher.publish("ranker.user", np.arange(USERS), newer)
            u, i = zip(*PAIRS, strict=True)
            fresh = score_rows(newer[list(u)], rows(2, ITEMS)[list(i)])
            wait_for(
                lambda: all_score(fleet, names, fresh, "live"),
                "epoch-1 rows reaching every agent",
                timeout=30,
            )
            fresh_at = time.time()
            assert publisher.call(lambda: publisher.pub.epoch_of("ranker")) == 1
            reasons = stream_events(api)
            for reason in ("Corrupted", "ServingBaseline", "Restoring", "Resumed"):
                assert reason in reasons, reasons
            wait_for(
                lambda: (api.get("updatestreams", "ranker").get("status") or {}).get("epoch") == 1,
                "the stream's status at epoch 1",
                timeout=30,
            )

            # 3. A person's rollback through the plugin, with --wait, to a baseline that holds
            # the epoch-1 rows: a small later change is undone, the epoch-1 rows are kept.
            def baseline_after(t: float) -> bool:
                h = health(api)
                taken = {c["id"]: _stamp(c["takenAt"]) for c in h.get("cuts", [])}
                b = h.get("baselineCut")
                return h.get("phase") == "Healthy" and b in taken and taken[b] > t

            wait_for(
                lambda: baseline_after(fresh_at),
                "a baseline cut taken after the epoch-1 rows arrived",
                timeout=90,
                describe=lambda: health(api),
            )
            nudged = newer + 0.01
            nudged_at = time.time()
            publisher.publish("ranker.user", np.arange(USERS), nudged)
            with_nudge = score_rows(nudged[list(u)], rows(2, ITEMS)[list(i)])
            wait_for(
                lambda: all_score(fleet, names, with_nudge, "live"),
                "a small later change on every agent",
                timeout=30,
            )
            nudged_everywhere_at = time.time()
            started = time.monotonic()
            # --timeout bounds the plugin's waits, not its start: at load 21 on this machine
            # `kubectl ekko version` took 20 s of wall time for 0.6 s of CPU and a refused
            # `updates rollback` 71 s (imports), so the subprocess gets the waits plus a start-up
            # allowance (a 120 s budget once ran out at load 28–48: that was the start, not a hang).
            # While it runs, every cut the stream's status lists is remembered with its time (the
            # restore drops the cuts above the one it goes to, so they are gone afterwards).
            seen_cuts: dict[int, float] = {}

            def remember_cuts() -> None:
                for c in health(api).get("cuts", []):
                    seen_cuts.setdefault(c["id"], _stamp(c["takenAt"]))

            remember_cuts()
            with subprocess.Popen(
                [
                    sys.executable, "-m", "ekko.cli.kubectl_ekko", "updates", "rollback",
                    "ranker", "--wait", "--timeout", "90s", "-n", namespace,
                ],
                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ) as proc:  # fmt: skip
                while proc.poll() is None and time.monotonic() - started < 90 + 210:
                    remember_cuts()
                    time.sleep(0.5)
                try:
                    out, err = proc.communicate(
                        timeout=max(1.0, 90 + 210 - (time.monotonic() - started))
                    )
                except subprocess.TimeoutExpired:
                    proc.kill()
                    raise
            done_plugin = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
            log.info("plugin rollback (%.1fs):\n%s", time.monotonic() - started, done_plugin.stdout)
            assert done_plugin.returncode == 0, done_plugin.stderr
            assert "every server serves cut" in done_plugin.stdout
            assert "restored to cut" in done_plugin.stdout
            h = health(api)
            rb = h["lastRollback"]
            assert (rb["trigger"], rb["epoch"]) == ("Person", 2)
            # The plugin rolls back to the baseline it reads when it runs. Under load its start
            # alone can outlast the baseline's age (15 s), so the baseline may have moved past
            # the nudge by then (seen at load ~25: a 60 s plugin run): the expected state is the
            # one at the cut it chose, judged by when that cut was taken.
            remember_cuts()
            taken = seen_cuts.get(rb["cut"])
            if taken is not None and taken < nudged_at:
                expected, what = [fresh], "the fresh rows (the cut predates the nudge)"
            elif taken is not None and taken > nudged_everywhere_at:
                expected, what = [with_nudge], "the nudged rows (the cut holds the nudge)"
            else:  # taken while the nudge was arriving: either state is the cut's
                expected, what = [fresh, with_nudge], "the fresh or the nudged rows"
            log.info("person's rollback to cut %s (taken %s): expecting %s", rb["cut"], taken, what)
            wait_for(
                lambda: any(all_score(fleet, names, e, "live") for e in expected),
                f"the state at the person's cut: {what}",
                timeout=30,
            )


RECENT_HEALTH = {
    "action": "Rollback",
    "snapshotInterval": "5s",
    "baseline": {"age": "60s", "trafficPercent": 0.5, "shadowPercent": 100},
    "detector": {
        "window": "2s",
        "minSamples": 40,
        "uncertain": 0.05,
        "corrupted": 0.2,
        "confirmations": 2,
    },
    # Three windows old: a harm is judged over at least one whole window before a cut holding it
    # can become the recent view. No learnt lift: the traffic repeats the same 40 labelled pairs,
    # so clean windows have no spread to learn.
    "recent": {"age": "6s", "uncertain": 0.02, "corrupted": 0.04, "hysteresis": 0.01, "sigmas": 0},
}
POOR = 0.1
"""The stream starts with the item rows scaled by this (a weak model the clean rows improve on)."""
FLIPPED = 8
"""The harm: the first item rows negated (8 of 40 pairs; see the loss arithmetic in the test)."""


def pair_scores(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    u, i = zip(*PAIRS, strict=True)
    return score_rows(users[list(u)], items[list(i)])


def mean_loss(scores: np.ndarray) -> float:
    return float(pair_logloss(LABELS.astype(float), scores).mean())


def test_recent_view_catches_a_harm_the_freshness_gain_hides(
    cluster: Cluster,
    api: Api,
    namespace: str,
    operator: OperatorProcess,
    publisher: LivePublisher,
) -> None:
    users, clean_items = rows(1, USERS), rows(2, ITEMS)
    poor_items = POOR * clean_items
    harmed_items = clean_items.copy()
    harmed_items[:FLIPPED] *= -1
    poor, clean, harmed = (pair_scores(users, v) for v in (poor_items, clean_items, harmed_items))
    # The arithmetic the test rests on: harmed is worse than clean by more than the recent
    # view's corrupted threshold, yet better than the poor baseline by more than the baseline's
    # hysteresis band (its comparison alone would call every window Good).
    to_recent, to_baseline = (
        mean_loss(harmed) - mean_loss(clean),
        mean_loss(harmed) - mean_loss(poor),
    )
    assert to_recent > 0.06 and to_baseline < -0.05, (to_recent, to_baseline)
    publisher.publish("ranker.item", np.arange(ITEMS), poor_items)
    with AgentFleet(cluster.kubeconfig, namespace, engine="embedding") as fleet:
        names = streaming(
            api,
            fleet,
            operator,
            publisher,
            RECENT_HEALTH,
            poor,
            "every agent scoring the poor rows",
        )
        with Traffic(urls_of(fleet, names)):
            # The poor state reaches the baseline (60 s); the recent view follows a cut behind.
            wait_for(
                lambda: (
                    health(api).get("baselineCut") is not None
                    and (health(api).get("recent") or {}).get("cut") is not None
                    and (health(api).get("lastWindow") or {}).get("recentSamples")
                ),
                "a baseline cut, a recent cut and a window judged against both",
                timeout=150,
                describe=lambda: (health(api), control(api), operator.logs()[-3000:]),
            )
            h = health(api)
            assert control(api).get("recentCut") == h["recent"]["cut"] >= h["baselineCut"], h
            # A clean, large improvement: no alarm, the recent view moves past it, the baseline
            # (60 s) does not yet.
            published_at = time.time()
            publisher.publish("ranker.item", np.arange(ITEMS), clean_items)
            wait_for(
                lambda: all_score(fleet, names, clean, "live"),
                "the improvement on every agent",
                timeout=30,
            )
            improved_at = time.time()

            def taken_at(h: dict[str, Any], cut: int) -> float:
                return next(_stamp(c["takenAt"]) for c in h["cuts"] if c["id"] == cut)

            def recent_past_improvement() -> dict[str, Any] | None:
                h = health(api)
                taken = {c["id"]: _stamp(c["takenAt"]) for c in h.get("cuts", [])}
                cut = (h.get("recent") or {}).get("cut")
                w = h.get("lastWindow") or {}
                ok = (
                    cut in taken
                    and taken[cut] > improved_at
                    and control(api).get("recentCut") == cut
                    and w.get("at")
                    and _stamp(w["at"]) > taken[cut] + 6 + 2.5  # a window after the agents moved
                    and w.get("recentMeanLossDifference") is not None
                    and abs(w["recentMeanLossDifference"]) < 0.01
                )
                return h if ok else None

            before = wait_for(
                recent_past_improvement,
                "the recent view at a cut holding the improvement",
                timeout=45,
                describe=lambda: (health(api), control(api)),
            )
            assert before["phase"] == "Healthy" and "lastRollback" not in before, before
            # The baseline still reads the poor state (60 s old at least).
            assert taken_at(before, before["baselineCut"]) < published_at, before
            assert before["lastWindow"]["meanLossDifference"] < -0.05, before["lastWindow"]
            assert "Corrupted" not in stream_events(api) and "Uncertain" not in stream_events(api)

            # The subtle harm.
            harmed_at = time.time()
            publisher.publish("ranker.item", np.arange(FLIPPED), harmed_items[:FLIPPED])
            decided = wait_for(
                lambda: h if (h := health(api)).get("step", "None") != "None" else None,
                "the detector's decision",
                timeout=60,
                interval=0.02,  # the whole rollback can take 0.17 s: do not poll past it
                describe=lambda: (health(api), operator.logs()[-3000:]),
            )
            w = decided["lastWindow"]
            log.info(
                "harm → decision %.1fs; deciding window: %+.4f against the baseline, %+.4f "
                "against the recent view (pooled: %s)",
                _stamp(decided["lastRollback"]["decidedAt"]) - harmed_at,
                w["meanLossDifference"],
                w["recentMeanLossDifference"],
                (decided.get("recent") or {}).get("pool"),
            )
            assert decided["phase"] == "Corrupted"
            assert decided["lastRollback"]["cut"] == decided["baselineCut"]
            assert taken_at(decided, decided["baselineCut"]) < published_at, decided
            # The baseline comparison alone would not have flagged it: its window is Good.
            assert w["meanLossDifference"] < 0.05 - 0.01, w
            assert w["recentMeanLossDifference"] >= 0.04, w
            done = resumed(api, operator)
            rb = done["lastRollback"]
            assert (rb["trigger"], rb["epoch"], rb["publisherRestored"]) == ("Detector", 1, True)
            # Restored to the baseline (the poor state: a yardstick is not a safe state); the
            # recent view restarts at the baseline.
            wait_for(
                lambda: all_score(fleet, names, poor, "live"),
                "every agent's live rows restored to the baseline's cut",
                timeout=30,
            )
            assert control(api)["epoch"] == 1 and control(api)["view"] == "Live"
            assert control(api).get("recentCut") is not None
            assert control(api)["recentCut"] >= control(api)["baselineCut"]
            events = [
                e.message
                for e in api.core.list_namespaced_event(api.ns).items
                if e.reason in ("Corrupted", "Uncertain")
            ]
            assert any("against the recent view" in m for m in events), events


def _stamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


GUARD_HEALTH = {**HEALTH, "guard": {"rows": 16}}
WIDE = np.arange(1000, 2000)
"""Item rows beyond the scored ones: enough for the guard's warm-up (500 rows of a table)."""


def test_parameter_guard_catches_zeroed_rows(
    cluster: Cluster,
    api: Api,
    namespace: str,
    operator: OperatorProcess,
    publisher: LivePublisher,
) -> None:
    """``spec.health.guard``: a write that wipes many trained item rows to zero is flagged by the
    agents' guard as it is applied; the first window after it makes the model Corrupted for the
    parameter guard (before two Bad loss windows could), and the rollback restores the rows."""
    clean = clean_scores()
    trained = np.random.default_rng(11).normal(0, 0.4, (len(WIDE), DIM + 1)).astype(np.float32)
    publisher.publish("ranker.item", WIDE, trained)
    with AgentFleet(cluster.kubeconfig, namespace, engine="embedding") as fleet:
        names = streaming(
            api,
            fleet,
            operator,
            publisher,
            GUARD_HEALTH,
            clean,
            "every agent scoring from the publisher's rows",
        )
        with Traffic(urls_of(fleet, names)):
            judged_good(api, operator)
            time.sleep(4)  # clean windows with the guard counting: no alarm
            h = health(api)
            assert h["phase"] == "Healthy" and "lastRollback" not in h, h

            # The harm: the scored item rows and the wide ones wiped to zero.
            wiped = np.concatenate([np.arange(ITEMS), WIDE])
            harmed_at = time.time()
            publisher.publish("ranker.item", wiped, np.zeros((len(wiped), DIM + 1)))
            decided = wait_for(
                lambda: h if (h := health(api)).get("step", "None") != "None" else None,
                "the detector's decision",
                timeout=60,
                interval=0.02,  # the whole rollback can take 0.17 s: do not poll past it
                describe=lambda: (health(api), operator.logs()[-3000:]),
            )
            assert decided["phase"] == "Corrupted"
            assert decided["lastRollback"]["cut"] == decided["baselineCut"]
            messages = [
                e.message
                for e in api.core.list_namespaced_event(api.ns).items
                if e.reason == "Corrupted"
            ]
            assert any("parameter guard" in m for m in messages), messages
            done = resumed(api, operator)
            rb = done["lastRollback"]
            log.info(
                "guard: harm → decision %.1fs; switch %ss, restore %ss; events %s",
                _stamp(rb["decidedAt"]) - harmed_at,
                rb.get("switchSeconds"),
                rb.get("restoreSeconds"),
                messages,
            )
            assert (rb["trigger"], rb["epoch"], rb["publisherRestored"]) == ("Detector", 1, True)
            assert rb.get("switchedAt") and rb.get("restoredAt"), rb
            wait_for(
                lambda: all_score(fleet, names, clean, "live"),
                "every agent's live item rows restored",
                timeout=30,
            )
            assert control(api)["epoch"] == 1 and control(api)["view"] == "Live"


def _stream_of(model: str, source: str, baseline_age: str = "15s") -> dict[str, Any]:
    """The ranker's stream manifest with health, for ``model`` (its own tables and name)."""
    doc = stream_manifest(
        source, {**HEALTH, "baseline": {**HEALTH["baseline"], "age": baseline_age}}
    )
    doc["metadata"]["name"] = model
    doc["spec"]["model"] = model
    doc["spec"]["tables"] = [{"name": f"{model}.{t}", "dim": DIM + 1} for t in ("user", "item")]
    return doc


def _scores_of(fleet: AgentFleet, names: list[str], model: str, want: np.ndarray) -> bool:
    for name in names:
        body = score(fleet.url(name), labelled=False, view="live", model=model)
        if body is None or "scores" not in body or body["coldUsers"] or body["coldItems"]:
            return False
        if not np.allclose(body["scores"], want, atol=1e-5):
            return False
    return True


def test_two_streams_on_shared_servers_roll_back_on_their_own(
    cluster: Cluster, api: Api, namespace: str, operator: OperatorProcess
) -> None:
    """Two models on the same servers, an UpdateStream with ``spec.health`` each. The tagger
    trains on after both have a baseline; then the ranker takes a harmful update and is rolled
    back. The ranker's state goes back to its cut; the tagger's rows, epoch, cuts and scores are
    untouched, and its new rows still flow. (With one cut log per node, the ranker's restore
    wrote the tagger's tables back to the shared cut too and fenced its newer rows.)"""
    models = ("ranker", "tagger")
    started = {m: start_publisher(m) for m in models}
    pubs = {m: started[m][0] for m in models}
    clean = clean_scores()
    try:
        with AgentFleet(cluster.kubeconfig, namespace, engine="embedding") as fleet:
            api.create(pool_manifest(memory="20Gi", max_servers=3))
            for m in models:
                api.create(model_manifest(m, 2, "2Gi", 2))
            wait_for(
                lambda: converged(api, models=list(models)),
                "both models placed and loaded",
                timeout=120,
                describe=operator.logs,
            )
            # The tagger's baseline is older than the ranker's, so the shared servers still hold
            # the ranker's baseline cut when it rolls back (a newer tagger baseline used to drop
            # it from the one cut log, and the ranker then restored by pulling only).
            api.create(_stream_of("ranker", pubs["ranker"].url, "15s"))
            api.create(_stream_of("tagger", pubs["tagger"].url, "40s"))
            names = {m: holders(api, m) for m in models}
            shared = set(names["ranker"]) & set(names["tagger"])
            assert shared, "the solver placed the two models on disjoint servers"
            for m in models:
                wait_for(
                    lambda m=m: _scores_of(fleet, names[m], m, clean),
                    f"every holder of {m} scoring its publisher's rows",
                    timeout=90,
                    describe=lambda: operator.logs()[-2000:],
                )
            with (
                Traffic(urls_of(fleet, names["ranker"])),
                Traffic(urls_of(fleet, names["tagger"]), model="tagger"),
            ):
                for m in models:
                    judged_good(api, operator, m)

                # The tagger trains on: newer than every cut the ranker can roll back to.
                users = rows(1, USERS) + np.random.default_rng(5).normal(0, 0.2, (USERS, DIM + 1))
                users = users.astype(np.float32)
                pubs["tagger"].publish("tagger.user", np.arange(USERS), users)
                u, i = zip(*PAIRS, strict=True)
                trained = score_rows(users[list(u)], rows(2, ITEMS)[list(i)])
                assert not np.allclose(trained, clean, atol=1e-3)
                wait_for(
                    lambda: _scores_of(fleet, names["tagger"], "tagger", trained),
                    "every holder of the tagger scoring its new rows",
                    timeout=30,
                )
                tagger_baseline = health(api, "tagger")["baselineCut"]

                # The ranker's harmful update, caught and rolled back.
                items = pubs["ranker"].call(
                    lambda: pubs["ranker"].pub.store.get("ranker.item", range(ITEMS))[0]
                )
                pubs["ranker"].publish("ranker.item", np.arange(ITEMS), -4 * items)
                done = resumed(api, operator)
                assert done["lastRollback"]["epoch"] == 1, done
                wait_for(
                    lambda: _scores_of(fleet, names["ranker"], "ranker", clean),
                    "every holder of the ranker scoring its restored rows",
                    timeout=30,
                )

                # The tagger: same rows, epoch 0, no rollback, its cuts still held on every
                # shared server, and Healthy.
                assert _scores_of(fleet, names["tagger"], "tagger", trained)
                tagger = health(api, "tagger")
                assert "lastRollback" not in tagger and tagger["phase"] == "Healthy", tagger
                tagger_control = (api.get("models", "tagger").get("status") or {}).get("updates")
                assert (tagger_control or {}).get("epoch", 0) == 0, tagger_control
                for a in api.assignments():
                    if a.metadata.name in shared and a.status is not None:
                        report = next(r for r in a.status.updates if r.model == "tagger")
                        assert report.epoch == 0, report
                        assert tagger_baseline in report.cuts or (
                            tagger["baselineCut"] in report.cuts
                        ), (a.metadata.name, report, tagger)

                # The tagger's newer rows still reach the shared servers (not fenced off by the
                # ranker's restore).
                items_t = rows(2, ITEMS) * 1.5
                pubs["tagger"].publish("tagger.item", np.arange(ITEMS), items_t)
                newer = score_rows(users[list(u)], items_t[list(i)])
                wait_for(
                    lambda: _scores_of(fleet, names["tagger"], "tagger", newer),
                    "every holder of the tagger scoring its newer rows",
                    timeout=30,
                )
                assert _scores_of(fleet, names["ranker"], "ranker", clean)
    finally:
        for _, close in started.values():
            close()
