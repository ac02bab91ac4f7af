"""The fleet simulator's own logic: which pod events start and stop agents, spread heartbeats,
and events routed to the right agents (the agents themselves are the real ``Agent``)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from ekko.agent.fleet import Fleet, FleetConfig, heartbeat_offset, needs_ready, pod_action

NS = "ns"


def pod(name: str, uid: str, node: str | None = "n1", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "uid": uid}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node} if node else {}}


def assignment(name: str, shards: int, generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "ekko.dev/v1alpha1",
        "kind": "ServerAssignment",
        "metadata": {"name": name, "namespace": NS, "generation": generation},
        "spec": {
            "pool": "p",
            "server": name,
            "shards": [
                {"model": "m", "shard": i, "version": "v1", "bytes": 1024, "uri": "file:///a"}
                for i in range(shards)
            ],
        },
    }


def test_a_bound_pod_starts_an_agent_and_an_unbound_one_does_not() -> None:
    assert pod_action(None, "ADDED", pod("s", "u1")) == "start"
    assert pod_action(None, "ADDED", pod("s", "u1", node=None)) == "none"
    assert pod_action(None, "MODIFIED", pod("s", "u1", deleting=True)) == "none"
    assert pod_action(None, "DELETED", pod("s", "u1")) == "none"


def test_deletion_stops_the_agent_and_a_new_uid_replaces_it() -> None:
    assert pod_action("u1", "MODIFIED", pod("s", "u1")) == "none"
    assert pod_action("u1", "MODIFIED", pod("s", "u1", deleting=True)) == "stop"
    assert pod_action("u1", "DELETED", pod("s", "u1")) == "stop"
    assert pod_action("u1", "MODIFIED", pod("s", "u2")) == "replace"
    # The deletion of an older pod of the name (seen late) does not stop the new pod's agent.
    assert pod_action("u2", "DELETED", pod("s", "u1")) == "none"


def test_heartbeats_are_spread_over_the_period_and_stable_per_name() -> None:
    offsets = [heartbeat_offset(f"pool-{i}", 10.0) for i in range(1000)]
    assert all(0 <= o < 10.0 for o in offsets)
    assert offsets == [heartbeat_offset(f"pool-{i}", 10.0) for i in range(1000)]
    # Roughly uniform: every second of the period gets some, none gets most.
    per_second = [sum(1 for o in offsets if s <= o < s + 1) for s in range(10)]
    assert min(per_second) > 50 and max(per_second) < 150


def test_events_reach_the_right_agents_which_load_and_report() -> None:
    store: dict[tuple[str, str], dict[str, Any]] = {}
    patches: list[tuple[str, dict[str, Any]]] = []
    lock = threading.Lock()

    def patch(name: str, body: dict[str, Any]) -> None:
        with lock:
            patches.append((name, dict(body)))

    def reports(name: str) -> list[dict[str, Any]]:
        with lock:
            return [b for n, b in patches if n == name and "loaded" in b]

    async def scenario() -> None:
        config = FleetConfig(namespace=NS, sim_bandwidth=1e12, heartbeat_seconds=60)
        fleet = Fleet(config, patch, lambda kind, name: store.get((kind, name)), lambda: [])
        try:
            # s0's assignment exists before its pod: the agent reads it from the cache at start.
            store[("serverassignments", "s0")] = assignment("s0", 2)
            for name, uid in (("s0", "u0"), ("s1", "u1")):
                store[("pods", name)] = pod(name, uid)
                fleet.on_event("pods", "ADDED", None, pod(name, uid))
            assert sorted(fleet.agents) == ["s0", "s1"]
            fleet.on_event("serverassignments", "ADDED", None, assignment("s1", 3))
            for _ in range(200):
                if reports("s0") and reports("s1") and len(reports("s1")[-1]["loaded"]) == 3:
                    break
                await asyncio.sleep(0.01)
            assert len(reports("s0")[-1]["loaded"]) == 2
            assert reports("s0")[-1]["podUid"] == "u0"
            assert len(reports("s1")[-1]["loaded"]) == 3
            # s1's pod is replaced: a new agent (nothing loaded, new UID) loads again.
            old = fleet.agents["s1"]
            store[("pods", "s1")] = pod("s1", "u9")
            fleet.on_event("pods", "MODIFIED", None, pod("s1", "u9"))
            assert fleet.agents["s1"] is not old and fleet.agents["s1"].uid == "u9"
            fleet.on_event("serverassignments", "MODIFIED", None, assignment("s1", 3))
            for _ in range(200):
                if any(r.get("podUid") == "u9" for r in reports("s1")):
                    break
                await asyncio.sleep(0.01)
            assert reports("s1")[-1]["podUid"] == "u9"
            fleet.on_event("pods", "DELETED", pod("s0", "u0"), None)
            assert sorted(fleet.agents) == ["s1"]
        finally:
            await fleet.close()

    asyncio.run(scenario())


def test_only_a_live_pod_of_this_agent_marked_not_ready_needs_ready() -> None:
    def with_ready(p: dict[str, Any], status: str) -> dict[str, Any]:
        return {**p, "status": {"conditions": [{"type": "Ready", "status": status}]}}

    assert needs_ready(with_ready(pod("s", "u1"), "False"), "u1")
    assert not needs_ready(with_ready(pod("s", "u1"), "True"), "u1")
    assert not needs_ready(with_ready(pod("s", "u2"), "False"), "u1")  # another pod of the name
    assert not needs_ready(with_ready(pod("s", "u1", deleting=True), "False"), "u1")
    assert not needs_ready(None, "u1")
