"""The Kubernetes I/O of the light fleet simulator (:mod:`ekko.agent.fleet`): many agents, one
connection.

A real agent watches its own ServerAssignment and every Model of its namespace; N agents in one
process would open 2N watches. Here the fleet shares one informer per kind for the namespace
(:class:`ekko.kube.cache.Cache`): the server pods (which agents run, and their UIDs), the
ServerAssignments (each event is handed to its server's agent) and the Models (handed to every
agent). Status patches go out by name over the same connection pool.
"""

from __future__ import annotations

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
