"""Streaming parameter updates on a real API server: operator-chosen topology, real agents with
the embedding engine running update nodes, a real publisher process.

1. A pool, a model and an UpdateStream: the operator wires every server of the model (one leader
   per region, followers behind it); every agent converges to the publisher's rows (checked by
   what its /score answers, computed here from the same rows), and the stream's status shows
   freshness and traffic read from a real Prometheus scraping the agents.
2. The leader of a region loses its pod: a new leader is chosen, the followers re-point, the
   replacement server catches up and rows published since reach everyone; the time is logged.
3. Two models sharing servers, a stream each (``modelWeight: TrafficShare``), two publishers:
   every agent converges to both publishers' rows, and the weights follow the requests served.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from e2e.agents import AgentFleet, free_port
from e2e.conftest import REPO, Cluster
from e2e.objects import Api, converged, model_manifest, pool_manifest
from e2e.operator_harness import OperatorProcess
from e2e.prometheus import Prometheus
from e2e.statehelpers import LivePublisher, Traffic, stream_manifest, urls_of
from e2e.statehelpers import rows as state_rows
from e2e.waiting import wait_for
from ekko.kube.promql import vector
from ekko.operator.updates import PASS_SECONDS
from ekko.updates.scoring import score_rows

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

log = logging.getLogger("e2e.updates")

DIM = 8  # embedding floats; rows are [embedding, bias]
USERS = ITEMS = 40
TRICKLE_KEYS = range(1000, 1010)  # updated all along, for freshness; never scored
PAIRS = [(u, (u * 7) % ITEMS) for u in range(USERS)]


def _rows(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.3, (n, DIM + 1)).round(4)


def write_replay(path: Path, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Phase rows for users and items at once, then a trickle on other keys every 0.25 s."""
    users, items = _rows(1, USERS), _rows(2, ITEMS)
    lines: list[dict[str, Any]] = [
        {"declare": {"table": "ranker.user", "dim": DIM + 1, "model": "ranker"}},
        {"declare": {"table": "ranker.item", "dim": DIM + 1, "model": "ranker"}},
        {"t": 0.0, "table": "ranker.user", "keys": list(range(USERS)), "values": users.tolist()},
        {"t": 0.0, "table": "ranker.item", "keys": list(range(ITEMS)), "values": items.tolist()},
    ]
    trickle = _rows(3, len(TRICKLE_KEYS))
    steps = int(seconds / 0.25)
    for j in range(steps):
        lines.append(
            {
                "t": 0.5 + 0.25 * j,
                "table": "ranker.user",
                "keys": list(TRICKLE_KEYS),
                "values": (trickle + 0.001 * j).round(4).tolist(),
            }
        )
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return users, items


@pytest.fixture
def operator(prometheus_operator: OperatorProcess) -> OperatorProcess:
    """The operator with --prometheus-url (the conftest fixture has none)."""
    return prometheus_operator


@pytest.fixture
def publisher(tmp_path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """`ekko publish --replay` as a process: the origin of the stream."""
    replay = tmp_path / "stream.jsonl"
    users, items = write_replay(replay, seconds=540)
    port = free_port()
    log_path = tmp_path / "publisher.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ekko.updates.publisher",
                "--replay",
                str(replay),
                "--listen",
                f"127.0.0.1:{port}",
                "--origin",
                "7",
                "--region",
                "train",
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get(url + "/healthz") is not None, "publisher serving", timeout=30)
        expected = score_rows(users[[u for u, _ in PAIRS]], items[[i for _, i in PAIRS]])
        yield url, expected
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.read().decode()
    except (urllib.error.URLError, OSError):
        return None


def _score(url: str) -> dict[str, Any] | None:
    return _score_model(url, "ranker")


def _trickle_score(url: str) -> float | None:
    """The score of a pair whose user row the publisher updates all along."""
    body = json.dumps({"model": "ranker", "user": TRICKLE_KEYS[0], "item": 0}).encode()
    request = urllib.request.Request(
        url + "/score", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            return float(json.loads(resp.read())["scores"][0])
    except (urllib.error.URLError, OSError, KeyError):
        return None


def model_servers(api: Api) -> dict[str, Any]:
    return {
        a.metadata.name: a
        for a in api.assignments()
        if any(s.model == "ranker" for s in a.spec.shards)
    }


def wired(api: Api) -> dict[str, Any] | None:
    """Every server of the model has its duty and reports an update address."""
    servers = model_servers(api)
    if not servers:
        return None
    for a in servers.values():
        if not a.spec.updates or not (a.status and a.status.update_address):
            return None
    # Settled: the first wiring (before any agent had an address) pulled from the source
    # directly; once addresses are in, every region has its leader.
    regions = {a.spec.updates[0].region for a in servers.values()}
    led = {d.region for a in servers.values() for d in a.spec.updates if d.role == "Leader"}
    return servers if led == regions else None


def converged_scores(api: Api, fleet: AgentFleet, expected: np.ndarray) -> list[str] | None:
    """Names of the model's servers once every agent scores the pairs as the publisher's rows do."""
    names = sorted(model_servers(api))
    for name in names:
        try:
            url = fleet.url(name)
        except KeyError:
            return None
        body = _score(url)
        if body is None or "scores" not in body or body["coldUsers"] or body["coldItems"]:
            return None
        if not np.allclose(body["scores"], expected, atol=1e-6):
            return None
    return names


def leaders(api: Api) -> dict[str, str]:
    """Region → its leader."""
    out = {}
    for name, a in model_servers(api).items():
        for d in a.spec.updates:
            if d.role == "Leader":
                out[d.region] = name
    return out


def check_dashboard(prometheus: Prometheus) -> None:
    """Every query of the dashboard's "Update streams" row runs on a real Prometheus scraping
    streaming agents, and the panels that must draw something (lag, staleness, rows, bytes,
    backlog) do: a wrong metric or label name would leave a panel empty without any error."""
    dashboard = json.loads((REPO / "docs" / "dashboards" / "ekko.json").read_text())
    panels: list[dict[str, Any]] = []
    inside = False
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            inside = panel["title"] == "Update streams"
        elif inside:
            panels.append(panel)
    assert len(panels) >= 6, "the dashboard lost its update-stream panels"
    may_be_empty = {"Live minus baseline loss (paired shadow scores)", "Paired samples"}
    empty: list[str] = []
    for panel in panels:
        answers = [
            vector(prometheus.url, t["expr"].replace("$__rate_interval", "1m"))
            for t in panel["targets"]
        ]
        if not answers[0] and panel["title"] not in may_be_empty:
            empty.append(panel["title"])
    assert not empty, f"dashboard panels with no data while streaming: {empty}"


def test_stream_converges_reports_freshness_and_heals_a_lost_leader(
    cluster: Cluster,
    api: Api,
    namespace: str,
    operator: OperatorProcess,
    publisher: tuple[str, np.ndarray],
    prometheus: Prometheus,
) -> None:
    source, expected = publisher
    with (
        AgentFleet(cluster.kubeconfig, namespace, engine="embedding") as fleet,
        prometheus.follow(fleet),
    ):
        api.create(pool_manifest(memory="20Gi"))
        api.create(model_manifest("ranker", 4, "8Gi", 2))
        wait_for(
            lambda: converged(api, models=["ranker"]),
            "model placed and loaded",
            timeout=120,
            describe=operator.logs,
        )
        started = time.monotonic()
        api.create(stream_manifest(source))
        servers = wait_for(
            lambda: wired(api),
            "every server of the model wired with an update address",
            timeout=60,
            describe=lambda: ([a.spec.updates for a in api.assignments()], operator.logs()[-3000:]),
        )
        names = wait_for(
            lambda: converged_scores(api, fleet, expected),
            "every agent scoring from the publisher's rows",
            timeout=60,
            describe=lambda: {n: _score(fleet.url(n)) for n in model_servers(api)},
        )
        log.info(
            "%d agents converged %.1fs after the stream was created",
            len(names),
            time.monotonic() - started,
        )
        regions = {a.spec.updates[0].region for a in servers.values()}
        lead = leaders(api)
        assert set(lead) == regions  # one leader per region
        for name, a in servers.items():
            duty = a.spec.updates[0]
            if lead[duty.region] == name:
                assert duty.upstreams[0].url == source
            else:
                assert duty.role == "Follower" and duty.upstreams[0].server == lead[duty.region]

        def fresh() -> dict[str, Any] | None:
            status = api.get("updatestreams", "ranker").get("status") or {}
            p99 = (status.get("freshness") or {}).get("p99Seconds")
            ok = status.get("state") == "Streaming" and p99 is not None
            ok = ok and (status.get("freshness") or {}).get("source") == "Prometheus"
            ok = ok and status.get("serversConnected") == status.get("serversWanted") == len(
                servers
            )
            return status if ok else None

        status = wait_for(
            fresh,
            "stream status Streaming with freshness read from Prometheus",
            timeout=60,
            describe=lambda: api.get("updatestreams", "ranker").get("status"),
        )
        check_dashboard(prometheus)
        log.info(
            "freshness p50 %.3fs p99 %.3fs; WAN %s B/s; compression %s; regions %s",
            status["freshness"]["p50Seconds"],
            status["freshness"]["p99Seconds"],
            status["traffic"]["wanBytesPerSecond"],
            status["traffic"].get("compressionRatio"),
            [
                (r["region"], r["leader"], r.get("lagP99Seconds"))
                for r in status["freshness"]["regions"]
            ],
        )
        # Freshness is measured and reported (its size is the benchmark's business, not a timed
        # test's: on a loaded 2-core machine p99 reached 4.9 s once); the status must carry a
        # real lag per region, in seconds, with each region's leader.
        p50, p99 = status["freshness"]["p50Seconds"], status["freshness"]["p99Seconds"]
        assert 0 <= p50 <= p99 < 600, status["freshness"]
        assert {r["region"] for r in status["freshness"]["regions"]} == regions
        assert all(r["leader"] == lead[r["region"]] for r in status["freshness"]["regions"])
        assert {c["type"]: c["status"] for c in status["conditions"]}["Connected"] == "True"
        assert {r["region"]: r["leader"] for r in status["freshness"]["regions"]} == lead

        shown = subprocess.run(
            [sys.executable, "-m", "ekko.cli.kubectl_ekko", "updates", "ranker", "-n", namespace],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert shown.returncode == 0, shown.stderr
        assert "(model ranker): Streaming" in shown.stdout
        assert all(leader in shown.stdout for leader in lead.values())
        log.info("kubectl ekko updates ranker:\n%s", shown.stdout)

        # Pause and resume through the plugin (an annotation; the spec is untouched).
        def plugin(*words: str) -> str:
            done = subprocess.run(
                [sys.executable, "-m", "ekko.cli.kubectl_ekko", "updates", *words, "-n", namespace],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            return done.stdout

        def duties_paused(value: bool) -> bool:
            return all(
                d.paused == value for a in model_servers(api).values() for d in a.spec.updates
            )

        plugin("pause", "ranker")
        wait_for(
            lambda: duties_paused(True), "every duty paused", timeout=30, describe=operator.logs
        )
        wait_for(
            lambda: (
                (api.get("updatestreams", "ranker").get("status") or {}).get("state") == "Paused"
            ),
            "status Paused",
            timeout=30,
        )
        assert "spec" in api.get("updatestreams", "ranker") and not api.get(
            "updatestreams", "ranker"
        )["spec"].get("paused")
        plugin("resume", "ranker")
        wait_for(
            lambda: duties_paused(False), "every duty resumed", timeout=30, describe=operator.logs
        )
        wait_for(fresh, "stream fresh after resume", timeout=60)

        # 3. The operator restarts mid-stream: rows keep flowing (the data plane never needs
        # it) and the restarted operator re-reads the leaders from the assignments: no churn.
        wiring = {
            n: [d.model_dump() for d in a.spec.updates] for n, a in model_servers(api).items()
        }
        follower = next(n for n, a in servers.items() if a.spec.updates[0].role == "Follower")
        operator.stop(hard=True)
        first = _trickle_score(fleet.url(follower))
        wait_for(
            lambda: _trickle_score(fleet.url(follower)) not in (None, first),
            "rows flowing to a follower while the operator is down",
            timeout=10,
        )
        operator.start()
        wait_for(
            # The restarted process's own log: operator.logs() holds the first one's too.
            lambda: "Ekko operator started" in operator.log_path.read_text(errors="replace"),
            "operator restarted",
            timeout=60,
        )
        time.sleep(3 * PASS_SECONDS)  # room for a churning operator to show itself
        again = {n: [d.model_dump() for d in a.spec.updates] for n, a in model_servers(api).items()}
        assert again == wiring

        # 2. A leader with followers loses its pod.
        counts = {
            r: sum(1 for a in servers.values() if a.spec.updates[0].region == r) for r in regions
        }
        region = max(sorted(counts), key=lambda r: counts[r])
        victim = lead[region]
        lost_at = time.monotonic()
        api.core.delete_namespaced_pod(victim, namespace, grace_period_seconds=0)
        new = wait_for(
            lambda: (leaders(api).get(region) not in (None, victim)) and leaders(api)[region],
            f"a new leader in {region}",
            timeout=60,
            describe=operator.logs,
        )
        chosen_s = time.monotonic() - lost_at
        wait_for(
            lambda: (
                wired(api) is not None
                and all(
                    a.spec.updates[0].upstreams[0].server
                    in ("", leaders(api).get(a.spec.updates[0].region))
                    for a in model_servers(api).values()
                )
            ),
            "followers re-pointed",
            timeout=60,
        )
        wait_for(
            lambda: converged_scores(api, fleet, expected),
            "every agent, the replacement included, scoring from the publisher's rows",
            timeout=90,
            describe=lambda: {n: _score(fleet.url(n)) for n in model_servers(api)},
        )
        healed_s = time.monotonic() - lost_at
        wait_for(
            fresh,
            "stream fresh again",
            timeout=60,
            describe=lambda: api.get("updatestreams", "ranker").get("status"),
        )
        log.info(
            "leader %s of %s lost: %s chosen after %.1fs; every replica converged after %.1fs",
            victim, region, new, chosen_s, healed_s,
        )  # fmt: skip
        print(
            f"\nleader loss: new leader after {chosen_s:.1f}s, all replicas converged after {healed_s:.1f}s"
        )

        # Deleting the stream stops streaming and leaves placement alone.
        before = {n: [s.model_dump() for s in a.spec.shards] for n, a in model_servers(api).items()}
        api.custom.delete_namespaced_custom_object(
            "ekko.dev", "v1alpha1", namespace, "updatestreams", "ranker"
        )
        wait_for(
            lambda: all(not a.spec.updates for a in api.assignments()),
            "duties removed",
            timeout=60,
            describe=operator.logs,
        )
        after = {n: [s.model_dump() for s in a.spec.shards] for n, a in model_servers(api).items()}
        assert after == before
        assert math.isfinite(healed_s)


def two_stream_manifest(model: str, source: str) -> dict[str, Any]:
    doc = stream_manifest(source)
    doc["metadata"]["name"] = model
    doc["spec"]["model"] = model
    doc["spec"]["tables"] = [{"name": f"{model}.{t}", "dim": DIM + 1} for t in ("user", "item")]
    doc["spec"]["priority"] = {"modelWeight": "TrafficShare"}
    return doc


def test_a_server_in_two_streams_keeps_both_models_fresh(
    cluster: Cluster,
    api: Api,
    namespace: str,
    operator: OperatorProcess,
    prometheus: Prometheus,
) -> None:
    """One pool, two models placed on shared servers, an UpdateStream each with its own
    publisher: every server holding both pulls both (before, only its first duty's upstreams),
    and with TrafficShare the model that serves the requests gets the higher weight."""
    seeds = {"ranker": (21, 22), "tagger": (31, 32)}
    publishers = {m: LivePublisher(m) for m in seeds}
    expected: dict[str, np.ndarray] = {}
    for m, (su, si) in seeds.items():
        users, items = state_rows(su, USERS), state_rows(si, ITEMS)
        publishers[m].publish(f"{m}.user", np.arange(USERS), users)
        publishers[m].publish(f"{m}.item", np.arange(ITEMS), items)
        expected[m] = score_rows(users[[u for u, _ in PAIRS]], items[[i for _, i in PAIRS]])
    try:
        with (
            AgentFleet(cluster.kubeconfig, namespace, engine="embedding") as fleet,
            prometheus.follow(fleet),
        ):
            api.create(pool_manifest(memory="20Gi", max_servers=3))
            for m in seeds:
                api.create(model_manifest(m, 2, "2Gi", 2))
            wait_for(
                lambda: converged(api, models=list(seeds)),
                "both models placed and loaded",
                timeout=120,
                describe=operator.logs,
            )
            for m in seeds:
                api.create(two_stream_manifest(m, publishers[m].url))

            def holding(model: str) -> set[str]:
                return {
                    a.metadata.name
                    for a in api.assignments()
                    if any(s.model == model for s in a.spec.shards)
                }

            shared = holding("ranker") & holding("tagger")
            assert shared, "the solver placed the two models on disjoint servers"

            def scores_match(name: str, model: str) -> bool:
                try:
                    body = _score_model(fleet.url(name), model)
                except KeyError:
                    return False
                return (
                    body is not None
                    and "scores" in body
                    and not body["coldUsers"]
                    and not body["coldItems"]
                    and bool(np.allclose(body["scores"], expected[model], atol=1e-6))
                )

            def everyone() -> bool:
                return all(scores_match(n, m) for m in seeds for n in holding(m))

            wait_for(
                everyone,
                "every agent scoring both models from their publishers' rows",
                timeout=90,
                describe=lambda: {(n, m): scores_match(n, m) for m in seeds for n in holding(m)},
            )

            def duties_follow_holdings() -> bool:
                # Read fresh: the pool may still move a replica after both models were Ready.
                both = holding("ranker") & holding("tagger")
                return bool(both) and all(
                    {d.model for d in a.spec.updates} == set(seeds)
                    for a in api.assignments()
                    if a.metadata.name in both
                )

            wait_for(
                duties_follow_holdings,
                "a duty for each model on every server holding both",
                timeout=30,
                describe=lambda: {
                    a.metadata.name: (
                        sorted({s.model for s in a.spec.shards}),
                        sorted(d.model for d in a.spec.updates),
                    )
                    for a in api.assignments()
                },
            )
            shared = holding("ranker") & holding("tagger")
            # Fresh rows of both models reach a shared server afterwards too.
            for m in seeds:
                publishers[m].publish(f"{m}.user", [0], state_rows(99, 1))
            probe = sorted(shared)[0]
            wait_for(
                lambda: not any(scores_match(probe, m) for m in seeds),
                "a new row of each model reaching a server in both streams",
                timeout=30,
            )

            # TrafficShare: only the ranker serves requests; its weight rises above the tagger's.
            def weights() -> dict[str, int]:
                out = {}
                for a in api.assignments():
                    for d in a.spec.updates:
                        out[d.model] = d.weight
                return out

            with Traffic(urls_of(fleet, sorted(holding("ranker"))), model="ranker"):
                got = wait_for(
                    lambda: (w := weights()).get("ranker", 0) > 90 > w.get("tagger", 100) and w,
                    "the ranker's weight following its share of the requests",
                    timeout=120,
                    describe=lambda: (
                        weights(),
                        api.get("updatestreams", "tagger").get("status", {}).get("conditions"),
                    ),
                )
            log.info("traffic-share weights %s", got)
            conditions = api.get("updatestreams", "ranker")["status"]["conditions"]
            share = {c["type"]: c for c in conditions}.get("TrafficShare")
            assert share is not None and share["status"] == "True", conditions
    finally:
        for p in publishers.values():
            p.close()


def _score_model(url: str, model: str) -> dict[str, Any] | None:
    body = json.dumps(
        {"model": model, "requests": [{"user": u, "item": i} for u, i in PAIRS]}
    ).encode()
    request = urllib.request.Request(
        url + "/score", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result
    except (urllib.error.URLError, OSError):
        return None
