"""The operator's Kubernetes I/O: observe a pool, carry out actions, write status and events.

The only operator module that imports the Kubernetes client. Calls are synchronous client calls;
the operator runs them in a thread so the event loop never waits on the network.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from ekko.api.meta import GROUP, VERSION
from ekko.api.resources import (
    ContainerResources,
    Model,
    ModelVersion,
    ServerAssignment,
    ServerPool,
    ServerTemplate,
)
from ekko.api.units import parse_time
from ekko.kube import observe as observe_
from ekko.kube import pods
from ekko.kube.cache import Cache, Obj
from ekko.kube.calls import post_event
from ekko.kube.client import apply_status as apply_object_status
from ekko.kube.client import (
    converting,
    create_object,
    delete_object,
    get_object,
    list_objects,
    list_raw,
    parse,
    patch_object,
)
from ekko.kube.client import patch_status as patch_object_status
from ekko.kube.errors import Conflict, InvalidObjectError, KubeError, NotFound
from ekko.planning.converge import (
    Action,
    CreateServer,
    DeleteServer,
    RecreateServer,
    WriteAssignment,
)
from ekko.planning.state import PoolState

log = logging.getLogger(__name__)

POOL_LABEL = pods.POOL_LABEL
SERVER_LABEL = "ekko.dev/server"
ZONE_LABEL = f"{GROUP}/zone"
TEMPLATE_HASH_LABEL = observe_.TEMPLATE_HASH_LABEL
MANAGED_BY = {"app.kubernetes.io/managed-by": "ekko"}
FIELD_MANAGER = "ekko-operator"
"""The field manager of the operator's status merge patches (a failed pass's conditions, a
refused Model's conditions); the owner's next apply takes conditions back."""
POOL_MANAGER = "ekko-pool"
"""Server-side apply field manager of the pool worker: its part of a Model's status, and a
ServerPool's whole status."""
ROLLOUT_MANAGER = "ekko-rollout"
"""Server-side apply field manager of the rollout worker: its part of a Model's status, and a
ModelVersion's whole status."""
STABLE_MANAGER = "ekko-pool-stable"
"""The pool worker's non-forced apply of a first ``stableVersion`` (never takes it over)."""

WRITE_CONCURRENCY = 16
"""Writes of one pass in flight at once: enough to create a thousand servers in seconds, few
enough not to flood the API server (kube-apiserver's default max-mutating-requests-inflight is
200, shared by every client)."""


def _parse_pool(body: Obj) -> ServerPool:
    return parse(ServerPool, body)


def _parse_model(body: Obj) -> Model:
    return parse(Model, body)


def _parse_version(body: Obj) -> ModelVersion:
    return parse(ModelVersion, body)


def _parse_assignment(body: Obj) -> ServerAssignment:
    return parse(ServerAssignment, body)


def _heartbeat(assignment: Mapping[str, Any] | None) -> dt.datetime | None:
    """The agent's last heartbeat in a raw assignment, None when it never reported."""
    return parse_time(((assignment or {}).get("status") or {}).get("heartbeat"), naive_as_utc=True)


@dataclass
class Applied:
    """What ``Fleet.apply`` did: short past-tense lines, and the errors of the actions that
    failed, refused (4xx: retried slowly, reported) or retriable (the pass is retried)."""

    done: list[str] = field(default_factory=list)
    refused: list[KubeError] = field(default_factory=list)
    retry: list[KubeError] = field(default_factory=list)


class Fleet:
    """Reads and writes the objects of server pools."""

    def __init__(
        self,
        api: client.ApiClient,
        operator_image: str = "ekko:latest",
        cache: Cache | None = None,
        write_concurrency: int = WRITE_CONCURRENCY,
    ) -> None:
        # Typed as Any: pods and nodes are read field by field below, and the client's own
        # annotations disagree with the dict bodies it accepts.
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.operator_image = operator_image
        self.cache = cache
        self.write_concurrency = max(1, write_concurrency)
        self._writers = ThreadPoolExecutor(self.write_concurrency, thread_name_prefix="ekko-write")
        self._stale_lock = threading.Lock()
        self._stale: dict[tuple[str, str], tuple[str, dt.datetime | None]] = {}
        """(namespace, server) -> (uid of its pod, heartbeat of its assignment when that pod
        appeared in place of another)."""
        if cache is not None:
            cache.listen(self._on_cache_event)

    def close(self) -> None:
        self._writers.shutdown(wait=False, cancel_futures=True)

    # -- reading ---------------------------------------------------------------------------

    def get_pool(self, namespace: str, name: str) -> ServerPool | None:
        """The pool, from the cache when it holds it (a miss asks the API server: the cache may
        not have seen a pool created a moment ago)."""
        if self.cache is not None and self.cache.synced:
            store = self.cache.store("serverpools")
            cached = store.get(namespace, name)
            if cached is not None:
                return store.parsed(cached, _parse_pool)
        return get_object(self.custom, ServerPool, namespace, name)

    def list_models_checked(self, namespace: str) -> tuple[list[Model], list[InvalidObjectError]]:
        """The namespace's models that Ekko can use, and the ones it cannot."""
        items = list_raw(self.custom, "models", namespace)
        good: list[Model] = []
        bad: list[InvalidObjectError] = []
        for item in items:
            try:
                good.append(parse(Model, item))
            except InvalidObjectError as err:
                err.pool = str((item.get("spec") or {}).get("pool", ""))
                bad.append(err)
        return good, bad

    def list_versions(self, namespace: str) -> list[ModelVersion]:
        good, bad = list_objects(self.custom, ModelVersion, namespace)
        for err in bad:  # its own rollout worker reports it
            log.debug("%s", err)
        return good

    def get_version(self, namespace: str, name: str) -> ModelVersion | None:
        return get_object(self.custom, ModelVersion, namespace, name)

    def get_model(self, namespace: str, name: str) -> Model | None:
        return get_object(self.custom, Model, namespace, name)

    def model_servers(
        self, namespace: str, model: str, pool: str
    ) -> list[tuple[ServerAssignment, bool]]:
        """Assignments of the pool's servers that hold the model, with whether the pod serves:
        from the cache once it has synced (a rollout pass listed both kinds before), else listed."""
        if self.cache is None or not self.cache.synced:
            return pods.model_servers(self.core, self.custom, namespace, model, pool)
        store = self.cache.store("serverassignments")
        by_name = {
            str((p.get("metadata") or {}).get("name", "")): p
            for p in self.cache.store("pods").items(namespace, index=pool)
        }
        out = []
        for item in store.items(namespace, index=pool):
            try:
                assignment = store.parsed(item, _parse_assignment)
            except InvalidObjectError:  # rewritten by the pool worker
                continue
            if any(s.model == model for s in assignment.spec.shards):
                pod = by_name.get(assignment.metadata.name)
                serving = (
                    pod is not None
                    and (pod.get("metadata") or {}).get("deletionTimestamp") is None
                    and observe_.pod_ready(pod)
                )
                out.append((observe_.current_report(assignment, pod), serving))
        return out

    def observe(self, pool: ServerPool) -> PoolState:
        """Everything about one pool: its models, pods, assignments and the nodes' zones.

        Read from the cache when there is one (no API call; objects are validated once per
        resource version), otherwise from one list of each kind."""
        namespace = pool.metadata.namespace or "default"
        name = pool.metadata.name
        view = self.cache if self.cache is not None else self._listed(namespace)
        models_store = view.store("models")
        models: list[Model] = []
        rejected: dict[str, str] = {}
        for item in models_store.items(namespace, index=name):
            try:
                models.append(models_store.parsed(item, _parse_model))
            except InvalidObjectError as err:
                rejected[err.name] = err.problem
        assignments_store = view.store("serverassignments")
        assignments: dict[str, ServerAssignment] = {}
        for item in assignments_store.items(namespace, index=name):
            try:
                parsed = assignments_store.parsed(item, _parse_assignment)
            except InvalidObjectError as err:  # rewritten by the next WriteAssignment
                log.warning("%s", err)
                continue
            assignments[parsed.metadata.name] = parsed
        versions_store = view.store("modelversions")
        versions: list[ModelVersion] = []
        for item in versions_store.items(namespace):
            try:
                versions.append(versions_store.parsed(item, _parse_version))
            except InvalidObjectError as err:  # its own rollout worker reports it
                log.debug("%s", err)
        with self._stale_lock:
            stale = {
                server: heartbeat
                for (ns, server), (_, heartbeat) in self._stale.items()
                if ns == namespace and heartbeat is not None
            }
        return observe_.pool_state(
            pool,
            models=models,
            rejected=rejected,
            pods=view.store("pods").items(namespace, index=name),
            assignments=assignments,
            nodes=view.store("nodes").items(),
            versions=versions,
            now=dt.datetime.now(dt.UTC),
            stale=stale,
            template_hash=template_hash(pool, self.operator_image),
        )

    def _listed(self, namespace: str) -> Cache:
        """A cache filled by one list of each kind, for a fleet that follows no watches."""
        listed = Cache(self.core.api_client, [namespace])
        with converting(f"list the objects of namespace {namespace}"):
            listed.list_once()
        return listed

    def first_report(self, namespace: str, server: str, before: Mapping[str, Any] | None) -> bool:
        """Whether an assignment's status, as it was ``before`` this write, did not count (it was
        the previous pod's): then even a heartbeat-only write is news, the new agent's first."""
        heartbeat = _heartbeat(before)
        if heartbeat is None:
            return True
        with self._stale_lock:
            stale = self._stale.get((namespace, server))
        if stale is not None and stale[1] is not None and heartbeat <= stale[1]:
            return True
        pod = self.cache.store("pods").get(namespace, server) if self.cache is not None else None
        created = observe_.created(pod)
        return created is not None and heartbeat < created

    def _on_cache_event(self, kind: str, event: str, old: Obj | None, new: Obj | None) -> None:
        """Remember, when a server's pod is replaced, the heartbeat its assignment carried then:
        reports up to that heartbeat are the previous agent's (see ``observe.loaded``)."""
        if kind != "pods" or event != "ADDED" or new is None or self.cache is None:
            return
        meta = new.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        uid = str(meta.get("uid") or "")
        with self._stale_lock:
            before = self._stale.get(key)
            heartbeat = before[1] if before is not None else None
            if before is not None and before[0] != uid:
                heartbeat = _heartbeat(self.cache.store("serverassignments").get(*key))
            self._stale[key] = (uid, heartbeat)

    # -- writing ---------------------------------------------------------------------------

    def peering_status(self, name: str, namespace: str | None) -> dict[str, Any] | None:
        """The peers kopf recorded in the peering object (None when there is no such object)."""
        try:
            if namespace is None:
                with converting(f"get ClusterKopfPeering {name}"):
                    body = self.custom.get_cluster_custom_object(
                        "kopf.dev", "v1", "clusterkopfpeerings", name
                    )
            else:
                with converting(f"get KopfPeering {namespace}/{name}"):
                    body = self.custom.get_namespaced_custom_object(
                        "kopf.dev", "v1", namespace, "kopfpeerings", name
                    )
        except NotFound:  # no object (or no CRD): the operator runs alone
            return None
        return dict(body.get("status") or {})

    def ensure_peering(self, name: str, namespaces: list[str]) -> None:
        """Create kopf's peering object (per namespace, or cluster-wide when none are given)."""
        if namespaces:
            for namespace in namespaces:
                body = {
                    "apiVersion": "kopf.dev/v1",
                    "kind": "KopfPeering",
                    "metadata": {"name": name},
                }
                self._create_ok_if_exists(
                    f"create KopfPeering {namespace}/{name}",
                    lambda b=body, ns=namespace: self.custom.create_namespaced_custom_object(
                        "kopf.dev", "v1", ns, "kopfpeerings", b
                    ),
                )
        else:
            body = {
                "apiVersion": "kopf.dev/v1",
                "kind": "ClusterKopfPeering",
                "metadata": {"name": name},
            }
            self._create_ok_if_exists(
                f"create ClusterKopfPeering {name}",
                lambda: self.custom.create_cluster_custom_object(
                    "kopf.dev", "v1", "clusterkopfpeerings", body
                ),
            )

    @staticmethod
    def _create_ok_if_exists(action: str, create: Any) -> None:
        with contextlib.suppress(Conflict), converting(action):
            create()

    def apply(self, pool: ServerPool, actions: Iterable[Action]) -> Applied:
        """Carry out a pass's actions, up to ``write_concurrency`` at once. Each action stands
        alone (converge only emits actions that are safe in any order), so one failure never
        stops the others: refused writes (a pod the API server finds invalid, an assignment over
        its item limit) and retriable errors (the API unwell or busy) are returned apart."""
        result = Applied()
        futures = [self._writers.submit(self._apply_one, pool, a) for a in actions]
        for future in futures:
            try:
                result.done.extend(future.result())
            except KubeError as err:
                if isinstance(err, Conflict) or err.status in (0, 429) or err.status >= 500:
                    result.retry.append(err)  # the whole pass is retried
                else:
                    result.refused.append(err)
        return result

    def _apply_one(self, pool: ServerPool, action: Action) -> list[str]:
        if isinstance(action, CreateServer):
            return [self.create_server(pool, action.name, action.zone)]
        if isinstance(action, WriteAssignment):
            self.write_assignment(pool, action)
            return [f"assigned {len(action.shards)} shards to {action.server}"]
        if isinstance(action, DeleteServer):
            self.delete_server(pool, action.name)
            return [f"deleted empty server {action.name}"]
        if isinstance(action, RecreateServer):
            self.delete_pod(pool, action.name)
            return [f"deleted failed server pod {action.name} to recreate it"]
        return []

    def create_server(self, pool: ServerPool, name: str, zone: str) -> str:
        """Create the server's pod; what was done, in words."""
        namespace = pool.metadata.namespace or "default"
        body = server_pod(pool, name, zone, self.operator_image)
        try:
            with converting(f"create Pod {namespace}/{name}"):
                self.core.create_namespaced_pod(namespace, body)
        except Conflict:
            return self._existing_server(pool, name)
        return f"created server {name} in zone {zone or '-'}"

    def _existing_server(self, pool: ServerPool, name: str) -> str:
        """The server's pod exists although the pool's watch does not see it: a re-run of the
        same pass, or a pod the pool owns whose ``ekko.dev/pool`` label was removed by hand. A
        pod the pool owns (controller reference) is its server whatever its labels: it is
        labelled again, so it is seen (and, if its spec was edited too, replaced make-before-
        break by the roll, see ``observe.EDITED``). A pod the pool does not own is left alone."""
        namespace = pool.metadata.namespace or "default"
        with contextlib.suppress(NotFound), converting(f"read Pod {namespace}/{name}"):
            pod = self.core.read_namespaced_pod(name, namespace)
            refs = [
                {"kind": r.kind, "uid": r.uid, "controller": r.controller}
                for r in pod.metadata.owner_references or []
            ]
            if not observe_.owned_by({"metadata": {"ownerReferences": refs}}, pool):
                return (
                    f"server {name} not created: a pod of that name exists and pool does not own it"
                )
            if (pod.metadata.labels or {}).get(POOL_LABEL) == pool.metadata.name:
                return f"server {name} exists"
            with converting(f"label Pod {namespace}/{name}"):
                self.core.patch_namespaced_pod(
                    name, namespace, {"metadata": {"labels": {POOL_LABEL: pool.metadata.name}}}
                )
            log.warning(
                "server pod %s/%s had lost its %s label: labelled again",
                namespace,
                name,
                POOL_LABEL,
            )
            return f"labelled server pod {name} again (its {POOL_LABEL} label was removed)"
        return f"server {name} exists"

    def write_assignment(self, pool: ServerPool, action: WriteAssignment) -> None:
        namespace = pool.metadata.namespace or "default"
        spec = {
            "pool": pool.metadata.name,
            "server": action.server,
            "zone": action.zone,
            "shards": [s.to_wire() for s in action.shards],
        }
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ServerAssignment",
            "metadata": {
                "name": action.server,
                "labels": {POOL_LABEL: pool.metadata.name, **MANAGED_BY},
                "ownerReferences": [owner_reference(pool)],
            },
            "spec": spec,
        }
        if action.new:  # none observed: create, and patch only if one exists after all
            try:
                create_object(self.custom, "serverassignments", namespace, body)
            except Conflict:
                patch_object(
                    self.custom, "serverassignments", namespace, action.server, {"spec": spec}
                )
            return
        try:
            patch_object(self.custom, "serverassignments", namespace, action.server, {"spec": spec})
        except NotFound:
            create_object(self.custom, "serverassignments", namespace, body)

    def delete_server(self, pool: ServerPool, name: str) -> None:
        namespace = pool.metadata.namespace or "default"
        with contextlib.suppress(NotFound), converting(f"delete Pod {namespace}/{name}"):
            self.core.delete_namespaced_pod(name, namespace)
        with contextlib.suppress(NotFound):
            delete_object(self.custom, "serverassignments", namespace, name)

    def delete_pod(self, pool: ServerPool, name: str) -> None:
        namespace = pool.metadata.namespace or "default"
        with contextlib.suppress(NotFound), converting(f"delete Pod {namespace}/{name}"):
            self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)

    def patch_status(
        self,
        plural: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> None:
        """Merge-patch an object's status; with ``resource_version``, only if the object is still
        at that version (Conflict otherwise)."""
        with contextlib.suppress(NotFound):  # deleted meanwhile: nothing to report on
            patch_object_status(
                self.custom,
                plural,
                namespace,
                name,
                status,
                resource_version=resource_version,
                field_manager=FIELD_MANAGER,
            )

    def apply_status(
        self,
        plural: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        manager: str,
        *,
        force: bool = True,
        resource_version: str | None = None,
        stale: Sequence[str] = (),
    ) -> None:
        """Server-side apply of the status fields ``manager`` owns (every one of them: a field
        left out is removed; ``stale`` ones another writer set are deleted first); see
        :func:`ekko.kube.client.apply_status`."""
        with contextlib.suppress(NotFound):  # deleted meanwhile: nothing to report on
            apply_object_status(
                self.custom,
                plural,
                namespace,
                name,
                status,
                field_manager=manager,
                force=force,
                resource_version=resource_version,
                stale=stale,
            )

    def apply_statuses(
        self,
        plural: str,
        namespace: str,
        manager: str,
        items: list[tuple[str, dict[str, Any]]],
        force: bool = True,
    ) -> list[KubeError | None]:
        """``apply_status`` of many objects, up to ``write_concurrency`` at once: (name, status)
        each; the error of each write, or None."""

        def one(item: tuple[str, dict[str, Any]]) -> KubeError | None:
            try:
                self.apply_status(plural, namespace, item[0], item[1], manager, force=force)
            except KubeError as err:
                return err
            return None

        return list(self._writers.map(one, items))

    def event(
        self,
        obj: ServerPool | Model | ModelVersion,
        reason: str,
        message: str,
        warning: bool = False,
    ) -> None:
        """Post a Kubernetes event on an object (short, past tense, names the object)."""
        self.event_on(
            obj.kind,
            obj.metadata.namespace or "default",
            obj.metadata.name,
            uid=obj.metadata.uid,
            reason=reason,
            message=message,
            warning=warning,
        )

    def report_failure(
        self,
        kind: str,
        plural: str,
        namespace: str,
        name: str,
        *,
        uid: str | None,
        reason: str,
        message: str,
        conditions: list[dict[str, Any]],
    ) -> None:
        """A warning event on the object and its conditions set (Degraded, not Ready): how a
        worker says why its pass failed. Raises KubeError; callers treat it as best effort."""
        self.event_on(kind, namespace, name, uid=uid, reason=reason, message=message, warning=True)
        self.patch_status(plural, namespace, name, {"conditions": conditions})

    def event_on(
        self,
        kind: str,
        namespace: str,
        name: str,
        *,
        uid: str | None,
        reason: str,
        message: str,
        warning: bool = False,
    ) -> None:
        """Post an event on an object known by reference (one Ekko cannot parse, too)."""
        post_event(
            self.core,
            kind,
            namespace,
            name,
            uid=uid,
            reason=reason,
            message=message,
            warning=warning,
        )


AGENT_PORT = 9400
UPDATES_PORT = 9500


def owner_reference(pool: ServerPool) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ServerPool",
        "name": pool.metadata.name,
        "uid": pool.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _resources(res: ContainerResources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if res.requests:
        out["requests"] = {k: str(v) for k, v in res.requests.items()}
    if res.limits:
        out["limits"] = {k: str(v) for k, v in res.limits.items()}
    return out


AGENT_SECURITY_CONTEXT: dict[str, Any] = {
    # The restricted Pod Security Standard, on the container itself so that the sidecar passes it
    # whatever the pool's pod-level securityContext says. The image's user is numeric (10001), so
    # the kubelet can check runAsNonRoot.
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def agent_container(template: ServerTemplate, operator_image: str) -> dict[str, Any]:
    """The Ekko agent sidecar: its listen address, ports and probes agree (unit-tested)."""
    return {
        "name": "ekko-agent",
        "image": template.agent_image or operator_image,
        # The kubelet probes the pod IP and Prometheus scrapes it: the agent's loopback default
        # would leave every server unready on a real node (kwok nodes never probe). agentArgs
        # may not name Ekko's flags (a CEL rule on the pool refuses them, in words); Ekko's come
        # last anyway, so that an abbreviation argparse accepts (--lis) cannot win either.
        "args": [
            "agent",
            *template.agent_args,
            "--engine",
            template.engine,
            "--listen",
            f"0.0.0.0:{AGENT_PORT}",
            "--update-listen",
            f"0.0.0.0:{UPDATES_PORT}",
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            # Peers pull model updates from this address (the agent's --update-advertise default).
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            # Written into every status report: the operator counts only its current pod's.
            {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        ],
        "ports": [
            {"name": "agent", "containerPort": AGENT_PORT},
            {"name": "updates", "containerPort": UPDATES_PORT},
        ],
        "resources": _resources(template.agent_resources),
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "agent"}, "periodSeconds": 2},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "agent"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "securityContext": dict(AGENT_SECURITY_CONTEXT),
    }


def engine_container(template: ServerTemplate) -> dict[str, Any]:
    """The inference engine container, as the pool's template describes it."""
    engine: dict[str, Any] = {
        "name": "engine",
        "image": template.image,
        "args": list(template.args),
        "env": [{"name": e.name, "value": e.value} for e in template.env],
        "resources": _resources(template.resources),
    }
    optional = {
        "ports": template.ports,
        "volumeMounts": template.volume_mounts,
        "readinessProbe": template.readiness_probe,
        "livenessProbe": template.liveness_probe,
        "securityContext": template.security_context,
    }
    engine.update({k: v for k, v in optional.items() if v})
    return engine


def template_hash(pool: ServerPool, operator_image: str) -> str:
    """Hash of what the pool's template (and the agent's image and args) make of a server pod:
    the pod rendered without the parts Ekko sets per server (its name, zone and owner). A pod
    whose ``ekko.dev/template-hash`` label differs is outdated and gets replaced."""
    pod = _render(pool, "", "", operator_image)
    meta = pod["metadata"]
    labels = {k: v for k, v in meta["labels"].items() if k not in (SERVER_LABEL, ZONE_LABEL)}
    doc = {"labels": labels, "annotations": meta["annotations"], "spec": pod["spec"]}
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def server_pod(pool: ServerPool, name: str, zone: str, operator_image: str) -> dict[str, Any]:
    """The pod of one server: the engine container and the agent sidecar, pinned to its zone,
    labelled with the hash of the template it was made from."""
    pod = _render(pool, name, zone, operator_image)
    pod["metadata"]["labels"][TEMPLATE_HASH_LABEL] = template_hash(pool, operator_image)
    pod["metadata"]["annotations"][observe_.IMAGES_ANNOTATION] = observe_.container_images(pod)
    return pod


def _render(pool: ServerPool, name: str, zone: str, operator_image: str) -> dict[str, Any]:
    template = pool.spec.template
    node_selector = dict(template.node_selector)
    if zone:
        node_selector[pool.spec.topology_key] = zone
    spec: dict[str, Any] = {
        "containers": [engine_container(template), agent_container(template, operator_image)],
        "nodeSelector": node_selector,
        "tolerations": list(template.tolerations),
    }
    optional: dict[str, Any] = {
        "serviceAccountName": template.service_account_name,
        "securityContext": template.pod_security_context,
        "volumes": template.volumes,
        "imagePullSecrets": [{"name": n} for n in template.image_pull_secrets],
        "affinity": template.affinity,
        "priorityClassName": template.priority_class_name,
    }
    spec.update({k: v for k, v in optional.items() if v})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {
                **template.labels,
                POOL_LABEL: pool.metadata.name,
                SERVER_LABEL: name,
                ZONE_LABEL: zone,
                **MANAGED_BY,
            },
            "ownerReferences": [owner_reference(pool)],
            # For a Prometheus that discovers pods by annotation (the chart's PodMonitor or
            # scrape config selects the same port by name).
            "annotations": {
                **template.annotations,
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(AGENT_PORT),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": spec,
    }
