"""Pool and model statuses from the observed state: what a user reads in `kubectl get`, and only
the fields the pool worker owns."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from ekko.api.resources import Model, ModelStatus, ModelVersionStatus, ServerPool, ServerPoolStatus
from ekko.planning.converge import Desired
from ekko.planning.state import PoolState, ServerObs
from ekko.planning.status import (
    initial_stable,
    model_counts,
    model_status,
    orphan_status,
    pool_status,
    tally,
)

POOL = ServerPool.model_validate(
    {
        "kind": "ServerPool",
        "metadata": {"name": "p"},
        "spec": {
            "template": {"image": "engine:1"},
            "capacity": {"memory": "64Gi", "compute": 100},
            "maxServers": 4,
        },
    }
)
NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)


def ready(status: ServerPoolStatus) -> dict[str, str]:
    conditions = status.to_wire()["conditions"]
    assert isinstance(conditions, list)
    return next(c for c in conditions if c["type"] == "Ready")


def model(status: dict[str, Any] | None = None) -> Model:
    return Model.model_validate(
        {
            "kind": "Model",
            "metadata": {"name": "rank", "generation": 3},
            "spec": {
                "pool": "p",
                "version": "v1",
                "artifact": {"uri": "file:///a/v1"},
                "shards": {"count": 2, "size": "1Gi"},
                "replicas": 1,
            },
        }
        | ({"status": status} if status is not None else {})
    )


POOL_FIELDS = {
    "observedGeneration",
    "replicasWanted",
    "replicasPlaced",
    "replicasReady",
    "ready",
    "conditions",
}
ROLLOUT_FIELDS = {"stableVersion", "canaryVersion", "previousVersion", "weights", "canaryWeight"}


def test_the_pool_worker_writes_only_its_own_fields_of_a_model_never_the_stable_version() -> None:
    """The bug of issue 13: observing a model no rollout had touched yet, the pool worker wrote
    ``stableVersion: <spec.version>`` with its counts; a promote written after that observation
    was undone (on main only a resourceVersion precondition stood in the way)."""
    fresh = model()  # as the pool worker saw it: no status yet
    state = PoolState(POOL, (fresh,), (ServerObs("p-a", pod_ready=True),))
    body = model_status(state, Desired({"p-a": frozenset()}), fresh, NOW).owned_wire("pool-worker")
    assert set(body) == POOL_FIELDS
    assert (body["replicasWanted"], body["ready"], body["observedGeneration"]) == (2, "0/2", 3)
    # What the API server holds after the rollout worker promoted v2 meanwhile, then the pool
    # worker's write landed: the promote stands.
    promoted = {"stableVersion": "v2", "previousVersion": "v1", "canaryVersion": ""}
    assert ModelStatus.model_validate(promoted | body).stable_version == "v2"


def test_a_model_no_rollout_touched_records_its_spec_version_as_stable_once() -> None:
    assert initial_stable(model()) == "v1"
    assert initial_stable(model({"replicasWanted": 2})) == "v1"
    assert initial_stable(model({"stableVersion": "v2"})) is None


def test_an_orphaned_model_keeps_its_wanted_count_and_sends_every_pool_field() -> None:
    body = orphan_status(model({"replicasWanted": 2, "replicasReady": 2}), "gone", NOW).owned_wire(
        "pool-worker"
    )
    assert set(body) == POOL_FIELDS
    assert (body["replicasReady"], body["ready"]) == (0, "0/2")
    assert {c["type"]: c["reason"] for c in body["conditions"]} == {
        "Degraded": "PoolNotFound",
        "Ready": "PoolNotFound",
    }


def _nulls(value: object, path: str = "") -> list[str]:
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _nulls(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _nulls(v, f"{path}[{i}]")]
    return []


def test_an_applied_status_sends_no_null_the_schema_would_refuse() -> None:
    """A model whose generation is unknown (its pool's worker saw it through a list without one)
    got conditions with observedGeneration null: the API server refused the apply with 422 and
    the model never learnt its pool was gone (e2e test_what_the_webhook_refuses...)."""
    bare = model({"replicasWanted": 2})
    bare.metadata.generation = None
    for owner in ModelStatus.OWNERS:
        body = orphan_status(bare, "gone", NOW).owned_wire(owner)
        assert _nulls(body) == [], owner


def test_each_field_of_a_model_status_has_exactly_one_owner() -> None:
    owned = [f for fields in ModelStatus.OWNERS.values() for f in fields]
    assert len(owned) == len(set(owned))
    assert set(owned) == set(ModelStatus.model_fields)


def test_the_rollout_worker_sends_every_field_it_owns_an_absent_version_as_empty() -> None:
    """A server-side apply removes a field its manager leaves out, and the API server refuses
    null: "" says "no version" and is read back as None."""
    status = ModelStatus(stable_version="v2", weights=[])
    body = status.owned_wire("rollout-worker")
    assert body == {
        "stableVersion": "v2",
        "canaryVersion": "",
        "previousVersion": "",
        "weights": [],
        "canaryWeight": 0,
    }
    back = ModelStatus.model_validate(body)
    assert (back.canary_version, back.previous_version) == (None, None)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"stable": "v2"}, "stable\n  Extra inputs"),  # not a field (stable_version is)
        ({"canaryWeight": 5}, "Extra inputs"),  # the wire name, not the field name
        ({"canary_weight": 101}, "less than or equal to 100"),
        ({"weights": [{"version": "v1"}]}, "weight"),
    ],
)
def test_evolve_refuses_an_unknown_field_and_a_bad_value(
    changes: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        ModelStatus().evolve(**changes)


def test_evolve_refuses_a_bad_phase_of_a_model_version() -> None:
    with pytest.raises(ValidationError, match="phase"):
        ModelVersionStatus().evolve(phase="Pausing")
    assert ModelVersionStatus().evolve(phase="Paused").phase == "Paused"


def test_a_server_pod_no_node_fits_is_named_with_the_schedulers_message() -> None:
    why = "0/12 nodes are available: 12 node(s) didn't match Pod's node affinity/selector."
    state = PoolState(
        POOL,
        (),
        (
            ServerObs("p-a", pod_ready=True),
            ServerObs("p-b", pod_ready=False, unschedulable=why),
        ),
    )
    desired = Desired({"p-a": frozenset(), "p-b": frozenset()})
    cond = ready(pool_status(state, desired, None, NOW))
    assert (cond["status"], cond["reason"]) == ("False", "Unschedulable")
    assert (
        cond["message"]
        == f"1/2 servers ready; 1 server pod(s) Pending, not schedulable: p-b: {why}"
    )


def test_a_server_still_starting_is_migrating() -> None:
    state = PoolState(POOL, (), (ServerObs("p-a", pod_ready=False),))
    cond = ready(pool_status(state, Desired({"p-a": frozenset()}), None, NOW))
    assert (cond["status"], cond["reason"]) == ("False", "Migrating")


def test_counts_from_one_tally_match_each_model_counted_alone() -> None:
    """The pool worker counts every model's replicas in one walk of the servers (counting per
    model was quadratic: most of a converged pass at 600 servers). Ready counts only the first
    resident version, loaded on serving servers where the placement wants it."""
    rank = model()
    other = Model.model_validate(rank.model_dump(by_alias=True) | {"metadata": {"name": "other"}})
    servers = (
        ServerObs("p-a", pod_ready=True, loaded=frozenset({("rank", 0, "v1"), ("other", 0, "v1")})),
        ServerObs("p-b", pod_ready=True, loaded=frozenset({("rank", 1, "v1"), ("rank", 0, "v0")})),
        ServerObs("p-c", pod_ready=False, loaded=frozenset({("rank", 1, "v1")})),
        ServerObs("p-d", pod_ready=True, loaded=frozenset({("rank", 1, "v1")})),  # not placed there
    )
    state = PoolState(POOL, (rank, other), servers)
    desired = Desired(
        {
            "p-a": frozenset({("rank", 0), ("other", 0)}),
            "p-b": frozenset({("rank", 0), ("rank", 1)}),
            "p-c": frozenset({("rank", 1)}),
        }
    )
    counted = tally(state, desired)
    assert model_counts(state, desired, rank, counted) == (2, 4, 2)
    assert model_counts(state, desired, other, counted) == (2, 1, 1)
    for m in (rank, other):
        assert model_counts(state, desired, m) == model_counts(state, desired, m, counted)
