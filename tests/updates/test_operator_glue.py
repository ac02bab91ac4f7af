"""The stream worker's pure helpers: which servers a stream covers, which events a status
change posts."""

from __future__ import annotations

from typing import Any

from ekko.api.meta import Condition
from ekko.api.resources import Model, ServerAssignment, UpdateStream
from ekko.kube.updates import StreamObservation
from ekko.operator.updates import condition_events, servers_of


def _assignment(
    name: str, pool: str, zone: str, models: list[str], address: str = ""
) -> ServerAssignment:
    body: dict[str, Any] = {
        "apiVersion": "ekko.dev/v1alpha1",
        "kind": "ServerAssignment",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {
            "pool": pool,
            "server": name,
            "zone": zone,
            "shards": [
                {"model": m, "shard": i, "version": "v1", "uri": "file:///x", "bytes": 1}
                for i, m in enumerate(models)
            ],
        },
        "status": {"updateAddress": address},
    }
    return ServerAssignment.model_validate(body)


STREAM = UpdateStream.model_validate(
    {
        "apiVersion": "ekko.dev/v1alpha1",
        "kind": "UpdateStream",
        "metadata": {"name": "s", "namespace": "ns"},
        "spec": {
            "model": "ranker",
            "source": {"endpoints": ["http://t:9500"]},
            "tables": [{"name": "ranker.user", "dim": 3}],
        },
    }
)
MODEL = Model.model_validate(
    {
        "apiVersion": "ekko.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "ranker", "namespace": "ns"},
        "spec": {
            "pool": "pool",
            "version": "v1",
            "artifact": {"uri": "file:///m/v1"},
            "shards": {"count": 2, "size": "1Gi"},
        },
    }
)


def test_servers_of_the_model_in_its_pool() -> None:
    obs = StreamObservation(
        STREAM,
        MODEL,
        (
            (_assignment("a", "pool", "z1", ["ranker", "ranker"], "http://a:9500"), True),
            (_assignment("b", "pool", "z2", ["other"]), True),
            (_assignment("c", "elsewhere", "z1", ["ranker"]), True),
            (_assignment("d", "pool", "z2", ["ranker"]), False),
        ),
        {},
    )
    servers = servers_of(obs)
    assert [(s.name, s.region, s.ready, s.address, s.shards) for s in servers] == [
        ("a", "z1", True, "http://a:9500", frozenset({0, 1})),
        ("d", "z2", False, "", frozenset({0})),
    ]
    assert servers_of(StreamObservation(STREAM, None, obs.assignments, {})) == []


def test_region_label_from_nodes() -> None:
    labelled = UpdateStream.model_validate(
        {
            **STREAM.model_dump(by_alias=True),
            "spec": {
                **STREAM.spec.model_dump(by_alias=True),
                "topology": {"regionLabel": "region"},
            },
        }
    )
    obs = StreamObservation(
        labelled, MODEL, ((_assignment("a", "pool", "z1", ["ranker"]), True),), {"a": "eu"}
    )
    assert servers_of(obs)[0].region == "eu"


def test_condition_events() -> None:
    def c(kind: str, status: str) -> Condition:
        return Condition.model_validate(
            {"type": kind, "status": status, "reason": "R", "message": f"{kind} {status}"}
        )

    assert condition_events([], [c("Connected", "True"), c("Fresh", "True")]) == []
    assert condition_events([], [c("Fresh", "False")]) == [("Lagging", "Fresh False", True)]
    assert condition_events([], [c("Connected", "False")]) == []  # a new stream, being wired
    assert condition_events([c("Connected", "True")], [c("Connected", "False")]) == [
        ("Disconnected", "Connected False", True)
    ]
    assert condition_events([c("Fresh", "False")], [c("Fresh", "True")]) == [
        ("Fresh", "Fresh True", False)
    ]
    assert condition_events([c("Fresh", "True")], [c("Fresh", "Unknown")]) == []
