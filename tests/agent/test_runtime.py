"""The agent's event handling against a recording patch function and fake engines (no cluster)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest

from ekko.agent.decide import ReplicaKey, due_unloads, key_of
from ekko.agent.engines import LoadError, SimEngine
from ekko.agent.metrics import AgentMetrics
from ekko.agent.runtime import Agent, LoadFailure, StatusWriter, check_orphan
from ekko.api.resources import AssignedShard
from ekko.kube.errors import KubeError, NotFound

T = TypeVar("T")
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def run(coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coro())


class Recorder:
    """A patch function that records every body (and can fail on demand)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_next: list[Exception] = []

    async def __call__(self, body: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        if self.fail_next:
            raise self.fail_next.pop(0)
        self.bodies.append(body)

    def merged(self) -> dict[str, Any]:
        status: dict[str, Any] = {}
        for body in self.bodies:
            status.update(body)
        return status


class FlakyEngine(SimEngine):
    """Fails loads of the listed shards a number of times."""

    def __init__(self, failures: dict[ReplicaKey, int]) -> None:
        super().__init__(bandwidth=1e12)
        self.failures = dict(failures)
        self.calls: list[str] = []

    async def load(self, shard: AssignedShard) -> int:
        key = key_of(shard)
        self.calls.append(f"load {key}")
        if self.failures.get(key, 0) > 0:
            self.failures[key] -= 1
            raise LoadError("artifact unreachable")
        return await super().load(shard)

    async def unload(self, key: ReplicaKey) -> None:
        self.calls.append(f"unload {key}")
        await super().unload(key)


def assignment(shards: list[tuple[str, int, str]], generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "ekko.dev/v1alpha1",
        "kind": "ServerAssignment",
        "metadata": {"name": "s-0", "namespace": "ns", "generation": generation},
        "spec": {
            "pool": "p",
            "server": "s-0",
            "shards": [
                {"model": m, "shard": i, "version": v, "uri": "file:///x", "bytes": 1000}
                for m, i, v in shards
            ],
        },
    }


def model(name: str, weights: list[tuple[str, int]] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": name, "namespace": "ns"}}
    if weights is not None:
        obj["status"] = {"weights": [{"version": v, "weight": n} for v, n in weights]}
    return obj


@contextlib.asynccontextmanager
async def started(
    engine: SimEngine | None = None, recorder: Recorder | None = None, **kwargs: Any
) -> AsyncIterator[tuple[Agent, Recorder]]:
    recorder = recorder or Recorder()
    metrics = AgentMetrics()
    writer = StatusWriter(recorder, metrics, now=lambda: NOW, retry_delay=0.01)
    agent = Agent(engine or SimEngine(bandwidth=1e12), writer, metrics, now=lambda: NOW, **kwargs)
    tasks = [asyncio.create_task(writer.run()), asyncio.create_task(agent.run())]
    try:
        yield agent, recorder
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def settle(probe: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not probe():
            await asyncio.sleep(0.005)


def ready_of(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


def test_loads_assigned_shards_and_reports_ready() -> None:
    async def scenario() -> None:
        async with started() as (agent, rec):
            agent.on_assignment(
                "ADDED", assignment([("m", 0, "v1"), ("m", 1, "v1"), ("m", 2, "v1")])
            )
            await settle(lambda: rec.merged().get("observedGeneration") == 1)
            status = rec.merged()
            assert status["shardsLoaded"] == 3
            assert status["bytesLoaded"] == 3000
            assert ready_of(status)["status"] == "True"
            assert status["routing"] == [
                {
                    "model": "m",
                    "weights": [{"version": "v1", "weight": 100}],
                    "appliedAt": "2026-01-02T03:04:05Z",
                }
            ]
            assert all("heartbeat" in b for b in rec.bodies)
            assert agent.ready

    run(scenario)


def test_loads_new_before_unloading_old_and_reports_in_between() -> None:
    async def scenario() -> None:
        engine = FlakyEngine({})
        async with started(engine) as (agent, rec):
            agent.on_assignment(
                "ADDED", assignment([("m", 0, "v1"), ("m", 1, "v1"), ("m", 2, "v1")])
            )
            await settle(lambda: rec.merged().get("observedGeneration") == 1)
            engine.calls.clear()
            first = len(rec.bodies)
            agent.on_assignment(
                "MODIFIED", assignment([("m", 0, "v1"), ("m", 1, "v1"), ("m", 3, "v1")], 2)
            )
            await settle(lambda: rec.merged().get("observedGeneration") == 2)
            assert engine.calls == ["load m/3@v1", "unload m/2@v1"]
            history = [
                {(s["model"], s["shard"]) for s in b["loaded"]}
                for b in rec.bodies[first:]
                if "loaded" in b
            ]
            # A report with old and new loaded comes before the one without the old shard.
            assert {("m", 0), ("m", 1), ("m", 2), ("m", 3)} in history
            assert history[-1] == {("m", 0), ("m", 1), ("m", 3)}

    run(scenario)


def test_failed_load_is_reported_retried_and_never_crashes() -> None:
    async def scenario() -> None:
        engine = FlakyEngine({ReplicaKey("m", 1, "v1"): 2})
        async with started(engine, backoff_base=0.02, backoff_cap=0.05) as (agent, rec):
            agent.on_assignment("ADDED", assignment([("m", 0, "v1"), ("m", 1, "v1")]))
            await settle(lambda: "LoadFailed" in str(rec.bodies))
            failed = next(
                b for b in rec.bodies if "conditions" in b and ready_of(b)["reason"] == "LoadFailed"
            )
            assert "m/1@v1: artifact unreachable" in failed["message"]
            assert failed["shardsLoaded"] == 1
            assert "observedGeneration" not in failed or failed["observedGeneration"] is None
            await settle(lambda: rec.merged().get("observedGeneration") == 1)
            status = rec.merged()
            assert ready_of(status)["status"] == "True"
            assert status["message"] == ""
            assert engine.calls.count("load m/1@v1") == 3

    run(scenario)


def test_failed_replacement_keeps_the_old_version() -> None:
    async def scenario() -> None:
        engine = FlakyEngine({ReplicaKey("m", 0, "v2"): 1000})
        async with started(engine, backoff_base=10) as (agent, rec):
            agent.on_assignment("ADDED", assignment([("m", 0, "v1")]))
            await settle(lambda: rec.merged().get("observedGeneration") == 1)
            agent.on_assignment("MODIFIED", assignment([("m", 0, "v2")], 2))
            await settle(lambda: "LoadFailed" in str(rec.bodies))
            await asyncio.sleep(0.05)
            assert ReplicaKey("m", 0, "v1") in agent.loaded
            assert "unload m/0@v1" not in engine.calls
            assert rec.merged()["observedGeneration"] == 1

    run(scenario)


def test_model_weights_applied_and_reported_with_one_patch() -> None:
    async def scenario() -> None:
        async with started() as (agent, rec):
            agent.on_models_relist([model("m", None), model("other", [("v9", 100)])], 0.0)
            agent.on_assignment("ADDED", assignment([("m", 0, "v1"), ("m", 0, "v2")]))
            await settle(lambda: rec.merged().get("observedGeneration") == 1)
            assert rec.merged()["routing"] == [
                {
                    "model": "m",
                    "weights": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}],
                    "appliedAt": "2026-01-02T03:04:05Z",
                }
            ]
            before = len(rec.bodies)
            loop = asyncio.get_running_loop()
            agent.on_model("MODIFIED", model("m", [("v1", 90), ("v2", 10)]), loop.time())
            assert agent.routing["m"][0].weight == 90  # applied synchronously, before any I/O
            await settle(lambda: len(rec.bodies) == before + 1)
            body = rec.bodies[-1]
            assert set(body) == {"routing", "heartbeat"}
            assert body["routing"] == [
                {
                    "model": "m",
                    "weights": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}],
                    "appliedAt": "2026-01-02T03:04:05Z",
                }
            ]
            # The same weights again, and a model this server does not hold: no write.
            agent.on_model("MODIFIED", model("m", [("v1", 90), ("v2", 10)]), loop.time())
            agent.on_model("MODIFIED", model("other", [("v9", 50), ("v8", 50)]), loop.time())
            await asyncio.sleep(0.05)
            assert len(rec.bodies) == before + 1
            # Deleting the Model falls back to the loaded versions.
            agent.on_model("DELETED", model("m", None), loop.time())
            await settle(lambda: len(rec.bodies) == before + 2)
            assert rec.bodies[-1]["routing"][0]["weights"][0]["weight"] == 50
            assert agent.metrics.routing_applied_seconds._sum.get() >= 0  # observed

    run(scenario)


def test_status_only_events_do_not_reconcile_again() -> None:
    async def scenario() -> None:
        async with started() as (agent, rec):
            obj = assignment([("m", 0, "v1")])
            agent.on_assignment("ADDED", obj)
            await settle(lambda: rec.merged().get("observedGeneration") == 1)
            n = len(rec.bodies)
            agent.on_assignment("MODIFIED", {**obj, "status": rec.merged()})
            await asyncio.sleep(0.05)
            assert len(rec.bodies) == n

    run(scenario)


def test_deleted_assignment_keeps_shards() -> None:
    async def scenario() -> None:
        async with started() as (agent, rec):
            agent.on_assignment("ADDED", assignment([("m", 0, "v1")]))
            await settle(lambda: rec.merged().get("observedGeneration") == 1)
            agent.on_assignment("DELETED", assignment([("m", 0, "v1")]))
            await asyncio.sleep(0.02)
            assert agent.loaded == {ReplicaKey("m", 0, "v1"): 1000}

    run(scenario)


def test_invalid_assignment_is_ignored() -> None:
    async def scenario() -> None:
        async with started() as (agent, rec):
            bad = assignment([("m", 0, "v1")])
            bad["spec"]["shards"][0]["bytes"] = -1
            agent.on_assignment("ADDED", bad)
            await asyncio.sleep(0.02)
            assert not agent.seen
            assert rec.bodies == []

    run(scenario)


def test_status_writer_retries_and_coalesces() -> None:
    async def scenario() -> None:
        rec = Recorder()
        rec.fail_next = [KubeError("api down", 503)]
        writer = StatusWriter(rec, AgentMetrics(), now=lambda: NOW, retry_delay=0.01)
        task = asyncio.create_task(writer.run())
        first = writer.submit({"routing": [1], "loaded": []})
        second = writer.submit({"routing": [2]})
        await asyncio.wait_for(asyncio.gather(first, second), 1)
        assert rec.bodies == [{"routing": [2], "loaded": [], "heartbeat": "2026-01-02T03:04:05Z"}]
        rec.fail_next = [NotFound("gone", 404)]
        await asyncio.wait_for(writer.submit({"routing": [3]}), 1)  # given up, not hung
        await asyncio.wait_for(writer.submit({}), 1)  # a heartbeat alone is a patch
        assert rec.bodies[-1] == {"heartbeat": "2026-01-02T03:04:05Z"}
        task.cancel()

    run(scenario)


@pytest.mark.parametrize("weights", [[("v1", 80), ("v2", 20)]])
def test_infer_follows_weights_and_faults(weights: list[tuple[str, int]]) -> None:
    async def scenario() -> None:
        values = iter([i / 100 for i in range(100)] * 10)
        async with started(rand=lambda: next(values)) as (agent, _):
            agent.on_models_relist([model("m", weights)], 0.0)
            agent.on_assignment("ADDED", assignment([("m", 0, "v1"), ("m", 0, "v2")]))
            await settle(lambda: agent.ready and "m" in agent.routing)
            agent.engine.infer_latency_ms = 0  # type: ignore[attr-defined]
            seen: dict[str, int] = {}
            for _ in range(50):  # each request draws twice: version, then fault
                status, body = await agent.infer("m")
                assert status == 200
                seen[body["version"]] = seen.get(body["version"], 0) + 1
            assert seen["v1"] > seen["v2"] > 0
            status, body = await agent.infer("absent")
            assert status == 503

    run(scenario)


def test_a_replica_removed_and_restored_within_the_grace_is_never_unloaded() -> None:
    """A hand edit empties the assignment; the operator restores it 0.1 s later: nothing was
    unloaded. A removal that stays is unloaded once the grace has passed."""

    async def scenario() -> None:
        engine = FlakyEngine({})
        async with started(engine, unload_grace=0.3) as (agent, rec):
            shards = [("m", 0, "v1"), ("m", 1, "v1")]
            agent.on_assignment("ADDED", assignment(shards))
            await settle(lambda: rec.merged().get("observedGeneration") == 1)
            engine.calls.clear()
            agent.on_assignment("MODIFIED", assignment([], 2))  # someone emptied the spec
            await asyncio.sleep(0.1)
            agent.on_assignment("MODIFIED", assignment(shards, 3))  # the operator put it back
            await settle(lambda: rec.merged().get("observedGeneration") == 3)
            await asyncio.sleep(0.5)
            assert engine.calls == []  # nothing unloaded, nothing reloaded
            agent.on_assignment("MODIFIED", assignment([("m", 0, "v1")], 4))  # a real removal
            await asyncio.sleep(0.1)
            assert engine.calls == []  # still within the grace
            await settle(lambda: engine.calls == ["unload m/1@v1"], timeout=3)
            await settle(lambda: rec.merged().get("observedGeneration") == 4)

    run(scenario)


def test_due_unloads_waits_for_the_grace() -> None:
    a, b = ReplicaKey("m", 0, "v1"), ReplicaKey("m", 1, "v1")
    due, since = due_unloads([a], {}, now=10.0, grace=2.0)
    assert due == [] and since == {a: 10.0}
    due, since = due_unloads([a, b], since, now=12.0, grace=2.0)
    assert due == [a] and since == {a: 10.0, b: 12.0}
    due, since = due_unloads([b], since, now=12.5, grace=2.0)  # a is wanted again: forgotten
    assert due == [] and since == {b: 12.0}
    assert due_unloads([a], {}, now=0.0, grace=0.0)[0] == [a]


def test_every_patch_carries_the_pods_uid_and_an_orphan_writes_no_more() -> None:
    async def scenario() -> None:
        rec = Recorder()
        writer = StatusWriter(rec, AgentMetrics(), now=lambda: NOW, retry_delay=0.01, pod_uid="u1")
        task = asyncio.create_task(writer.run())
        await asyncio.wait_for(writer.submit({"loaded": []}), 1)
        assert rec.bodies == [{"loaded": [], "heartbeat": "2026-01-02T03:04:05Z", "podUid": "u1"}]

        async def pod_is(uid: str | None) -> str | None:
            return uid

        async def unreadable() -> str | None:
            raise KubeError("forbidden", 403)

        # Our own report, a failed read, or another pod's report while our pod is current
        # (that one is the orphan): writing goes on.
        await check_orphan(writer, "u1", lambda: pod_is("u2"))
        await check_orphan(writer, "u2", unreadable)
        await check_orphan(writer, "u2", lambda: pod_is("u1"))
        assert not writer.orphaned
        # Our pod was replaced by another of the name: stop writing, for good.
        await check_orphan(writer, "u2", lambda: pod_is("u2"))
        assert writer.orphaned
        await asyncio.wait_for(writer.submit({"loaded": [1]}), 1)  # resolves, writes nothing
        assert len(rec.bodies) == 1
        task.cancel()

    run(scenario)


def test_an_agent_whose_pod_is_gone_is_an_orphan() -> None:
    async def scenario() -> None:
        writer = StatusWriter(Recorder(), AgentMetrics(), pod_uid="u1")

        async def gone() -> str | None:
            return None

        await check_orphan(writer, "u2", gone)
        assert writer.orphaned

    run(scenario)


def test_an_unload_that_fell_due_during_a_slow_pass_is_due_at_once() -> None:
    """Found by the fleet simulator at 200 servers: a pass marked a replica unwanted, then waited
    longer than the grace for its status write; with no further event the agent slept forever
    with the replica loaded (the assignment never converged). Past due means due now, unless the
    unload is withheld because the shard's assigned replacement fails to load."""

    async def scenario() -> None:
        now = [100.0]
        agent = Agent(
            FlakyEngine({}),
            StatusWriter(Recorder(), AgentMetrics()),
            AgentMetrics(),
            clock=lambda: now[0],
            unload_grace=2.0,
        )
        agent.on_assignment("ADDED", assignment([("m", 0, "v2")]))
        old = ReplicaKey("m", 0, "v1")
        agent._unwanted_since = {old: 95.0}  # marked 5 s ago, grace 2 s
        assert agent.next_retry_in() == 0.0
        agent.failures[ReplicaKey("m", 0, "v2")] = LoadFailure(1, 130.0, "unreachable")
        assert agent.next_retry_in() == 30.0  # withheld: wait for the replacement's retry
        agent._unwanted_since = {old: 99.5}
        assert agent.next_retry_in() == 1.5  # not yet due

    run(scenario)


class Gated(Recorder):
    """A recorder whose patches wait until ``open`` is set: a slow API server."""

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()
        self.started = 0

    async def __call__(self, body: dict[str, Any]) -> None:
        self.started += 1
        await self.open.wait()
        await super().__call__(body)


def test_a_pass_does_not_wait_for_its_report_and_one_patch_carries_what_changed() -> None:
    """At 1,000 agents a status patch waited ~40 s behind the others', and each pass waited for
    its own (twice: after loading, and with the observed generation): the next assignment's
    loads started that much later. Now a pass queues one report; reports queued behind a slow
    patch are merged, and a patch carries only the fields that changed."""

    async def scenario() -> None:
        engine = FlakyEngine({})
        rec = Gated()
        async with started(engine, rec) as (agent, _):
            agent.on_assignment("ADDED", assignment([("m", 0, "v1")]))
            await settle(lambda: rec.started == 1)  # the first report is stuck in flight
            agent.on_assignment("MODIFIED", assignment([("m", 0, "v1"), ("m", 1, "v1")], 2))
            # The second assignment is loaded while the first report still waits.
            await settle(lambda: "load m/1@v1" in engine.calls)
            agent.on_assignment(
                "MODIFIED", assignment([("m", 0, "v1"), ("m", 1, "v1"), ("m", 2, "v1")], 3)
            )
            await settle(lambda: "load m/2@v1" in engine.calls)
            assert not rec.bodies
            rec.open.set()
            await settle(lambda: rec.merged().get("observedGeneration") == 3)
            # One patch in flight, then one for both later passes (merged in the queue).
            assert len(rec.bodies) == 2
            first, second = rec.bodies
            assert first["observedGeneration"] == 1 and "conditions" in first
            assert second["shardsLoaded"] == 3
            # Unchanged fields are not sent again: same routing, no update duties.
            assert not {"routing", "updates", "updateAddress"} & set(second)
            assert set(second) >= {"loaded", "shardsLoaded", "bytesLoaded", "observedGeneration"}

    run(scenario)


def test_a_report_by_another_pod_makes_the_next_report_whole() -> None:
    """The status fields left out of a patch are the ones this agent wrote last; once another
    pod's agent wrote the status (a same-named pod's), this agent writes every field again."""

    async def scenario() -> None:
        rec = Recorder()
        metrics = AgentMetrics()
        writer = StatusWriter(rec, metrics, now=lambda: NOW, retry_delay=0.01, pod_uid="mine")
        agent = Agent(SimEngine(bandwidth=1e12), writer, metrics, now=lambda: NOW)
        tasks = [asyncio.create_task(writer.run()), asyncio.create_task(agent.run())]
        try:
            obj = assignment([("m", 0, "v1")])
            agent.on_assignment("ADDED", obj)
            await settle(lambda: rec.merged().get("observedGeneration") == 1)
            n = len(rec.bodies)
            own = {**obj, "status": rec.merged()}
            agent.on_assignment("MODIFIED", own)  # our own write: nothing to do
            await asyncio.sleep(0.05)
            assert len(rec.bodies) == n
            foreign = {**obj, "status": {"podUid": "theirs", "loaded": []}}
            agent.on_assignment("MODIFIED", foreign)
            await settle(lambda: len(rec.bodies) > n)
            whole = rec.bodies[-1]
            assert whole["podUid"] == "mine"
            assert {"loaded", "conditions", "routing", "observedGeneration"} <= set(whole)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    run(scenario)
