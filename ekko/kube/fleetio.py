"""The Kubernetes I/O of the light fleet simulator (:mod:`ekko.agent.fleet`): many agents, one
connection.

A real agent watches its own ServerAssignment and every Model of its namespace; N agents in one
process would open 2N watches. Here the fleet shares one informer per kind for the namespace
(:class:`ekko.kube.cache.Cache`): the server pods (which agents run, and their UIDs), the
ServerAssignments (each event is handed to its server's agent) and the Models (handed to every
agent). Status patches go out by name over the same connection pool.

The fleet also plays the kubelet's readiness probe in one direction: kwok runs no probes, and
when its node leases lag on a loaded machine the node controller marks the pods not Ready and
nothing marks them Ready again; a kubelet would, once its probe passes (``mark_pod_ready``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from ekko.kube.cache import ASSIGNMENTS, MODELS, PODS, Cache
from ekko.kube.client import connect, convert, patch_status
from ekko.kube.errors import KubeError

FLEET_KINDS = (PODS, ASSIGNMENTS, MODELS)
"""What the simulated agents read: their pods, their assignments, the Models."""


class FleetKube:
    """One API connection and one cache (pods, assignments, models of one namespace) for a
    fleet of simulated agents."""

    def __init__(self, namespace: str, kubeconfig: str | None = None, pool_size: int = 16) -> None:
        self.namespace = namespace
        self.api = connect(kubeconfig, pool_size=pool_size).api
        self._custom = client.CustomObjectsApi(self.api)
        self.cache = Cache(self.api, [namespace], kinds=FLEET_KINDS)

    def close(self) -> None:
        self.cache.stop()
        self.api.close()

    def mark_pod_ready(self, name: str, timeout: float = 30.0) -> None:
        """Set the pod's Ready condition True, as a kubelet does when its readiness probe passes
        (kwok runs no probes, and does not undo the node controller's NotReady)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"status": {"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now}
        ]}}  # fmt: skip
        try:
            client.CoreV1Api(self.api).patch_namespaced_pod_status(
                name, self.namespace, body, _request_timeout=timeout
            )
        except Exception as err:
            raise convert(err, f"mark Pod {self.namespace}/{name} Ready") from err

    def patch_status(self, name: str, status: dict[str, Any], timeout: float = 30.0) -> None:
        """Merge-patch the status of the ServerAssignment ``name`` (what one agent's
        ``AgentKube.patch_status`` does for its own); NotFound when it is gone, KubeError for
        anything else."""
        try:
            patch_status(
                self._custom, "serverassignments", self.namespace, name, status, timeout=timeout
            )
        except KubeError:
            raise
        except Exception as err:  # the status writer retries KubeError; nothing may end it
            raise convert(err, f"patch status of ServerAssignment {self.namespace}/{name}") from err
