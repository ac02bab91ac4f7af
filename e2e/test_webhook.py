"""The validating webhook rejects what the CRD schema cannot see, with a message a user can act on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from e2e.agents import free_port
from e2e.conftest import REPO, api_error_message
from e2e.helmtools import token_kubeconfig
from e2e.objects import Api, model_manifest, pool_manifest, stream_manifest
from e2e.operator_harness import OperatorProcess
from e2e.test_rollout import version_manifest
from e2e.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CONFIGURATION = "validate.ekko.dev"
BAD_MANIFESTS = REPO / "tests" / "data" / "bad_manifests.yaml"
RAW = ("validation error for", "For further information", "Traceback", "[type=", "pydantic")


@pytest.fixture
def webhook_operator(cluster: Any, namespace: str, ekko_crds: Any) -> Iterator[OperatorProcess]:
    port = free_port()
    admission = client.AdmissionregistrationV1Api(cluster.api)
    with OperatorProcess(
        cluster.kubeconfig, namespace, ("--webhook-port", str(port), "--webhook-host", "127.0.0.1")
    ) as proc:
        wait_for(
            lambda: any(
                w.client_config.url and f":{port}/" in w.client_config.url
                for c in admission.list_validating_webhook_configuration().items
                if c.metadata.name == CONFIGURATION
                for w in c.webhooks or []
            ),
            "the operator to register its webhook",
            timeout=60,
            describe=proc.logs,
        )
        yield proc
    try:
        admission.delete_validating_webhook_configuration(CONFIGURATION)
    except ApiException as err:
        if err.status != 404:
            raise


def rejection(api: Api, doc: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as err:
        api.create(doc)
    assert err.value.status in (400, 422), err.value
    return str(err.value.body)


def test_cross_object_mistakes_are_rejected_at_admission(
    api: Api, webhook_operator: OperatorProcess
) -> None:
    message = rejection(api, model_manifest("orphan", 2, "1Gi", 1, pool="nope"))
    assert 'pool \\"nope\\" does not exist' in message or 'pool "nope" does not exist' in message, (
        message
    )

    api.create(pool_manifest())
    message = rejection(api, model_manifest("huge", 2, "80Gi", 1))
    assert "huge/0 needs" in message and "hold 64" in message, message
    assert not any(raw in message for raw in RAW), message

    message = rejection(api, version_manifest("v2", [{"setWeight": 10}], model="ghost"))
    assert "ghost" in message and "does not exist" in message, message

    api.create(model_manifest("fine", 2, "8Gi", 1))  # a valid model passes
    api.create(version_manifest("v2", [{"setWeight": 10}], model="fine"))
    assert api.get("models", "fine")["spec"]["pool"] == "pool"

    message = rejection(api, stream_manifest("orphan", "ghost"))
    assert "ghost" in message and "does not exist" in message, message
    api.create(stream_manifest("first", "fine"))
    message = rejection(api, stream_manifest("second", "fine"))
    assert "already has an UpdateStream (first)" in message, message

    # Tables the model's engine cannot score with: the embedding engine takes the dot product
    # of a user and an item row, so their widths must agree.
    recsys = pool_manifest("recsys")
    recsys["spec"]["template"]["engine"] = "embedding"
    api.create(recsys)
    api.create(model_manifest("ranker", 1, "1Gi", 1, pool="recsys"))
    message = rejection(api, stream_manifest("ranker", "ranker", item_dim=17))
    assert "t.user has dim 9 and t.item has dim 17" in message, message
    api.create(stream_manifest("ranker", "ranker"))

    # A refusal is the webhook working, not an operator error: one INFO line each.
    logs = webhook_operator.logs()
    assert "INFO kopf.objects: Admission refused by validate-model:" in logs, logs[-3000:]
    assert "failed permanently" not in logs, logs[-3000:]


def test_bad_manifests_are_refused_in_words_with_the_webhook_running(
    api: Api, webhook_operator: OperatorProcess
) -> None:
    """The bad-manifest replay with the operator and its webhook up (test_smoke replays it with
    the webhook down): the same refusal, never a pydantic dump or a bare Python error."""
    cases = yaml.safe_load(BAD_MANIFESTS.read_text())
    api.create(pool_manifest("cpu-large"))
    api.create(model_manifest("ranking-dlrm", 2, "1Gi", 1, pool="cpu-large"))
    wrong = []
    for case in cases:
        try:
            doc = case["manifest"]
            api.custom.create_namespaced_custom_object(
                "ekko.dev",
                "v1alpha1",
                api.ns,
                doc["kind"].lower() + "s",
                doc,
                dry_run="All",
                field_validation="Strict",
            )
        except ApiException as err:
            message = api_error_message(err)
            expect = case.get("apiserver_expect", case["expect"])
            if err.status not in (400, 422) or expect not in message:
                wrong.append(f"{case['name']}: {err.status} {message}")
            if any(raw in message for raw in RAW):
                wrong.append(f"{case['name']}: raw error: {message}")
        else:
            wrong.append(f"{case['name']}: admitted")
    assert not wrong, "\n".join(wrong)


def test_only_the_operator_writes_assignment_specs(
    cluster: Any, api: Api, namespace: str, webhook_operator: OperatorProcess, tmp_path: Path
) -> None:
    """A person (or tool) with RBAC rights on ServerAssignments still cannot change their spec:
    an edit like ``shards: []`` would make an agent unload what it serves before the operator
    restores it. The operator's own writes pass; metadata edits pass."""
    api.create(pool_manifest())
    api.create(model_manifest("m", 2, "1Gi", 1))
    assignments = wait_for(
        api.assignments,
        "assignments written by the operator through the webhook",
        timeout=90,
        describe=webhook_operator.logs,
    )
    assert "ServerAssignment specs are written by" in webhook_operator.logs()
    core: Any = client.CoreV1Api(cluster.api)
    rbac: Any = client.RbacAuthorizationV1Api(cluster.api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "hand"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "assignment-editor"},
            "rules": [{"apiGroups": ["ekko.dev"], "resources": ["serverassignments"],
                       "verbs": ["get", "list", "patch", "update", "create"]}],
        },
    )  # fmt: skip
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "hand"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": "assignment-editor"},
            "subjects": [{"kind": "ServiceAccount", "name": "hand", "namespace": namespace}],
        },
    )  # fmt: skip
    hand = client.CustomObjectsApi(
        config.new_client_from_config(str(token_kubeconfig(cluster.api, namespace, "hand",
                                                           tmp_path / "hand")))
    )  # fmt: skip
    name = assignments[0].metadata.name
    with pytest.raises(ApiException) as refused:
        hand.patch_namespaced_custom_object(
            "ekko.dev", "v1alpha1", namespace, "serverassignments", name, {"spec": {"shards": []}}
        )
    assert refused.value.status == 403, refused.value
    message = api_error_message(refused.value)
    assert "may not change a ServerAssignment's spec" in message, message
    assert "change those instead" in message, message
    assert api.get("serverassignments", name)["spec"]["shards"], "the spec was not changed"
    # Metadata is not the operator's: a label goes through.
    hand.patch_namespaced_custom_object(
        "ekko.dev", "v1alpha1", namespace, "serverassignments", name,
        {"metadata": {"labels": {"team": "search"}}},
    )  # fmt: skip
    assert api.get("serverassignments", name)["metadata"]["labels"]["team"] == "search"
