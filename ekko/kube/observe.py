"""A pool's state from the objects the cache holds: plain dicts in, frozen values out.

No API calls here: ``Fleet.observe`` hands in what the informers keep (or what one list returned),
so the classification of servers (lost node, failed, ready, what counts as loaded) is a function of
its inputs and is table-tested without a cluster.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from ekko.api.meta import GROUP
from ekko.api.resources import Model, ModelVersion, ServerAssignment, ServerPool
from ekko.api.units import parse_time
from ekko.planning.state import PoolState, ServerObs, resident_versions

Obj = Mapping[str, Any]

TEMPLATE_HASH_LABEL = f"{GROUP}/template-hash"
"""Label on each server pod: the hash of the pool template it was made from."""

IMAGES_ANNOTATION = f"{GROUP}/images"
"""Annotation on each server pod: its containers' images as Ekko created them (``name=image``,
comma-separated; see :func:`container_images`)."""

EDITED = "edited"
"""Template hash given to a server pod whose container images were changed after it was created
(a ``kubectl edit``/``patch`` of an image: the one change to what runs that a pod's spec allows).
Ekko never changes a server pod's spec, so such a pod no longer is what its template-hash label
says: it counts as outdated and the roll replaces it make-before-break. Other in-place changes
(an ephemeral debug container, an in-place resize, added tolerations) leave the pod alone, so
``kubectl debug`` on a server does not replace it."""


def container_images(pod: Obj) -> str:
    """The pod's containers' (init containers' first) images as ``name=image,…``."""
    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]
    return ",".join(f"{c.get('name', '')}={c.get('image', '')}" for c in containers)


def images_edited(pod: Obj) -> bool:
    """Whether the pod's images differ from those recorded when Ekko created it (a pod made
    before the annotation existed counts as unedited)."""
    recorded = (_meta(pod).get("annotations") or {}).get(IMAGES_ANNOTATION)
    return recorded is not None and recorded != container_images(pod)


NODE_LOST_AFTER = 60.0
"""Seconds a node may be not Ready before its servers count as lost. A kubelet that cannot reach
the API server (an API-server restart, a network blip) leaves its node NotReady/Unknown while
its pods go on serving; replacing them at once turned a 20 s API outage into lost replicas."""


def _meta(obj: Obj) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _time(text: object) -> dt.datetime | None:
    """An RFC 3339 time of the API (``2026-11-29T12:00:00Z``), None when absent or unreadable."""
    return parse_time(text, naive_as_utc=True)


def created(obj: Obj | None) -> dt.datetime | None:
    """An object's creation time (whole seconds, as the API server keeps it)."""
    return _time(_meta(obj).get("creationTimestamp")) if obj is not None else None


def owned_by(pod: Obj, pool: ServerPool) -> bool:
    """Whether the pool's controller owner reference is on the pod (it creates every server)."""
    refs = _meta(pod).get("ownerReferences") or []
    return any(
        r.get("kind") == "ServerPool" and r.get("uid") == pool.metadata.uid and r.get("controller")
        for r in refs
    )


def pod_ready(pod: Obj) -> bool:
    """Running, with the Ready condition True."""
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def unschedulable(pod: Obj) -> str:
    """The scheduler's message when the pod is Pending because no node fits it, else ""."""
    status = pod.get("status") or {}
    if status.get("phase") != "Pending":
        return ""
    for c in status.get("conditions") or []:
        if (
            c.get("type") == "PodScheduled"
            and c.get("status") == "False"
            and c.get("reason") == "Unschedulable"
        ):
            return str(c.get("message") or "no node fits the pod")
    return ""


def node_ready(node: Obj, now: dt.datetime) -> bool:
    """Ready, or not Ready for less than NODE_LOST_AFTER seconds."""
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is None:
        return False
    if ready.get("status") == "True":
        return True
    since = _time(ready.get("lastTransitionTime"))
    if since is None:
        return False
    return (now - since).total_seconds() < NODE_LOST_AFTER


def pod_uid(obj: Obj | None) -> str:
    """An object's UID, "" when absent."""
    return str(_meta(obj).get("uid") or "") if obj is not None else ""


def from_current_pod(
    assignment: ServerAssignment | None,
    uid: str = "",
    since: dt.datetime | None = None,
    stale: dt.datetime | None = None,
) -> bool:
    """Whether the assignment's report (loaded, routing) is the current pod's agent's.

    A recreated pod keeps its name, so its assignment can show another agent's report: the
    previous agent's last write, or an agent of the deleted pod still running (a force-deleted
    pod whose container lives on) that loads and reports the new pod's shards. The agent writes
    its own pod's UID (``status.podUid``); when both it and the current pod's ``uid`` are known,
    the report counts exactly when they match.

    A report without ``podUid`` (an agent from before the field) falls back to two time guards:
    the report must not predate the pod (``since``, its creation time), and it must be newer than
    ``stale``, the heartbeat the assignment carried when the cache saw the new pod appear (the
    creation time has whole seconds only, and an old agent's last write can land in that
    second). Those cannot tell a still-running old agent from the new one."""
    if assignment is None or assignment.status is None:
        return False
    status = assignment.status
    if status.pod_uid and uid:
        return status.pod_uid == uid
    heartbeat = status.heartbeat
    if heartbeat is None:
        return since is None and stale is None
    return not (
        (since is not None and heartbeat < since) or (stale is not None and heartbeat <= stale)
    )


def loaded(
    assignment: ServerAssignment | None,
    since: dt.datetime | None = None,
    stale: dt.datetime | None = None,
    uid: str = "",
) -> frozenset[tuple[str, int, str]]:
    """What the server's agent reports loaded; nothing if the report is not the current pod's
    (see ``from_current_pod``)."""
    if assignment is None or assignment.status is None:
        return frozenset()
    if not from_current_pod(assignment, uid, since, stale):
        return frozenset()
    return frozenset((s.model, s.shard, s.version) for s in assignment.status.loaded)


def current_report(assignment: ServerAssignment, pod: Obj | None) -> ServerAssignment:
    """The assignment as the rollout should read it: its status dropped when the report is not
    the current pod's agent's (same rule as ``loaded``). Without a pod it is kept: the server
    is not ready, so nothing of it counts, and its load errors stay visible."""
    if assignment.status is None or pod is None:
        return assignment
    if from_current_pod(assignment, pod_uid(pod), since=created(pod)):
        return assignment
    return assignment.model_copy(update={"status": None})


def pool_state(
    pool: ServerPool,
    *,
    models: Iterable[Model],
    rejected: Mapping[str, str],
    pods: Iterable[Obj],
    assignments: Mapping[str, ServerAssignment],
    nodes: Iterable[Obj],
    versions: list[ModelVersion],
    now: dt.datetime,
    stale: Mapping[str, dt.datetime] | None = None,
    template_hash: str = "",
) -> PoolState:
    """Everything about one pool, from its objects.

    ``pods`` may hold any pod carrying the pool's label: only those the pool owns are servers (a
    user's pod that merely carries the label is not one; once, one was deleted as a "failed
    server"). ``template_hash`` is what the pool's template renders now (see
    ``PoolState.outdated``). ``stale`` maps a server name to the heartbeat its assignment had when its current
    pod appeared (see ``loaded``)."""
    name = pool.metadata.name
    live = tuple(m for m in models if m.spec.pool == name and m.metadata.deletion_timestamp is None)
    key = pool.spec.topology_key
    node_zone: dict[str, str] = {}
    node_ok: dict[str, bool] = {}
    for node in nodes:
        node_name = str(_meta(node).get("name", ""))
        node_zone[node_name] = str((_meta(node).get("labels") or {}).get(key, ""))
        node_ok[node_name] = node_ready(node, now)
    stale = stale or {}
    servers: dict[str, ServerObs] = {}
    for pod in pods:
        if not owned_by(pod, pool):
            continue
        meta = _meta(pod)
        pod_name = str(meta.get("name", ""))
        assignment = assignments.get(pod_name)
        pod_node = (pod.get("spec") or {}).get("nodeName")
        on = str(pod_node) if pod_node else None
        lost_node = on is not None and (on not in node_zone or not node_ok[on])
        phase = (pod.get("status") or {}).get("phase")
        servers[pod_name] = ServerObs(
            name=pod_name,
            zone=str((meta.get("labels") or {}).get(f"{GROUP}/zone", "")),
            pod_exists=True,
            pod_ready=pod_ready(pod) and not lost_node,
            pod_failed=phase in ("Failed", "Succeeded") or lost_node,
            deleting=meta.get("deletionTimestamp") is not None,
            node=on,
            assignment_exists=assignment is not None,
            spec_shards=tuple(assignment.spec.shards) if assignment else (),
            loaded=loaded(
                assignment, since=created(pod), stale=stale.get(pod_name), uid=pod_uid(pod)
            ),
            unschedulable=unschedulable(pod),
            template_hash=EDITED
            if images_edited(pod)
            else str((meta.get("labels") or {}).get(TEMPLATE_HASH_LABEL, "")),
        )
    for a_name, assignment in assignments.items():
        if a_name not in servers:
            servers[a_name] = ServerObs(
                name=a_name,
                zone=assignment.spec.zone,
                pod_exists=False,
                spec_shards=tuple(assignment.spec.shards),
                loaded=frozenset(),
            )
    return PoolState(
        pool=pool,
        models=live,
        resident={m.metadata.name: resident_versions(m, versions) for m in live},
        servers=tuple(servers[k] for k in sorted(servers)),
        node_zones=tuple(sorted({z for z in node_zone.values() if z})),
        rejected=dict(rejected),
        template_hash=template_hash,
    )
