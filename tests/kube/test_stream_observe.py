"""A stream's servers read from the operator's informer cache: the same observation the lists
give (assignments parsed, which pods serve, their UIDs, node regions)."""

from __future__ import annotations

from typing import Any

from ekko.kube.cache import Cache
from ekko.kube.updates import _from_cache


def _pod(name: str, uid: str, ready: bool, node: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": "1",
                            "labels": {"ekko.dev/pool": "p"}}  # fmt: skip
    if deleting:
        meta["deletionTimestamp"] = "2026-11-29T00:00:00Z"
    status = {"phase": "Running", "conditions": [{"type": "Ready", "status": str(ready)}]}
    return {"metadata": meta, "spec": {"nodeName": node}, "status": status}


def _assignment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "ekko.dev/v1alpha1",
        "kind": "ServerAssignment",
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1"},
        "spec": {"pool": "p", "server": name, "shards": []},
    }


def test_servers_come_from_the_cache() -> None:
    api: Any = None  # no informer runs: the stores are filled by hand
    cache = Cache(api, ["ns"])
    for p in (
        _pod("s0", "u0", True, "n0"),
        _pod("s1", "u1", False, "n1"),
        _pod("s2", "u2", True, "n1", deleting=True),
    ):
        cache.store("pods").put(p)
    for a in ("s0", "s1", "s2"):
        cache.store("serverassignments").put(_assignment(a))
    bad = _assignment("s3")
    bad["spec"]["shards"] = "not a list"  # admitted while the webhook was down: left out
    cache.store("serverassignments").put(bad)
    for n, region in (("n0", "eu"), ("n1", "us")):
        node = {"metadata": {"name": n, "resourceVersion": "1", "labels": {"region": region}}}
        cache.store("nodes").put(node)

    parsed, servers, nodes = _from_cache(cache, "ns", "region")
    assert sorted(a.metadata.name for a in parsed) == ["s0", "s1", "s2"]
    assert {n: (p.uid, p.serving, p.node) for n, p in servers.items()} == {
        "s0": ("u0", True, "n0"),
        "s1": ("u1", False, "n1"),
        "s2": ("u2", False, "n1"),  # being deleted: not serving
    }
    assert nodes == {"n0": "eu", "n1": "us"}
    assert _from_cache(cache, "ns", None)[2] == {}  # no region label: nodes are not read


def test_a_rollouts_model_servers_come_from_the_cache() -> None:
    from kubernetes import client

    from ekko.kube.fleet import Fleet

    cache = Cache(None, ["ns"])  # type: ignore[arg-type]
    for name, ready in (("s0", True), ("s1", False)):
        cache.store("pods").put(_pod(name, "u-" + name, ready, "n0"))
        doc = _assignment(name)
        doc["metadata"]["labels"] = {"ekko.dev/pool": "p"}
        doc["spec"]["shards"] = [
            {"model": "rank" if name == "s0" else "other", "shard": 0, "version": "v1",
             "uri": "file:///m", "bytes": 1}
        ]  # fmt: skip
        cache.store("serverassignments").put(doc)
    cache.store("serverassignments").put({**_assignment("s9"), "spec": {"pool": "q"}})
    for informer in cache.informers:  # listed once, as the operator's cache is before use
        informer.synced.set()
    fleet = Fleet(client.ApiClient(), cache=cache)
    got = fleet.model_servers("ns", "rank", "p")
    assert [(a.metadata.name, serving) for a, serving in got] == [("s0", True)]
    assert [a.metadata.name for a, _ in fleet.model_servers("ns", "other", "p")] == ["s1"]
