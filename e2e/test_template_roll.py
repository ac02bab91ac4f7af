"""Existing server pods follow an edit of the pool's template, make-before-break, on a real API
server: every pod ends on the new template hash, and no shard is ever below its ready replicas
while the roll runs (sampled every 0.2 s as the fault bench does). At maxServers the roll waits,
says why, and goes on once the pool may surge.

The helpers here are shared with ``bench/template_roll.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest

from bench.faults import ReadySampler
from e2e.agents import AgentFleet
from e2e.objects import Api, converged, model_manifest, pool_manifest
from e2e.operator_harness import OperatorProcess
from e2e.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

HASH_LABEL = "ekko.dev/template-hash"
MODEL = "rank"


def roll_manifests(servers: int, max_servers: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A pool and a model that fills exactly ``servers`` servers: ``servers`` shards of 20Gi,
    two replicas each, two shards per 64Gi server (headroom 10%)."""
    pool = pool_manifest(max_servers=max_servers)
    model = model_manifest(MODEL, servers, "20Gi", 2)
    return pool, model


def pod_hashes(api: Api) -> dict[str, str]:
    """Template hash of every server pod that is not going away."""
    return {
        p.metadata.name: (p.metadata.labels or {}).get(HASH_LABEL, "")
        for p in api.pods()
        if p.metadata.deletion_timestamp is None
    }


def pod_uids(api: Api) -> set[str]:
    return {str(p.metadata.uid) for p in api.pods() if p.metadata.deletion_timestamp is None}


def roll_condition(api: Api, pool: str = "pool") -> dict[str, Any]:
    status = api.get("serverpools", pool).get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == "TemplateRolledOut"), {})


def rolled_out(api: Api, before: set[str], pool: str = "pool") -> bool:
    """Every pod on the pool's current hash (not one of ``before``), the pool says so, and every
    shard is loaded with nothing draining."""
    status = api.get("serverpools", pool).get("status") or {}
    current = status.get("templateHash", "")
    hashes = set(pod_hashes(api).values())
    return (
        bool(current)
        and current not in before
        and hashes == {current}
        and roll_condition(api, pool).get("status") == "True"
        and status.get("outdatedServers") == 0
        and converged(api, pool, [MODEL])
    )


def edit_template(api: Api, image: str, pool: str = "pool") -> None:
    api.patch("serverpools", pool, {"spec": {"template": {"image": image}}})


@dataclass
class RollRun:
    seconds: float
    fewest: int | None
    minimum: int
    samples: int
    below: int
    replaced: int
    widest_gap: float


def roll_once(
    api: Api, fleet: AgentFleet, image: str, timeout: float, describe: Any = None
) -> RollRun:
    """Edit the template and wait for the roll, sampling ready replicas all along."""
    before_pods = pod_hashes(api)
    before_uids = pod_uids(api)
    sampler = ReadySampler(api.core.api_client, api.ns, fleet)
    sampler.watch([MODEL])
    with sampler:
        started = time.monotonic()
        edit_template(api, image)
        wait_for(
            lambda: rolled_out(api, set(before_pods.values())),
            f"every server pod on the template with {image}",
            timeout=timeout,
            interval=0.5,
            describe=describe,
        )
        seconds = time.monotonic() - started
    figures = sampler.figures()
    return RollRun(
        seconds=seconds,
        fewest=figures["min_ready_seen"],
        minimum=min(sampler.minimum.values()),
        samples=sampler.samples,
        below=sampler.below,
        replaced=len(before_uids - pod_uids(api)),
        widest_gap=figures["widest_sample_gap_s"],
    )


def _events(api: Api, reason: str) -> list[str]:
    return [
        str(e.message)
        for e in api.core.list_namespaced_event(api.ns).items
        if e.reason == reason and e.involved_object.kind == "ServerPool"
    ]


def test_a_template_edit_rolls_every_server_make_before_break(
    api: Api, fleet: AgentFleet, operator: OperatorProcess
) -> None:
    pool, model = roll_manifests(servers=4, max_servers=8)
    api.create(pool)
    api.create(model)
    wait_for(lambda: converged(api, "pool", [MODEL]), "model loaded", 120, describe=operator.logs)
    first = pod_hashes(api)
    assert len(first) == 4 and len(set(first.values())) == 1 and "" not in first.values()
    status = api.get("serverpools", "pool")["status"]
    assert status["templateHash"] == next(iter(first.values()))
    assert status["updatedServers"] == 4 and status["outdatedServers"] == 0
    assert roll_condition(api)["status"] == "True"

    run = roll_once(api, fleet, "engine:2", 300, describe=lambda: operator.logs()[-3000:])

    # Four new pods, named <pool>-<hash>-<n> (never an old server's name), none of the old left.
    after = pod_hashes(api)
    assert len(after) == 4 and not set(after) & set(first)
    assert run.replaced == 4
    assert run.samples > 0 and run.below == 0, run  # never below minReadyReplicas (= replicas)
    assert run.fewest is not None and run.fewest >= run.minimum == 2, run
    replacing = _events(api, "ReplacingServer")
    assert len(replacing) == 4 and all("Replacing outdated server" in m for m in replacing)
    # The pod carries the new template.
    engine = next(c for c in api.pods()[0].spec.containers if c.name == "engine")
    assert engine.image == "engine:2"


def test_a_pool_at_max_servers_waits_until_it_may_surge(
    api: Api, fleet: AgentFleet, operator: OperatorProcess
) -> None:
    pool, model = roll_manifests(servers=4, max_servers=4)
    api.create(pool)
    api.create(model)
    wait_for(lambda: converged(api, "pool", [MODEL]), "model loaded", 120, describe=operator.logs)
    first = pod_hashes(api)
    edit_template(api, "engine:2")
    cond = wait_for(
        lambda: (c := roll_condition(api)).get("reason") == "WaitingForSurge" and c,
        "TemplateRolledOut=False/WaitingForSurge",
        60,
        describe=lambda: roll_condition(api),
    )
    assert cond["status"] == "False"
    assert "maxServers 4" in cond["message"] and "raise maxServers" in cond["message"]
    assert any("raise maxServers" in m for m in _events(api, "RollWaiting"))
    status = api.get("serverpools", "pool")["status"]
    assert status["outdatedServers"] == 4 and status["updatedServers"] == 0
    assert pod_hashes(api) == first  # nothing was touched
    # One more server allowed: the roll goes on, one server at a time, to the end.
    sampler = ReadySampler(api.core.api_client, api.ns, fleet)
    sampler.watch([MODEL])
    with sampler:
        api.patch("serverpools", "pool", {"spec": {"maxServers": 5}})
        wait_for(
            lambda: rolled_out(api, set(first.values())),
            "every server pod on the new template",
            300,
            interval=0.5,
            describe=lambda: (roll_condition(api), operator.logs()[-3000:]),
        )
    assert sampler.below == 0 and sampler.samples > 0
    assert len(pod_hashes(api)) == 4
