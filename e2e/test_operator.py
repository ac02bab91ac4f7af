"""The operator on a real API server: placement, make-before-break re-plans, restarts, bad models.

Each test runs the operator as a process (`python -m ekko.operator`) scoped to its namespace and
one agent process per server pod (kwok runs no containers; the agent code is the same as in a pod).
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from typing import Any

import pytest

from e2e.agents import AgentFleet, free_port
from e2e.objects import (
    FOUR_MODELS,
    Api,
    cluster_plan_violations,
    converged,
    model_manifest,
    pool_manifest,
    serving_replicas,
)
from e2e.operator_harness import OperatorProcess
from e2e.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

log = logging.getLogger("e2e.operator")


def test_pool_and_four_models_are_placed_loaded_and_valid(
    api: Api, fleet: AgentFleet, operator: OperatorProcess
) -> None:
    api.create(pool_manifest())
    for m in FOUR_MODELS:
        api.create(m)
    names = [m["metadata"]["name"] for m in FOUR_MODELS]
    wait_for(
        lambda: converged(api, models=names),
        "pool and models Ready with every shard loaded",
        timeout=90,
        describe=lambda: (api.get("serverpools", "pool").get("status"), operator.logs()[-3000:]),
    )
    pool = api.get("serverpools", "pool")["status"]
    assert pool["plan"]["status"] in ("Optimal", "Feasible")
    assert pool["serversWanted"] == pool["serversReady"] == pool["plan"]["serversUsed"]
    assert pool["plan"]["serversUsed"] >= pool["plan"]["lowerBound"] >= 1
    assert len(api.pods()) == pool["serversWanted"]
    assert all(p.status.phase == "Running" and p.spec.node_name for p in api.pods())
    assert cluster_plan_violations(api) == []
    serving = serving_replicas(api)
    for m in FOUR_MODELS:
        spec = m["spec"]
        for i in range(spec["shards"]["count"]):
            assert serving[(m["metadata"]["name"], i)] == spec["replicas"]
    ranking = api.get("models", "ranking")["status"]
    assert ranking["ready"] == "12/12"
    assert ranking["stableVersion"] == "v1"


def test_replan_moves_make_before_break_and_a_restart_moves_nothing(
    api: Api, fleet: AgentFleet, operator: OperatorProcess
) -> None:
    api.create(pool_manifest())
    models = [
        model_manifest("a", 6, "10Gi", 1),
        model_manifest("b", 4, "16Gi", 2),
        model_manifest("c", 8, "4Gi", 1),
    ]
    for m in models:
        api.create(m)
    wait_for(
        lambda: converged(api, models=["a", "b", "c"]),
        "first placement loaded",
        timeout=90,
        describe=operator.logs,
    )
    minimum = (
        {("a", i): 1 for i in range(6)}
        | {("b", i): 2 for i in range(4)}
        | {("c", i): 1 for i in range(8)}
    )

    dips: list[str] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            serving = serving_replicas(api)
            for key, need in minimum.items():
                if serving[key] < need:
                    dips.append(f"{key}: {serving[key]} < {need}")
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        # More replicas for a, bigger shards for c: the placement must change.
        api.patch("models", "a", {"spec": {"replicas": 2}})
        api.patch("models", "c", {"spec": {"shards": {"size": "12Gi"}}})
        minimum |= {("a", i): 1 for i in range(6)}
        wait_for(
            lambda: (
                converged(api, models=["a", "b", "c"])
                and api.get("models", "a")["status"]["ready"] == "12/12"
            ),
            "re-plan converged",
            timeout=120,
            describe=lambda: (
                api.get("serverpools", "pool").get("status"),
                operator.logs()[-3000:],
            ),
        )
    finally:
        stop.set()
        sampler.join(timeout=5)
    assert dips == [], dips[:10]
    assert cluster_plan_violations(api) == []
    plan = api.get("serverpools", "pool")["status"]["plan"]
    assert plan["replicasMoved"] >= 6  # at least a's new replicas

    before_pods = {p.metadata.name: p.metadata.uid for p in api.pods()}
    before_specs = {a.metadata.name: a.spec for a in api.assignments()}
    operator.stop(hard=True)
    operator.start()
    wait_for(
        lambda: "resumed the recorded plan" in operator.logs(),
        "operator resumed",
        timeout=60,
        describe=operator.logs,
    )
    time.sleep(3)  # give a wrong operator time to churn
    assert {p.metadata.name: p.metadata.uid for p in api.pods()} == before_pods
    assert {a.metadata.name: a.spec for a in api.assignments()} == before_specs


def test_an_unplaceable_model_is_explained_and_the_rest_untouched(
    api: Api, fleet: AgentFleet, operator: OperatorProcess
) -> None:
    api.create(pool_manifest())
    api.create(model_manifest("good", 4, "10Gi", 2))
    wait_for(
        lambda: converged(api, models=["good"]),
        "good model loaded",
        timeout=90,
        describe=operator.logs,
    )
    before = {a.metadata.name: a.spec for a in api.assignments()}
    api.create(model_manifest("huge", 2, "80Gi", 1))
    cond = wait_for(
        lambda: (c := api.condition("models", "huge")) and c["reason"] == "Unplaceable" and c,
        "huge model marked Unplaceable",
        timeout=60,
        describe=operator.logs,
    )
    assert cond["status"] == "False"
    assert "huge/0 needs 80" in cond["message"] and "hold 64" in cond["message"], cond["message"]
    degraded = api.condition("serverpools", "pool", "Degraded")
    assert degraded is not None and degraded["status"] == "True" and "huge" in degraded["message"]
    assert {a.metadata.name: a.spec for a in api.assignments()} == before
    assert api.condition("models", "good")["status"] == "True"  # type: ignore[index]


def test_a_lost_server_is_recreated_and_reloaded(
    api: Api, fleet: AgentFleet, operator: OperatorProcess
) -> None:
    api.create(pool_manifest())
    api.create(model_manifest("m", 4, "20Gi", 2))
    wait_for(
        lambda: converged(api, models=["m"]), "model loaded", timeout=90, describe=operator.logs
    )
    victim = api.pods()[0].metadata.name
    uid = api.pods()[0].metadata.uid
    api.core.delete_namespaced_pod(victim, api.ns, grace_period_seconds=0)
    start = time.monotonic()
    wait_for(
        lambda: (
            any(p.metadata.name == victim and p.metadata.uid != uid for p in api.pods())
            and converged(api, models=["m"])
        ),
        "lost server recreated and reloaded",
        timeout=60,
        describe=operator.logs,
    )
    recovery = time.monotonic() - start
    assert recovery < 30, recovery
    # Shards kept at least one replica throughout is not claimable for a killed pod (it held
    # one of two); what matters is that each shard is back to two.
    serving = serving_replicas(api)
    assert all(serving[("m", i)] == 2 for i in range(4))


def test_two_operators_with_one_peering_act_as_one_and_fail_over(
    cluster: Any, api: Api, fleet: AgentFleet, namespace: str
) -> None:
    api.custom.create_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings", {
            "apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "ekko"},
        },
    )  # fmt: skip
    with (
        OperatorProcess(cluster.kubeconfig, namespace, ("--priority", "10")) as high,
        OperatorProcess(cluster.kubeconfig, namespace, ("--priority", "1")) as low,
    ):
        wait_for(
            lambda: "Pausing operations in favour of" in low.logs(),
            "the lower-priority operator to pause",
            timeout=60,
            describe=low.logs,
        )
        api.create(pool_manifest())
        api.create(model_manifest("a", 4, "8Gi", 2))
        wait_for(lambda: converged(api, models=["a"]), "placed by one operator", timeout=90,
                 describe=high.logs)  # fmt: skip
        assert "Planned" in high.logs() and "Planned" not in low.logs()
        high.stop()  # a graceful exit leaves the peering: the other takes over
        api.create(model_manifest("b", 2, "8Gi", 1))
        wait_for(lambda: converged(api, models=["a", "b"]), "placed after fail-over", timeout=120,
                 describe=low.logs)  # fmt: skip
        assert "Planned" in low.logs()


def test_sigterm_stops_the_operator_within_a_pods_grace_period(
    api: Api, fleet: AgentFleet, operator: OperatorProcess
) -> None:
    """A pod's operator gets SIGTERM on every rollout of the chart and on node drains, then
    SIGKILL after the grace period (30 s by default). Its informers' watches are silent reads of a
    minute; stopping them used to wait for each in turn (144 s with seven kinds)."""
    api.create(pool_manifest())
    api.create(model_manifest("a", 2, "8Gi", 1))
    wait_for(lambda: converged(api, models=["a"]), "placed", timeout=90, describe=operator.logs)
    time.sleep(2)  # every informer is in its watch now, and silent
    took = operator.stop(grace=60)
    assert operator.proc is not None
    log.info("the operator exited %.1fs after SIGTERM (code %s)", took, operator.proc.returncode)
    assert operator.proc.returncode == 0, operator.logs()[-3000:]
    assert took < 25, f"the operator took {took:.1f}s to exit after SIGTERM"
    assert "Traceback" not in operator.logs(), operator.logs()[-3000:]


def test_a_hot_standby_takes_over_from_a_crashed_operator(
    cluster: Any, api: Api, fleet: AgentFleet, namespace: str
) -> None:
    """What the chart runs with operator.replicas > 1: every replica has --peering and
    --priority=auto, the longest-running one acts and the others wait. The acting one is killed
    (SIGKILL: no goodbye, its peering entry stays until it expires) and the standby carries on."""
    args = ("--peering", "--priority", "auto")
    with OperatorProcess(cluster.kubeconfig, namespace, args) as first:
        api.create(pool_manifest())
        api.create(model_manifest("a", 4, "8Gi", 2))
        wait_for(lambda: converged(api, models=["a"]), "placed by the first operator", timeout=90,
                 describe=first.logs)  # fmt: skip
        with OperatorProcess(cluster.kubeconfig, namespace, args) as standby:
            wait_for(
                lambda: "Pausing operations in favour of" in standby.logs(),
                "the younger operator to wait as a standby",
                timeout=60,
                describe=standby.logs,
            )
            assert "Pausing operations" not in first.logs()  # a newcomer never preempts
            first.stop(hard=True)
            killed = time.monotonic()
            api.create(model_manifest("b", 2, "8Gi", 1))
            wait_for(lambda: converged(api, models=["a", "b"]), "placed by the standby",
                     timeout=120, describe=standby.logs)  # fmt: skip
            log.info("standby placed a new model %.1fs after the acting operator was killed",
                     time.monotonic() - killed)  # fmt: skip
            assert "Resuming operations" in standby.logs() and "Planned" in standby.logs()


def test_a_lost_node_is_replaced_without_leaving_a_shard_unserved(
    cluster: Any, api: Api, fleet: AgentFleet, operator: OperatorProcess
) -> None:
    from e2e.cluster import control

    if not cluster.managed:
        pytest.skip("deletes and re-creates a node of the local fleet; not on a user's cluster")
    api.create(pool_manifest())
    api.create(model_manifest("m", 6, "20Gi", 2))
    wait_for(
        lambda: converged(api, models=["m"]), "model loaded", timeout=90, describe=operator.logs
    )
    node = api.pods()[0].spec.node_name
    lost = {p.metadata.name for p in api.pods() if p.spec.node_name == node}
    dips: list[str] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            serving = serving_replicas(api)
            dips.extend(f"m/{i}" for i in range(6) if serving[("m", i)] < 1)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        api.core.delete_node(node)
        wait_for(
            lambda: (
                all(
                    p.spec.node_name not in (None, node)
                    for p in api.pods()
                    if p.metadata.name in lost
                )
                and converged(api, models=["m"])
                and all(serving_replicas(api)[("m", i)] == 2 for i in range(6))
            ),
            f"servers of node {node} replaced and reloaded",
            timeout=120,
            describe=operator.logs,
        )
    finally:
        stop.set()
        sampler.join(timeout=5)
        # Give the node back to the rest of the session.
        api.core.create_node(next(n for n in control.load_fleet() if n["metadata"]["name"] == node))
    assert dips == [], dips[:10]


def test_a_deleted_model_is_unloaded_and_its_servers_freed(
    api: Api, fleet: AgentFleet, operator: OperatorProcess
) -> None:
    api.create(pool_manifest())
    api.create(model_manifest("keep", 2, "20Gi", 1))
    api.create(model_manifest("gone", 6, "40Gi", 1))
    wait_for(
        lambda: converged(api, models=["keep", "gone"]),
        "both loaded",
        timeout=90,
        describe=operator.logs,
    )
    before = len(api.pods())
    api.custom.delete_namespaced_custom_object("ekko.dev", "v1alpha1", api.ns, "models", "gone")
    wait_for(
        lambda: (
            converged(api, models=["keep"])
            and not any(
                s.model == "gone"
                for a in api.assignments()
                for s in [*a.spec.shards, *(a.status.loaded if a.status else [])]
            )
            and len(api.pods()) < before
        ),
        "gone unloaded everywhere and its servers deleted",
        timeout=90,
        describe=lambda: (before, len(api.pods()), operator.logs()[-2000:]),
    )
    assert all(serving_replicas(api)[("keep", i)] == 1 for i in range(2))


def _operator_metrics(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The operator's /metrics as {(name, labels): value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        pairs = frozenset(
            tuple(p.split("=", 1)) for p in labels.rstrip("}").replace('"', "").split(",") if p
        )
        out[(name, pairs)] = float(value)  # type: ignore[arg-type]
    return out


def _requests(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], verb: str
) -> dict[str, float]:
    """The operator's API requests of one verb, by resource."""
    return {
        dict(labels)["resource"]: v for (n, labels), v in metrics.items()
        if n == "ekko_api_requests_total" and ("verb", verb) in labels
    }  # fmt: skip


def _passes(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> float:
    return sum(v for (n, _), v in metrics.items() if n == "ekko_pool_passes_total")


def test_a_converged_pool_lists_nothing_for_heartbeats_and_status_changes(
    cluster: Any, api: Api, fleet: AgentFleet, namespace: str
) -> None:
    """Issue 18: the pool worker observes from its cache, so a pass after an assignment event
    (and every agent heartbeat meanwhile) costs no list: the cache's watches carry the change.
    The only read is the peering gate's GET of the peering object (at most one a second).
    Counted by the operator's own request counter."""
    port = free_port()
    args = ("--metrics-port", str(port), "--metrics-address", "127.0.0.1")
    with OperatorProcess(cluster.kubeconfig, namespace, args) as operator:
        api.create(pool_manifest())
        api.create(model_manifest("m", 4, "8Gi", 2))
        wait_for(lambda: converged(api, models=["m"]), "model loaded", timeout=90,
                 describe=operator.logs)  # fmt: skip
        before = _operator_metrics(port)
        # The cache's first lists and its watches: the counter counts.
        assert {"pods", "serverassignments", "nodes", "models"} <= set(_requests(before, "list"))
        assert _requests(before, "watch")
        target = api.assignments()[0].metadata.name
        passes = _passes(before)
        # A status-only change an agent could make (not a heartbeat): it wakes the pool.
        api.custom.patch_namespaced_custom_object_status(
            "ekko.dev", "v1alpha1", namespace, "serverassignments", target,
            {"status": {"message": "e2e: a status-only change"}},
        )  # fmt: skip
        wait_for(
            lambda: _passes(_operator_metrics(port)) > passes,
            "a pass after the assignment's status change",
            timeout=60,
            describe=operator.logs,
        )
        after = _operator_metrics(port)
        assert _requests(after, "list") == _requests(before, "list")
        gets = _requests(after, "get")
        new_gets = {r: n - _requests(before, "get").get(r, 0) for r, n in gets.items()}
        assert {r for r, n in new_gets.items() if n} <= {"kopfpeerings"}, new_gets
        assert converged(api, models=["m"])
