"""The operator's Kubernetes I/O: observe a pool, carry out actions, write status and events.

The only operator module that imports the Kubernetes client. Calls are synchronous client calls;
the operator runs them in a thread so the event loop never waits on the network.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ValidationError
from urllib3.exceptions import HTTPError

from ekko.api.meta import GROUP, VERSION
from ekko.api.resources import (
    ContainerResources,
    Model,
    ModelVersion,
    ServerAssignment,
    ServerPool,
    ServerTemplate,
)
from ekko.api.validate import field_errors
from ekko.kube import pods
from ekko.kube.calls import post_event
from ekko.kube.errors import InvalidObjectError, KubeError
from ekko.planning.converge import (
    Action,
    CreateServer,
    DeleteServer,
    RecreateServer,
    WriteAssignment,
)
from ekko.planning.state import PoolState, ServerObs, resident_versions

log = logging.getLogger(__name__)

POOL_LABEL = pods.POOL_LABEL
SERVER_LABEL = "ekko.dev/server"
MANAGED_BY = {"app.kubernetes.io/managed-by": "ekko"}
FIELD_MANAGER = "ekko-operator"

P = ParamSpec("P")
R = TypeVar("R")


def converted(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn the client's exceptions into KubeError with a one-line message."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ApiException as err:
            raise KubeError(_api_message(fn.__name__, err), err.status or 0) from err
        except (HTTPError, OSError) as err:
            raise KubeError(f"{fn.__name__}: {err}") from err

    return wrapper


M = TypeVar("M", bound=BaseModel)


def parse(cls: type[M], body: dict[str, Any]) -> M:
    """An api type from an object the API server returned; InvalidObjectError when it does not fit
    (the schema admitted it but the Python twin does not: reported on the object, not a crash)."""
    try:
        return cls.model_validate(body)
    except ValidationError as err:
        meta = body.get("metadata") or {}
        problems = "; ".join(field_errors(err)[:3])
        raise InvalidObjectError(
            str(body.get("kind") or cls.__name__),
            str(meta.get("namespace") or "default"),
            str(meta.get("name") or "?"),
            meta.get("uid"),
            problems,
        ) from err


def _api_message(call: str, err: ApiException) -> str:
    """The API server's own words when it gave any (a 422 names the field and the rule)."""
    text = ""
    with contextlib.suppress(ValueError, AttributeError):
        text = str(json.loads(err.body or "{}").get("message", ""))
    return f"{call}: {err.status} {err.reason or ''}".strip() + (f": {text}" if text else "")


def load_config(kubeconfig: str | None = None) -> client.ApiClient:
    """An API client from a kubeconfig, or from the pod's service account in a cluster."""
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class Fleet:
    """Reads and writes the objects of server pools."""

    def __init__(self, api: client.ApiClient, operator_image: str = "ekko:latest") -> None:
        # Typed as Any: pods and nodes are read field by field below, and the client's own
        # annotations disagree with the dict bodies it accepts.
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.operator_image = operator_image

    # -- reading ---------------------------------------------------------------------------

    @converted
    def get_pool(self, namespace: str, name: str) -> ServerPool | None:
        try:
            body = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "serverpools", name
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return parse(ServerPool, body)

    @converted
    def list_models(self, namespace: str) -> list[Model]:
        items = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "models")[
            "items"
        ]
        return [parse(Model, i) for i in items]

    @converted
    def list_models_checked(self, namespace: str) -> tuple[list[Model], list[InvalidObjectError]]:
        """The namespace's models that Ekko can use, and the ones it cannot."""
        items = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "models")[
            "items"
        ]
        good: list[Model] = []
        bad: list[InvalidObjectError] = []
        for item in items:
            try:
                good.append(parse(Model, item))
            except InvalidObjectError as err:
                err.pool = str((item.get("spec") or {}).get("pool", ""))
                bad.append(err)
        return good, bad

    @converted
    def list_versions(self, namespace: str) -> list[ModelVersion]:
        items = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "modelversions"
        )["items"]
        out = []
        for item in items:
            try:
                out.append(parse(ModelVersion, item))
            except InvalidObjectError as err:  # its own rollout worker reports it
                log.debug("%s", err)
        return out

    @converted
    def get_version(self, namespace: str, name: str) -> ModelVersion | None:
        try:
            body = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "modelversions", name
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return parse(ModelVersion, body)

    @converted
    def get_model(self, namespace: str, name: str) -> Model | None:
        try:
            body = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "models", name
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return parse(Model, body)

    @converted
    def model_servers(
        self, namespace: str, model: str, pool: str
    ) -> list[tuple[ServerAssignment, bool]]:
        """Assignments of the pool's servers that hold the model, with whether the pod serves."""
        return pods.model_servers(self.core, self.custom, namespace, model, pool)

    @converted
    def observe(self, pool: ServerPool) -> PoolState:
        """Everything about one pool: its models, pods, assignments and the nodes' zones."""
        namespace = pool.metadata.namespace or "default"
        name = pool.metadata.name
        selector = f"{POOL_LABEL}={name}"
        usable, invalid = self.list_models_checked(namespace)
        models = tuple(
            m for m in usable if m.spec.pool == name and m.metadata.deletion_timestamp is None
        )
        rejected = {err.name: err.problem for err in invalid if err.pool == name}
        # Only the pool's own pods: a user's pod that merely carries the label is not a server
        # (once, one was deleted as a "failed server").
        pod_list = [
            p
            for p in self.core.list_namespaced_pod(namespace, label_selector=selector).items
            if owned_by(p, pool)
        ]
        raw = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "serverassignments", label_selector=selector
        )["items"]
        assignments = {}
        for a in raw:
            try:
                assignments[a["metadata"]["name"]] = parse(ServerAssignment, a)
            except InvalidObjectError as err:  # rewritten by the next WriteAssignment
                log.warning("%s", err)
        nodes = self.core.list_node().items
        key = pool.spec.topology_key
        node_zone = {n.metadata.name: (n.metadata.labels or {}).get(key, "") for n in nodes}
        node_ready = {n.metadata.name: _node_ready(n) for n in nodes}
        servers: dict[str, ServerObs] = {}
        for pod in pod_list:
            pod_name = pod.metadata.name
            assignment = assignments.get(pod_name)
            node = pod.spec.node_name
            lost_node = node is not None and (node not in node_zone or not node_ready[node])
            servers[pod_name] = ServerObs(
                name=pod_name,
                zone=(pod.metadata.labels or {}).get(f"{GROUP}/zone", ""),
                pod_exists=True,
                pod_ready=pods.pod_ready(pod) and not lost_node,
                pod_failed=pod.status.phase in ("Failed", "Succeeded") or lost_node,
                deleting=pod.metadata.deletion_timestamp is not None,
                node=node,
                assignment_exists=assignment is not None,
                spec_shards=tuple(assignment.spec.shards) if assignment else (),
                loaded=_loaded(assignment, since=pod.metadata.creation_timestamp),
                unschedulable=pods.unschedulable(pod),
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
        versions = self.list_versions(namespace)
        return PoolState(
            pool=pool,
            models=models,
            resident={m.metadata.name: resident_versions(m, versions) for m in models},
            servers=tuple(servers[k] for k in sorted(servers)),
            node_zones=tuple(sorted({z for z in node_zone.values() if z})),
            rejected=rejected,
        )

    # -- writing ---------------------------------------------------------------------------

    @converted
    def peering_status(self, name: str, namespace: str | None) -> dict[str, Any] | None:
        """The peers kopf recorded in the peering object (None when there is no such object)."""
        try:
            if namespace is None:
                body = self.custom.get_cluster_custom_object(
                    "kopf.dev", "v1", "clusterkopfpeerings", name
                )
            else:
                body = self.custom.get_namespaced_custom_object(
                    "kopf.dev", "v1", namespace, "kopfpeerings", name
                )
        except ApiException as err:
            if err.status == 404:  # no object (or no CRD): the operator runs alone
                return None
            raise
        return dict(body.get("status") or {})

    @converted
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
                    lambda b=body, ns=namespace: self.custom.create_namespaced_custom_object(
                        "kopf.dev", "v1", ns, "kopfpeerings", b
                    )
                )
        else:
            body = {
                "apiVersion": "kopf.dev/v1",
                "kind": "ClusterKopfPeering",
                "metadata": {"name": name},
            }
            self._create_ok_if_exists(
                lambda: self.custom.create_cluster_custom_object(
                    "kopf.dev", "v1", "clusterkopfpeerings", body
                )
            )

    @staticmethod
    def _create_ok_if_exists(create: Any) -> None:
        try:
            create()
        except ApiException as err:
            if err.status != 409:
                raise

    def apply(
        self, pool: ServerPool, actions: Iterable[Action]
    ) -> tuple[list[str], list[KubeError]]:
        """Carry out actions in order; return what was done, as short past-tense lines, and the
        errors of the actions that failed. One refused write (a pod the API server finds invalid,
        an assignment over its item limit) does not stop the others; a lost connection does."""
        done: list[str] = []
        failed: list[KubeError] = []
        for action in actions:
            try:
                done.extend(self._apply_one(pool, action))
            except KubeError as err:
                if not err.status or err.status in (409, 429) or err.status >= 500:
                    raise  # the API is unwell or busy: the whole pass is retried
                failed.append(err)
        return done, failed

    def _apply_one(self, pool: ServerPool, action: Action) -> list[str]:
        if isinstance(action, CreateServer):
            self.create_server(pool, action.name, action.zone)
            return [f"created server {action.name} in zone {action.zone or '-'}"]
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

    @converted
    def create_server(self, pool: ServerPool, name: str, zone: str) -> None:
        body = server_pod(pool, name, zone, self.operator_image)
        try:
            self.core.create_namespaced_pod(pool.metadata.namespace or "default", body)
        except ApiException as err:
            if err.status != 409:  # already there: a re-run of the same pass
                raise

    @converted
    def write_assignment(self, pool: ServerPool, action: WriteAssignment) -> None:
        namespace = pool.metadata.namespace or "default"
        spec = {
            "pool": pool.metadata.name,
            "server": action.server,
            "zone": action.zone,
            "shards": [s.to_wire() for s in action.shards],
        }
        try:
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "serverassignments", action.server, {"spec": spec}
            )
        except ApiException as err:
            if err.status != 404:
                raise
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
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "serverassignments", body
            )

    @converted
    def delete_server(self, pool: ServerPool, name: str) -> None:
        namespace = pool.metadata.namespace or "default"
        for call in (
            lambda: self.core.delete_namespaced_pod(name, namespace),
            lambda: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, "serverassignments", name
            ),
        ):
            try:
                call()
            except ApiException as err:
                if err.status != 404:
                    raise

    @converted
    def delete_pod(self, pool: ServerPool, name: str) -> None:
        try:
            self.core.delete_namespaced_pod(
                name, pool.metadata.namespace or "default", grace_period_seconds=0
            )
        except ApiException as err:
            if err.status != 404:
                raise

    @converted
    def patch_status(
        self,
        plural: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> None:
        """Merge-patch an object's status; with ``resource_version``, only if the object is still
        at that version (409 Conflict otherwise)."""
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, body
            )
        except ApiException as err:
            if err.status != 404:  # deleted meanwhile: nothing to report on
                raise

    @converted
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

    @converted
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


def owned_by(pod: Any, pool: ServerPool) -> bool:
    """Whether the pool's controller owner reference is on the pod (it creates every server)."""
    refs = pod.metadata.owner_references or []
    return any(r.kind == "ServerPool" and r.uid == pool.metadata.uid and r.controller for r in refs)


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


def server_pod(pool: ServerPool, name: str, zone: str, operator_image: str) -> dict[str, Any]:
    """The pod of one server: the engine container and the agent sidecar, pinned to its zone."""
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
                f"{GROUP}/zone": zone,
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


NODE_LOST_AFTER = 60.0
"""Seconds a node may be not Ready before its servers count as lost. A kubelet that cannot reach
the API server (an API-server restart, a network blip) leaves its node NotReady/Unknown while
its pods go on serving; replacing them at once turned a 20 s API outage into lost replicas."""


def _node_ready(node: Any, now: dt.datetime | None = None) -> bool:
    """Ready, or not Ready for less than NODE_LOST_AFTER seconds."""
    conditions = node.status.conditions if node.status else None
    ready = next((c for c in conditions or [] if c.type == "Ready"), None)
    if ready is None:
        return False
    if ready.status == "True":
        return True
    since = ready.last_transition_time
    if since is None:
        return False
    now = now or dt.datetime.now(dt.UTC)
    return (now - since).total_seconds() < NODE_LOST_AFTER


def _loaded(
    assignment: ServerAssignment | None, since: dt.datetime | None = None
) -> frozenset[tuple[str, int, str]]:
    """What the server's agent reports loaded; nothing if the report predates the pod (a
    recreated pod keeps its name, and its assignment still shows the previous agent's shards)."""
    if assignment is None or assignment.status is None:
        return frozenset()
    heartbeat = assignment.status.heartbeat
    if since is not None and (heartbeat is None or heartbeat < since):
        return frozenset()
    return frozenset((s.model, s.shard, s.version) for s in assignment.status.loaded)
