"""Pool status from the observed state: what a user reads in `kubectl get serverpools`."""

from __future__ import annotations

from datetime import UTC, datetime

from ekko.api.resources import ServerPool
from ekko.planning.converge import Desired
from ekko.planning.state import PoolState, ServerObs
from ekko.planning.status import pool_status

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


def ready(status: dict[str, object]) -> dict[str, str]:
    conditions = status["conditions"]
    assert isinstance(conditions, list)
    return next(c for c in conditions if c["type"] == "Ready")


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
