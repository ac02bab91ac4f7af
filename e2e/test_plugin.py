"""``kubectl ekko`` against a real API server, the operator and one agent per server.

The plugin runs as a subprocess (as kubectl would run it) with KUBECONFIG pointing at the test
cluster. A model of 20 shards × 1 replica is spread over 20 servers (a 20Gi shard plus the 20Gi
reserved for a second resident version do not fit twice on a 64Gi server), so a rollback has
20 agents to reach.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import pytest

from e2e.agents import AgentFleet
from e2e.objects import Api, G, V, converged, model_manifest, pool_manifest
from e2e.operator_harness import REPO, OperatorProcess
from e2e.waiting import wait_for

# 20 agent processes start here: on a loaded 2-core machine that alone took a minute, and the
# placement wait below allows 240 s, which the default 120 s test timeout cut short.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

MODEL = "rank"
SERVERS = 20


def kubectl_ekko(
    cluster: Any, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if cluster.kubeconfig:
        env["KUBECONFIG"] = cluster.kubeconfig
    proc = subprocess.run(
        [sys.executable, "-m", "ekko.cli.kubectl_ekko", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    sys.stderr.write(
        f"$ kubectl ekko {' '.join(args)}  (exit {proc.returncode})\n{proc.stdout}{proc.stderr}"
    )
    return proc


def spread_model() -> dict[str, Any]:
    doc = model_manifest(MODEL, SERVERS, "20Gi", 1, load="1")
    doc["spec"]["keepPreviousResident"] = True
    return doc


def canary_version(name: str = f"{MODEL}-v2", version: str = "v2") -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "ModelVersion",
        "metadata": {"name": name},
        "spec": {
            "model": MODEL,
            "version": version,
            "artifact": {"uri": f"file:///artifacts/{MODEL}/{version}"},
            "strategy": {"canary": {"steps": [{"setWeight": 30}, {"pause": {}}]}},
        },
    }


def mv_status(api: Api, name: str = f"{MODEL}-v2") -> dict[str, Any]:
    return api.get("modelversions", name).get("status") or {}


def routing_of(api: Api) -> dict[str, list[tuple[str, int]]]:
    """Each server's applied weights for the model, as its agent reports them."""
    out = {}
    for a in api.assignments():
        if not any(s.model == MODEL for s in a.spec.shards):
            continue
        routing = next(
            (r for r in (a.status.routing if a.status else []) if r.model == MODEL), None
        )
        out[a.metadata.name] = (
            sorted((w.version, w.weight) for w in routing.weights) if routing else []
        )
    return out


def paused_canary(api: Api, fleet: AgentFleet) -> None:
    """A 20-server model with v2 paused at 30% on every agent."""
    api.create(pool_manifest(max_servers=SERVERS + 4))
    api.create(spread_model())
    wait_for(
        lambda: converged(api, models=[MODEL]) and len(api.assignments()) == SERVERS,
        f"{MODEL} placed on {SERVERS} servers and loaded",
        timeout=240,
        interval=1,
        describe=lambda: (len(api.assignments()), api.get("models", MODEL).get("status")),
    )
    api.create(canary_version())
    wait_for(
        lambda: mv_status(api).get("phase") == "Paused" and mv_status(api).get("weight") == 30,
        "v2 paused at 30%",
        timeout=240,
        interval=1,
        describe=lambda: mv_status(api),
    )
    want = [("v1", 70), ("v2", 30)]
    wait_for(
        lambda: all(r == want for r in routing_of(api).values()),
        "every agent applying v1 70% / v2 30%",
        timeout=30,
        describe=lambda: routing_of(api),
    )
    assert len(fleet.pods()) == SERVERS


def recorded(api: Api) -> dict[str, Any] | None:
    """The ModelVersion's status once the operator recorded the rollback's time."""
    status = mv_status(api)
    return status if status.get("rollbackSeconds") is not None else None


def rolled_back_everywhere(api: Api) -> bool:
    routing = routing_of(api)
    return len(routing) == SERVERS and all(r == [("v1", 100)] for r in routing.values())


def measured_seconds(stdout: str) -> tuple[float, float]:
    """(request to the last appliedAt, request to seen applied everywhere) from the plugin."""
    found = re.search(
        r"on (\d+) servers in ([0-9.]+)s .*; seen applied on every server ([0-9.]+)s", stdout
    )
    assert found, stdout
    assert int(found.group(1)) == SERVERS, stdout
    return float(found.group(2)), float(found.group(3))


def test_status_and_rollback_of_a_paused_canary_over_20_servers(
    cluster: Any, namespace: str, api: Api, fleet: AgentFleet, operator: OperatorProcess
) -> None:
    paused_canary(api, fleet)

    status = kubectl_ekko(cluster, "status", MODEL, "-n", namespace)
    assert status.returncode == 0, status.stderr
    for text in ("Paused", "v1 70% / v2 30%", "2/2 pause (until promoted)", "20/20 loaded"):
        assert text in status.stdout
    listing = kubectl_ekko(cluster, "-n", namespace, "status")
    assert listing.returncode == 0 and MODEL in listing.stdout and "Paused" in listing.stdout

    refused = kubectl_ekko(cluster, "resume", MODEL, "-n", namespace)
    assert refused.returncode == 1
    assert "waits for promote, not resume" in refused.stderr

    done = kubectl_ekko(cluster, "rollback", MODEL, "-n", namespace, "--wait", "--timeout", "60s")
    assert done.returncode == 0, done.stdout + done.stderr
    plugin_seconds = measured_seconds(done.stdout)
    assert rolled_back_everywhere(api), routing_of(api)

    final = wait_for(
        lambda: recorded(api),
        "the operator's rollbackSeconds",
        timeout=30,
        describe=lambda: mv_status(api),
    )
    assert final["phase"] == "RolledBack"
    model = api.get("models", MODEL)["status"]
    assert model["weights"] == [{"version": "v1", "weight": 100}]
    assert not model.get("canaryVersion")
    sys.stderr.write(
        f"rollback over {SERVERS} servers: plugin measured {plugin_seconds[0]:.3f}s to the last"
        f" appliedAt, {plugin_seconds[1]:.3f}s until seen everywhere,"
        f" operator rollbackSeconds {final['rollbackSeconds']:.3f}s\n"
    )
    assert final["rollbackSeconds"] < 10


def test_rollback_while_the_operator_is_down(
    cluster: Any, namespace: str, api: Api, fleet: AgentFleet, operator: OperatorProcess
) -> None:
    paused_canary(api, fleet)
    operator.stop()

    done = kubectl_ekko(cluster, "rollback", MODEL, "-n", namespace, "--wait", "--timeout", "60s")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "has not recorded the rollback yet" in done.stdout
    plugin_seconds = measured_seconds(done.stdout)
    assert rolled_back_everywhere(api), routing_of(api)
    assert mv_status(api)["phase"] == "Paused"  # nobody recorded it yet

    operator.start()
    final = wait_for(
        lambda: recorded(api),
        "the restarted operator recording the rollback",
        timeout=60,
        describe=lambda: mv_status(api),
    )
    assert final["phase"] == "RolledBack"
    assert rolled_back_everywhere(api), routing_of(api)
    sys.stderr.write(
        f"rollback with the operator down: plugin measured {plugin_seconds[0]:.3f}s to the last"
        f" appliedAt, {plugin_seconds[1]:.3f}s until seen everywhere,"
        f" operator rollbackSeconds {final['rollbackSeconds']:.3f}s (recorded after restart)\n"
    )


def test_refusals(cluster: Any, namespace: str, api: Api) -> None:
    unknown = kubectl_ekko(cluster, "rollback", "nope", "-n", namespace)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == (
        f'kubectl ekko: model "nope" not found in namespace "{namespace}"'
    )
    assert "Traceback" not in unknown.stderr

    api.create(pool_manifest())
    api.create(model_manifest("solo", 1, "1Gi", 1))
    nothing = kubectl_ekko(cluster, "rollback", "solo", "-n", namespace, "--wait")
    assert nothing.returncode == 1
    assert "nothing to roll back to" in nothing.stderr
    assert "Traceback" not in nothing.stderr
    promote = kubectl_ekko(cluster, "promote", "solo", "-n", namespace)
    assert promote.returncode == 1 and "no rollout in progress" in promote.stderr
    # The refusals wrote nothing: the Model's status is still the operator-less empty one.
    assert not api.get("models", "solo").get("status")
