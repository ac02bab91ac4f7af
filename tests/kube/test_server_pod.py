"""The server pod as a real kubelet would run it (kwok never starts its containers)."""

from __future__ import annotations

import pytest

from ekko.agent.main import parse_args
from ekko.api.resources import ServerPool
from ekko.kube.fleet import AGENT_PORT, UPDATES_PORT, server_pod
from tests.kube.pools import pool


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


def _pool_with(**template: object) -> ServerPool:
    body = pool().model_dump(by_alias=True, exclude_none=True)
    body["spec"]["template"].update(template)
    return ServerPool.model_validate(body)


def test_the_pools_template_reaches_the_pod_and_ekkos_own_fields_win() -> None:
    restricted = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    engine_sc = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    p = _pool_with(
        labels={"team": "ranking", "ekko.dev/pool": "someone-else"},
        annotations={"owner": "ml-platform", "prometheus.io/port": "1"},
        podSecurityContext=restricted,
        securityContext=engine_sc,
        volumes=[{"name": "models", "emptyDir": {}}],
        volumeMounts=[{"name": "models", "mountPath": "/models"}],
        ports=[{"name": "grpc", "containerPort": 8500}],
        readinessProbe={"tcpSocket": {"port": "grpc"}},
        imagePullSecrets=["regcred"],
        affinity={"nodeAffinity": {}},
        priorityClassName="serving",
        agentArgs=["--enable-fault-injection", '--fault={"version": "v2", "errorRate": 0.2}'],
        agentResources={"requests": {"cpu": "20m"}, "limits": {"memory": "256Mi"}},
    )
    pod = server_pod(p, "p-0", "zone-a", "ekko:1")
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["labels"]["team"] == "ranking"
    assert meta["labels"]["ekko.dev/pool"] == "p"  # the operator finds its servers by it
    assert meta["annotations"]["owner"] == "ml-platform"
    assert meta["annotations"]["prometheus.io/port"] == str(AGENT_PORT)
    assert spec["securityContext"] == restricted
    assert spec["volumes"] == [{"name": "models", "emptyDir": {}}]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["affinity"] == {"nodeAffinity": {}} and spec["priorityClassName"] == "serving"
    engine, agent = spec["containers"]
    assert engine["securityContext"] == engine_sc
    assert engine["volumeMounts"] == [{"name": "models", "mountPath": "/models"}]
    assert engine["ports"] == [{"name": "grpc", "containerPort": 8500}]
    assert engine["readinessProbe"] == {"tcpSocket": {"port": "grpc"}}
    assert agent["resources"] == {"requests": {"cpu": "20m"}, "limits": {"memory": "256Mi"}}
    # The agent parses what the pod gives it: the fault is active from its start.
    config = parse_args([*agent["args"][1:], "--pod-name", "p-0", "--namespace", "ns"])
    assert config.enable_fault_injection
    assert [(key, fault.error_rate) for key, fault in config.faults] == [((None, "v2"), 0.2)]
    assert config.port == AGENT_PORT


def test_a_bare_template_makes_a_bare_pod() -> None:
    spec = server_pod(pool(), "p-0", "", "ekko:1")["spec"]
    assert set(spec) == {"containers", "nodeSelector", "tolerations"}
    engine, agent = spec["containers"]
    assert set(engine) == {"name", "image", "args", "env", "resources"}
    assert agent["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"}}


def test_the_agent_sidecar_meets_the_restricted_pod_security_standard() -> None:
    # https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted, per
    # container: the pool's pod-level securityContext may be empty.
    agent = server_pod(pool(), "p-0", "", "ekko:1")["spec"]["containers"][1]
    sc = agent["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not sc.get("privileged")


@pytest.mark.parametrize(
    "arg", ["--listen=127.0.0.1:1", "--engine", "--update-listen=0.0.0.0:1", "--namespace=x"]
)
def test_agent_args_may_not_override_the_flags_ekko_sets(arg: str) -> None:
    from ekko.api.validate import check_manifest

    body = pool().model_dump(by_alias=True, exclude_none=True, mode="json")
    body["spec"]["template"]["agentArgs"] = ["--sim-bandwidth=1Gi", arg]
    errors = check_manifest(body)
    assert any("agentArgs must not set --listen" in e for e in errors), errors
    body["spec"]["template"]["agentArgs"] = ["--sim-bandwidth=1Gi"]
    assert check_manifest(body) == []


def test_an_abbreviated_flag_in_agent_args_cannot_move_the_agent_off_its_probed_port() -> None:
    # argparse accepts unambiguous prefixes (--lis for --listen), which the CEL rule's prefix
    # check does not see; Ekko's own flags come after agentArgs, and the last one wins.
    agent = server_pod(
        _pool_with(engine="sim", agentArgs=["--lis=127.0.0.1:1", "--eng=reference"]), "p-0", "", "e"
    )["spec"]["containers"][1]
    config = parse_args([*agent["args"][1:], "--pod-name", "p-0", "--namespace", "ns"])
    assert (config.host, config.port, config.engine) == ("0.0.0.0", AGENT_PORT, "sim")


def test_the_agent_gets_its_pods_uid_from_the_downward_api() -> None:
    pod = server_pod(pool(), "p-0", "zone-a", "ekko:1")
    agent = next(c for c in pod["spec"]["containers"] if c["name"] == "ekko-agent")
    assert {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}} in agent[
        "env"
    ]


def test_the_agent_reads_its_pod_uid_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_UID", "0b1c")
    assert parse_args(["--pod-name", "p-0", "--namespace", "ns"]).pod_uid == "0b1c"
    monkeypatch.delenv("POD_UID")
    assert parse_args(["--pod-name", "p-0", "--namespace", "ns"]).pod_uid == ""
