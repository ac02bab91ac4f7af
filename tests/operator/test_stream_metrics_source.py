"""Where a stream's freshness is read: Prometheus when the operator was given one, else the agents;
a Prometheus that does not answer is said once (a warning event) and the agents are read instead."""

from __future__ import annotations

import asyncio
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from ekko.api.resources import UpdateStream
from ekko.operator.peering import Gate
from ekko.operator.updates import StreamWorker
from ekko.planning.updates import StreamServer


class Events:
    """Records what the worker would post (the only call this path makes)."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, str, bool]] = []

    def event(self, stream: UpdateStream, reason: str, message: str, warning: bool = False) -> None:
        self.posted.append((reason, message, warning))


STREAM = UpdateStream.model_validate(
    {
        "kind": "UpdateStream",
        "metadata": {"name": "ranker", "namespace": "prod"},
        "spec": {
            "model": "ranker",
            "source": {"endpoints": ["http://trainer:9500"]},
            "tables": [{"name": "ranker.user", "dim": 9}],
        },
    }
)
SERVERS = [StreamServer("a0", "eu", frozenset({0}), True, "http://a0:9500")]


def _closed_port() -> int:
    server = HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_port
    server.server_close()
    return port


def test_an_unanswering_prometheus_is_reported_once_and_the_agents_are_read() -> None:
    events = Events()
    kube: Any = events
    gate: Any = Gate.__new__(Gate)
    worker = StreamWorker(
        ("prod", "ranker"), kube, gate, prometheus=f"http://127.0.0.1:{_closed_port()}"
    )

    async def twice() -> list[Any]:
        return [await worker._from_prometheus(STREAM, SERVERS) for _ in range(2)]

    assert asyncio.run(twice()) == [None, None]
    assert len(events.posted) == 1  # the same error is not repeated every status pass
    reason, message, warning = events.posted[0]
    assert reason == "MetricsFromAgents" and warning
    assert "did not answer" in message and "reading the agents directly" in message

    # Without a Prometheus the agents are read, silently.
    quiet = StreamWorker(("prod", "ranker"), kube, gate)
    assert asyncio.run(quiet._from_prometheus(STREAM, SERVERS)) is None
    assert len(events.posted) == 1
