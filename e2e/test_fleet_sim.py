"""The light fleet simulator (issue 18): 50 agents' control loops in one process bring a pool to
Ready through the real operator, and a replaced pod gets a new agent.

``python -m ekko.agent.fleet`` runs the agent's own loop (``Agent``, its status writer and
heartbeat) per server pod, fed by shared watches; the operator cannot tell it from 50 agent
processes. The checks below are what the operator counts: every assignment's ``loaded`` equals
its spec, and every report carries the UID of its current pod.
"""

from __future__ import annotations

import pytest

from e2e.agents import SimFleetProcess
from e2e.conftest import Cluster
from e2e.objects import Api, converged, model_manifest, pool_manifest
from e2e.operator_harness import OperatorProcess
from e2e.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

SERVERS = 50


def _reports_current_pods(api: Api) -> bool:
    pods = {p.metadata.name: str(p.metadata.uid) for p in api.pods()}
    assignments = api.assignments()
    return len(assignments) == SERVERS and all(
        a.status is not None and a.status.pod_uid == pods.get(a.metadata.name) for a in assignments
    )


def test_fifty_simulated_agents_in_one_process_bring_a_pool_to_ready(
    api: Api, namespace: str, operator: OperatorProcess, cluster: Cluster
) -> None:
    with SimFleetProcess(cluster.kubeconfig, namespace, heartbeat_seconds=5) as fleet:
        api.create(pool_manifest(max_servers=SERVERS + 10))
        # One 40 GiB shard per 64 GiB server: the plan needs exactly SERVERS servers.
        api.create(model_manifest("wide", SERVERS, "40Gi", 1))

        def describe() -> str:
            return f"fleet log: {fleet.logs()[-1500:]}\noperator: {operator.logs()[-1500:]}"

        wait_for(
            lambda: converged(api, models=["wide"]),
            f"{SERVERS} servers loaded by the simulated agents",
            300,
            interval=1,
            describe=describe,
        )
        assert fleet.alive(), "one process ran every agent"
        assert len(api.assignments()) == SERVERS
        wait_for(lambda: _reports_current_pods(api), "every report from its current pod", 30)

        # A server pod replaced under its name: the fleet stops the old agent and starts one
        # for the new pod, which loads the shard again and reports with the new UID.
        victim = api.pods()[0]
        name, old_uid = victim.metadata.name, str(victim.metadata.uid)
        api.core.delete_namespaced_pod(name, api.ns, grace_period_seconds=0)
        wait_for(
            lambda: any(
                p.metadata.name == name and str(p.metadata.uid) != old_uid for p in api.pods()
            ),
            "the pod re-created",
            60,
        )
        wait_for(
            lambda: _reports_current_pods(api) and converged(api, models=["wide"]),
            "the new pod's agent reported the shard loaded",
            120,
            interval=1,
            describe=describe,
        )
        assert fleet.alive()
