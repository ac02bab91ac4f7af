"""Ekko on a real kubelet: server pods with the real agent sidecar from the locally built image.

kwok nodes never start a container, so everything between "the pod is bound" and "the agent
reports its shards" is untested there: the image (Python, numpy's libstdc++), the agent's listen
address against the kubelet's probes, in-cluster credentials through the `kubernetes` Service,
the agent ServiceAccount's RBAC as the chart grants it, and restarts. These tests run the
operator as a host process (as the other e2e tests do) and the server pods on the real node
(``python -m e2e.cluster up --real-node``); they are skipped when that node is not up, unless
``--real-node`` asks the suite to start it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e import helmtools
from e2e.cluster import control, realnode
from e2e.conftest import Cluster
from e2e.image import build as image
from e2e.objects import Api, converged, model_manifest, pool_manifest
from e2e.operator_harness import OperatorProcess
from e2e.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.realnode, pytest.mark.timeout(900)]

TIMINGS = Path("/tmp/ekko-realnode-timings.json")  # read by docs/control-plane.md's numbers
TOLERATION = {"key": realnode.NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}


def _record(name: str, value: Any) -> None:
    data = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    data[name] = value
    TIMINGS.write_text(json.dumps(data, indent=1))


@pytest.fixture(scope="module")
def ekko_image(real_node: str) -> str:
    """The Ekko image of the current sources, imported into the real node's containerd."""
    started = time.monotonic()
    archive, ref = image.build_ekko()
    built = time.monotonic()
    image.import_image(archive, ref)
    _record("image_build_or_cache_s", round(built - started, 1))
    _record("image_import_s", round(time.monotonic() - built, 1))
    return ref


def _agent_rbac(namespace: str) -> str:
    """The chart's agent ServiceAccount, ClusterRole and RoleBinding for this namespace; returns
    the ServiceAccount's name (the chart is the source of truth for what an agent may do)."""
    docs = helmtools.render("--set", f"agent.namespaces={{{namespace}}}", namespace=namespace)
    picked = [
        d
        for d in docs
        if d["kind"] in ("ServiceAccount", "ClusterRole", "RoleBinding")
        and d["metadata"].get("namespace") in (namespace, None)
        and d["metadata"]["name"].endswith("-agent")
    ]
    kinds = sorted(d["kind"] for d in picked)
    assert kinds == ["ClusterRole", "RoleBinding", "ServiceAccount"], kinds
    helmtools.run("kubectl", "apply", "-f", "-", stdin=yaml.safe_dump_all(picked))
    return next(d["metadata"]["name"] for d in picked if d["kind"] == "ServiceAccount")


def _real_pool(agent_image: str, service_account: str, name: str = "pool") -> dict[str, Any]:
    pool = pool_manifest(name, max_servers=2, memory="8Gi", compute="100")
    pool["spec"]["topologyKey"] = realnode.ZONE_LABEL  # only the real node has a zone
    pool["spec"]["template"].update(
        {
            # The engine container: any image that runs; the agent sidecar is what is tested.
            "image": image.PAUSE_REF,
            "engine": "sim",
            "agentImage": agent_image,
            "serviceAccountName": service_account,
            "nodeSelector": {realnode.NODE_LABEL: "true"},
            "tolerations": [TOLERATION],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
        }
    )
    return pool


def _condition(pod: client.V1Pod, kind: str) -> client.V1PodCondition | None:
    return next((c for c in pod.status.conditions or [] if c.type == kind), None)


def _ready(pod: client.V1Pod) -> bool:
    cond = _condition(pod, "Ready")
    return cond is not None and cond.status == "True"


def _container(pod: client.V1Pod, name: str) -> client.V1ContainerStatus:
    return next(c for c in pod.status.container_statuses or [] if c.name == name)


def _describe(api: Api, operator: OperatorProcess | None = None) -> str:
    lines = []
    for p in api.core.list_namespaced_pod(api.ns).items:
        statuses = [
            (c.name, c.ready, c.restart_count, c.state.to_dict())
            for c in p.status.container_statuses or []
        ]
        lines.append(f"{p.metadata.name} {p.spec.node_name} {p.status.phase} {statuses}")
    events = api.core.list_namespaced_event(api.ns).items
    lines += [f"event {e.involved_object.name}: {e.reason} {e.message}" for e in events[-15:]]
    if operator is not None:
        lines.append(operator.logs()[-2000:])
    return "\n".join(lines)


def _agent_logs(api: Api, pod: str) -> str:
    try:
        return str(api.core.read_namespaced_pod_log(pod, api.ns, container="ekko-agent"))
    except client.ApiException as err:
        return f"(no logs: {err.status} {err.reason})"


def test_server_pods_on_the_real_node_load_report_and_survive_an_agent_kill(
    cluster: Cluster,
    real_node: str,
    ekko_image: str,
    api: Api,
    namespace: str,
    operator: OperatorProcess,
) -> None:
    service_account = _agent_rbac(namespace)
    api.create(_real_pool(ekko_image, service_account))
    api.create(model_manifest("ranking", 2, "1Gi", 1, load="5"))
    seen: dict[str, float] = {}
    ready_at: dict[str, float] = {}

    def settled() -> bool:
        now = time.monotonic()
        for pod in api.pods():
            seen.setdefault(pod.metadata.name, now)
            if _ready(pod):
                ready_at.setdefault(pod.metadata.name, now)
        return converged(api, models=["ranking"])

    wait_for(
        settled,
        "pool converged with its servers on the real node",
        timeout=240,
        interval=0.2,
        describe=lambda: _describe(api, operator),
    )
    pods = api.pods()
    assert pods, "the operator created no server pods"
    subnet = ipaddress.ip_network(realnode.POD_SUBNET)
    for pod in pods:
        name = pod.metadata.name
        assert pod.spec.node_name == real_node, (name, pod.spec.node_name)
        assert ipaddress.ip_address(pod.status.pod_ip) in subnet, pod.status.pod_ip
        agent = _container(pod, "ekko-agent")
        assert agent.ready and agent.restart_count == 0, agent
        # The agent reached the API server through the `kubernetes` Service with its pod's token.
        assert "Traceback" not in _agent_logs(api, name)
    # Creation -> Ready, by the API server's clock (1 s resolution) and as polled here.
    for pod in pods:
        created = pod.metadata.creation_timestamp
        became = _condition(pod, "Ready").last_transition_time
        _record(
            f"server_pod_ready_s[{pod.metadata.name}]",
            {
                "api_timestamps": (became - created).total_seconds(),
                "polled": round(ready_at[pod.metadata.name] - seen[pod.metadata.name], 2),
            },
        )

    # Kill the agent (SIGKILL of its container's task): the kubelet restarts it, the new agent
    # reloads its shards and the pod is Ready again without anyone's help.
    victim = pods[0]
    container_id = _container(victim, "ekko-agent").container_id.split("://", 1)[1]
    killed = time.monotonic()
    realnode.ctr("tasks", "kill", "-s", "SIGKILL", container_id)

    def restarted_and_ready() -> bool:
        pod = api.core.read_namespaced_pod(victim.metadata.name, namespace)
        agent = _container(pod, "ekko-agent")
        return agent.restart_count >= 1 and agent.ready and _ready(pod)

    wait_for(
        restarted_and_ready,
        "the killed agent restarted and Ready",
        timeout=120,
        interval=0.2,
        describe=lambda: _describe(api, operator),
    )
    _record("agent_kill_to_ready_s", round(time.monotonic() - killed, 2))
    wait_for(
        lambda: converged(api, models=["ranking"]),
        "shards reported again after the restart",
        timeout=60,
        describe=lambda: _describe(api, operator),
    )
    # The agent serves /metrics on the pod IP and the annotated port: what a Prometheus on this
    # host (or a PodMonitor) scrapes.
    pod = api.core.read_namespaced_pod(victim.metadata.name, namespace)
    port = pod.metadata.annotations["prometheus.io/port"]
    url = f"http://{pod.status.pod_ip}:{port}{pod.metadata.annotations['prometheus.io/path']}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = resp.read().decode()
    assert "ekko_agent_" in body, body[:500]


def _pause_pod(name: str, real: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "pause", "image": image.PAUSE_REF}],
        "terminationGracePeriodSeconds": 1,
    }
    if real:
        spec["nodeSelector"] = {realnode.NODE_LABEL: "true"}
        spec["tolerations"] = [TOLERATION]
    else:
        spec["nodeSelector"] = {"type": "kwok"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_pod_to_ready_real_node_vs_kwok(cluster: Cluster, real_node: str, namespace: str) -> None:
    """The same pause pod on the real node and on a kwok node: creation to Ready, polled."""
    core = cluster.core
    result = {}
    for label, real in (("real", True), ("kwok", False)):
        samples = []
        for i in range(3):
            name = f"{label}-{i}"
            started = time.monotonic()
            core.create_namespaced_pod(namespace, _pause_pod(name, real))
            pod = wait_for(
                lambda name=name: (
                    (p := core.read_namespaced_pod(name, namespace)) and _ready(p) and p
                ),
                f"pod {name} Ready",
                timeout=60,
                interval=0.05,
            )
            samples.append(round(time.monotonic() - started, 2))
            assert (pod.spec.node_name == real_node) == real
        result[label] = samples
    _record("pause_pod_ready_s", result)


def test_operator_in_cluster_from_the_chart_runs_pools_and_survives_its_pod_deletion(
    cluster: Cluster,
    real_node: str,
    ekko_image: str,
    api: Api,
    namespace: str,
) -> None:
    """`helm install` with the local image: the operator runs in a pod on its ServiceAccount,
    talks to the API server through the `kubernetes` Service, passes its probes, starts server
    pods whose agent image is its own, and comes back after its pod is deleted."""
    release = f"ekko-rn-{namespace[-6:]}"
    repository, tag = ekko_image.rsplit(":", 1)
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "crds": {"install": False},  # the suite's CRDs (ekko_crds) are already installed
        # Off: (1) ekko/operator/webhook.py puts the webhook host
        # (<release>-webhook.<namespace>.svc, 77 characters here) into the certificate's CN,
        # which X.509 caps at 64, so startup fails in a loop and the liveness probe kills the
        # pod; (2) it registers a URL this host's API server cannot resolve (no cluster DNS).
        "webhook": {"enabled": False},
        "operator": {
            "watchNamespaces": [namespace],
            "nodeSelector": {realnode.NODE_LABEL: "true"},
            "tolerations": [TOLERATION],
        },
    }
    values_file = Path(f"/tmp/{release}-values.yaml")
    values_file.write_text(yaml.safe_dump(values))
    started = time.monotonic()
    try:
        helmtools.helm(
            "install", release, str(helmtools.CHART), "-n", namespace, "-f", str(values_file),
            "--wait", "--timeout", "180s", timeout=240,
        )  # fmt: skip
    except helmtools.ToolError as err:
        raise AssertionError(f"{err}\n{_describe(api)}") from None
    _record("helm_install_wait_s", round(time.monotonic() - started, 1))
    try:
        selector = "app.kubernetes.io/component=operator"

        def operator_pod() -> client.V1Pod | None:
            pods = api.core.list_namespaced_pod(namespace, label_selector=selector).items
            live = [p for p in pods if p.metadata.deletion_timestamp is None and _ready(p)]
            return live[0] if live else None

        first = wait_for(operator_pod, "operator pod Ready", timeout=60)
        assert first.spec.node_name == real_node
        assert _container(first, "operator").restart_count == 0

        pool = _real_pool(ekko_image, f"{release}-agent")
        del pool["spec"]["template"]["agentImage"]  # the operator's own image (EKKO_IMAGE)
        api.create(pool)
        api.create(model_manifest("ranking", 2, "1Gi", 1, load="5"))
        wait_for(
            lambda: converged(api, models=["ranking"]),
            "pool converged by the in-cluster operator",
            timeout=240,
            describe=lambda: _describe(api),
        )
        for pod in api.pods():
            agent = next(c for c in pod.spec.containers if c.name == "ekko-agent")
            assert agent.image == ekko_image

        deleted = time.monotonic()
        api.core.delete_namespaced_pod(first.metadata.name, namespace)
        second = wait_for(
            lambda: (p := operator_pod()) and p.metadata.uid != first.metadata.uid and p,
            "a new operator pod Ready",
            timeout=120,
            describe=lambda: _describe(api),
        )
        _record("operator_pod_replaced_ready_s", round(time.monotonic() - deleted, 1))
        assert second.spec.node_name == real_node
        api.create(model_manifest("retrieval", 1, "1Gi", 1, load="5"))
        wait_for(
            lambda: converged(api, models=["ranking", "retrieval"]),
            "the new operator placed and loaded a new model",
            timeout=240,
            describe=lambda: _describe(api),
        )
    finally:
        helmtools.helm("uninstall", release, "-n", namespace, "--timeout", "120s")
        values_file.unlink(missing_ok=True)


def test_down_leaves_the_host_as_up_found_it(cluster: Cluster, real_node: str) -> None:
    """Stop the real node (the control plane stays), compare the host with the snapshot taken
    before it started, and start it again for whoever comes next."""
    before_file = realnode.node_dir() / "host-before.json"
    assert before_file.exists(), "up records the host state before it changes anything"
    before = json.loads(before_file.read_text())
    with control.lock():
        started = time.monotonic()
        problems = realnode.down()
        took_down = time.monotonic() - started
        after = realnode.host_state()
        ep = control.load_endpoints()
        assert ep is not None
        started = time.monotonic()
        realnode.up(ep, quiet=True)
        took_up = time.monotonic() - started
    _record("node_down_s", round(took_down, 1))
    _record("node_up_warm_s", round(took_up, 1))
    assert problems == []
    assert realnode.diff_host(before, after) == []
    assert after["processes"] == []
    stamp = dt.datetime.now(dt.UTC).isoformat()
    _record("host_restored_at", stamp)
