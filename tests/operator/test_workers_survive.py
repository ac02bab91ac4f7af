"""The worker loops survive whatever a pass raises, and say so on the object.

Only the loop is under test here: a recording stand-in replaces ekko.kube's Fleet, whose calls
the e2e suite exercises against a real API server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ekko.kube.errors import Conflict, InvalidObjectError, KubeError
from ekko.kube.fleet import ROLLOUT_MANAGER
from ekko.operator import worker as worker_module
from ekko.operator.peering import Gate
from ekko.operator.rollouts import RolloutWorker
from ekko.operator.worker import PoolWorker


class Recorder:
    """get_pool/get_version fail with the given errors in turn, then report the object gone."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.events: list[tuple[str, str, str]] = []
        self.statuses: list[tuple[str, dict[str, Any]]] = []

    def _next(self, *_: Any) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)

    get_pool = _next
    get_version = _next

    def list_models_checked(self, namespace: str) -> tuple[list[Any], list[Any]]:
        return [], []  # no model names the deleted pool

    def event_on(self, kind: str, namespace: str, name: str, **kw: Any) -> None:
        self.events.append((kind, kw["reason"], kw["message"]))

    def patch_status(self, plural: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.statuses.append((plural, body))

    def report_failure(self, kind: str, plural: str, namespace: str, name: str, **kw: Any) -> None:
        self.event_on(kind, namespace, name, reason=kw["reason"], message=kw["message"])
        self.patch_status(plural, namespace, name, {"conditions": kw["conditions"]})


def gate() -> Gate:
    return Gate(None, "test", 0, False, enabled=False)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    real_sleep = asyncio.sleep
    monkeypatch.setattr(worker_module.asyncio, "sleep", lambda s: real_sleep(min(s, 0.01)))


def conditions(body: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in body["conditions"]}


def test_a_pool_worker_survives_any_exception_reports_it_once_and_retries() -> None:
    fleet = Recorder(
        ValueError("could not convert string to float: '1.2.3'"),
        ValueError("could not convert string to float: '1.2.3'"),
        KubeError("get_pool: 503 Service Unavailable", 503),
    )
    w = PoolWorker(("ns", "pool"), fleet, None, gate())  # type: ignore[arg-type]

    async def scenario() -> None:
        w.wake(replan=False)
        await asyncio.wait_for(w.run(), timeout=10)  # returns once the pool is gone

    asyncio.run(scenario())
    assert fleet.calls == 4  # three failed passes, each retried, then the pool was gone
    reasons = [(kind, reason) for kind, reason, _ in fleet.events]
    # The same failure twice in a row is one event; a different one is another.
    assert reasons == [("ServerPool", "ReconcileFailed"), ("ServerPool", "ReconcileFailed")]
    assert "ValueError: could not convert string to float" in fleet.events[0][2]
    assert "503" in fleet.events[1][2]
    plural, body = fleet.statuses[0]
    assert plural == "serverpools"
    assert conditions(body) == {
        "Degraded": ("True", "ReconcileFailed"),
        "Ready": ("False", "ReconcileFailed"),
    }


def test_an_unusable_pool_spec_is_reported_and_not_retried_until_it_changes() -> None:
    bad = InvalidObjectError("ServerPool", "ns", "pool", "uid-1", "spec.capacity.compute: > 0")
    fleet = Recorder(bad)
    w = PoolWorker(("ns", "pool"), fleet, None, gate())  # type: ignore[arg-type]

    async def scenario() -> None:
        w.wake(replan=False)
        task = asyncio.create_task(w.run())
        await asyncio.sleep(0.2)
        assert fleet.calls == 1 and not task.done()  # waiting for a change, not hot-looping
        w.wake(replan=True)  # the spec was fixed
        await asyncio.wait_for(task, timeout=5)

    asyncio.run(scenario())
    assert fleet.calls == 2
    assert fleet.events == [
        ("ServerPool", "InvalidSpec", "spec not usable: spec.capacity.compute: > 0")
    ]


def test_a_rollout_worker_survives_any_exception_and_reports_it() -> None:
    fleet = Recorder(ValueError("condition 'result < 1.2.3' is not of the form 'result < 0.05'"))
    w = RolloutWorker(("ns", "rank-v2"), fleet, lambda *_: None, "http://p", gate())  # type: ignore[arg-type]

    async def scenario() -> None:
        await asyncio.wait_for(w.run(), timeout=10)  # returns once the version is gone

    asyncio.run(scenario())
    assert fleet.calls == 2
    assert [(k, r) for k, r, _ in fleet.events] == [("ModelVersion", "RolloutPassFailed")]
    assert "result < 1.2.3" in fleet.events[0][2]
    assert conditions(fleet.statuses[0][1])["Degraded"] == ("True", "RolloutPassFailed")


def test_a_conflict_is_observed_again_not_reported_as_a_failure() -> None:
    fleet = Recorder(Conflict("cannot patch status of ServerPool ns/pool: HTTP 409 Conflict"))
    w = PoolWorker(("ns", "pool"), fleet, None, gate())  # type: ignore[arg-type]

    async def scenario() -> None:
        w.wake(replan=False)
        await asyncio.wait_for(w.run(), timeout=10)

    asyncio.run(scenario())
    assert fleet.calls == 2 and fleet.events == [] and fleet.statuses == []


class ModelChangedUnder:
    """A fleet whose Model changes between the rollout worker's read and its write once."""

    def __init__(self, conflicts: int) -> None:
        from ekko.api.resources import Model, ModelVersion

        self.conflicts = conflicts
        self.version = ModelVersion.model_validate(
            {
                "kind": "ModelVersion",
                "metadata": {"name": "rank-v2", "namespace": "ns"},
                "spec": {"model": "rank", "version": "v2", "artifact": {"uri": "file:///a/v2"}},
            }
        )
        self.model = Model.model_validate(
            {
                "kind": "Model",
                "metadata": {"name": "rank", "namespace": "ns", "resourceVersion": "41"},
                "spec": {
                    "pool": "p",
                    "version": "v1",
                    "artifact": {"uri": "file:///a/v1"},
                    "shards": {"count": 1, "size": "1Gi"},
                },
                "status": {"stableVersion": "v1", "previousVersion": "v0"},
            }
        )
        self.applies: list[tuple[str, dict[str, Any], str, str | None]] = []
        self.statuses: list[tuple[str, dict[str, Any]]] = []
        self.events: list[str] = []

    def get_version(self, namespace: str, name: str) -> Any:
        return self.version

    def get_model(self, namespace: str, name: str) -> Any:
        return self.model

    def list_versions(self, namespace: str) -> list[Any]:
        return [self.version]

    def model_servers(self, *_: Any) -> list[Any]:
        return []

    def apply_status(
        self,
        plural: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        manager: str,
        *,
        resource_version: str | None = None,
        stale: list[str] | None = None,
    ) -> None:
        if plural == "modelversions":  # the version's own status: its one writer, no precondition
            assert (manager, resource_version) == (ROLLOUT_MANAGER, None)
            self.statuses.append((plural, status))
            return
        self.applies.append((plural, status, manager, resource_version))
        if self.conflicts:
            self.conflicts -= 1
            raise Conflict("cannot apply status of Model ns/rank: HTTP 409 Conflict", 409)

    def patch_status(self, plural: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.statuses.append((plural, body))

    def event(self, obj: Any, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(reason)


def test_a_rollout_decision_is_applied_only_onto_the_model_it_read() -> None:
    """The rollout worker sends every Model field it owns under its own manager, with the
    Model's resourceVersion as a precondition; a Conflict (the Model changed meanwhile, e.g. a
    `kubectl ekko rollback`) writes nothing else and decides again shortly, without reporting a
    failure."""
    from ekko.kube.fleet import ROLLOUT_MANAGER
    from ekko.operator.rollouts import CONFLICT_RETRY

    fleet = ModelChangedUnder(conflicts=1)
    w = RolloutWorker(("ns", "rank-v2"), fleet, lambda *_: None, "http://prom", gate())  # type: ignore[arg-type]
    assert asyncio.run(w.run_pass()) == CONFLICT_RETRY
    assert fleet.statuses == [] and fleet.events == []
    assert asyncio.run(w.run_pass()) == 1.0  # loading: look again in a second
    plural, body, manager, rv = fleet.applies[-1]
    assert (plural, manager, rv) == ("models", ROLLOUT_MANAGER, "41")
    assert body == {
        "stableVersion": "v1",
        "canaryVersion": "v2",
        "previousVersion": "",
        "weights": [],
        "canaryWeight": 0,
    }
    assert [p for p, _ in fleet.statuses] == ["modelversions"] and fleet.events == ["Loading"]
