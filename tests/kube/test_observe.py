"""A pool's state from raw objects (ekko.kube.observe): which pods are servers, which nodes are
lost, and when an agent's report counts as loaded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ekko.api.resources import ServerAssignment
from ekko.kube.fleet import server_pod
from ekko.kube.observe import (
    EDITED,
    IMAGES_ANNOTATION,
    NODE_LOST_AFTER,
    container_images,
    current_report,
    from_current_pod,
    images_edited,
    loaded,
    node_ready,
    owned_by,
    pool_state,
)
from tests.kube.pools import pool

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)


def stamp(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def pod(
    name: str = "p-0",
    *refs: dict[str, Any],
    node: str | None = "n1",
    ready: bool = True,
    created: datetime = NOW - timedelta(minutes=5),
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "labels": {"ekko.dev/pool": "p", "ekko.dev/zone": "zone-a"},
            "ownerReferences": list(refs) or [OURS],
            "creationTimestamp": stamp(created),
        },
        "spec": {"nodeName": node} if node else {},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


OURS = {"kind": "ServerPool", "uid": "u", "controller": True}
READY = {"type": "Ready", "status": "True"}
NOT_READY = {"type": "Ready", "status": "False"}


def node(name: str = "n1", status: str = "True", seconds_ago: float = 1000) -> dict[str, Any]:
    since = stamp(NOW - timedelta(seconds=seconds_ago))
    return {
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "status": {
            "conditions": [{"type": "Ready", "status": status, "lastTransitionTime": since}]
        },
    }


def assignment(
    name: str = "p-0", heartbeat: datetime | None = NOW, pod_uid: str = ""
) -> ServerAssignment:
    status: dict[str, Any] = {"loaded": [{"model": "m", "shard": 0, "version": "v1", "bytes": 1}]}
    if pod_uid:
        status["podUid"] = pod_uid
    if heartbeat is not None:
        status["heartbeat"] = stamp(heartbeat)
    return ServerAssignment.model_validate(
        {
            "apiVersion": "ekko.dev/v1alpha1",
            "kind": "ServerAssignment",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {
                "pool": "p",
                "server": name,
                "shards": [
                    {"model": "m", "shard": 0, "version": "v1", "uri": "s3://m", "bytes": 1}
                ],
            },
            "status": status,
        }
    )


def test_only_the_pools_own_pods_are_its_servers() -> None:
    assert owned_by(pod("a", OURS), pool())
    assert not owned_by({"metadata": {}}, pool())  # a user's pod with the label
    assert not owned_by(
        pod("a", {"kind": "ServerPool", "uid": "other", "controller": True}), pool()
    )
    assert not owned_by(pod("a", {"kind": "ReplicaSet", "uid": "u", "controller": True}), pool())
    state = pool_state(
        pool(),
        models=[],
        rejected={},
        pods=[pod("p-0"), pod("x", {"kind": "ReplicaSet", "uid": "u", "controller": True})],
        assignments={},
        nodes=[node()],
        versions=[],
        now=NOW,
    )
    assert [s.name for s in state.servers] == ["p-0"]


def test_a_node_counts_as_lost_only_after_a_grace_period() -> None:
    assert node_ready(node(status="True"), NOW)
    assert node_ready(node(status="Unknown", seconds_ago=20), NOW)  # a kubelet blinked
    assert not node_ready(node(status="Unknown", seconds_ago=NODE_LOST_AFTER + 1), NOW)
    assert not node_ready(node(status="False", seconds_ago=NODE_LOST_AFTER + 1), NOW)
    assert not node_ready({"status": {"conditions": []}}, NOW)


def test_servers_on_a_lost_or_missing_node_are_failed_and_not_ready() -> None:
    state = pool_state(
        pool(),
        models=[],
        rejected={},
        pods=[pod("p-0", node="n1"), pod("p-1", node="gone"), pod("p-2", node="n2")],
        assignments={},
        nodes=[node("n1"), node("n2", status="False", seconds_ago=NODE_LOST_AFTER + 5)],
        versions=[],
        now=NOW,
    )
    by_name = {s.name: s for s in state.servers}
    assert by_name["p-0"].serving
    assert by_name["p-1"].pod_failed and not by_name["p-1"].pod_ready
    assert by_name["p-2"].pod_failed and not by_name["p-2"].pod_ready


def test_a_report_counts_only_when_it_is_the_current_pods() -> None:
    created = NOW - timedelta(seconds=30)
    assert loaded(assignment(heartbeat=NOW), since=created) == {("m", 0, "v1")}
    # Written before the pod existed: the previous pod's agent.
    assert loaded(assignment(heartbeat=created - timedelta(seconds=1)), since=created) == set()
    assert loaded(assignment(heartbeat=None), since=created) == set()
    # Within the pod's creation second, but not newer than what the assignment carried when the
    # new pod appeared: still the previous agent's.
    old = created + timedelta(milliseconds=400)
    assert loaded(assignment(heartbeat=old), since=created, stale=old) == set()
    newer = old + timedelta(milliseconds=1)
    assert loaded(assignment(heartbeat=newer), since=created, stale=old) == {("m", 0, "v1")}


def test_an_assignment_without_a_pod_is_a_server_with_nothing_loaded() -> None:
    state = pool_state(
        pool(),
        models=[],
        rejected={},
        pods=[],
        assignments={"p-3": assignment("p-3")},
        nodes=[node()],
        versions=[],
        now=NOW,
    )
    (server,) = state.servers
    assert server.name == "p-3" and not server.pod_exists and server.loaded == frozenset()
    assert state.node_zones == ("zone-a",)


UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/3 nodes are available: 3 Insufficient memory.",
}


@pytest.mark.parametrize(
    ("case", "phase", "conditions", "on", "node_state", "deleting", "expected"),
    [
        # expected: (pod_ready, pod_failed, unschedulable, deleting)
        ("serving", "Running", [READY], "n1", "True", False, (True, False, "", False)),
        ("starting", "Running", [NOT_READY], "n1", "True", False, (False, False, "", False)),
        ("pending", "Pending", [], "n1", "True", False, (False, False, "", False)),
        (
            "no node fits",
            "Pending",
            [UNSCHEDULABLE],
            None,
            None,
            False,
            (False, False, UNSCHEDULABLE["message"], False),
        ),
        ("not scheduled yet", "Pending", [], None, None, False, (False, False, "", False)),
        ("crashed", "Failed", [], "n1", "True", False, (False, True, "", False)),
        ("exited", "Succeeded", [], "n1", "True", False, (False, True, "", False)),
        ("node blinked", "Running", [READY], "n1", "Unknown-20", False, (True, False, "", False)),
        ("node lost", "Running", [READY], "n1", "Unknown-61", False, (False, True, "", False)),
        ("node gone", "Running", [READY], "gone", "True", False, (False, True, "", False)),
        ("being deleted", "Running", [READY], "n1", "True", True, (True, False, "", True)),
    ],
)
def test_server_classification(
    case: str,
    phase: str,
    conditions: list[dict[str, Any]],
    on: str | None,
    node_state: str | None,
    deleting: bool,
    expected: tuple[bool, bool, str, bool],
) -> None:
    """Each pod state the worker acts on: serving, starting, unschedulable (reported with the
    scheduler's words), failed (recreated), on a node lost for longer than the grace period
    (failed too), and being deleted."""
    p = pod("p-0", node=on)
    p["status"] = {"phase": phase, "conditions": conditions}
    if deleting:
        p["metadata"]["deletionTimestamp"] = stamp(NOW)
    nodes = []
    if node_state is not None:
        status, _, ago = node_state.partition("-")
        nodes.append(node("n1", status=status, seconds_ago=float(ago or 1000)))
    state = pool_state(
        pool(),
        models=[],
        rejected={},
        pods=[p],
        assignments={},
        nodes=nodes,
        versions=[],
        now=NOW,
    )
    (server,) = state.servers
    got = (server.pod_ready, server.pod_failed, server.unschedulable, server.deleting)
    assert got == expected, case


LATER = NOW + timedelta(seconds=30)
"""A heartbeat newer than every time guard of the table below."""


@pytest.mark.parametrize(
    ("reported", "current", "heartbeat", "counts"),
    [
        # The agent names its pod: the UID decides, whatever the report times say.
        ("uid-new", "uid-new", LATER, True),
        ("uid-old", "uid-new", LATER, False),  # the deleted pod's agent, still writing
        ("uid-new", "uid-new", NOW - timedelta(minutes=1), True),  # before the stale mark
        ("uid-old", "uid-new", None, False),
        # No UID in the report (an agent from before podUid): the report-time guards.
        ("", "uid-new", LATER, True),
        ("", "uid-new", NOW - timedelta(minutes=1), False),  # older than the pod
        ("", "uid-new", NOW, False),  # not newer than the heartbeat when the pod appeared
        ("", "uid-new", None, False),
        # The pod's UID unknown: the report-time guards too.
        ("uid-old", "", LATER, True),
        ("uid-old", "", NOW, False),
    ],
)
def test_a_report_counts_when_its_pod_uid_is_the_current_pods(
    reported: str, current: str, heartbeat: datetime | None, counts: bool
) -> None:
    report = assignment(heartbeat=heartbeat, pod_uid=reported)
    since, stale = NOW - timedelta(seconds=20), NOW
    assert from_current_pod(report, current, since=since, stale=stale) is counts
    want = {("m", 0, "v1")} if counts else set()
    assert loaded(report, since=since, stale=stale, uid=current) == want


def test_pool_state_counts_only_the_current_pods_report() -> None:
    def state(reported: str) -> Any:
        return pool_state(
            pool(),
            models=[],
            rejected={},
            pods=[pod("p-0")],  # uid-p-0
            assignments={"p-0": assignment(heartbeat=NOW, pod_uid=reported)},
            nodes=[node()],
            versions=[],
            now=NOW,
        ).servers[0]

    assert state("uid-p-0").loaded == {("m", 0, "v1")}
    assert state("uid-gone").loaded == set()
    assert state("").loaded == {("m", 0, "v1")}  # no UID, newer than the pod: counted


def test_the_rollout_reads_a_report_only_from_the_current_pod() -> None:
    mine = assignment(heartbeat=NOW, pod_uid="uid-p-0")
    assert current_report(mine, pod("p-0")) is mine
    other = current_report(assignment(heartbeat=NOW, pod_uid="uid-gone"), pod("p-0"))
    assert other.status is None and other.spec == mine.spec
    older = assignment(heartbeat=NOW - timedelta(minutes=10))  # no UID, older than the pod
    assert current_report(older, pod("p-0")).status is None
    # No pod: kept (the server is not ready, so it counts for nothing; its errors stay visible).
    assert current_report(other := assignment(pod_uid="uid-gone"), None) is other


def test_a_server_pod_whose_image_was_edited_is_outdated() -> None:
    # Ekko never changes a server pod's spec: an image other than the one it recorded at creation
    # means a person changed what runs (kubectl edit/patch), so the pod no longer is what its hash
    # label says. An in-place resize or a debug container (generation up, images the same) is not.
    def state(images: str | None, generation: int = 1, image: str = "engine:1") -> Any:
        p = pod("p-0")
        p["metadata"]["labels"]["ekko.dev/template-hash"] = "h1"
        p["metadata"]["generation"] = generation
        p["spec"]["containers"] = [{"name": "engine", "image": image}]
        if images is not None:
            p["metadata"].setdefault("annotations", {})[IMAGES_ANNOTATION] = images
        return pool_state(
            pool(), models=[], rejected={}, pods=[p], assignments={"p-0": assignment()},
            nodes=[node()], versions=[], now=NOW, template_hash="h1",
        )  # fmt: skip

    for untouched in (
        state("engine=engine:1"),
        state("engine=engine:1", generation=3),  # resized in place, or `kubectl debug`
        state(None, image="other:2"),  # a pod from before the annotation: nothing to compare
    ):
        assert untouched.servers[0].template_hash == "h1"
        assert not untouched.outdated(untouched.servers[0])
    edited = state("engine=engine:1", generation=2, image="engine:evil")
    assert edited.servers[0].template_hash == EDITED
    assert edited.outdated(edited.servers[0])


def test_a_server_pod_records_the_images_it_was_made_with() -> None:
    made = server_pod(pool(), "p-0", "zone-a", "ekko:1")
    assert not images_edited(made)
    recorded = made["metadata"]["annotations"][IMAGES_ANNOTATION]
    assert recorded == container_images(made) and "ekko:1" in recorded
    made["spec"]["containers"][-1]["image"] = "ekko:evil"
    assert images_edited(made)
