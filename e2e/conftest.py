"""Fixtures for the e2e suite: the test cluster, a namespace per test, and the context guard.

The suite only talks to the local test cluster (kube context ``ekko-e2e``, started from the state
dir when not already running) unless the user names another context explicitly with
``--allow-kube-context=<name>`` or ``EKKO_E2E_ALLOW_CONTEXT=<name>`` (how it runs against kind).
A KUBECONFIG whose current context is anything else makes the suite refuse to run, so a shell
left pointing at a real cluster cannot be written to by accident.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from e2e.agents import AgentFleet
from e2e.cluster import build, control
from e2e.cluster.pki import CLUSTER_NAME
from e2e.objects import Api
from e2e.operator_harness import OperatorProcess
from e2e.prometheus import Prometheus
from e2e.waiting import wait_for

ALLOW_ENV = "EKKO_E2E_ALLOW_CONTEXT"
REPO = Path(__file__).resolve().parents[1]
CRD_DIR = REPO / "crds"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--allow-kube-context",
        default=None,
        metavar="NAME",
        help=f"run the e2e suite against this kube context instead of the local {CLUSTER_NAME} "
        f"cluster (or set {ALLOW_ENV})",
    )
    parser.addoption(
        "--real-node",
        action="store_true",
        default=False,
        help="bring up the real node (kubelet + containerd) for tests marked realnode"
        " (or set EKKO_E2E_REAL_NODE=1); without it they run only when the node is up",
    )


@dataclass
class Cluster:
    """The cluster under test and clients for it."""

    context: str
    kubeconfig: str | None  # None: the default kubeconfig resolution (allowed external context)
    managed: bool  # started and owned by the local tooling
    api: client.ApiClient

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def dynamic(self) -> DynamicClient:
        return DynamicClient(self.api)


def _current_context(kubeconfig: str | None) -> str | None:
    try:
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except (config.ConfigException, OSError):
        return None
    return active["name"] if active else None


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    allowed = request.config.getoption("--allow-kube-context") or os.environ.get(ALLOW_ENV)
    if allowed:
        current = _current_context(None)
        if current != allowed:
            pytest.exit(
                f"e2e: the allowed kube context is {allowed!r} but the current one is {current!r};"
                " switch context (kubectl config use-context) or fix KUBECONFIG",
                returncode=4,
            )
        api = config.new_client_from_config(context=allowed)
        yield Cluster(context=allowed, kubeconfig=None, managed=False, api=api)
        return

    ambient = os.environ.get("KUBECONFIG")
    own = str(control.kubeconfig_path())
    if ambient and ambient != own:
        current = _current_context(ambient)
        if current != CLUSTER_NAME:
            pytest.exit(
                f"e2e: refusing to run: the current kube context is {current!r} (KUBECONFIG="
                f"{ambient}), not the test cluster {CLUSTER_NAME!r}. Unset KUBECONFIG to use the"
                f" local control plane, or pass --allow-kube-context={current} (or set"
                f" {ALLOW_ENV}) if you really mean that cluster.",
                returncode=4,
            )

    if not build.is_built(build.component("kubernetes")):
        pytest.exit(
            "e2e: the control-plane binaries are not built; run `python -m e2e.cluster build`"
            " first (about 12 min cold on 2 cores, cached afterwards)",
            returncode=4,
        )
    try:
        started = control.ensure_up()
    except control.ClusterError as err:
        pytest.exit(f"e2e: could not start the local cluster: {err}", returncode=4)
    # Subprocesses (kubectl, helm, an operator under test) must see the test cluster too.
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = own
    api = config.new_client_from_config(config_file=own, context=CLUSTER_NAME)
    try:
        yield Cluster(context=CLUSTER_NAME, kubeconfig=own, managed=True, api=api)
    finally:
        api.close()
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
        if started and not os.environ.get("EKKO_E2E_KEEP_CLUSTER"):
            control.down(quiet=True)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace with its default ServiceAccount (pods are refused without it)."""
    base = "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower())[:40].strip("-")
    name = f"e2e-{base}-{uuid.uuid4().hex[:6]}"
    core = cluster.core
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"ekko.dev/e2e": "true"}))
    )

    def has_default_sa() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    wait_for(has_default_sa, f"ServiceAccount default in {name}", timeout=30)
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as err:
        if err.status != 404:
            raise


def _load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def api_error_message(err: Exception) -> str:
    """The message a user would see (kubectl prints the Status message)."""
    body = getattr(err, "body", None)
    if isinstance(body, (bytes, str)):
        try:
            return str(yaml.safe_load(body).get("message", body))
        except (yaml.YAMLError, AttributeError):
            return str(body)
    return str(err)


def install_crds(cluster: Cluster) -> list[dict[str, Any]]:
    """Server-side apply every CRD in crds/ and wait until each is Established.

    Raises AssertionError naming every CRD the API server rejected, with its message.
    """
    files = sorted(CRD_DIR.glob("*.yaml"))
    assert files, f"no CRDs in {CRD_DIR}; generate them first"
    crds = [doc for f in files for doc in _load_yaml_docs(f)]
    resource = cluster.dynamic.resources.get(
        api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition"
    )
    rejected = []
    for crd in crds:
        try:
            resource.server_side_apply(body=crd, field_manager="ekko-e2e", force_conflicts=True)
        except ApiException as err:
            rejected.append(f"{crd['metadata']['name']}: {api_error_message(err)}")
    assert not rejected, "the API server rejected CRDs:\n" + "\n".join(rejected)

    def established(name: str) -> bool:
        obj = resource.get(name=name).to_dict()
        conditions = obj.get("status", {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    for crd in crds:
        name = crd["metadata"]["name"]
        wait_for(
            lambda name=name: established(name),
            f"CRD {name} Established",
            timeout=60,
            describe=lambda name=name: resource.get(name=name).to_dict().get("status"),
        )
    return crds


@pytest.fixture(scope="session")
def ekko_crds(cluster: Cluster) -> list[dict[str, Any]]:
    """The CRDs from crds/, installed and Established (once per session)."""
    try:
        return install_crds(cluster)
    except AssertionError as err:
        pytest.fail(str(err), pytrace=False)


# -- the operator and its agents, for the tests that run them ---------------------------------


@pytest.fixture
def api(cluster: Cluster, namespace: str, ekko_crds: Any) -> Api:
    """Ekko objects in the test namespace."""
    return Api(cluster.api, namespace)


@pytest.fixture
def fleet(cluster: Cluster, namespace: str) -> Iterator[AgentFleet]:
    """One agent process per server pod of the namespace (kwok pods run no containers)."""
    with AgentFleet(cluster.kubeconfig, namespace) as agents:
        yield agents


@pytest.fixture
def operator(cluster: Cluster, namespace: str, ekko_crds: Any) -> Iterator[OperatorProcess]:
    """The operator as a process, watching the test namespace."""
    with OperatorProcess(cluster.kubeconfig, namespace) as proc:
        yield proc


@pytest.fixture
def prometheus() -> Iterator[Prometheus]:
    """A real Prometheus on loopback (scrapes what its targets file names; see follow())."""
    with Prometheus() as prom:
        yield prom


@pytest.fixture
def prometheus_operator(
    cluster: Cluster, namespace: str, ekko_crds: Any, prometheus: Prometheus
) -> Iterator[OperatorProcess]:
    """The operator querying that Prometheus (--prometheus-url): rollout analysis and
    UpdateStream freshness read from it."""
    with OperatorProcess(
        cluster.kubeconfig, namespace, ("--prometheus-url", prometheus.url)
    ) as proc:
        yield proc


# -- the real node (e2e/cluster/realnode.py): containerd + kubelet next to the kwok fleet -------

REAL_NODE_ENV = "EKKO_E2E_REAL_NODE"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "realnode: runs pods on the real node (kubelet + containerd); skipped unless it is up"
        f" or --real-node / {REAL_NODE_ENV}=1 asks the suite to bring it up",
    )


def _real_node_wanted(config: pytest.Config) -> bool:
    return bool(config.getoption("--real-node", default=False) or os.environ.get(REAL_NODE_ENV))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from e2e.cluster import realnode  # here: only this hook needs it

    if _real_node_wanted(config) or realnode.running():
        return
    skip = pytest.mark.skip(
        reason="the real node is not up (python -m e2e.cluster up --real-node, or --real-node)"
    )
    for item in items:
        if "realnode" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def real_node(cluster: Cluster, request: pytest.FixtureRequest) -> str:
    """The real node's name, Ready; started (never the control plane restarted) when asked."""
    from e2e.cluster import realnode  # here: only real-node tests need it

    if not cluster.managed:
        pytest.skip("the real node runs only next to the local control plane")
    if os.geteuid() != 0:
        pytest.skip("the real node needs root (containerd, kubelet, iptables, mounts)")
    ep = control.load_endpoints()
    if ep is None or ep.advertise != control.HOST_IP:
        pytest.skip(
            "the running control plane does not advertise the host address; restart it with"
            " `python -m e2e.cluster up --real-node`"
        )
    if not realnode.node_ready(control.Api(ep.apiserver)):
        if not _real_node_wanted(request.config):
            pytest.skip("the real node is not Ready")
        with control.lock():
            realnode.up(ep)
    return realnode.NODE_NAME
