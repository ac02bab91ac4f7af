"""The template hash on server pods (ekko.kube.fleet) and how observation reads it back."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ekko.api.resources import ServerPool
from ekko.kube.fleet import TEMPLATE_HASH_LABEL, server_pod, template_hash
from ekko.kube.observe import pool_state
from tests.kube.pools import pool


def _pool_with(**spec: object) -> ServerPool:
    body = pool().model_dump(by_alias=True, exclude_none=True)
    template = dict(spec.pop("template", {}))  # type: ignore[call-overload]
    body["spec"]["template"].update(template)
    body["spec"].update(spec)
    return ServerPool.model_validate(body)


def test_every_server_of_a_pool_carries_the_same_hash_whatever_its_name_and_zone() -> None:
    p = pool()
    a = server_pod(p, "p-0", "zone-a", "ekko:1")
    b = server_pod(p, "p-7", "zone-b", "ekko:1")
    assert a["metadata"]["labels"][TEMPLATE_HASH_LABEL] == template_hash(p, "ekko:1")
    assert b["metadata"]["labels"][TEMPLATE_HASH_LABEL] == template_hash(p, "ekko:1")
    assert len(template_hash(p, "ekko:1")) <= 63  # a label value


@pytest.mark.parametrize(
    "change",
    [
        {"template": {"image": "engine:2"}},
        {"template": {"env": [{"name": "THREADS", "value": "8"}]}},
        {"template": {"resources": {"requests": {"cpu": "2"}}}},
        {"template": {"labels": {"team": "ranking"}}},
        {"template": {"annotations": {"owner": "ml"}}},
        {"template": {"agentImage": "ekko-agent:2"}},
        {"template": {"agentArgs": ["--heartbeat-seconds=5"]}},
        {"template": {"engine": "sim"}},
        {"template": {"nodeSelector": {"gpu": "a100"}}},
        {"template": {"tolerations": [{"key": "gpu", "operator": "Exists"}]}},
    ],
)
def test_a_template_edit_changes_the_hash(change: dict[str, object]) -> None:
    assert template_hash(_pool_with(**change), "ekko:1") != template_hash(pool(), "ekko:1")


def test_the_operators_image_counts_when_the_pool_names_no_agent_image() -> None:
    assert template_hash(pool(), "ekko:1") != template_hash(pool(), "ekko:2")
    pinned = _pool_with(template={"agentImage": "agent:1"})
    assert template_hash(pinned, "ekko:1") == template_hash(pinned, "ekko:2")


@pytest.mark.parametrize(
    "change",
    [
        {"maxServers": 9},
        {"minServers": 1},
        {"capacity": {"memory": "32Gi", "compute": "50"}},
        {"placement": {"headroomPercent": 20}},
        {"updateStrategy": {"maxSurge": 3}},
    ],
)
def test_edits_outside_the_template_change_no_pod(change: dict[str, object]) -> None:
    assert template_hash(_pool_with(**change), "ekko:1") == template_hash(pool(), "ekko:1")


def _pod(name: str, labels: dict[str, str]) -> dict[str, object]:
    return {
        "metadata": {
            "name": name,
            "labels": {"ekko.dev/pool": "p", **labels},
            "ownerReferences": [{"kind": "ServerPool", "uid": "u", "controller": True}],
        },
        "spec": {},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def test_observation_marks_pods_of_another_template_outdated() -> None:
    now = datetime(2026, 11, 29, tzinfo=UTC)
    state = pool_state(
        pool(),
        models=[],
        rejected={},
        pods=[
            _pod("p-0", {TEMPLATE_HASH_LABEL: "new"}),
            _pod("p-1", {TEMPLATE_HASH_LABEL: "old"}),
            _pod("p-2", {}),  # made before pods carried the hash
        ],
        assignments={},
        nodes=[],
        versions=[],
        now=now,
        template_hash="new",
    )
    assert [(s.name, state.outdated(s)) for s in state.servers] == [
        ("p-0", False),
        ("p-1", True),
        ("p-2", True),
    ]
    unknown = pool_state(
        pool(), models=[], rejected={}, pods=[_pod("p-1", {})], assignments={}, nodes=[],
        versions=[], now=now,
    )  # fmt: skip
    assert not any(unknown.outdated(s) for s in unknown.servers)  # no hash known: none outdated
