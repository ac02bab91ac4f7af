"""A bad object's blast radius is that object (hostile-input issue, classes 2 and 3).

A pool whose server pods the API server refuses says so (condition, event, the API server's own
message) while a good pool next to it converges; the operator keeps running throughout.
"""

from __future__ import annotations

from typing import Any

import pytest

from e2e.agents import AgentFleet
from e2e.objects import (
    Api,
    converged,
    model_manifest,
    pool_manifest,
    serving_replicas,
    stream_manifest,
)
from e2e.operator_harness import OperatorProcess
from e2e.test_rollout import version_manifest
from e2e.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def events(api: Api, name: str, reason: str) -> list[Any]:
    return [
        e
        for e in api.core.list_namespaced_event(api.ns).items
        if e.involved_object.name == name and e.reason == reason
    ]


def test_a_pool_whose_pods_are_refused_says_why_and_its_neighbour_converges(
    api: Api, fleet: AgentFleet, operator: OperatorProcess
) -> None:
    bad = pool_manifest("refused")
    # Admitted by the CRD (tolerations are Kubernetes' own free-form type), refused by the API
    # server when the operator creates a pod with it: a 422 that no retry can fix.
    bad["spec"]["template"]["tolerations"] = [{"key": "k", "operator": "Sometimes"}]
    api.create(bad)
    api.create(model_manifest("stuck", 2, "8Gi", 1, pool="refused"))
    api.create(pool_manifest())
    api.create(model_manifest("fine", 4, "8Gi", 2))

    wait_for(
        lambda: converged(api, models=["fine"]),
        "the good pool converged next to the refused one",
        timeout=120,
        describe=lambda: operator.logs()[-3000:],
    )

    def degraded() -> dict[str, Any] | None:
        cond = api.condition("serverpools", "refused", "Degraded")
        return cond if cond and cond["status"] == "True" else None

    cond = wait_for(degraded, "the refused pool Degraded", timeout=60, describe=operator.logs)
    assert cond["reason"] == "WriteRefused"
    # The API server's own words reach the user: the field and the value it refused.
    assert "Sometimes" in cond["message"] and "422" in cond["message"], cond["message"]
    assert api.condition("serverpools", "refused")["status"] == "False"
    refused = wait_for(
        lambda: events(api, "refused", "WriteRefused"), "a WriteRefused event", timeout=30
    )
    assert "tolerations" in refused[0].message, refused[0].message
    operator.check()  # still running


def test_a_users_pod_with_the_pool_label_is_not_taken_for_a_server(
    api: Api, fleet: AgentFleet, operator: OperatorProcess
) -> None:
    # Labelled like a server of the pool, but not created by it (no owner reference): the
    # operator must neither count it, nor delete it as a surplus or failed server.
    api.core.create_namespaced_pod(
        api.ns,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "users-own-pod", "labels": {"ekko.dev/pool": "pool"}},
            "spec": {"containers": [{"name": "c", "image": "busybox:1"}]},
        },
    )
    api.create(pool_manifest())
    api.create(model_manifest("fine", 2, "8Gi", 1))
    wait_for(
        lambda: converged(api, models=["fine"]),
        "the pool converged",
        timeout=120,
        describe=lambda: operator.logs()[-3000:],
    )
    pod = api.core.read_namespaced_pod("users-own-pod", api.ns)
    assert pod.metadata.deletion_timestamp is None
    status = api.get("serverpools", "pool")["status"]
    assert status["serversReady"] == status["serversWanted"] == len(api.pods()) - 1


def test_a_pool_whose_pods_no_node_fits_says_so_with_the_schedulers_words(
    api: Api, fleet: AgentFleet, operator: OperatorProcess
) -> None:
    pool = pool_manifest()
    pool["spec"]["template"]["nodeSelector"] = {"ekko.dev/node-class": "no-such-class"}
    api.create(pool)
    api.create(model_manifest("waiting", 2, "8Gi", 1))

    def unschedulable() -> dict[str, Any] | None:
        cond = api.condition("serverpools", "pool")
        return cond if cond and cond["reason"] == "Unschedulable" else None

    cond = wait_for(
        unschedulable, "the pool to say its pods are unschedulable", timeout=90,
        describe=lambda: api.get("serverpools", "pool").get("status"),
    )  # fmt: skip
    assert cond["status"] == "False"
    assert "Pending, not schedulable" in cond["message"] and "node" in cond["message"]


def test_models_of_a_deleted_pool_stop_saying_ready(
    api: Api, fleet: AgentFleet, operator: OperatorProcess
) -> None:
    api.create(pool_manifest())
    api.create(model_manifest("orphan", 2, "8Gi", 1))
    wait_for(lambda: converged(api, models=["orphan"]), "placed", timeout=120)
    api.custom.delete_namespaced_custom_object(
        "ekko.dev", "v1alpha1", api.ns, "serverpools", "pool"
    )

    def pool_not_found() -> dict[str, Any] | None:
        cond = api.condition("models", "orphan")
        return cond if cond and cond["reason"] == "PoolNotFound" else None

    cond = wait_for(pool_not_found, "the model to say its pool is gone", timeout=60,
                    describe=lambda: api.get("models", "orphan").get("status"))  # fmt: skip
    assert cond["status"] == "False" and "pool pool does not exist" in cond["message"]


def test_versions_cannot_be_edited_in_place(api: Api) -> None:
    from kubernetes.client.exceptions import ApiException

    from e2e.test_rollout import version_manifest

    api.create(pool_manifest())
    api.create(model_manifest("rank", 2, "8Gi", 1))
    api.create(version_manifest("v2", [{"setWeight": 50}]))
    for plural, name, patch, words in (
        (
            "models",
            "rank",
            {"spec": {"version": "v9"}},
            "roll a new version out with a ModelVersion",
        ),
        ("modelversions", "rank-v2", {"spec": {"version": "v3"}}, "create a new ModelVersion"),
        ("modelversions", "rank-v2", {"spec": {"model": "other"}}, "create a new ModelVersion"),
    ):
        with pytest.raises(ApiException) as refused:
            api.patch(plural, name, patch)
        assert refused.value.status == 422 and words in str(refused.value.body), refused.value.body
    api.patch("models", "rank", {"spec": {"replicas": 2}})  # other fields stay editable


def test_what_the_webhook_refuses_is_explained_when_it_is_down(
    api: Api, fleet: AgentFleet, operator: OperatorProcess
) -> None:
    """The webhook's cross-object refusals (test_webhook) replayed with no webhook, as while the
    operator is being upgraded (failurePolicy Ignore): each bad object is admitted, says what is
    wrong in a condition and an event, and the good model of the same pool still converges."""
    api.create(pool_manifest())
    api.create(model_manifest("fine", 2, "8Gi", 1))
    api.create(model_manifest("orphan", 2, "1Gi", 1, pool="nope"))  # no such pool
    api.create(model_manifest("huge", 2, "80Gi", 1))  # no server holds a shard
    api.create(version_manifest("v2", [{"setWeight": 10}], model="ghost"))  # no such model
    api.create(stream_manifest("orphan-stream", "ghost"))  # no such model
    api.create(stream_manifest("first", "fine"))
    api.create(stream_manifest("second", "fine"))  # one stream per model

    def fine_served() -> bool:
        cond = api.condition("models", "fine")
        serving = serving_replicas(api)
        return bool(cond and cond["status"] == "True") and all(
            serving.get(("fine", i)) == 1 for i in range(2)
        )

    wait_for(fine_served, "the good model served", timeout=120,
             describe=lambda: (api.get("models", "fine").get("status"),
                               api.get("serverpools", "pool").get("status")))  # fmt: skip

    def said(plural: str, name: str, kind: str, words: str) -> dict[str, Any] | None:
        cond = api.condition(plural, name, kind)
        return cond if cond and cond["status"] == "False" and words in cond["message"] else None

    expected = [
        ("models", "orphan", "Ready", "pool nope does not exist"),
        ("models", "huge", "Ready", "huge/0"),
        ("modelversions", "ghost-v2", "Healthy", "model ghost does not exist"),
        ("updatestreams", "orphan-stream", "Connected", "ghost"),
        ("updatestreams", "second", "Connected", "first"),
    ]
    for plural, name, kind, words in expected:
        wait_for(lambda p=plural, n=name, k=kind, w=words: said(p, n, k, w),
                 f"{plural}/{name}: {kind}=False saying {words!r}", timeout=60,
                 describe=lambda p=plural, n=name: api.get(p, n).get("status"))  # fmt: skip
    for plural, name, _, _ in expected:
        told = [e for e in api.core.list_namespaced_event(api.ns).items
                if e.involved_object.name == name and e.type == "Warning"]  # fmt: skip
        assert told, f"{plural}/{name}: no Warning event"
    # Only the model's one stream is wired: no server got duties from the others.
    wired = {d.stream for a in api.assignments() for d in a.spec.updates}
    assert "second" not in wired and "orphan-stream" not in wired, wired
    assert fine_served()
