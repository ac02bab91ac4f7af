"""``modelWeight: TrafficShare``: the model weight follows the model's share of the requests of
the namespace's streamed models (from Prometheus), with hysteresis; without Prometheus the
Fixed weight, a condition and one event say so. And a refused stream's status comes from the
one status builder."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from ekko.api.meta import Condition
from ekko.api.resources import Model, ServerAssignment, UpdateStream
from ekko.kube.updates import StreamObservation
from ekko.operator.peering import Gate
from ekko.operator.updates import StreamWorker, streamed_models_of_pool
from ekko.planning.updates import StreamServer, plan_topology, traffic_query, traffic_weight


def stream(name: str, model_weight: str = "TrafficShare", **priority: Any) -> UpdateStream:
    return UpdateStream.model_validate(
        {
            "kind": "UpdateStream",
            "metadata": {"name": name, "namespace": "prod", "generation": 3},
            "spec": {
                "model": name,
                "source": {"endpoints": ["http://trainer:9500"]},
                "tables": [{"name": f"{name}.user", "dim": 9}],
                "priority": {"modelWeight": model_weight, **priority},
            },
        }
    )


def assignment(server: str, pool: str, *models: str) -> ServerAssignment:
    return ServerAssignment.model_validate(
        {
            "kind": "ServerAssignment",
            "metadata": {"name": server, "namespace": "prod"},
            "spec": {
                "pool": pool,
                "server": server,
                "shards": [
                    {"model": m, "shard": 0, "version": "v1", "uri": "file:///x", "bytes": 1}
                    for m in models
                ],
            },
        }
    )


MODEL = Model.model_validate(
    {
        "kind": "Model",
        "metadata": {"name": "ranker", "namespace": "prod"},
        "spec": {
            "pool": "pool",
            "version": "v1",
            "artifact": {"uri": "file:///a"},
            "shards": {"count": 1, "size": "1Gi", "load": "1"},
            "replicas": 1,
        },
    }
)
RANKER, TAGGER, ELSEWHERE = stream("ranker"), stream("tagger"), stream("elsewhere")
OBS = StreamObservation(
    RANKER,
    MODEL,
    (
        (assignment("s0", "pool", "ranker", "tagger"), True),
        (assignment("s1", "pool", "ranker", "unstreamed"), True),
        (assignment("t0", "other", "elsewhere"), True),
    ),
    {},
    {},
    (RANKER, TAGGER, ELSEWHERE),
)


def test_shares_are_over_the_pools_streamed_models() -> None:
    # Not "unstreamed" (no stream), not "elsewhere" (another pool's servers).
    assert streamed_models_of_pool(OBS) == ["ranker", "tagger"]


@pytest.mark.parametrize(
    ("rates", "current", "want"),
    [
        ({"ranker": 70.0, "tagger": 30.0}, None, 70),
        ({"ranker": 70.0, "tagger": 30.0}, 67, 67),  # within the hysteresis: kept
        ({"ranker": 70.0, "tagger": 30.0}, 60, 70),  # beyond it: follows
        ({"ranker": 0.0, "tagger": 30.0}, None, 1),  # never 0: its rows still move
        ({}, 40, 100),  # no traffic at all: nothing to rank by
        ({"ranker": 5.0, "tagger": 5.0, "unstreamed": 90.0}, None, 50),  # only streamed models
        ({"ranker": float("nan"), "tagger": 1.0}, None, 1),
    ],
)
def test_weights_from_rates(rates: dict[str, float], current: int | None, want: int) -> None:
    assert traffic_weight("ranker", rates, ["ranker", "tagger"], current) == want


def test_the_query_and_the_duties_carry_the_weight() -> None:
    q = traffic_query(["tagger", "ranker"], 60)
    sel = '{model=~"ranker|tagger"}[60s]'
    assert q == (
        f"sum by (model) (rate(ekko_agent_requests_total{sel}) "
        f"or rate(ekko_agent_scores_total{sel}))"
    )
    fixed = stream("ranker", "Fixed", weight=40)
    assert plan_topology("ranker", fixed.spec, []).duties == {}
    servers = [StreamServer("a0", "eu", frozenset({0}), True, "http://a0:9500")]
    (duty,) = plan_topology("ranker", fixed.spec, servers).duties["a0"]
    assert duty.weight == 40
    (duty,) = plan_topology("ranker", RANKER.spec, servers, weight=73).duties["a0"]
    assert duty.weight == 73


class Kube:
    """Records what the worker posts and patches."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, str, bool]] = []
        self.statuses: list[dict[str, Any]] = []
        self.duties: list[Any] = []

    def event(self, stream: UpdateStream, reason: str, message: str, warning: bool = False) -> None:
        self.posted.append((reason, message, warning))

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.statuses.append(status)

    def write_duties(self, namespace: str, server: str, duties: list[Any]) -> None:
        self.duties.append(duties)


def worker(kube: Kube, prometheus: str | None = None) -> StreamWorker:
    gate: Any = Gate.__new__(Gate)
    k: Any = kube
    return StreamWorker(("prod", "ranker"), k, gate, prometheus=prometheus)


def test_without_prometheus_the_fixed_weight_is_used_and_said_once() -> None:
    kube = Kube()
    w = worker(kube)

    async def twice() -> list[int]:
        out = [await w._model_weight(RANKER, OBS, None)]
        w._weight_at = 0.0  # due again
        out.append(await w._model_weight(RANKER, OBS, None))
        return out

    assert asyncio.run(twice()) == [100, 100]
    assert len(kube.posted) == 1
    reason, message, warning = kube.posted[0]
    assert reason == "TrafficShareUnknown" and warning
    assert "no --prometheus-url" in message and "Fixed 100%" in message
    c = w._weight_condition
    assert c is not None and (c.type, c.status) == ("TrafficShare", "False")
    # Fixed: no condition, the spec's weight.
    fixed = stream("ranker", "Fixed", weight=40)
    assert asyncio.run(w._model_weight(fixed, OBS, None)) == 40
    assert w._weight_condition is None


@pytest.fixture
def prometheus() -> Iterator[dict[str, float]]:
    """A Prometheus query API answering the traffic query with the rates in the dict."""
    rates: dict[str, float] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)["query"][0]
            assert "ekko_agent_requests_total" in query
            result = [
                {"metric": {"model": m}, "value": [0, str(v)]}
                for m, v in rates.items()
                if m in query
            ]
            body = json.dumps(
                {"status": "success", "data": {"resultType": "vector", "result": result}}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    rates["_url"] = float(server.server_port)
    try:
        yield rates
    finally:
        server.shutdown()
        server.server_close()


def test_weights_follow_prometheus_with_hysteresis(prometheus: dict[str, float]) -> None:
    port = int(prometheus.pop("_url"))
    kube = Kube()
    w = worker(kube, f"http://127.0.0.1:{port}")

    def weight(written: int | None = None) -> int:
        w._weight_at = 0.0
        return asyncio.run(w._model_weight(RANKER, OBS, written))

    prometheus.update(ranker=30.0, tagger=10.0)
    assert weight(written=100) == 75
    c = w._weight_condition
    assert c is not None and (c.type, c.status, c.reason) == (
        "TrafficShare",
        "True",
        "FromRequestRates",
    )
    assert "75%" in c.message
    prometheus.update(ranker=28.0, tagger=10.0)  # 74%: within the hysteresis
    assert weight() == 75
    prometheus.update(ranker=10.0, tagger=10.0)
    assert weight() == 50
    assert kube.posted == []
    # Cached between reads: a new rate is not seen before WEIGHT_SECONDS.
    prometheus.update(ranker=1.0, tagger=99.0)
    assert asyncio.run(w._model_weight(RANKER, OBS, None)) == 50


def test_a_refused_stream_is_pending_with_the_reason() -> None:
    kube = Kube()
    w = worker(kube)
    why = Condition(type="Connected", status="False", reason="ModelNotFound", message="no model")
    asyncio.run(w._refuse(RANKER, OBS, why))
    (status,) = kube.statuses
    assert status["state"] == "Pending" and status["observedGeneration"] == 3
    (connected,) = [c for c in status["conditions"] if c["type"] == "Connected"]
    assert (connected["reason"], connected["message"]) == ("ModelNotFound", "no model")
    assert w.topology is None and kube.posted[0][0] == "ModelNotFound"
