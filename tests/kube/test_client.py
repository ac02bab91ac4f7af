"""The client layer against a real HTTP server that answers as kube-apiserver does.

The Kubernetes client library makes real requests to a local server that replies with the API
server's own Status bodies (copied from kube-apiserver 1.36 answers); what is under test is that
``ekko.kube.client`` connects from a kubeconfig or a service account, and that every failure comes
out as the right ``KubeError`` subclass with the server's message and the object's name.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.config import incluster_config

from ekko.api.resources import Model
from ekko.kube import client as kube
from ekko.kube.calls import post_event
from ekko.kube.errors import ConfigError, Conflict, InvalidObjectError, KubeError, NotFound
from ekko.kube.fleet import Fleet
from tests.kube.pools import pool

BASE = "/apis/ekko.dev/v1alpha1/namespaces/ns"
TOKEN = "secret-token-1"


def status(code: int, reason: str, message: str, name: str = "m") -> dict[str, Any]:
    """A metav1.Status as kube-apiserver sends it with an error."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"name": name, "group": "ekko.dev", "kind": "models"},
        "code": code,
    }


NOT_FOUND = status(404, "NotFound", 'models.ekko.dev "m" not found')
CONFLICT = status(
    409,
    "Conflict",
    'Operation cannot be fulfilled on models.ekko.dev "m": the object has been modified; please'
    " apply your changes to the latest version and try again",
)
INVALID = status(
    422,
    "Invalid",
    'Model.ekko.dev "m" is invalid: spec.replicas: Invalid value: 0: spec.replicas in body'
    " should be greater than or equal to 1",
)
NO_RESOURCE = status(404, "NotFound", "the server could not find the requested resource", "")
FORBIDDEN = status(
    403,
    "Forbidden",
    'events is forbidden: User "system:serviceaccount:ns:ekko" cannot create resource "events"'
    ' in API group "" in the namespace "ns"',
)


def model_body(replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "ekko.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "m", "namespace": "ns", "uid": "u-m", "resourceVersion": "7"},
        "spec": {
            "pool": "p",
            "version": "v1",
            "artifact": {"uri": "file:///m"},
            "shards": {"count": 2, "size": "1Gi"},
            "replicas": replicas,
        },
    }


class FakeApiServer:
    """Answers (method, path) with a scripted (status, body); records each request."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                outer.requests.append(
                    (
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        json.loads(raw) if raw else None,
                    )
                )
                code, body = outer.routes.get((self.command, path), (404, NO_RESOURCE))
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer  # noqa: N815 (http.server names)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_kubeconfig(path: Path, server: str, contexts: dict[str, str | None]) -> Path:
    """A kubeconfig with a token user and one context per (name → namespace); the first is the
    current one."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": TOKEN}}],
        "contexts": [
            {
                "name": name,
                "context": {"cluster": "c", "user": "u", **({"namespace": ns} if ns else {})},
            }
            for name, ns in contexts.items()
        ],
        "current-context": next(iter(contexts)),
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    yield server
    server.close()


@pytest.fixture
def custom(apiserver: FakeApiServer, tmp_path: Path) -> Any:
    kubeconfig = write_kubeconfig(tmp_path / "config", apiserver.url, {"test": "ns"})
    return client.CustomObjectsApi(kube.connect(str(kubeconfig)).api)


@pytest.fixture(autouse=True)
def no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither the developer's kubeconfig nor a pod's environment leaks into a test."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)


# -- error conversion ------------------------------------------------------------------------


def test_a_missing_object_is_none_and_a_present_one_is_typed(
    apiserver: FakeApiServer, custom: Any
) -> None:
    apiserver.routes[("GET", f"{BASE}/models/m")] = (404, NOT_FOUND)
    assert kube.get_object(custom, Model, "ns", "m") is None
    apiserver.routes[("GET", f"{BASE}/models/m")] = (200, model_body())
    model = kube.get_object(custom, Model, "ns", "m")
    assert model is not None and model.spec.replicas == 1
    # The kubeconfig's token reached the server.
    assert apiserver.requests[-1][2]["authorization"] == f"Bearer {TOKEN}"


def test_a_conflict_keeps_the_servers_message_and_names_the_object(
    apiserver: FakeApiServer, custom: Any
) -> None:
    apiserver.routes[("PATCH", f"{BASE}/models/m/status")] = (409, CONFLICT)
    with pytest.raises(Conflict) as caught:
        kube.patch_status(custom, "models", "ns", "m", {"ready": True}, resource_version="6")
    err = caught.value
    assert err.status == 409
    assert (
        str(err) == f"cannot patch status of Model ns/m: HTTP 409 Conflict: {CONFLICT['message']}"
    )
    # The precondition travelled with the patch.
    assert apiserver.requests[-1][3] == {
        "status": {"ready": True},
        "metadata": {"resourceVersion": "6"},
    }


def test_a_status_apply_is_a_server_side_apply_under_its_field_manager(
    apiserver: FakeApiServer, custom: Any
) -> None:
    apiserver.routes[("PATCH", f"{BASE}/models/m/status")] = (200, model_body())
    kube.apply_status(
        custom, "models", "ns", "m", {"ready": "1/1"}, field_manager="ekko-pool", force=False
    )
    method, path, headers, body = apiserver.requests[-1]
    assert method == "PATCH"
    assert headers["content-type"] == "application/apply-patch+yaml"
    assert "fieldManager=ekko-pool" in path and "force=false" in path.lower()
    assert body == {
        "apiVersion": "ekko.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "m", "namespace": "ns"},
        "status": {"ready": "1/1"},
    }
    apiserver.routes[("PATCH", f"{BASE}/models/m/status")] = (409, CONFLICT)
    with pytest.raises(Conflict, match="cannot apply status of Model ns/m as ekko-rollout"):
        kube.apply_status(
            custom, "models", "ns", "m", {}, field_manager="ekko-rollout", resource_version="7"
        )
    assert apiserver.requests[-1][3]["metadata"]["resourceVersion"] == "7"
    assert "force=true" in apiserver.requests[-1][1].lower()


def test_stale_status_fields_are_deleted_by_a_merge_patch_before_the_apply(
    apiserver: FakeApiServer, custom: Any
) -> None:
    """Fields an earlier writer (an operator of merge patches) set that the apply leaves out:
    an apply removes only its own manager's fields, so they are deleted first."""
    apiserver.routes[("PATCH", f"{BASE}/modelversions/v/status")] = (200, model_body())
    kube.apply_status(
        custom,
        "modelversions",
        "ns",
        "v",
        {"phase": "Progressing"},
        field_manager="ekko-rollout",
        stale=["pausedUntil"],
    )
    (_, _, merge, deleted), (_, path, apply, applied) = apiserver.requests[-2:]
    assert merge["content-type"] == "application/merge-patch+json"
    assert deleted == {"status": {"pausedUntil": None}}
    assert apply["content-type"] == "application/apply-patch+yaml" and "fieldManager" in path
    assert applied["kind"] == "ModelVersion" and applied["status"] == {"phase": "Progressing"}
    count = len(apiserver.requests)
    kube.apply_status(custom, "modelversions", "ns", "v", {}, field_manager="ekko-rollout")
    assert len(apiserver.requests) == count + 1  # nothing stale: the apply alone
    with pytest.raises(ValueError, match="do not combine"):
        kube.apply_status(
            custom,
            "modelversions",
            "ns",
            "v",
            {},
            field_manager="x",
            stale=["a"],
            resource_version="1",
        )


def test_a_refusal_is_a_plain_kube_error_with_the_field_and_the_rule(
    apiserver: FakeApiServer, custom: Any
) -> None:
    apiserver.routes[("PATCH", f"{BASE}/models/m")] = (422, INVALID)
    with pytest.raises(KubeError) as caught:
        kube.patch_object(custom, "models", "ns", "m", {"spec": {"replicas": 0}})
    err = caught.value
    assert type(err) is KubeError and err.status == 422
    assert str(err).startswith("cannot patch Model ns/m: HTTP 422")
    assert "spec.replicas: Invalid value: 0" in str(err)


def test_a_missing_object_on_write_is_not_found(apiserver: FakeApiServer, custom: Any) -> None:
    apiserver.routes[("DELETE", f"{BASE}/serverassignments/s-1")] = (404, NOT_FOUND)
    with pytest.raises(NotFound, match="cannot delete ServerAssignment ns/s-1: HTTP 404"):
        kube.delete_object(custom, "serverassignments", "ns", "s-1")


def test_a_list_of_an_unknown_resource_says_the_crds_are_missing(custom: Any) -> None:
    with pytest.raises(NotFound, match=r"Model objects in ns: the Ekko CRDs .* are not installed"):
        kube.list_objects(custom, Model, "ns")


def test_a_list_returns_the_usable_objects_and_the_refused_ones_apart(
    apiserver: FakeApiServer, custom: Any
) -> None:
    bad = model_body()
    bad["metadata"] = {**bad["metadata"], "name": "bad"}
    bad["spec"]["shards"]["size"] = "0"
    listing = {"kind": "ModelList", "metadata": {}, "items": [model_body(), bad]}
    apiserver.routes[("GET", f"{BASE}/models")] = (200, listing)
    good, refused = kube.list_objects(custom, Model, "ns")
    assert [m.metadata.name for m in good] == ["m"]
    assert len(refused) == 1 and isinstance(refused[0], InvalidObjectError)
    assert refused[0].name == "bad" and refused[0].problem.startswith("spec.shards.size")


def test_a_forbidden_event_names_the_object_it_was_about(
    apiserver: FakeApiServer, tmp_path: Path
) -> None:
    apiserver.routes[("POST", "/api/v1/namespaces/ns/events")] = (403, FORBIDDEN)
    kubeconfig = write_kubeconfig(tmp_path / "config", apiserver.url, {"test": "ns"})
    core = client.CoreV1Api(kube.connect(str(kubeconfig)).api)
    with pytest.raises(KubeError) as caught:
        post_event(core, "Model", "ns", "m", uid="u-m", reason="Tested", message="a test")
    assert caught.value.status == 403
    assert str(caught.value).startswith("cannot post an event on Model ns/m: HTTP 403 Forbidden: ")
    assert "cannot create resource" in str(caught.value)


def test_a_server_that_does_not_answer_is_status_zero(tmp_path: Path) -> None:
    # A port nobody listens on: connection refused, after the client's own retries.
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    server.server_close()
    kubeconfig = write_kubeconfig(tmp_path / "config", url, {"test": "ns"})
    custom = client.CustomObjectsApi(kube.connect(str(kubeconfig)).api)
    with pytest.raises(KubeError) as caught:
        kube.get_object(custom, Model, "ns", "m")
    assert caught.value.status == 0 and not isinstance(caught.value, NotFound)
    assert str(caught.value).startswith("cannot get Model ns/m: the API server did not answer")


def test_the_fleet_ignores_a_deleted_object_and_a_server_pod_that_exists(
    apiserver: FakeApiServer, tmp_path: Path
) -> None:
    """Callers catch the subclasses: a status write to a deleted object and a create of a pod
    that is already there are not failures; a conflict is."""
    kubeconfig = write_kubeconfig(tmp_path / "config", apiserver.url, {"test": "ns"})
    fleet = Fleet(kube.connect(str(kubeconfig)).api)
    try:
        apiserver.routes[("PATCH", f"{BASE}/models/m/status")] = (404, NOT_FOUND)
        fleet.patch_status("models", "ns", "m", {"ready": True})
        apiserver.routes[("POST", "/api/v1/namespaces/ns/pods")] = (409, CONFLICT)
        fleet.create_server(pool(), "p-0", "")
        apiserver.routes[("PATCH", f"{BASE}/models/m/status")] = (409, CONFLICT)
        with pytest.raises(Conflict):
            fleet.patch_status("models", "ns", "m", {"ready": True}, resource_version="6")
    finally:
        fleet.close()


# -- connecting ------------------------------------------------------------------------------


def test_an_explicit_kubeconfig_gives_its_context_namespace_and_server(tmp_path: Path) -> None:
    path = write_kubeconfig(
        tmp_path / "config", "https://10.1.2.3:6443", {"one": "team-a", "two": None}
    )
    conn = kube.connect(str(path), pool_size=40)
    assert conn.namespace == "team-a"
    assert conn.api.configuration.host == "https://10.1.2.3:6443"
    assert conn.api.configuration.connection_pool_maxsize >= 40
    assert conn.source == f"kubeconfig {path}, context one"
    # Another context: its namespace, or "default" when it names none.
    assert kube.connect(str(path), "two").namespace == "default"


def test_an_unknown_context_is_a_config_error_naming_the_ones_there(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "config", "https://10.1.2.3:6443", {"one": "a", "two": "b"})
    with pytest.raises(ConfigError, match=r"context 'three' is not in .* \(it has: one, two\)"):
        kube.connect(str(path), "three")


def test_a_missing_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot configure the Kubernetes client from"):
        kube.connect(str(tmp_path / "missing"))


def test_nothing_to_connect_with_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not in a cluster"):
        kube.connect()


def in_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, namespace: str) -> None:
    """A pod's environment: the service variables and the mounted service account."""
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("pod-token")
    (account / "ca.crt").write_text("not checked until a TLS connection is made")
    (account / "namespace").write_text(namespace)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(account / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(account / "ca.crt"))
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT", account)


def test_in_a_pod_the_service_account_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    in_cluster(monkeypatch, tmp_path, "serving")
    conn = kube.connect()
    assert (conn.namespace, conn.source) == ("serving", "in-cluster service account")
    assert conn.api.configuration.host == "https://10.96.0.1:443"
    assert (
        conn.api.configuration.auth_settings()["BearerToken"]["value"].lower() == "bearer pod-token"
    )


def test_a_kubeconfig_wins_over_the_service_account_as_with_kubectl(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    in_cluster(monkeypatch, tmp_path, "serving")
    default = write_kubeconfig(tmp_path / "default", "https://10.9.9.9:6443", {"dev": "mine"})
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'absent'}:{default}")
    conn = kube.connect()
    assert (conn.namespace, conn.api.configuration.host) == ("mine", "https://10.9.9.9:6443")
