"""Helpers the e2e tests and benchmarks share: manifests, an API wrapper, convergence checks."""

from __future__ import annotations

from collections import Counter
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.waiting import wait_for
from ekko.api.resources import Model, ServerAssignment, ServerPool
from ekko.planning.problem import build_problem
from ekko.planning.state import PoolState, ServerObs
from ekko.solver import ModelId, Plan, Server, ServerId, ZoneId, violations

G, V = "ekko.dev", "v1alpha1"


def pool_manifest(
    name: str = "pool",
    max_servers: int = 12,
    *,
    memory: str = "64Gi",
    compute: str = "100",
    solver_time_limit: str = "5s",
    replan_debounce: str = "500ms",
) -> dict[str, Any]:
    """A ServerPool of small simulated servers (the agent runs them with the sim engine)."""
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "ServerPool",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "image": "engine:1",
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            },
            "capacity": {"memory": memory, "compute": compute},
            "maxServers": max_servers,
            "placement": {"solverTimeLimit": solver_time_limit, "replanDebounce": replan_debounce},
        },
    }


def stream_manifest(
    name: str, model: str, item_dim: int = 9, endpoint: str = "http://trainer:9500"
) -> dict[str, Any]:
    """An UpdateStream with a user and an item table (9 floats wide; ``item_dim`` to mismatch)."""
    return {
        "apiVersion": "ekko.dev/v1alpha1",
        "kind": "UpdateStream",
        "metadata": {"name": name},
        "spec": {
            "model": model,
            "source": {"endpoints": [endpoint]},
            "tables": [{"name": "t.user", "dim": 9}, {"name": "t.item", "dim": item_dim}],
        },
    }


def model_manifest(
    name: str,
    count: int,
    size: str,
    replicas: int,
    slo: str = "standard",
    load: str = "5",
    pool: str = "pool",
) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "Model",
        "metadata": {"name": name},
        "spec": {
            "pool": pool,
            "version": "v1",
            "artifact": {"uri": f"file:///artifacts/{name}/v1"},
            "shards": {"count": count, "size": size, "load": load},
            "replicas": replicas,
            "keepPreviousResident": False,
            "slo": {"class": slo},
        },
    }


FOUR_MODELS = [
    model_manifest("ranking", 6, "8Gi", 2, slo="critical", load="10"),
    model_manifest("retrieval", 4, "12Gi", 2, slo="standard", load="5"),
    model_manifest("chat", 3, "20Gi", 1, slo="standard", load="20"),
    model_manifest("scoring", 4, "6Gi", 1, slo="batch", load="8"),
]


class Api:
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.ns = namespace

    def create(self, doc: dict[str, Any]) -> None:
        plural = doc["kind"].lower() + "s"
        self.custom.create_namespaced_custom_object(G, V, self.ns, plural, doc)

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(G, V, self.ns, plural, name)  # type: ignore[no-any-return]

    def patch(self, plural: str, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(G, V, self.ns, plural, name, body)

    def assignments(self) -> list[ServerAssignment]:
        items = self.custom.list_namespaced_custom_object(G, V, self.ns, "serverassignments")[
            "items"
        ]
        return [ServerAssignment.model_validate(i) for i in items]

    def pods(self) -> list[Any]:
        return list(self.core.list_namespaced_pod(self.ns, label_selector="ekko.dev/pool").items)

    def condition(self, plural: str, name: str, kind: str = "Ready") -> dict[str, Any] | None:
        status = self.get(plural, name).get("status") or {}
        return next((c for c in status.get("conditions", []) if c["type"] == kind), None)


def serving_replicas(api: Api) -> Counter[tuple[str, int]]:
    """Shard replicas loaded by agents of Running, Ready pods (any version)."""
    ready_pods = {
        p.metadata.name
        for p in api.pods()
        if p.status.phase == "Running"
        and p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    }
    count: Counter[tuple[str, int]] = Counter()
    for a in api.assignments():
        if a.metadata.name in ready_pods and a.status is not None:
            count.update({(s.model, s.shard) for s in a.status.loaded})
    return count


def converged(api: Api, pool: str = "pool", models: list[str] | None = None) -> bool:
    status = api.get("serverpools", pool).get("status") or {}
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
    if not ready or ready["status"] != "True":
        return False
    for name in models or []:
        cond = api.condition("models", name)
        if not cond or cond["status"] != "True":
            return False
    for a in api.assignments():
        if a.spec.pool != pool:
            continue  # another pool's servers
        want = {(s.model, s.shard, s.version) for s in a.spec.shards}
        have = {(s.model, s.shard, s.version) for s in (a.status.loaded if a.status else [])}
        if want != have or any(s.drain for s in a.spec.shards):
            return False
    return True


def cluster_plan_violations(api: Api, pool: str = "pool") -> list[str]:
    """Run the solver's independent checker on what the cluster actually holds."""
    pool_obj = ServerPool.model_validate(api.get("serverpools", pool))
    models = tuple(
        Model.model_validate(m)
        for m in api.custom.list_namespaced_custom_object(G, V, api.ns, "models")["items"]
        if m["spec"]["pool"] == pool
    )
    assignments = api.assignments()
    pods = {p.metadata.name: p for p in api.pods()}
    servers = tuple(
        ServerObs(
            name=a.metadata.name,
            zone=a.spec.zone,
            pod_exists=a.metadata.name in pods,
            spec_shards=tuple(a.spec.shards),
        )
        for a in assignments
    )
    state = PoolState(pool=pool_obj, models=models, servers=servers)
    problem = build_problem(state).model_copy(update={"current": {}})
    placed: dict[ModelId, list[list[ServerId]]] = {
        m.id: [[] for _ in range(m.num_shards)] for m in problem.models
    }
    for a in assignments:
        for s in a.spec.shards:
            placed[ModelId(s.model)][s.shard].append(ServerId(a.metadata.name))
    plan = Plan(
        solver="cluster",
        status="feasible",
        assignment={m: tuple(tuple(x) for x in shards) for m, shards in placed.items()},
        servers=tuple(
            Server(id=ServerId(a.metadata.name), zone=ZoneId(a.spec.zone))
            for a in assignments
            if a.spec.shards
        ),
    )
    return [v.message for v in violations(problem, plan)]


def fresh_namespace(core: client.CoreV1Api, name: str, timeout: float = 300) -> None:
    """Delete the namespace if it exists, wait until it is gone, create it again and wait for
    its default ServiceAccount (pods are refused without it)."""

    def exists() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    def has_default_sa() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
        except ApiException:
            return False
        return True

    if exists():
        core.delete_namespace(name)
        wait_for(lambda: not exists(), f"namespace {name} to be deleted", timeout=timeout)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(has_default_sa, f"the default ServiceAccount of {name}", timeout=60)
