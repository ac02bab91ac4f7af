"""Rollouts on a real API server with a real Prometheus scraping the agents.

Traffic goes through the agents' /infer; the agents' per-version request and error counters are
what the canary analysis queries. A fault switch on the agents makes the new version fail.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.agents import AgentFleet
from e2e.objects import Api, converged, model_manifest, pool_manifest
from e2e.operator_harness import OperatorProcess
from e2e.prometheus import Prometheus
from e2e.traffic import Traffic
from e2e.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ERROR_RATE = (
    '(sum(rate(ekko_agent_request_errors_total{model="{{model}}",version="{{version}}"}[4s])) or vector(0))'
    ' / sum(rate(ekko_agent_requests_total{model="{{model}}",version="{{version}}"}[4s]))'
)


def version_manifest(
    version: str,
    steps: list[dict[str, Any]],
    *,
    model: str = "rank",
    interval: str = "2s",
    count: int = 3,
    keep: str = "UntilNextVersion",
) -> dict[str, Any]:
    return {
        "apiVersion": "ekko.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {"name": f"{model}-{version}"},
        "spec": {
            "model": model,
            "version": version,
            "artifact": {"uri": f"file:///artifacts/{model}/{version}"},
            "keepPrevious": keep,
            "strategy": {"canary": {"steps": steps}},
            "analysis": [
                {
                    "name": "error-rate",
                    "query": ERROR_RATE,
                    "successCondition": "result < 0.05",
                    "interval": interval,
                    "count": count,
                    "failureLimit": 0,
                    "inconclusiveLimit": 2,
                    "noData": "Hold",
                }
            ],
        },
    }


@pytest.fixture
def fleet(cluster: Any, namespace: str, prometheus: Prometheus) -> Iterator[AgentFleet]:
    with AgentFleet(cluster.kubeconfig, namespace) as agents, prometheus.follow(agents):
        yield agents


@pytest.fixture
def operator(prometheus_operator: OperatorProcess) -> OperatorProcess:
    """The operator with --prometheus-url (the conftest fixture has none)."""
    return prometheus_operator


def ports(fleet: AgentFleet) -> list[int]:
    return [fleet.port(p) for p in fleet.pods()]


def placed_model(api: Api, operator: OperatorProcess) -> None:
    api.create(pool_manifest())
    api.create(model_manifest("rank", 8, "8Gi", 2, slo="standard", load="5") | {})
    api.patch("models", "rank", {"spec": {"keepPreviousResident": True}})
    wait_for(
        lambda: converged(api, models=["rank"]),
        "model placed and loaded",
        timeout=120,
        describe=operator.logs,
    )


def phase(api: Api, name: str) -> str:
    return (api.get("modelversions", name).get("status") or {}).get("phase", "")


def versions_loaded(api: Api, model: str = "rank") -> set[str]:
    return {
        s.version
        for a in api.assignments()
        for s in (a.status.loaded if a.status else [])
        if s.model == model
    }


def test_a_healthy_canary_walks_its_steps_promotes_and_retention_decides_unloading(
    api: Api, fleet: AgentFleet, operator: OperatorProcess, prometheus: Prometheus
) -> None:
    placed_model(api, operator)
    with Traffic(lambda: ports(fleet), "rank") as traffic:
        steps = [
            {"setWeight": 25},
            {"analysis": {}},
            {"setWeight": 60},
            {"pause": {"duration": "2s"}},
            {"setWeight": 100},
        ]
        api.create(version_manifest("v2", steps))
        wait_for(
            lambda: phase(api, "rank-v2") == "Promoted",
            "v2 promoted",
            timeout=120,
            describe=lambda: (
                api.get("modelversions", "rank-v2").get("status"),
                operator.logs()[-2000:],
            ),
        )
        status = api.get("modelversions", "rank-v2")["status"]
        assert (
            status["analysis"][0]["phase"] == "Successful" and status["analysis"][0]["failed"] == 0
        )
        model = api.get("models", "rank")["status"]
        assert model["stableVersion"] == "v2" and model["previousVersion"] == "v1"
        assert model["weights"] == [{"version": "v2", "weight": 100}]
        # UntilNextVersion: v1 stays loaded next to v2 everywhere, ready for an instant rollback.
        wait_for(
            lambda: versions_loaded(api) == {"v1", "v2"}, "v1 and v2 both resident", timeout=30
        )

        # A next version that keeps nothing: once promoted, only it remains loaded.
        api.create(version_manifest("v3", [{"setWeight": 50}, {"setWeight": 100}], keep="Never"))
        wait_for(
            lambda: phase(api, "rank-v3") == "Promoted",
            "v3 promoted",
            timeout=120,
            describe=operator.logs,
        )
        wait_for(
            lambda: versions_loaded(api) == {"v3"},
            "only v3 resident",
            timeout=60,
            describe=lambda: versions_loaded(api),
        )
    assert traffic.results[("ok", 200)] > 100
    assert sum(n for (kind, _), n in traffic.results.items() if kind != "ok") == 0, traffic.results


def test_a_faulty_canary_is_rolled_back_automatically_within_seconds(
    api: Api, fleet: AgentFleet, operator: OperatorProcess, prometheus: Prometheus
) -> None:
    # The fault is set before any server exists, so every agent that will serve v2 starts after
    # it: a fault that only reached the agents running at the time let a faulty canary on newer
    # servers pass analysis (the root cause of a faulty version promoted in `make demo`).
    fleet.set_fault("v2", error_rate=0.2)
    placed_model(api, operator)
    with Traffic(lambda: ports(fleet), "rank", rate=60):
        api.create(
            version_manifest(
                "v2",
                [{"setWeight": 20}, {"analysis": {}}, {"setWeight": 100}],
                interval="5s",
                count=6,
            )
        )
        wait_for(
            lambda: (
                phase(api, "rank-v2") == "Progressing"
                and api.get("modelversions", "rank-v2")["status"]["currentStep"] == 1
            ),
            "analysis step started",
            timeout=90,
            describe=operator.logs,
        )
        analysis_start = dt.datetime.fromisoformat(
            api.get("modelversions", "rank-v2")["status"]["stepStartedAt"]
        )
        wait_for(
            lambda: phase(api, "rank-v2") == "RolledBack",
            "automatic rollback",
            timeout=60,
            describe=lambda: api.get("modelversions", "rank-v2").get("status"),
        )
        status = wait_for(
            lambda: (
                (s := api.get("modelversions", "rank-v2")["status"]).get("rollbackSeconds")
                is not None
                and s
            ),
            "rollback completion recorded",
            timeout=30,
        )
    detected = dt.datetime.fromisoformat(status["rollbackRequestedAt"])
    detection_seconds = (detected - analysis_start).total_seconds()
    assert detection_seconds <= 15, detection_seconds
    assert 0 < status["rollbackSeconds"] <= 2.0, status["rollbackSeconds"]
    assert "error-rate failed" in status["message"]
    assert api.get("models", "rank")["status"]["weights"] == [{"version": "v1", "weight": 100}]
    # Every agent routes all traffic to v1 now.
    for port in ports(fleet):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/infer?model=rank", timeout=5) as r:
            assert json.load(r)["version"] == "v1"
    applied = [
        str(r.applied_at)
        for a in api.assignments()
        for r in (a.status.routing if a.status else [])
        if r.model == "rank"
    ]
    print(
        f"\nrollout e2e: detected {detection_seconds:.1f}s after analysis start; rollback applied in"
        f" {status['rollbackSeconds']}s (requested {status['rollbackRequestedAt']}, completed"
        f" {status['rollbackCompletedAt']}, agents {sorted(applied)})"
    )


def test_a_rollback_requested_while_the_operator_restarts_completes(
    api: Api, fleet: AgentFleet, operator: OperatorProcess, prometheus: Prometheus
) -> None:
    placed_model(api, operator)
    api.create(version_manifest("v2", [{"setWeight": 30}, {"pause": {}}]))
    wait_for(
        lambda: phase(api, "rank-v2") == "Paused",
        "canary paused at 30%",
        timeout=90,
        describe=operator.logs,
    )
    operator.stop(hard=True)
    at = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    api.patch(
        "modelversions",
        "rank-v2",
        {"metadata": {"annotations": {"ekko.dev/request": "rollback", "ekko.dev/request-at": at}}},
    )
    operator.start()
    wait_for(
        lambda: phase(api, "rank-v2") == "RolledBack",
        "rollback after restart",
        timeout=60,
        describe=operator.logs,
    )
    status = wait_for(
        lambda: (
            (s := api.get("modelversions", "rank-v2")["status"]).get("rollbackSeconds") is not None
            and s
        ),
        "rollback completion recorded",
        timeout=30,
    )
    assert status["rollbackRequestedAt"].startswith(at[:19])
    for a in api.assignments():
        routing = next(r for r in a.status.routing if r.model == "rank")  # type: ignore[union-attr]
        assert [(w.version, w.weight) for w in routing.weights] == [("v1", 100)]


def test_a_version_of_an_unknown_model_fails_clearly_and_the_stable_version_serves_on(
    api: Api, fleet: AgentFleet, operator: OperatorProcess, prometheus: Prometheus
) -> None:
    placed_model(api, operator)
    api.create(version_manifest("v2", [{"setWeight": 10}], model="ghost") | {})
    wait_for(
        lambda: phase(api, "ghost-v2") == "Failed",
        "unknown model fails",
        timeout=60,
        describe=operator.logs,
    )
    status = api.get("modelversions", "ghost-v2")["status"]
    assert "model ghost does not exist" in status["message"]
    assert converged(api, models=["rank"])
    assert api.get("models", "rank")["status"].get("weights") in (None, [])
