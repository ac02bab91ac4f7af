"""Helpers for the Helm chart's e2e tests: run helm and kubectl from the tools cache, render the
chart, list the RBAC rules it grants, and write kubeconfigs that act as a ServiceAccount.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from e2e.cluster import build

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "ekko"
RBAC_USAGE = CHART / "rbac-usage.yaml"


class ToolError(AssertionError):
    """helm or kubectl failed; the message carries the command and its output."""


def binary(name: str) -> str:
    """helm or kubectl: the tools cache first (what the cluster was built with), then PATH."""
    try:
        return str(build.find_binary(name))
    except Exception:  # not built into the cache: fall back to PATH
        found = shutil.which(name)
        if found is None:
            raise ToolError(f"{name} not found: run `python -m e2e.cluster build`") from None
        return found


def run(tool: str, *args: str, stdin: str | None = None, timeout: float = 180) -> str:
    """Run helm or kubectl against the test cluster (KUBECONFIG set by the cluster fixture)."""
    cmd = [binary(tool), *args]
    proc = subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise ToolError(
            f"{tool} {' '.join(args)} failed (exit {proc.returncode}):\n"
            f"{proc.stderr.strip()}\n{proc.stdout.strip()[-2000:]}"
        )
    return proc.stdout


def helm(*args: str, timeout: float = 180) -> str:
    return run("helm", *args, timeout=timeout)


def render(
    *args: str, release: str = "ekko", namespace: str = "ekko-system", chart: Path = CHART
) -> list[dict[str, Any]]:
    """`helm template` output as objects (no cluster needed)."""
    out = helm("template", release, str(chart), "--namespace", namespace, *args)
    return [doc for doc in yaml.safe_load_all(out) if doc]


@dataclass(frozen=True)
class Grant:
    """One (apiGroup, resource, verb) a role grants, and which role grants it."""

    role: str  # operator, operator-cluster, agent: the ClusterRole name without the prefix
    group: str
    resource: str
    verb: str


def grants(docs: list[dict[str, Any]], prefix: str) -> set[Grant]:
    """Every (group, resource, verb) of every ClusterRole/Role, keyed by the role's suffix."""
    out = set()
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        role = doc["metadata"]["name"].removeprefix(f"{prefix}-")
        for rule in doc.get("rules") or []:
            assert not rule.get("nonResourceURLs"), f"{role} grants non-resource URLs: {rule}"
            assert not rule.get("resourceNames"), f"{role}: unexpected resourceNames {rule}"
            for group in rule.get("apiGroups") or []:
                for resource in rule.get("resources") or []:
                    for verb in rule.get("verbs") or []:
                        out.add(Grant(role, group, resource, verb))
    return out


def allow_list() -> Iterator[tuple[Grant, list[str]]]:
    """The allow-list in charts/ekko/rbac-usage.yaml: each grant with the code that needs it."""
    data = yaml.safe_load(RBAC_USAGE.read_text())
    for role, rules in data["roles"].items():
        for rule in rules:
            group = rule["apiGroup"]
            for verb in rule["verbs"]:
                yield Grant(role, group, rule["resource"], verb), list(rule["usedBy"])


# -- ServiceAccount credentials ----------------------------------------------------------------


def token_kubeconfig(
    api: client.ApiClient,
    namespace: str,
    service_account: str,
    path: Path,
    seconds: int = 3600,
) -> Path:
    """Mint a token for a ServiceAccount (TokenRequest API) and write a kubeconfig using it.

    The server and CA come from the admin client, so the file reaches the same API server.
    """
    core: Any = client.CoreV1Api(api)  # Any: the client's Optional-typed fields are read freely
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds)
    )
    token = core.create_namespaced_service_account_token(
        service_account, namespace, request
    ).status.token
    conf = api.configuration
    cluster: dict[str, Any] = {"server": conf.host}
    if conf.ssl_ca_cert:
        ca = Path(conf.ssl_ca_cert).read_bytes()
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    else:
        cluster["insecure-skip-tls-verify"] = True
    user = f"system:serviceaccount:{namespace}:{service_account}"
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sa", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "sa", "user": user}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(kubeconfig))
    os.chmod(path, 0o600)
    return path


def can_i(api: client.ApiClient, user: str, verb: str, group: str, resource: str,
          namespace: str | None) -> bool:  # fmt: skip
    """SubjectAccessReview: may `user` do this? (Asks the API server's authorizer.)"""
    resource, _, sub = resource.partition("/")
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=["system:serviceaccounts", "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(
                verb=verb,
                group=group,
                resource=resource,
                subresource=sub or None,
                namespace=namespace,
            ),
        )
    )
    authz: Any = client.AuthorizationV1Api(api)
    result = authz.create_subject_access_review(review)
    return bool(result.status.allowed)
