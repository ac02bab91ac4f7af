"""Kubernetes I/O of update streams: read streams, models and assignments; write update duties
into assignments and freshness into UpdateStream status; post events.

Duties are written with a JSON merge patch of ``spec.updates`` alone, so they never race the pool
worker's assignment writes (which patch ``pool``, ``server``, ``zone`` and ``shards`` and leave
``updates`` untouched). Calls are synchronous; the operator runs them in a thread.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from ekko.api.resources import (
    Model,
    ModelUpdateControl,
    ServerAssignment,
    UpdateDuty,
    UpdateStream,
)
from ekko.kube import observe as observed
from ekko.kube import pods
from ekko.kube.cache import Cache
from ekko.kube.calls import post_event
from ekko.kube.client import (
    converting,
    get_object,
    list_objects,
    list_raw,
    parse,
    patch_object,
)
from ekko.kube.client import patch_status as patch_object_status
from ekko.kube.errors import InvalidObjectError, NotFound
from ekko.planning.updates import PAUSE_ANNOTATION

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamObservation:
    """What one pass of a stream needs: the stream, its model and every assignment of the
    namespace (with whether its pod serves)."""

    stream: UpdateStream | None
    model: Model | None
    assignments: tuple[tuple[ServerAssignment, bool], ...]
    regions: dict[str, str]
    """Server → value of the stream's regionLabel on its node (only when regionLabel is set;
    otherwise a server's region is the zone of its assignment)."""
    uids: dict[str, str] = field(default_factory=dict)
    """Server → UID of its current pod (a replaced pod has a new one and an empty store)."""
    streams: tuple[UpdateStream, ...] = ()
    """Every UpdateStream of the namespace (this one included): one stream per model."""


@dataclass(frozen=True)
class _Pod:
    uid: str
    serving: bool
    node: str


def _from_cache(
    cache: Cache, namespace: str, label: str | None
) -> tuple[list[ServerAssignment], dict[str, _Pod], dict[str, str]]:
    """The namespace's assignments, server pods and (with a region label) node regions, from
    the informer cache."""
    store = cache.store("serverassignments")
    parsed = []
    for obj in store.items(namespace):
        try:
            parsed.append(store.parsed(obj, lambda o: parse(ServerAssignment, o)))
        except InvalidObjectError as err:  # rewritten by the pool worker
            log.warning("%s", err)
    servers = {}
    for pod in cache.store("pods").items(namespace):
        meta = pod.get("metadata") or {}
        servers[str(meta.get("name", ""))] = _Pod(
            str(meta.get("uid") or ""),
            meta.get("deletionTimestamp") is None and observed.pod_ready(pod),
            str((pod.get("spec") or {}).get("nodeName") or ""),
        )
    nodes: dict[str, str] = {}
    if label:
        for node in cache.store("nodes").items():
            meta = node.get("metadata") or {}
            nodes[str(meta.get("name", ""))] = str((meta.get("labels") or {}).get(label, ""))
    return parsed, servers, nodes


class UpdateKube:
    """Reads and writes what update streams need."""

    def __init__(self, api: client.ApiClient, cache: Cache | None = None) -> None:
        # Typed as Any: the client's annotations disagree with the dict bodies it accepts.
        self.custom: Any = client.CustomObjectsApi(api)
        self.core: Any = client.CoreV1Api(api)
        self.cache = cache
        """The operator's informer cache: assignments, pods and nodes are read from it once it
        has synced (a pass every 0.25–2 s per stream listed all three before)."""

    def observe(self, namespace: str, name: str) -> StreamObservation:
        stream = get_object(self.custom, UpdateStream, namespace, name)
        model = None
        if stream is not None:
            # Read fresh, never from the cache: the state manager derives the next control
            # block from this one, and a stale copy would undo its own last write.
            model = get_object(self.custom, Model, namespace, stream.spec.model)
        label = stream.spec.topology.region_label if stream is not None else None
        cache = self.cache if self.cache is not None and self.cache.synced else None
        if cache is not None:
            parsed, servers, nodes = _from_cache(cache, namespace, label)
        else:
            parsed, servers, nodes = self._listed(namespace, label)
        assignments = []
        for a in parsed:
            pod = servers.get(a.metadata.name)
            assignments.append((a, pod is not None and pod.serving))
        regions: dict[str, str] = {}
        if label:
            regions = {n: nodes.get(pod.node, "") for n, pod in servers.items()}
        uids = {n: pod.uid for n, pod in servers.items()}
        streams: list[UpdateStream] = []
        if stream is not None:
            if cache is not None and "updatestreams" in cache.stores:
                store = cache.store("updatestreams")
                for obj in store.items(namespace):
                    try:
                        streams.append(store.parsed(obj, lambda o: parse(UpdateStream, o)))
                    except InvalidObjectError as err:
                        log.debug("%s", err)  # its own worker reports it
            else:
                streams, _ = list_objects(self.custom, UpdateStream, namespace)
        return StreamObservation(stream, model, tuple(assignments), regions, uids, tuple(streams))

    def _listed(
        self, namespace: str, label: str | None
    ) -> tuple[list[ServerAssignment], dict[str, _Pod], dict[str, str]]:
        parsed, bad = list_objects(self.custom, ServerAssignment, namespace)
        for err in bad:  # rewritten by the pool worker
            log.warning("%s", err)
        with converting(f"list the server Pods of namespace {namespace}"):
            pod_list = self.core.list_namespaced_pod(
                namespace, label_selector=pods.POOL_LABEL
            ).items
        servers = {
            p.metadata.name: _Pod(
                p.metadata.uid or "",
                p.metadata.deletion_timestamp is None and pods.pod_ready(p),
                p.spec.node_name or "",
            )
            for p in pod_list
        }
        nodes: dict[str, str] = {}
        if label:
            with converting("list Nodes"):
                listed = self.core.list_node().items
            nodes = {n.metadata.name: (n.metadata.labels or {}).get(label, "") for n in listed}
        return parsed, servers, nodes

    def write_duties(self, namespace: str, server: str, duties: list[UpdateDuty]) -> None:
        """Replace the assignment's ``spec.updates`` (ignored when the server is gone)."""
        body = {"spec": {"updates": [d.model_dump(by_alias=True, mode="json") for d in duties]}}
        with contextlib.suppress(NotFound):
            patch_object(self.custom, "serverassignments", namespace, server, body)

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        with contextlib.suppress(NotFound):  # deleted meanwhile
            patch_object_status(self.custom, "updatestreams", namespace, name, status)

    def event(self, stream: UpdateStream, reason: str, message: str, warning: bool = False) -> None:
        """Post a Kubernetes event on the stream (short, past tense, names the object)."""
        post_event(
            self.core,
            "UpdateStream",
            stream.metadata.namespace or "default",
            stream.metadata.name,
            uid=stream.metadata.uid,
            reason=reason,
            message=message,
            warning=warning,
        )

    def find_stream(self, namespace: str, model: str) -> UpdateStream | None:
        """The UpdateStream of a model (``kubectl ekko updates``), or None."""
        items = list_raw(self.custom, "updatestreams", namespace)
        for item in sorted(items, key=lambda i: str(i["metadata"]["name"])):
            if (item.get("spec") or {}).get("model") == model:
                return parse(UpdateStream, item)
        return None

    def streams(self, namespace: str) -> list[UpdateStream]:
        """Every UpdateStream of the namespace that parses (admission: one stream per model)."""
        good, bad = list_objects(self.custom, UpdateStream, namespace)
        for err in bad:
            log.warning("%s", err)
        return good

    def set_paused(self, namespace: str, name: str, paused: bool) -> None:
        """Set or clear the pause annotation (``kubectl ekko updates pause|resume``)."""
        value = "true" if paused else None
        body = {"metadata": {"annotations": {PAUSE_ANNOTATION: value}}}
        patch_object(self.custom, "updatestreams", namespace, name, body)

    def patch_model_control(
        self, namespace: str, model: str, control: ModelUpdateControl | None
    ) -> None:
        """Write the Model's update control block (``status.updates``), which every agent
        holding the model applies; only on transitions."""
        body = None if control is None else control.model_dump(by_alias=True, mode="json")
        patch_object_status(self.custom, "models", namespace, model, {"updates": body})

    def annotate_stream(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Set annotations on the stream (a person's rollback or resume request)."""
        body = {"metadata": {"annotations": annotations}}
        patch_object(self.custom, "updatestreams", namespace, name, body)
