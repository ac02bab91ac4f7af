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
from ekko.planning.converge import CreateServer, DeleteServer, WriteAssignment
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


class Existing:
    """A pod named like the server already exists: ours without its pool label, or a user's."""

    def __init__(self, labels: dict[str, str], owners: list[dict[str, Any]]) -> None:
        self.pod = client.V1Pod(
            metadata=client.V1ObjectMeta(
                name="s-0",
                labels=labels,
                owner_references=[client.V1OwnerReference(**o) for o in owners],
            )
        )
        self.patched: list[dict[str, Any]] = []

    def create_namespaced_pod(self, namespace: str, body: dict[str, Any]) -> None:
        raise ApiException(status=409, reason="AlreadyExists")

    def read_namespaced_pod(self, name: str, namespace: str) -> client.V1Pod:
        return self.pod

    def patch_namespaced_pod(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        self.patched.append(body)


OWNER = {"api_version": "ekko.dev/v1alpha1", "kind": "ServerPool", "name": "p", "uid": "u", "controller": True}  # fmt: skip


def test_a_server_pod_that_lost_its_pool_label_is_labelled_again() -> None:
    # Once, the pool's watch no longer saw such a pod and "created" it every half second for
    # ever (409 suppressed), its shards one replica short the whole time.
    fleet = Fleet(client.ApiClient())
    core = Existing({"ekko.dev/server": "s-0"}, [OWNER])
    fleet.core, fleet.custom = core, Custom()
    applied = fleet.apply(pool(40), [CreateServer("s-0", "zone-a")])
    assert core.patched == [{"metadata": {"labels": {"ekko.dev/pool": pool(40).metadata.name}}}]
    assert applied.done and "labelled server pod s-0 again" in applied.done[0]
    fleet.close()


def test_a_pod_the_pool_does_not_own_is_never_relabelled() -> None:
    fleet = Fleet(client.ApiClient())
    theirs = dict(OWNER, uid="someone-else")
    # Not even a user's pod that carries the pool's label under a server's name.
    mine = {"ekko.dev/pool": pool(40).metadata.name}
    for core in (Existing({}, []), Existing({}, [theirs]), Existing(mine, [])):
        fleet.core, fleet.custom = core, Custom()
        applied = fleet.apply(pool(40), [CreateServer("s-0", "zone-a")])
        assert core.patched == []
        assert "pool does not own it" in applied.done[0]
    fleet.close()


def test_a_server_pod_that_exists_with_its_label_is_left_as_it_is() -> None:
    fleet = Fleet(client.ApiClient())
    core = Existing({"ekko.dev/pool": pool(40).metadata.name}, [OWNER])
    fleet.core, fleet.custom = core, Custom()
    applied = fleet.apply(pool(40), [CreateServer("s-0", "zone-a")])
    assert core.patched == [] and applied.done == ["server s-0 exists"]
    fleet.close()


class Assignments:
    """ServerAssignments by name: creates refuse an existing one (409), patches a missing one
    (404); every request is recorded."""

    def __init__(self, existing: set[str]) -> None:
        self.existing = set(existing)
        self.requests: list[tuple[str, str]] = []

    def create_namespaced_custom_object(self, *args: Any) -> None:
        name = args[-1]["metadata"]["name"]
        self.requests.append(("create", name))
        if name in self.existing:
            raise ApiException(status=409, reason="AlreadyExists")
        self.existing.add(name)

    def patch_namespaced_custom_object(self, *args: Any, **_: Any) -> None:
        name = args[4]
        self.requests.append(("patch", name))
        if name not in self.existing:
            raise ApiException(status=404, reason="NotFound")


def test_a_new_servers_assignment_is_created_in_one_request() -> None:
    """A new fleet's assignments were each patched first (404) and then created: at 582 servers,
    582 requests of the ~1,750 the first plan took on a busy API server."""
    fleet = Fleet(client.ApiClient(), write_concurrency=1)
    custom = Assignments(existing={"s-old", "s-raced"})
    fleet.custom = custom
    fleet.write_assignment(pool(), WriteAssignment("s-new", "a", (), new=True))
    fleet.write_assignment(pool(), WriteAssignment("s-old", "a", ()))
    fleet.write_assignment(pool(), WriteAssignment("s-raced", "a", (), new=True))  # made meanwhile
    fleet.write_assignment(pool(), WriteAssignment("s-gone", "a", ()))  # deleted meanwhile
    assert custom.requests == [
        ("create", "s-new"),
        ("patch", "s-old"),
        ("create", "s-raced"),
        ("patch", "s-raced"),
        ("patch", "s-gone"),
        ("create", "s-gone"),
    ]
    fleet.close()
