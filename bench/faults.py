"""Faults on the local control plane: does the operator ride out an API-server outage?

For each outage length S the benchmark stops kube-apiserver (connections are refused, as in a
restart or an upgrade), waits S seconds, starts it again with the same arguments, then changes a
model and measures how long the operator takes to converge the pool again. It reports whether
the operator process survived, its exit code if it stopped, and the recovery time.

    EKKO_CLUSTER_DIR=/tmp/ekko-faults python -m bench.faults --outages 20,60,180 --json out.json

Run it on a cluster of its own (EKKO_CLUSTER_DIR): it stops that cluster's API server. Benchmarks
measure; nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config

from e2e.agents import AgentFleet
from e2e.cluster import build, control
from e2e.objects import Api, converged, fresh_namespace, model_manifest, pool_manifest
from e2e.operator_harness import OperatorProcess

NS = "ekko-faults"


def wait(probe: Any, timeout: float, interval: float = 0.2) -> float | None:
    """Seconds until probe() is truthy, None on timeout (exceptions count as not yet)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if probe():
                return time.monotonic() - start
        except Exception:  # the API server may still be coming back
            pass
        time.sleep(interval)
    return None


SUPERVISED = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")


def _cmdline(name: str) -> list[str]:
    pid = control.running(name)
    if pid is None:
        raise SystemExit(f"bench: {name} is not running")
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]


def apiserver_outage(seconds: float) -> float:
    """Stop kube-apiserver for ``seconds`` and start it again as it was; seconds until healthy.

    The scheduler and controller-manager exit when they cannot renew their leases; as a kubelet
    restarts such static pods, they are started again here (the outage is the API server's)."""
    argv = {name: _cmdline(name) for name in SUPERVISED}
    _LAST.update(argv)
    control._stop("kube-apiserver")
    time.sleep(seconds)
    api_args = argv["kube-apiserver"]
    control._start("kube-apiserver", api_args[1:], binary=Path(api_args[0]))
    back = wait(control.healthy, 120)
    if back is None:
        raise SystemExit("bench: kube-apiserver did not come back in 120 s")
    for name in SUPERVISED[1:]:
        if control.running(name) is None:
            print(f"restarting {name} (it exited during the outage)", flush=True)
            control._start(name, argv[name][1:], binary=Path(argv[name][0]))
    return back


def supervise() -> None:
    """Restart the scheduler or controller-manager if it exits later (lease lost on return)."""
    for name in SUPERVISED[1:]:
        if control.running(name) is None and name in _LAST:
            print(f"restarting {name} (it exited)", flush=True)
            control._start(name, _LAST[name][1:], binary=Path(_LAST[name][0]))


_LAST: dict[str, list[str]] = {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--outages", default="20,60,180", help="seconds, comma-separated")
    parser.add_argument("--recover-timeout", type=float, default=240.0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    outages = [float(s) for s in args.outages.split(",") if s]

    control.ensure_up()
    kubeconfig = str(control.kubeconfig_path())
    api_client = config.new_client_from_config(config_file=kubeconfig)
    fresh_namespace(client.CoreV1Api(api_client), NS, timeout=120)
    api = Api(api_client, NS)
    crds = [a for p in sorted((control.REPO / "crds").glob("*.yaml")) for a in ("-f", str(p))]
    kubectl = str(build.find_binary("kubectl"))
    subprocess.run(
        [kubectl, "--kubeconfig", kubeconfig, "apply", "--server-side", "--force-conflicts", *crds],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        [kubectl, "--kubeconfig", kubeconfig, "wait", "--for=condition=Established", *crds],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    rows: list[dict[str, Any]] = []
    with (
        AgentFleet(kubeconfig, NS) as _agents,
        OperatorProcess(kubeconfig, NS, ("--peering",)) as operator,
    ):
        api.create(pool_manifest())
        api.create(model_manifest("rank", 4, "8Gi", 1))
        first = wait(lambda: converged(api, models=["rank"]), 180)
        print(f"placed and loaded in {first}s", flush=True)
        replicas = 1
        for seconds in outages:
            back = apiserver_outage(seconds)
            alive = operator.proc is not None and operator.proc.poll() is None
            replicas = 2 if replicas == 1 else 1
            changed = time.monotonic()
            patched = wait(lambda r=replicas: _patch_once(api, r), 60)
            recovered = (
                wait(lambda r=replicas: _served(api, r), args.recover_timeout)
                if patched is not None
                else None
            )
            still = operator.proc is not None and operator.proc.poll() is None
            row = {
                "outage_s": seconds,
                "apiserver_back_s": round(back, 1),
                "operator_alive_after_outage": alive,
                "operator_alive_at_end": still,
                "operator_exit_code": None
                if still
                else operator.proc.poll()
                if operator.proc
                else None,
                "change_converged_s": round(time.monotonic() - changed, 1)
                if recovered is not None
                else None,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not still:
                print(operator.logs()[-3000:])
                break
    print("\noutage  apiserver back  operator alive  change converged after")
    for r in rows:
        print(
            f"{r['outage_s']:>5.0f}s  {r['apiserver_back_s']:>13.1f}s  "
            f"{'yes' if r['operator_alive_at_end'] else 'no (exit ' + str(r['operator_exit_code']) + ')':>14}  "
            f"{(str(r['change_converged_s']) + 's') if r['change_converged_s'] is not None else 'never':>22}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"outages": rows}, indent=2))
    return 0


def _patch_once(api: Api, replicas: int) -> bool:
    api.patch("models", "rank", {"spec": {"replicas": replicas}})
    return True


def kubelet_readiness(api: Api) -> None:
    """Play the kubelet for pod readiness: after the outage the node controller marks the pods of
    nodes whose leases lapsed not Ready, and a real kubelet sets them Ready again once its node
    is back; kwok does not, so the pods would stay unready for ever."""
    for pod in api.pods():
        conditions = pod.status.conditions or []
        ready = next((c for c in conditions if c.type == "Ready"), None)
        containers = next((c for c in conditions if c.type == "ContainersReady"), None)
        if (
            ready is not None
            and ready.status != "True"
            and containers
            and containers.status == "True"
        ):
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            patched = [
                {"type": c.type, "status": "True" if c.type == "Ready" else c.status,
                 "lastTransitionTime": now if c.type == "Ready" else c.last_transition_time}
                for c in conditions
            ]  # fmt: skip
            api.core.patch_namespaced_pod_status(
                pod.metadata.name, api.ns, {"status": {"conditions": patched}}
            )


def _served(api: Api, replicas: int) -> bool:
    """The pool converged on the changed model: every shard at the new replica count."""
    supervise()
    kubelet_readiness(api)
    status = api.get("models", "rank").get("status") or {}
    return converged(api, models=["rank"]) and status.get("replicasReady") == 4 * replicas


if __name__ == "__main__":
    raise SystemExit(main())
