"""A server's report counts only when it comes from its current pod, on a real API server.

A server pod deleted with grace 0 is re-created under the same name. On a real cluster the old
pod's container can live on (a force delete does not wait for the kubelet): its agent goes on
writing the same-named ServerAssignment's status, loads the new assignment and reports it
loaded. Here the fleet keeps the old agent running (``AgentFleet.hold``) and starts the new
pod's agent only later: until then the operator must not count the old agent's report.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from e2e.agents import AgentFleet
from e2e.objects import Api, converged, model_manifest, pool_manifest
from e2e.operator_harness import OperatorProcess
from e2e.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _model_status(api: Api) -> dict[str, Any]:
    return api.get("models", "m").get("status") or {}


def test_the_report_of_a_deleted_pods_agent_is_not_counted(
    api: Api, fleet: AgentFleet, operator: OperatorProcess
) -> None:
    api.create(pool_manifest())
    api.create(model_manifest("m", 4, "20Gi", 2))
    wait_for(lambda: converged(api, models=["m"]), "model loaded", 90, describe=operator.logs)
    victim = api.pods()[0]
    name, old_uid = victim.metadata.name, str(victim.metadata.uid)
    fleet.hold(name)
    api.core.delete_namespaced_pod(name, api.ns, grace_period_seconds=0)
    new = wait_for(
        lambda: next(
            (
                p
                for p in api.pods()
                if p.metadata.name == name
                and str(p.metadata.uid) != old_uid
                and p.status.phase == "Running"
            ),
            None,
        ),
        "the server's pod re-created under its name",
        60,
    )
    new_uid = str(new.metadata.uid)
    assert fleet.orphans and fleet.orphans[0].alive(), "the old pod's agent runs on"

    # The old agent reports the server's shards loaded, under its own pod's UID, after the new
    # pod appeared (its next heartbeat: the report-time guards let that through) ...
    created = new.metadata.creation_timestamp

    def old_report() -> Any:
        a = next(a for a in api.assignments() if a.metadata.name == name)
        if a.status is None or a.status.heartbeat is None:
            return None
        held = {(s.model, s.shard) for s in a.status.loaded}
        wanted = {(s.model, s.shard) for s in a.spec.shards if not s.drain}
        fresh = (a.status.heartbeat - created).total_seconds() > 2
        return a.status if fresh and wanted and wanted <= held else None

    status = wait_for(old_report, "the old agent reporting the server loaded", 40)
    assert status.pod_uid == old_uid
    # ... and the operator does not count it: the server stays not loaded for as long as only
    # the old agent writes (sampled for 6 s more), and the model never shows it ready.
    samples = []
    end = time.monotonic() + 6
    while time.monotonic() < end:
        pool = api.get("serverpools", "pool").get("status") or {}
        samples.append((converged(api, models=["m"]), pool.get("serversReady")))
        time.sleep(0.5)
    assert not any(c for c, _ in samples), (samples, operator.logs()[-3000:])

    # The new pod's agent starts: it loads, reports under the new UID and everything converges;
    # the old agent sees the other UID, finds its pod replaced and stops writing.
    fleet.release(name)
    wait_for(
        lambda: (
            converged(api, models=["m"])
            and next(a for a in api.assignments() if a.metadata.name == name).status.pod_uid  # type: ignore[union-attr]
            == new_uid
        ),
        "the new agent loaded and the model converged",
        60,
        describe=operator.logs,
    )
    wait_for(
        lambda: "not writing the ServerAssignment status any more" in fleet.log_text(name),
        "the old agent to stop writing",
        30,
        describe=lambda: fleet.log_text(name)[-2000:],
    )
