"""Fleet.apply: writes in parallel up to the limit, and one failed write never stops the others.

The client's API objects are replaced by a recorder: what is under test is the limiter and the
error sorting (the e2e suite runs the same writes against a real API server).
"""

from __future__ import annotations

import threading
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ekko.kube.fleet import Fleet
from ekko.planning.converge import CreateServer, DeleteServer
from tests.kube.pools import pool

LIMIT = 3


class Core:
    """Pod creates that wait until LIMIT of them are in flight at once (so they must run in
    parallel to finish), and fail for the names asked to."""

    def __init__(self, failing: dict[str, int]) -> None:
        self.failing = failing
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most = 0
        self.started = 0
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.together = threading.Barrier(LIMIT)

    def create_namespaced_pod(self, namespace: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            self.started += 1
            first = self.started <= LIMIT
        try:
            if first:
                self.together.wait(timeout=30)  # broken (and raising) if the writes were serial
            if name in self.failing:
                raise ApiException(status=self.failing[name], reason="refused")
            with self.lock:
                self.created.append(name)
        finally:
            with self.lock:
                self.in_flight -= 1

    def delete_namespaced_pod(self, name: str, namespace: str, **_: Any) -> None:
        with self.lock:
            self.deleted.append(name)


class Custom:
    def delete_namespaced_custom_object(self, *args: Any) -> None:
        pass


def test_writes_run_in_parallel_up_to_the_limit_and_failures_stay_per_object() -> None:
    fleet = Fleet(client.ApiClient(), write_concurrency=LIMIT)
    core = Core({"s-4": 422, "s-7": 503})
    fleet.core, fleet.custom = core, Custom()
    actions = [CreateServer(f"s-{i}", "zone-a") for i in range(12)] + [DeleteServer("old")]
    applied = fleet.apply(pool(40), actions)
    assert core.most == LIMIT  # parallel, never more than the limit
    assert sorted(core.created) == sorted(f"s-{i}" for i in range(12) if i not in (4, 7))
    assert core.deleted == ["old"]
    assert len(applied.done) == 11
    assert [e.status for e in applied.refused] == [422]  # reported, retried slowly
    assert [e.status for e in applied.retry] == [503]  # the pass is retried
    fleet.close()
