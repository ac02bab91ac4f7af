"""Which cache events wake which pool workers (the decision only; workers are not started)."""

from __future__ import annotations

from typing import Any

import pytest

from ekko.operator.peering import Gate
from ekko.operator.worker import Workers


class Fleet:
    """first_report: whether the assignment's status before the write was a previous pod's."""

    def __init__(self, first: bool = False) -> None:
        self.first = first

    def first_report(self, namespace: str, server: str, before: Any) -> bool:
        return self.first


def workers(first: bool = False) -> tuple[Workers, list[tuple[str, str, bool]]]:
    w = Workers(Fleet(first), None, Gate(None, "t", 0, False, enabled=False))  # type: ignore[arg-type]
    woken: list[tuple[str, str, bool]] = []
    w.wake = lambda ns, pool, replan=False: woken.append((ns, pool, replan))  # type: ignore[method-assign]
    w.workers = {("ns", "p"): None, ("other", "q"): None}  # type: ignore[dict-item]
    return w, woken


def assignment(heartbeat: str, loaded: int = 1, message: str = "") -> dict[str, Any]:
    return {
        "metadata": {"name": "p-0", "namespace": "ns"},
        "spec": {"pool": "p", "shards": []},
        "status": {"heartbeat": heartbeat, "shardsLoaded": loaded, "message": message},
    }


def test_a_heartbeat_wakes_nothing_and_a_status_change_wakes_the_pool() -> None:
    w, woken = workers()
    old = assignment("2026-11-29T12:00:00Z")
    assert not w.cache_event(
        "serverassignments", "MODIFIED", old, assignment("2026-11-29T12:00:10Z")
    )
    assert woken == []
    assert w.cache_event(
        "serverassignments", "MODIFIED", old, assignment("2026-11-29T12:00:10Z", 2)
    )
    assert woken == [("ns", "p", False)]


def test_the_first_heartbeat_of_a_replaced_pods_agent_wakes_the_pool() -> None:
    # The new agent loaded what the old one had: only the heartbeat differs, but the status it
    # replaces did not count, so the pool must look again.
    w, woken = workers(first=True)
    old = assignment("2026-11-29T12:00:00Z")
    assert w.cache_event("serverassignments", "MODIFIED", old, assignment("2026-11-29T12:00:10Z"))
    assert woken == [("ns", "p", False)]


def node(ready: str, version: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "n", "resourceVersion": version},
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }


def test_nodes_wake_every_pool_only_when_they_come_go_or_change_readiness() -> None:
    w, woken = workers()
    assert not w.cache_event("nodes", "MODIFIED", node("True", "1"), node("True", "2"))
    assert woken == []
    assert w.cache_event("nodes", "MODIFIED", node("True", "2"), node("Unknown", "3"))
    assert sorted(woken) == [("ns", "p", False), ("other", "q", False)]
    woken.clear()
    assert w.cache_event("nodes", "DELETED", node("Unknown", "3"), None)
    assert len(woken) == 2


@pytest.mark.parametrize("replan", [True, False])
def test_a_model_spec_change_replans_and_a_status_change_only_wakes(replan: bool) -> None:
    w, woken = workers()
    body = {"metadata": {"name": "m", "namespace": "ns", "generation": 1}, "spec": {"pool": "p"}}
    if not replan:
        w.cache_event("models", "ADDED", None, body)  # generation 1 seen
        woken.clear()
    w.cache_event("models", "MODIFIED", body, body)
    assert ("ns", "p", True) in woken if replan else woken == [("ns", "p", False)]


def test_a_server_pod_wakes_its_pool() -> None:
    w, woken = workers()
    pod = {"metadata": {"name": "p-0", "namespace": "ns", "labels": {"ekko.dev/pool": "p"}}}
    assert w.cache_event("pods", "DELETED", pod, None)
    assert woken == [("ns", "p", False)]
