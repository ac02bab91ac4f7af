"""A small ServerPool the kube tests build pods, observations and writes for."""

from __future__ import annotations

from ekko.api.resources import ServerPool


def pool(max_servers: int = 4) -> ServerPool:
    return ServerPool.model_validate(
        {
            "apiVersion": "ekko.dev/v1alpha1",
            "kind": "ServerPool",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {
                "template": {"image": "engine:1"},
                "capacity": {"memory": "64Gi", "compute": "100"},
                "maxServers": max_servers,
            },
        }
    )
