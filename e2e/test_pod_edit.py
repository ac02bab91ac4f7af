"""A server pod edited by hand, on a real API server (issue 15): its image changed, then its
``ekko.dev/pool`` label removed. The operator labels its own pod again (owner reference, not
label, says whose it is), counts the edited pod as outdated (its images differ from ``ekko.dev/images``) and
replaces it make-before-break; the model ends served, with no pod of the pool on the edited
image. ``bench/faults.py`` (``pod-edit``, ``pod-image``) measures the same with timings."""

from __future__ import annotations

import pytest

from e2e.agents import AgentFleet
from e2e.objects import Api, converged, model_manifest, pool_manifest
from e2e.operator_harness import OperatorProcess
from e2e.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

EDITED = "registry.invalid/edited-by-hand:1"


def _pods(api: Api) -> dict[str, tuple[str, list[str]]]:
    """Every pod of the namespace a pool owns, whatever its labels: uid and container images."""
    return {
        p.metadata.name: (str(p.metadata.uid), [c.image for c in p.spec.containers])
        for p in api.core.list_namespaced_pod(api.ns).items
        if p.metadata.deletion_timestamp is None
        and any(r.kind == "ServerPool" for r in p.metadata.owner_references or [])
    }


def test_a_server_pod_edited_by_hand_is_labelled_again_and_replaced(
    api: Api, fleet: AgentFleet, operator: OperatorProcess
) -> None:
    api.create(pool_manifest())
    api.create(model_manifest("rank", 4, "8Gi", 2))
    wait_for(lambda: converged(api, "pool", ["rank"]), "model loaded", 180, describe=operator.logs)
    before = _pods(api)
    victim = sorted(before)[0]
    api.core.patch_namespaced_pod(
        victim, api.ns, {"spec": {"containers": [{"name": "ekko-agent", "image": EDITED}]}}
    )
    api.core.patch_namespaced_pod(
        victim, api.ns, [{"op": "remove", "path": "/metadata/labels/ekko.dev~1pool"}]
    )

    def relabelled() -> bool:
        pod = api.core.read_namespaced_pod(victim, api.ns)
        return (pod.metadata.labels or {}).get("ekko.dev/pool") == "pool"

    wait_for(relabelled, "the edited pod labelled again", 120, describe=operator.logs)

    def replaced() -> bool:
        now = _pods(api)
        return (
            victim not in now
            and all(EDITED not in images for _, images in now.values())
            and converged(api, "pool", ["rank"])
        )

    wait_for(replaced, "the edited pod replaced", 240, describe=lambda: operator.logs()[-3000:])
    after = _pods(api)
    assert len(after) == len(before)  # one replaced, none left over
    assert {uid for uid, _ in after.values()} & {uid for uid, _ in before.values()} == {
        before[n][0] for n in before if n != victim
    }  # the untouched servers were kept
