"""Reading server pods and their assignments: shared by the operator and `kubectl ekko`."""

from __future__ import annotations

from typing import Any

from ekko.api.resources import ServerAssignment
from ekko.kube.client import converting, list_raw, parse
from ekko.kube.observe import from_current_pod

POOL_LABEL = "ekko.dev/pool"


def pod_ready(pod: Any) -> bool:
    """Running, with the Ready condition True."""
    if pod.status is None or pod.status.phase != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def unschedulable(pod: Any) -> str:
    """The scheduler's message when the pod is Pending because no node fits it, else ""."""
    if pod.status is None or pod.status.phase != "Pending":
        return ""
    for c in pod.status.conditions or []:
        if c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable":
            return str(c.message or "no node fits the pod")
    return ""


def model_servers(
    core: Any, custom: Any, namespace: str, model: str, pool: str
) -> list[tuple[ServerAssignment, bool]]:
    """Assignments of the pool's servers that hold the model, with whether the pod serves."""
    selector = f"{POOL_LABEL}={pool}"
    raw = list_raw(custom, "serverassignments", namespace, label_selector=selector)
    with converting(f"list the Pods of pool {namespace}/{pool}"):
        listed = core.list_namespaced_pod(namespace, label_selector=selector).items
    pods = {p.metadata.name: p for p in listed}
    out = []
    for item in raw:
        assignment = parse(ServerAssignment, item)
        if any(s.model == model for s in assignment.spec.shards):
            pod = pods.get(assignment.metadata.name)
            serving = pod is not None and pod.metadata.deletion_timestamp is None and pod_ready(pod)
            if pod is not None and not from_current_pod(
                assignment, str(pod.metadata.uid or ""), since=pod.metadata.creation_timestamp
            ):
                assignment = assignment.model_copy(update={"status": None})  # another pod's report
            out.append((assignment, serving))
    return out
