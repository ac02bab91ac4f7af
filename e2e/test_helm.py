"""The Helm chart on a real API server: lint, server-side dry run, install, least-privilege RBAC
proven by running the operator and the agents with the chart's ServiceAccount tokens, CRD
upgrade through the chart, and uninstall keeping CRDs and custom resources.

CRDs and the `ekko_crds` fixture. The chart installs the CRDs as templates, so a release owns
them; the session fixture `ekko_crds` server-side applies the same CRDs as field manager
`ekko-e2e`. Each install here passes `--take-ownership` (Helm >= 3.17): Helm adopts CRDs that the
fixture (or an earlier, uninstalled release whose CRDs were kept) created, instead of refusing
them for lacking its ownership annotations. The fixture's forced server-side apply only
overwrites fields it sets, so it does not remove Helm's annotations, and Helm's upgrade patches
do not conflict with it. The upgrade test restores the original CRDs before it ends.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from e2e.agents import AgentFleet, free_port
from e2e.helmtools import (
    CHART,
    REPO,
    Grant,
    ToolError,
    allow_list,
    can_i,
    grants,
    helm,
    render,
    run,
    token_kubeconfig,
)
from e2e.objects import Api, converged, model_manifest, pool_manifest
from e2e.operator_harness import OperatorProcess
from e2e.statehelpers import (
    ITEMS,
    USERS,
    LivePublisher,
    Traffic,
    clean_scores,
    holders,
    rows,
    score,
    stream_manifest,
    urls_of,
)
from e2e.test_rollout import version_manifest
from e2e.waiting import wait_for

pytestmark = pytest.mark.e2e

CRD_NAMES = (
    "models.ekko.dev",
    "modelversions.ekko.dev",
    "serverassignments.ekko.dev",
    "serverpools.ekko.dev",
)
VALUE_SETS = {
    "defaults": [],
    "namespaced": ["--set", "operator.watchNamespaces={team-a,team-b}"],
    "everything": [
        "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "metrics.prometheusRule.enabled=true",
        "--set", "dashboards.enabled=true",
        "--set", "operator.prometheusUrl=http://prometheus:9090",
        "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor",
        "--api-versions", "monitoring.coreos.com/v1/PrometheusRule",
    ],
    "no-crds": ["--set", "crds.install=false"],
}  # fmt: skip
DENIED = ("Forbidden", " 403", "Not enough permissions")


# -- offline: lint and the RBAC allow-list ------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_chart_lints(values: list[str]) -> None:
    lint_args = [a for a in values if not a.startswith("--api-versions") and "monitoring." not in a]
    helm("lint", "--strict", str(CHART), *lint_args)


def test_bad_values_fail_with_a_clear_message() -> None:
    with pytest.raises(ToolError, match=r"operator\.replicas"):
        render("--set", "operator.replicas=0")
    with pytest.raises(ToolError, match=r"image\.tag"):
        render("--set", "image.tag=2")  # --set makes it an integer, not a string


def _raw_rules(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc.get("rules") or []:
                yield doc["metadata"]["name"], rule


def _resolves(ref: str) -> bool:
    """`path:symbol` names an existing file that mentions symbol (`kopf:` paths: in kopf)."""
    path, _, symbol = ref.rpartition(":")
    if path.startswith("kopf:"):
        spec = importlib.util.find_spec("kopf")
        assert spec is not None and spec.origin is not None
        file = Path(spec.origin).parent / path.removeprefix("kopf:")
    else:
        file = REPO / path
    return file.is_file() and symbol in file.read_text()


def test_granted_rules_are_allow_listed_and_have_no_wildcards() -> None:
    listed = dict(allow_list())
    granted: set[Grant] = set()
    for values in (VALUE_SETS["defaults"], VALUE_SETS["namespaced"]):
        docs = render(*values)
        for role, rule in _raw_rules(docs):
            for key in ("apiGroups", "resources", "verbs"):
                assert not any("*" in item for item in rule.get(key) or []), (
                    f"{role} has a wildcard in {key}: {rule}"
                )
        found = grants(docs, "ekko")
        unlisted = sorted(found - set(listed), key=str)
        assert not unlisted, f"granted but not in {CHART.name}/rbac-usage.yaml: {unlisted}"
        granted |= found
    unused = sorted(set(listed) - granted, key=str)
    assert not unused, f"rbac-usage.yaml lists grants the chart does not make: {unused}"
    broken = sorted({ref for refs in listed.values() for ref in refs if not _resolves(ref)})
    assert not broken, f"rbac-usage.yaml names code that does not exist: {broken}"
    # Namespaces are watched by kopf only in -n mode: granted only there.
    cluster_wide = grants(render(*VALUE_SETS["defaults"]), "ekko")
    assert Grant("operator-cluster", "", "namespaces", "list") not in cluster_wide


# -- on the cluster ---------------------------------------------------------------------------


@dataclass
class Release:
    name: str  # also the fullname: it contains the chart name
    namespace: str
    values: list[str]

    @property
    def operator_sa(self) -> str:
        return f"{self.name}-operator"

    @property
    def agent_sa(self) -> str:
        return f"{self.name}-agent"

    def upgrade(self, chart: Path = CHART) -> None:
        helm("upgrade", self.name, str(chart), "-n", self.namespace, *self.values,
             "--take-ownership", "--timeout", "120s")  # fmt: skip

    def uninstall(self) -> None:
        helm("uninstall", self.name, "-n", self.namespace, "--timeout", "120s")


def _install(namespace: str, values: list[str]) -> Release:
    release = Release(f"ekko-{uuid.uuid4().hex[:5]}", namespace, values)
    helm("install", release.name, str(CHART), "-n", namespace, *values,
         "--take-ownership", "--timeout", "120s")  # fmt: skip
    return release


@pytest.fixture
def namespaced_release(cluster: Any, namespace: str) -> Iterator[Release]:
    """The chart installed in `namespace`, its operator watching only that namespace."""
    release = _install(namespace, ["--set", f"operator.watchNamespaces={{{namespace}}}"])
    yield release
    with contextlib.suppress(ToolError):  # the test may have uninstalled it already
        release.uninstall()


@pytest.fixture
def cluster_wide_release(cluster: Any, namespace: str) -> Iterator[Release]:
    """The chart with default values (operator watches every namespace)."""
    release = _install(namespace, [])
    yield release
    with contextlib.suppress(ToolError):
        release.uninstall()


def _crds_established(api: client.ApiClient) -> bool:
    ext: Any = client.ApiextensionsV1Api(api)  # Any: its Optional-typed fields are read freely
    for name in CRD_NAMES:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        if not any(c.type == "Established" and c.status == "True" for c in conditions):
            return False
    return True


@pytest.mark.parametrize("values", ["defaults", "namespaced", "everything"])
def test_rendered_chart_passes_server_dry_run(cluster: Any, namespace: str, values: str) -> None:
    args = VALUE_SETS[values]
    if values == "namespaced":  # RoleBindings need namespaces that exist
        args = ["--set", f"operator.watchNamespaces={{{namespace}}}"]
    manifest = helm("template", f"dry-{uuid.uuid4().hex[:5]}", str(CHART), "-n", namespace, *args)
    if values == "everything":  # no prometheus-operator CRDs on the test cluster
        docs = [d for d in yaml.safe_load_all(manifest) if d]
        kinds = {"ServiceMonitor", "PrometheusRule"}
        assert kinds <= {d["kind"] for d in docs}
        manifest = yaml.safe_dump_all([d for d in docs if d["kind"] not in kinds])
    out = run("kubectl", "apply", "--dry-run=server", "-f", "-", stdin=manifest)
    assert "deployment.apps/" in out and "customresourcedefinition" in out, out


def test_chart_rbac_is_enough_to_place_models(
    cluster: Any, namespace: str, namespaced_release: Release, tmp_path: Path
) -> None:
    """Operator and agents run with the chart's ServiceAccount tokens and converge a pool."""
    release = namespaced_release
    wait_for(lambda: _crds_established(cluster.api), "the chart's CRDs Established", timeout=60)
    operator_kc = token_kubeconfig(cluster.api, namespace, release.operator_sa, tmp_path / "op")
    agent_kc = token_kubeconfig(cluster.api, namespace, release.agent_sa, tmp_path / "agent")

    # Scoping: the operator's namespaced rights stop at its namespace; the agent's are minimal.
    op_user = f"system:serviceaccount:{namespace}:{release.operator_sa}"
    agent_user = f"system:serviceaccount:{namespace}:{release.agent_sa}"
    assert can_i(cluster.api, op_user, "create", "", "pods", namespace)
    assert not can_i(cluster.api, op_user, "create", "", "pods", "default")
    assert not can_i(cluster.api, op_user, "get", "", "secrets", namespace)
    assert can_i(
        cluster.api, agent_user, "patch", "ekko.dev", "serverassignments/status", namespace
    )
    assert not can_i(cluster.api, agent_user, "patch", "ekko.dev", "serverassignments", namespace)
    assert not can_i(cluster.api, agent_user, "list", "", "pods", namespace)

    api = Api(cluster.api, namespace)
    pool = pool_manifest()
    pool["spec"]["template"]["serviceAccountName"] = release.agent_sa
    models = [
        model_manifest("ranking", 4, "8Gi", 2, slo="critical", load="10"),
        model_manifest("chat", 2, "20Gi", 1),
    ]
    # The fleet watches pods with the admin kubeconfig (it plays the kubelet); each agent gets
    # the agent token: the agent CLI takes the last --kubeconfig given.
    with (
        AgentFleet(cluster.kubeconfig, namespace, extra_args=["--kubeconfig", str(agent_kc)])
        as fleet,
        OperatorProcess(  # the webhook on too, as the chart runs it: registered by the chart
            str(operator_kc),  # (--webhook-unmanaged), so the operator needs no grants for it
            namespace,
            ("--webhook-port", str(free_port()), "--webhook-host", "127.0.0.1",
             "--webhook-unmanaged", "--peering"),
        ) as operator,
    ):  # fmt: skip
        api.create(pool)
        for m in models:
            api.create(m)
        wait_for(
            lambda: converged(api, models=["ranking", "chat"]),
            "pool and models Ready with every shard loaded, under the chart's RBAC",
            timeout=120,
            describe=lambda: (
                api.get("serverpools", "pool").get("status"),
                operator.logs()[-3000:],
            ),
        )
        # The rollout path under the same RBAC: a canary promotes, the next one is rolled back.
        api.create(version_manifest("v2", [{"setWeight": 50}, {"setWeight": 100}], model="chat"))
        wait_for(
            lambda: (
                (api.get("modelversions", "chat-v2").get("status") or {}).get("phase") == "Promoted"
            ),
            "chat v2 promoted under the chart's RBAC",
            timeout=90,
            describe=operator.logs,
        )
        api.create(version_manifest("v3", [{"setWeight": 30}, {"pause": {}}], model="chat"))
        wait_for(
            lambda: (
                (api.get("modelversions", "chat-v3").get("status") or {}).get("phase") == "Paused"
            ),
            "chat v3 paused at 30%",
            timeout=90,
            describe=operator.logs,
        )
        at = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        notes = {"ekko.dev/request": "rollback", "ekko.dev/request-at": at}
        api.patch("modelversions", "chat-v3", {"metadata": {"annotations": notes}})
        wait_for(
            lambda: (
                (api.get("modelversions", "chat-v3").get("status") or {}).get("rollbackSeconds")
                is not None
            ),
            "chat v3 rolled back and recorded under the chart's RBAC",
            timeout=60,
            describe=operator.logs,
        )
        assert api.get("models", "chat")["status"]["weights"] == [{"version": "v2", "weight": 100}]
        pods = api.pods()
        assert pods and all(p.spec.service_account_name == release.agent_sa for p in pods)
        for pod in fleet.pods():  # each agent really ran with the agent token's kubeconfig
            args = [str(a) for a in fleet.agent(pod).process.args]  # type: ignore[union-attr]
            assert args[len(args) - 1 - args[::-1].index("--kubeconfig") + 1] == str(agent_kc)
        operator_log = operator.logs()
        agent_logs = {pod: fleet.log_text(pod) for pod in fleet.pods()}
    assert not [w for w in DENIED if w in operator_log], operator_log[-4000:]
    for pod, text in agent_logs.items():
        assert not [w for w in DENIED if w in text], f"agent {pod}:\n{text[-3000:]}"


def test_chart_rbac_is_enough_to_stream_updates_and_roll_the_state_back(
    cluster: Any, namespace: str, namespaced_release: Release, tmp_path: Path
) -> None:
    """The update path under the chart's ServiceAccount tokens: the operator wires an
    UpdateStream (assignment duties, stream status, events, the Model's control block), the
    agents pull, take cuts and report them (their assignment status, the Model watch), and a
    person's state rollback runs to the end; nobody is refused anything."""
    release = namespaced_release
    wait_for(lambda: _crds_established(cluster.api), "the chart's CRDs Established", timeout=60)
    operator_kc = token_kubeconfig(cluster.api, namespace, release.operator_sa, tmp_path / "op")
    agent_kc = token_kubeconfig(cluster.api, namespace, release.agent_sa, tmp_path / "agent")
    api = Api(cluster.api, namespace)
    pool = pool_manifest(memory="20Gi")
    pool["spec"]["template"]["serviceAccountName"] = release.agent_sa
    pool["spec"]["template"]["engine"] = "embedding"
    publisher = LivePublisher()
    health = {
        "action": "Rollback",
        "snapshotInterval": "5s",
        "baseline": {"age": "5s", "trafficPercent": 0.5, "shadowPercent": 100},
    }

    def stream_health() -> dict[str, Any]:
        return (api.get("updatestreams", "ranker").get("status") or {}).get("health") or {}

    try:
        publisher.publish("ranker.user", np.arange(USERS), rows(1, USERS))
        publisher.publish("ranker.item", np.arange(ITEMS), rows(2, ITEMS))
        with (
            AgentFleet(
                cluster.kubeconfig,
                namespace,
                engine="embedding",
                extra_args=["--kubeconfig", str(agent_kc)],
            ) as fleet,
            OperatorProcess(str(operator_kc), namespace) as operator,
        ):
            api.create(pool)
            api.create(model_manifest("ranker", 2, "8Gi", 2, pool="pool"))
            wait_for(
                lambda: converged(api, models=["ranker"]),
                "the model placed and loaded under the chart's RBAC",
                timeout=120,
                describe=operator.logs,
            )
            api.create(stream_manifest(publisher.url, health))
            names = holders(api)
            urls = urls_of(fleet, names)

            want = clean_scores()

            def every_agent_clean() -> bool:
                for url in urls():
                    body = score(url, labelled=False)
                    if body is None or not np.allclose(body.get("scores", []), want, atol=1e-5):
                        return False
                return len(urls()) == len(names)

            wait_for(
                every_agent_clean,
                "every agent scoring from the publisher's rows under the chart's RBAC",
                timeout=90,
                describe=lambda: operator.logs()[-3000:],
            )
            with Traffic(urls):
                wait_for(
                    lambda: stream_health().get("baselineCut") is not None,
                    "a baseline cut",
                    timeout=90,
                    describe=lambda: (stream_health(), operator.logs()[-3000:]),
                )
                done = subprocess.run(
                    [
                        sys.executable, "-m", "ekko.cli.kubectl_ekko", "updates", "rollback",
                        "ranker", "--wait", "--timeout", "90s", "-n", namespace,
                    ],
                    cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
                    env={**os.environ, "KUBECONFIG": cluster.kubeconfig},
                )  # fmt: skip
                assert done.returncode == 0, (done.stdout, done.stderr, operator.logs()[-3000:])
            last = stream_health()["lastRollback"]
            assert last["trigger"] == "Person" and last["epoch"] == 1, last
            status = api.get("updatestreams", "ranker")["status"]
            assert status["serversConnected"] == status["serversWanted"] == len(names), status
            events = {
                e.reason
                for e in api.core.list_namespaced_event(namespace).items
                if e.involved_object.kind == "UpdateStream"
            }
            assert "LeaderChosen" in events, events
            for pod in fleet.pods():  # each agent really ran with the agent token's kubeconfig
                args = [str(a) for a in fleet.agent(pod).process.args]  # type: ignore[union-attr]
                assert args[len(args) - 1 - args[::-1].index("--kubeconfig") + 1] == str(agent_kc)
            operator_log = operator.logs()
            agent_logs = {pod: fleet.log_text(pod) for pod in fleet.pods()}
    finally:
        publisher.close()
    assert not [w for w in DENIED if w in operator_log], operator_log[-4000:]
    for pod, text in agent_logs.items():
        assert not [w for w in DENIED if w in text], f"agent {pod}:\n{text[-3000:]}"


def test_a_webhook_it_may_not_register_stops_the_operator_at_start_with_the_fix(
    cluster: Any, namespace: str, namespaced_release: Release, tmp_path: Path
) -> None:
    """The chart's operator token may not register webhook configurations (the chart does):
    run with a managed webhook (no --webhook-unmanaged) the operator stops at once, saying what
    is missing and what to do, instead of kopf stopping it later at a moment of its own."""
    operator_kc = token_kubeconfig(
        cluster.api, namespace, namespaced_release.operator_sa, tmp_path / "op"
    )
    args = ("--webhook-port", str(free_port()), "--webhook-host", "127.0.0.1")
    with OperatorProcess(str(operator_kc), namespace, args) as operator:
        assert operator.proc is not None
        operator.proc.wait(timeout=120)
        text = operator.logs()
    assert operator.proc.returncode != 0
    assert "create validatingwebhookconfigurations" in text, text[-3000:]
    assert "--webhook-unmanaged" in text, text[-3000:]


def test_people_with_the_built_in_edit_or_view_role_can_use_ekko(
    cluster: Any, namespace: str, namespaced_release: Release, tmp_path: Path
) -> None:
    """The chart's view/edit ClusterRoles are aggregated into Kubernetes' own: a user bound only
    to `edit` in the namespace applies Ekko's objects and drives them with `kubectl ekko`; one
    bound only to `view` reads them and is refused writes, in the API server's words."""
    core: Any = client.CoreV1Api(cluster.api)
    rbac: Any = client.RbacAuthorizationV1Api(cluster.api)
    for user, role in (("alice", "edit"), ("bob", "view")):
        core.create_namespaced_service_account(namespace, {"metadata": {"name": user}})
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": f"{user}-{role}"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": user, "namespace": namespace}],
            },
        )  # fmt: skip
    alice = f"system:serviceaccount:{namespace}:alice"
    bob = f"system:serviceaccount:{namespace}:bob"
    wait_for(  # the controller-manager aggregates the labelled ClusterRoles into edit and view
        lambda: (
            can_i(cluster.api, alice, "patch", "ekko.dev", "models/status", namespace)
            and can_i(cluster.api, bob, "list", "ekko.dev", "updatestreams", namespace)
        ),
        "the chart's roles aggregated into edit and view",
        timeout=60,
    )
    assert can_i(cluster.api, alice, "create", "ekko.dev", "updatestreams", namespace)
    assert not can_i(cluster.api, alice, "patch", "ekko.dev", "serverassignments", namespace)
    assert not can_i(cluster.api, bob, "patch", "ekko.dev", "models/status", namespace)
    assert not can_i(cluster.api, bob, "create", "ekko.dev", "models", namespace)
    assert not can_i(cluster.api, alice, "list", "ekko.dev", "models", "default")  # namespaced

    alice_kc = token_kubeconfig(cluster.api, namespace, "alice", tmp_path / "alice")
    bob_kc = token_kubeconfig(cluster.api, namespace, "bob", tmp_path / "bob")
    as_alice = Api(config.new_client_from_config(str(alice_kc)), namespace)
    as_alice.create(pool_manifest())
    as_alice.create(model_manifest("ranker", 2, "1Gi", 1))
    as_alice.create(
        {
            "apiVersion": "ekko.dev/v1alpha1",
            "kind": "UpdateStream",
            "metadata": {"name": "ranker"},
            "spec": {
                "model": "ranker",
                "source": {"endpoints": ["http://trainer:9500"]},
                "tables": [{"name": "ranker.user", "dim": 9}, {"name": "ranker.item", "dim": 9}],
            },
        }
    )

    def plugin(kubeconfig: Path, *words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ekko.cli.kubectl_ekko", *words, "-n", namespace],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        )  # fmt: skip

    paused = plugin(alice_kc, "updates", "pause", "ranker")
    assert paused.returncode == 0, paused.stderr
    annotations = Api(cluster.api, namespace).get("updatestreams", "ranker")["metadata"]
    assert annotations["annotations"]["ekko.dev/updates-paused"] == "true"
    shown = plugin(bob_kc, "updates", "ranker")
    assert shown.returncode == 0 and "UpdateStream ranker" in shown.stdout, shown.stderr
    refused = plugin(bob_kc, "updates", "resume", "ranker")
    assert refused.returncode != 0
    assert "forbidden" in refused.stderr and "cannot patch" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr, refused.stderr


def _patched_chart(tmp: Path) -> Path:
    """A copy of the chart whose ServerPool CRD has one more optional field, spec.upgradeProbe."""
    chart = tmp / "ekko"
    shutil.copytree(CHART, chart)
    path = chart / "files" / "crds" / "ekko.dev_serverpools.yaml"
    crd = yaml.safe_load(path.read_text())
    for version in crd["spec"]["versions"]:
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        spec["properties"]["upgradeProbe"] = {
            "type": "string",
            "maxLength": 64,
            "description": "A field added by the chart upgrade test.",
        }
    path.write_text(yaml.safe_dump(crd, sort_keys=False))
    return chart


def test_upgrade_serves_a_new_crd_field_and_keeps_objects(
    cluster: Any, namespace: str, cluster_wide_release: Release
) -> None:
    release = cluster_wide_release
    wait_for(lambda: _crds_established(cluster.api), "the chart's CRDs Established", timeout=60)
    api = Api(cluster.api, namespace)
    api.create(pool_manifest("keep-me"))
    uid = api.get("serverpools", "keep-me")["metadata"]["uid"]
    # Cluster-wide values: the operator may act in any namespace; the agent only in its own.
    op_user = f"system:serviceaccount:{namespace}:{release.operator_sa}"
    assert can_i(cluster.api, op_user, "create", "", "pods", "default")
    assert can_i(
        cluster.api, op_user, "list", "apiextensions.k8s.io", "customresourcedefinitions", None
    )
    assert not can_i(cluster.api, op_user, "list", "", "namespaces", None)

    def served() -> bool:
        api.patch("serverpools", "keep-me", {"spec": {"upgradeProbe": "yes"}})
        return bool(api.get("serverpools", "keep-me")["spec"].get("upgradeProbe") == "yes")

    assert not served(), "the field exists before the upgrade: the test proves nothing"
    with tempfile.TemporaryDirectory(prefix="ekko-chart-") as tmp:
        try:
            release.upgrade(_patched_chart(Path(tmp)))
            wait_for(served, "spec.upgradeProbe stored after the chart upgrade", timeout=30)
            assert api.get("serverpools", "keep-me")["metadata"]["uid"] == uid
            history = helm("history", release.name, "-n", namespace, "-o", "yaml")
            assert len(yaml.safe_load(history)) == 2
        finally:
            release.upgrade()  # back to the real CRDs for the rest of the session
    assert api.get("serverpools", "keep-me")["metadata"]["uid"] == uid


def test_uninstall_keeps_crds_and_custom_resources(
    cluster: Any, namespace: str, cluster_wide_release: Release
) -> None:
    release = cluster_wide_release
    wait_for(lambda: _crds_established(cluster.api), "the chart's CRDs Established", timeout=60)
    api = Api(cluster.api, namespace)
    api.create(pool_manifest("survivor"))
    release.uninstall()
    ext: Any = client.ApiextensionsV1Api(cluster.api)
    for name in CRD_NAMES:
        crd = ext.read_custom_resource_definition(name)
        assert crd.metadata.deletion_timestamp is None, f"{name} is being deleted"
    assert api.get("serverpools", "survivor")["metadata"]["name"] == "survivor"
    core = client.CoreV1Api(cluster.api)
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_service_account(release.operator_sa, namespace)
    assert gone.value.status == 404
