"""Set-up the benchmarks on the local control plane share: a fresh namespace with Ekko's CRDs
installed (created, or replaced with the tree's version), and a polling wait."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes import client, config

from e2e.cluster import control


def wait(what: str, probe: Any, timeout: float, interval: float = 0.2) -> Any:
    """Poll ``probe`` until it returns something truthy; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class BenchCluster:
    kubeconfig: str
    api_client: client.ApiClient
    core: client.CoreV1Api
    namespace: str


def bench_namespace(prefix: str) -> BenchCluster:
    """The local control plane (started if needed), a new namespace ``<prefix>-<time>`` with its
    default ServiceAccount, and the tree's CRDs."""
    control.ensure_up()
    kubeconfig = str(control.kubeconfig_path())
    api_client = config.new_client_from_config(config_file=kubeconfig)
    core = client.CoreV1Api(api_client)
    ns = f"{prefix}-{int(time.time())}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    wait(
        "default ServiceAccount",
        lambda: any(
            s.metadata.name == "default" for s in core.list_namespaced_service_account(ns).items
        ),
        30,
    )
    ext = client.ApiextensionsV1Api(api_client)
    for path in sorted((control.REPO / "crds").glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        try:
            ext.create_custom_resource_definition(body)
        except client.exceptions.ApiException as err:
            if err.status != 409:
                raise
            current = ext.read_custom_resource_definition(body["metadata"]["name"])
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            ext.replace_custom_resource_definition(body["metadata"]["name"], body)
    return BenchCluster(kubeconfig, api_client, core, ns)
