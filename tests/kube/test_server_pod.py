"""The server pod as a real kubelet would run it (kwok never starts its containers)."""

from __future__ import annotations

from ekko.agent.main import parse_args
from ekko.api.resources import ServerPool
from ekko.kube.fleet import AGENT_PORT, UPDATES_PORT, server_pod


def pool() -> ServerPool:
    return ServerPool.model_validate(
        {
            "apiVersion": "ekko.dev/v1alpha1",
            "kind": "ServerPool",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {
                "template": {"image": "engine:1"},
                "capacity": {"memory": "64Gi", "compute": "100"},
                "maxServers": 4,
            },
        }
    )


def test_the_agent_listens_where_the_kubelet_probes_and_prometheus_scrapes() -> None:
    pod = server_pod(pool(), "p-0", "zone-a", "ekko:1")
    agent = next(c for c in pod["spec"]["containers"] if c["name"] == "ekko-agent")
    config = parse_args([*agent["args"][1:], "--pod-name", "p-0", "--namespace", "ns"])
    assert config.host == "0.0.0.0"  # not loopback: probes come to the pod IP
    assert config.port == AGENT_PORT == agent["ports"][0]["containerPort"]
    assert agent["readinessProbe"]["httpGet"]["port"] == agent["ports"][0]["name"]
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(AGENT_PORT)
    # The update data plane: declared, and the agent's default listen/advertise agree with it.
    assert {"name": "updates", "containerPort": UPDATES_PORT} in agent["ports"]
    assert config.update_listen.endswith(f":{UPDATES_PORT}")
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in agent[
        "env"
    ]
