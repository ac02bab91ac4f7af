"""Smoke tests against a real API server: our CRDs, examples and rejections, and the fake fleet.

These check what offline tests cannot: that the API server itself accepts the generated CRDs
(structural schemas, CEL rules), the examples, and gives the same verdict as the offline check
(``ekko.api.validate``: schema plus the CEL rules' Python twins) on every bad and every edge-case
manifest in tests/data, so that a twin stricter than the CRD is caught as surely as a looser one;
and that the local cluster schedules pods like a real one.
"""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity

from e2e.conftest import REPO, Cluster, api_error_message, install_crds
from e2e.waiting import wait_for
from ekko.api.validate import check_manifest

pytestmark = pytest.mark.e2e

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
BAD_MANIFESTS = REPO / "tests" / "data" / "bad_manifests.yaml"
GOOD_MANIFESTS = REPO / "tests" / "data" / "good_manifests.yaml"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"  # never pulled on kwok nodes; tiny on kind


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _cases(path: Path) -> list[Any]:
    # No case is skipped: a rule only one side enforces is exactly what this replay must catch.
    cases = yaml.safe_load(path.read_text()) or []
    return [pytest.param(case, id=case["name"]) for case in cases]


def _create(cluster: Cluster, body: dict[str, Any], namespace: str, dry_run: bool = False) -> Any:
    """Create like `kubectl create` does: strict field validation, so unknown fields fail."""
    body = copy.deepcopy(body)
    resource = cluster.dynamic.resources.get(api_version=body["apiVersion"], kind=body["kind"])
    group, _, version = body["apiVersion"].rpartition("/")
    assert group, f"only custom resources are created here, not {body['apiVersion']}"
    kwargs: dict[str, Any] = {"field_validation": "Strict"}
    if dry_run:
        kwargs["dry_run"] = "All"
    api = client.CustomObjectsApi(cluster.api)
    if resource.namespaced:
        body.setdefault("metadata", {})["namespace"] = namespace
        return api.create_namespaced_custom_object(
            group, version, namespace, resource.name, body, **kwargs
        )
    return api.create_cluster_custom_object(group, version, resource.name, body, **kwargs)


# (1) ------------------------------------------------------------------------------------------


def test_crds_are_established(cluster: Cluster) -> None:
    ext = client.ApiextensionsV1Api(cluster.api)
    try:
        crds = install_crds(cluster)
    except AssertionError as err:
        pytest.fail(str(err), pytrace=False)
    for crd in crds:
        got = ext.read_custom_resource_definition(crd["metadata"]["name"])
        established = {c.type: c.status for c in got.status.conditions or []}
        assert established.get("Established") == "True", got.status.conditions
        assert established.get("NamesAccepted") == "True", got.status.conditions
        if got.spec.group == "kopf.dev":  # kopf's peering resources ship with Ekko's
            continue
        assert got.spec.group == "ekko.dev"
        assert "ekko" in (got.spec.names.categories or []), "`kubectl get ekko` lists by category"


# (2) ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_accepted(cluster: Cluster, ekko_crds: Any, namespace: str, path: Path) -> None:
    docs = _docs(path)
    assert docs, f"{path} has no objects"
    for doc in docs:
        try:
            created = _create(cluster, doc, namespace)
        except ApiException as err:
            pytest.fail(
                f"{path.name}: {doc['kind']}/{doc['metadata']['name']} rejected: "
                + api_error_message(err)
            )
        assert created["metadata"]["name"] == doc["metadata"]["name"]


# (3) ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases(BAD_MANIFESTS))
def test_bad_manifest_is_rejected_by_both(
    cluster: Cluster, ekko_crds: Any, namespace: str, case: dict[str, Any]
) -> None:
    offline = check_manifest(case["manifest"])
    expect = case.get("apiserver_expect", case["expect"])
    try:
        _create(cluster, case["manifest"], namespace, dry_run=True)
    except ApiException as err:
        message = api_error_message(err)
        assert err.status in (400, 422), message
    else:
        pytest.fail(
            f"the API server admitted {case['name']}; the offline check refused it with "
            f"{offline}: the CRD is looser than its Python twin"
        )
    assert offline, f"the offline check admitted {case['name']}; the API server said: {message}"
    assert expect in message, f"expected {expect!r} in the API server's message:\n{message}"
    assert any(case["expect"] in e for e in offline), offline


@pytest.mark.parametrize("case", _cases(GOOD_MANIFESTS))
def test_edge_manifest_is_accepted_by_both(
    cluster: Cluster, ekko_crds: Any, namespace: str, case: dict[str, Any]
) -> None:
    offline = check_manifest(case["manifest"])
    try:
        _create(cluster, case["manifest"], namespace, dry_run=True)
    except ApiException as err:
        pytest.fail(
            f"the API server refused {case['name']} (offline: {offline or 'accepted'}): "
            + api_error_message(err)
        )
    assert offline == [], f"the offline check is stricter than the CRD: {offline}"


# (4) ------------------------------------------------------------------------------------------


def _pod(name: str, cpu: str, memory: str) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="main",
                    image=PAUSE_IMAGE,
                    resources=client.V1ResourceRequirements(
                        requests={"cpu": cpu, "memory": memory}
                    ),
                )
            ],
            termination_grace_period_seconds=0,
        ),
    )


def test_pod_runs_on_a_node(cluster: Cluster, namespace: str) -> None:
    core = cluster.core
    core.create_namespaced_pod(namespace, _pod("smoke", "100m", "64Mi"))
    pod = wait_for(
        lambda: (p := core.read_namespaced_pod("smoke", namespace)).status.phase == "Running" and p,
        "pod smoke Running",
        timeout=60,
        describe=lambda: core.read_namespaced_pod("smoke", namespace).status,
    )
    assert pod.spec.node_name in {n.metadata.name for n in core.list_node().items}
    ready = {c.type: c.status for c in pod.status.conditions or []}
    assert ready.get("Ready") == "True", pod.status.conditions


# (5) ------------------------------------------------------------------------------------------


def test_namespace_deletion_completes(cluster: Cluster) -> None:
    core = cluster.core
    name = f"e2e-delete-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(
        name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c"), data={"k": "v"})
    )
    wait_for(
        lambda: _exists(lambda: core.read_namespaced_service_account("default", name)),
        f"ServiceAccount default in {name}",
        timeout=30,
    )
    core.create_namespaced_pod(name, _pod("p", "10m", "8Mi"))
    core.delete_namespace(name)
    wait_for(
        lambda: not _exists(lambda: core.read_namespace(name)),
        f"namespace {name} gone",
        timeout=90,
        describe=lambda: core.read_namespace(name).status,
    )


def _exists(read: Any) -> bool:
    try:
        read()
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


# (6) ------------------------------------------------------------------------------------------


def _schedulable_memory(core: client.CoreV1Api) -> dict[str, int]:
    """Allocatable memory of each Ready node that takes ordinary pods."""
    out = {}
    for node in core.list_node().items:
        conditions = {c.type: c.status for c in node.status.conditions or []}
        hard_taints = [t for t in node.spec.taints or [] if t.effect in ("NoSchedule", "NoExecute")]
        if conditions.get("Ready") == "True" and not node.spec.unschedulable and not hard_taints:
            out[node.metadata.name] = int(parse_quantity(node.status.allocatable["memory"]))
    return out


def _failed_scheduling(
    core: client.CoreV1Api, namespace: str, pod: str
) -> list[client.CoreV1Event]:
    events = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={pod}"
    ).items
    return [e for e in events if e.reason == "FailedScheduling"]


def test_scheduler_respects_memory(cluster: Cluster, namespace: str) -> None:
    core = cluster.core
    memory = _schedulable_memory(core)
    assert memory, "no schedulable nodes"
    biggest = max(memory.values())

    core.create_namespaced_pod(namespace, _pod("too-big", "10m", str(biggest + 2**30)))
    events = wait_for(
        lambda: _failed_scheduling(core, namespace, "too-big"), "FailedScheduling event", timeout=60
    )
    # The FailedScheduling event can be seen before the pod's PodScheduled condition is written.
    scheduled = wait_for(
        lambda: {
            c.type: c
            for c in core.read_namespaced_pod("too-big", namespace).status.conditions or []
        }.get("PodScheduled"),
        "PodScheduled condition on too-big",
        timeout=30,
    )
    pod = core.read_namespaced_pod("too-big", namespace)
    assert pod.status.phase == "Pending" and not pod.spec.node_name
    assert (scheduled.status, scheduled.reason) == ("False", "Unschedulable")
    assert "Insufficient memory" in events[0].message, events[0].message

    # More than every other node has (when sizes differ): only the biggest nodes fit.
    smaller = [m for m in memory.values() if m < biggest]
    request = (max(smaller) + biggest) // 2 if smaller else biggest // 2
    core.create_namespaced_pod(namespace, _pod("fits", "10m", str(request)))
    pod = wait_for(
        lambda: (p := core.read_namespaced_pod("fits", namespace)).spec.node_name and p,
        "pod fits bound to a node",
        timeout=60,
    )
    assert memory[pod.spec.node_name] >= request
    assert core.read_namespaced_pod("too-big", namespace).status.phase == "Pending"


# Beyond the list: the controller manager's garbage collector and service-account tokens, which
# an operator relies on (owned objects vanish with their owner; pods get API credentials).


def test_owned_objects_are_garbage_collected(cluster: Cluster, namespace: str) -> None:
    core = cluster.core
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    ref = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owned", owner_references=[ref])),
    )
    core.delete_namespaced_config_map("owner", namespace)
    wait_for(
        lambda: not _exists(lambda: core.read_namespaced_config_map("owned", namespace)),
        "owned ConfigMap garbage-collected",
        timeout=60,
    )


def test_service_account_token_is_issued(cluster: Cluster, namespace: str) -> None:
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    issued = cluster.core.create_namespaced_service_account_token("default", namespace, request)
    review = client.AuthenticationV1Api(cluster.api).create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token=issued.status.token))
    )
    assert review.status.authenticated, review.status.error
    assert review.status.user.username == f"system:serviceaccount:{namespace}:default"
