"""Kubernetes I/O of update streams: read streams, models and assignments; write update duties
into assignments and freshness into UpdateStream status; post events.

Duties are written with a JSON merge patch of ``spec.updates`` alone, so they never race the pool
worker's assignment writes (which patch ``pool``, ``server``, ``zone`` and ``shards`` and leave
``updates`` untouched). Calls are synchronous; the operator runs them in a thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ekko.api.meta import GROUP, VERSION
from ekko.api.resources import (
    Model,
    ModelUpdateControl,
    ServerAssignment,
    UpdateDuty,
    UpdateStream,
)
from ekko.kube import pods
from ekko.kube.calls import get_custom, post_event
from ekko.kube.errors import InvalidObjectError
from ekko.kube.fleet import converted, parse
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


class UpdateKube:
    """Reads and writes what update streams need."""

    def __init__(self, api: client.ApiClient) -> None:
        # Typed as Any: the client's annotations disagree with the dict bodies it accepts.
        self.custom: Any = client.CustomObjectsApi(api)
        self.core: Any = client.CoreV1Api(api)

    def _get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return get_custom(self.custom, plural, namespace, name)

    @converted
    def observe(self, namespace: str, name: str) -> StreamObservation:
        raw = self._get("updatestreams", namespace, name)
        stream = parse(UpdateStream, raw) if raw is not None else None
        model = None
        if stream is not None:
            body = self._get("models", namespace, stream.spec.model)
            model = parse(Model, body) if body is not None else None
        items = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "serverassignments"
        )["items"]
        pod_list = self.core.list_namespaced_pod(namespace, label_selector=pods.POOL_LABEL).items
        by_name = {p.metadata.name: p for p in pod_list}
        assignments = []
        for item in items:
            try:
                a = parse(ServerAssignment, item)
            except InvalidObjectError as err:  # rewritten by the pool worker
                log.warning("%s", err)
                continue
            pod = by_name.get(a.metadata.name)
            serving = (
                pod is not None and pod.metadata.deletion_timestamp is None and pods.pod_ready(pod)
            )
            assignments.append((a, serving))
        regions: dict[str, str] = {}
        label = stream.spec.topology.region_label if stream is not None else None
        if label:
            nodes = {
                n.metadata.name: (n.metadata.labels or {}).get(label, "")
                for n in self.core.list_node().items
            }
            for pod in pod_list:
                regions[pod.metadata.name] = nodes.get(pod.spec.node_name or "", "")
        uids = {p.metadata.name: p.metadata.uid or "" for p in pod_list}
        return StreamObservation(stream, model, tuple(assignments), regions, uids)

    @converted
    def write_duties(self, namespace: str, server: str, duties: list[UpdateDuty]) -> None:
        """Replace the assignment's ``spec.updates`` (a 404 is ignored: the server is gone)."""
        body = {"spec": {"updates": [d.model_dump(by_alias=True, mode="json") for d in duties]}}
        try:
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "serverassignments", server, body
            )
        except ApiException as err:
            if err.status != 404:
                raise

    @converted
    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "updatestreams", name, {"status": status}
            )
        except ApiException as err:
            if err.status != 404:  # deleted meanwhile
                raise

    @converted
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

    @converted
    def find_stream(self, namespace: str, model: str) -> UpdateStream | None:
        """The UpdateStream of a model (``kubectl ekko updates``), or None."""
        items = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "updatestreams"
        )["items"]
        for item in sorted(items, key=lambda i: str(i["metadata"]["name"])):
            if (item.get("spec") or {}).get("model") == model:
                return parse(UpdateStream, item)
        return None

    @converted
    def streams(self, namespace: str) -> list[UpdateStream]:
        """Every UpdateStream of the namespace that parses (admission: one stream per model)."""
        items = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "updatestreams"
        )["items"]
        out = []
        for item in items:
            try:
                out.append(parse(UpdateStream, item))
            except InvalidObjectError as err:
                log.warning("%s", err)
        return out

    @converted
    def set_paused(self, namespace: str, name: str, paused: bool) -> None:
        """Set or clear the pause annotation (``kubectl ekko updates pause|resume``)."""
        value = "true" if paused else None
        body = {"metadata": {"annotations": {PAUSE_ANNOTATION: value}}}
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "updatestreams", name, body
        )

    @converted
    def patch_model_control(
        self, namespace: str, model: str, control: ModelUpdateControl | None
    ) -> None:
        """Write the Model's update control block (``status.updates``), which every agent
        holding the model applies; only on transitions."""
        body = None if control is None else control.model_dump(by_alias=True, mode="json")
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "models", model, {"status": {"updates": body}}
        )

    @converted
    def annotate_stream(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Set annotations on the stream (a person's rollback or resume request)."""
        self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "updatestreams",
            name,
            {"metadata": {"annotations": annotations}},
        )
