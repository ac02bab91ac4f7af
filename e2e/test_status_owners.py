"""A Model's status has several writers; on the real API server none undoes another's fields.

The writers run their own code paths (the statuses the pure functions build, written through
``Fleet`` and ``RolloutClient``) in the order that lost a promote before: the pool worker acts on
an observation older than the promote. No operator runs: the interleaving is the test's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from e2e.conftest import Cluster
from e2e.objects import Api, model_manifest, pool_manifest
from ekko.api.resources import Model, ModelVersion, ServerPool, VersionWeight
from ekko.cli.rolloutview import rollback_routing
from ekko.kube.errors import Conflict
from ekko.kube.fleet import POOL_MANAGER, ROLLOUT_MANAGER, STABLE_MANAGER, Fleet
from ekko.kube.rollouts import RolloutClient
from ekko.planning.converge import Desired
from ekko.planning.state import PoolState, ServerObs
from ekko.planning.status import initial_stable, model_status
from ekko.rollout.machine import ModelPatch, split
from ekko.rollout.observe import observe

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def managers(body: dict[str, Any]) -> dict[str, set[str]]:
    """Field manager → the status fields it owns, from managedFields."""
    out: dict[str, set[str]] = {}
    for entry in body["metadata"].get("managedFields") or []:
        fields = (entry.get("fieldsV1") or {}).get("f:status") or {}
        owned = {k[2:] for k in fields if k.startswith("f:")}
        if owned:
            out.setdefault(entry["manager"], set()).update(owned)
    return out


def test_pool_worker_rollout_worker_plugin_and_state_manager_keep_to_their_own_fields(
    cluster: Cluster, api: Api, namespace: str
) -> None:
    api.create(pool_manifest())
    api.create(model_manifest("rank", 2, "1Gi", 1))
    fleet = Fleet(cluster.api)
    plugin = RolloutClient(cluster.api)
    now = datetime.now(UTC)

    def model() -> Model:
        return Model.model_validate(api.get("models", "rank"))

    pool = ServerPool.model_validate(api.get("serverpools", "pool"))
    stale = model()  # what the pool worker observed: no status at all
    state = PoolState(pool, (stale,), (ServerObs("s-0", pod_ready=True),))
    desired = Desired({"s-0": frozenset({("rank", 0), ("rank", 1)})})

    def pool_pass(seen: Model) -> None:
        body = model_status(state, desired, seen, now).owned_wire("pool-worker")
        fleet.apply_status("models", namespace, "rank", body, POOL_MANAGER)
        stable = initial_stable(seen)
        if stable is not None:
            fleet.apply_status(
                "models", namespace, "rank", {"stableVersion": stable}, STABLE_MANAGER, force=False
            )

    def rollout_write(patch: ModelPatch, read: Model) -> None:
        observed = observe(_version(namespace), read, [], [])
        fleet.apply_status(
            "models",
            namespace,
            "rank",
            patch.applied_to(observed).owned_wire("rollout-worker"),
            ROLLOUT_MANAGER,
            resource_version=read.metadata.resource_version,
        )

    pool_pass(stale)
    first = model()
    assert first.status is not None and first.status.stable_version == "v1"
    assert first.status.ready == "0/2"

    # The rollout worker loads v2, routes 20% to it, then promotes.
    rollout_write(ModelPatch(canary="v2", previous=""), model())
    rollout_write(ModelPatch(weights=split("v1", "v2", 20), canary="v2"), model())
    promote = ModelPatch(
        weights=(VersionWeight(version="v2", weight=100),), canary="", stable="v2", previous="v1"
    )
    rollout_write(promote, model())
    # The state manager's control block (a merge patch of its one field).
    fleet.patch_status("models", namespace, "rank", {"updates": {"epoch": 1}})

    # The pool worker, still on its stale observation: its counts land, the promote stands;
    # its first-stable apply is refused (not forced: the rollout worker owns another value).
    with pytest.raises(Conflict, match=r"stableVersion"):
        pool_pass(stale)
    after = model().status
    assert after is not None
    assert (after.stable_version, after.previous_version, after.canary_version) == (
        "v2",
        "v1",
        None,
    )
    assert after.weights == [VersionWeight(version="v2", weight=100)]
    assert after.updates is not None and after.updates.epoch == 1
    assert after.ready == "0/2" and after.conditions

    # kubectl ekko rollback flips routing itself; a rollout write decided on the Model read
    # before it is refused (Conflict), not applied over it.
    read_before = model()
    plugin.apply_model_routing(namespace, "rank", rollback_routing("v1"))
    with pytest.raises(Conflict):
        rollout_write(ModelPatch(weights=split("v1", "v2", 50), canary="v2"), read_before)
    rolled = model().status
    assert rolled is not None and rolled.weights == [VersionWeight(version="v1", weight=100)]
    assert rolled.stable_version == "v2" and rolled.updates is not None

    # Each writer owns its fields, and only those.
    owners = managers(api.get("models", "rank"))
    assert owners[POOL_MANAGER] == {
        "observedGeneration",
        "replicasWanted",
        "replicasPlaced",
        "replicasReady",
        "ready",
        "conditions",
    }
    assert owners[ROLLOUT_MANAGER] >= {"stableVersion", "canaryVersion", "previousVersion"}
    assert "weights" not in owners[ROLLOUT_MANAGER]  # the plugin took it over
    assert owners["kubectl-ekko"] == {"weights", "canaryWeight"}


def _version(namespace: str) -> ModelVersion:
    return ModelVersion.model_validate(
        {
            "kind": "ModelVersion",
            "metadata": {"name": "rank-v2", "namespace": namespace},
            "spec": {"model": "rank", "version": "v2", "artifact": {"uri": "file:///a/v2"}},
        }
    )


def test_pool_and_version_statuses_are_applied_whole_by_their_one_writer(
    cluster: Cluster, api: Api, namespace: str
) -> None:
    """A ServerPool's status has one writer (the pool worker), a ModelVersion's one (the rollout
    worker; kubectl ekko writes requests as annotations). Each is server-side applied whole under
    the writer's manager: the real workers' passes run here against the API server. What an
    operator from before wrote with merge patches (manager ekko-operator) is taken over, and a
    field the writer no longer sends is deleted, not kept; a failed pass's conditions (a merge
    patch) are taken back by the next pass."""
    import asyncio

    from ekko.kube.errors import KubeError
    from ekko.kube.fleet import FIELD_MANAGER
    from ekko.operator.peering import Gate
    from ekko.operator.rollouts import RolloutWorker
    from ekko.operator.worker import PoolWorker

    api.create(pool_manifest())
    api.create(model_manifest("rank", 1, "1Gi", 1))
    doc = _version(namespace).model_dump(by_alias=True, mode="json", exclude_none=True)
    api.create({**doc, "apiVersion": "ekko.dev/v1alpha1"})
    fleet = Fleet(cluster.api)
    gate = Gate(None, "test", 0, False, enabled=False)  # type: ignore[arg-type]

    # What an operator before server-side apply left behind, under its merge-patch manager.
    fleet.patch_status("serverpools", namespace, "pool", {"serversWanted": 9, "serversReady": 9})
    legacy = {"phase": "Progressing", "pausedUntil": "2026-01-01T00:00:00Z", "message": "old"}
    fleet.patch_status("modelversions", namespace, "rank-v2", legacy)
    # Why the writer deletes stale fields: an apply leaves another manager's field alone.
    fleet.apply_status("modelversions", namespace, "rank-v2", {"phase": "Loading"}, ROLLOUT_MANAGER)
    assert api.get("modelversions", "rank-v2")["status"]["pausedUntil"]

    pool_worker = PoolWorker((namespace, "pool"), fleet, None, gate)
    rollout_worker = RolloutWorker(
        (namespace, "rank-v2"),
        fleet,
        lambda *_: None,  # type: ignore[arg-type]  # no analysis runs: nothing is measured
        "http://prometheus.invalid",
        gate,
    )

    async def passes() -> None:
        await pool_worker.run_pass()
        await rollout_worker.run_pass()

    asyncio.run(passes())
    pool_body = api.get("serverpools", "pool")
    version_body = api.get("modelversions", "rank-v2")
    assert pool_body["status"]["serversWanted"] == 1  # the plan's, not the legacy 9
    assert "pausedUntil" not in version_body["status"]
    assert version_body["status"]["message"] != "old"
    # Taken over: a legacy field the writer sets to another value is its alone; one it sets to
    # the same value (a schema default the legacy patch caused) is shared, as server-side apply
    # does; none stays the legacy manager's alone.
    pool_owners, version_owners = managers(pool_body), managers(version_body)
    assert set(pool_owners) <= {POOL_MANAGER, FIELD_MANAGER}, pool_owners
    assert pool_owners.get(FIELD_MANAGER, set()) <= pool_owners[POOL_MANAGER]
    assert "serversWanted" not in pool_owners.get(FIELD_MANAGER, set())
    assert pool_owners[POOL_MANAGER] >= {
        "observedGeneration",
        "serversWanted",
        "serversReady",
        "plan",
        "conditions",
        "templateHash",
        "updatedServers",
        "outdatedServers",
    }
    assert set(version_owners) <= {ROLLOUT_MANAGER, FIELD_MANAGER}, version_owners
    assert version_owners.get(FIELD_MANAGER, set()) <= version_owners[ROLLOUT_MANAGER]
    assert not {"phase", "message"} & version_owners.get(FIELD_MANAGER, set())
    assert version_owners[ROLLOUT_MANAGER] >= {"observedGeneration", "phase", "conditions"}
    assert set(version_body["status"]) <= version_owners[ROLLOUT_MANAGER]

    # A failed pass says so with a merge patch of the conditions; the next pass takes them back.
    async def failed_then_pass() -> None:
        await pool_worker._report_failure(KubeError("boom"), "ReconcileFailed", "boom")
        assert FIELD_MANAGER in managers(api.get("serverpools", "pool"))
        await pool_worker.run_pass()

    asyncio.run(failed_then_pass())
    after = api.get("serverpools", "pool")
    assert managers(after).get(FIELD_MANAGER, set()) <= managers(after)[POOL_MANAGER]
    degraded = next(c for c in after["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "False"
    fleet.close()
