"""Rollback and canary-analysis benchmark on the local control plane (issue 6's targets).

Measures, with the real operator, one agent process per server pod and a real Prometheus:

* manual rollback over N servers (`kubectl ekko rollback`, which writes the request and flips the
  Model's routing): time from the request to the last agent's ``appliedAt``, and the operator's
  recorded ``rollbackSeconds``, over R rollbacks (p50/p99/max);
* automatic rollback of a canary whose new version fails 20% of requests (5 s analysis interval):
  detection time from the start of the analysis step, and time until every agent applied it;
* healthy canaries: how many were rolled back by mistake (target: none).

    python -m bench.rollback --servers 50 --rollbacks 20 --auto-runs 5 --healthy-runs 5
    # 1,000 servers: the agents in the fleet simulator (one process), manual rollbacks only
    python -m bench.rollback --servers 1000 --sim-agents 30 --nodes 20 --rollbacks 10

With ``--sim-agents`` the agents run in ``python -m ekko.agent.fleet`` (the agent's own loop per
server, no HTTP): no traffic can be sent, so only manual rollbacks are measured (the canary runs
need it). ``--nodes N`` adds N kwok nodes (110 pods each) for fleets the cluster's own nodes do
not fit, deleted afterwards.

Uses the cluster in EKKO_CLUSTER_DIR (started if needed). Benchmarks measure; nothing here asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client

from bench.clusterbench import bench_namespace
from bench.reconcile import fleet_doc
from e2e.agents import AgentFleet, SimFleetProcess
from e2e.cluster import control
from e2e.objects import Api, converged, model_manifest, pool_manifest
from e2e.operator_harness import OperatorProcess
from e2e.prometheus import Prometheus
from e2e.test_rollout import version_manifest
from e2e.traffic import Traffic
from ekko.cli.kubectl_ekko import main as kubectl_ekko

MODEL = "rank"


def wait(what: str, probe: Any, timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"bench: timed out after {timeout:.0f}s waiting for {what}")


def place_one_shard_per_server(
    api: Api, servers: int, pool: dict[str, Any], timeout: float, interval: float
) -> None:
    """Create the pool and a model of ``servers`` 20Gi shards that keeps its previous version
    resident (2 x 20Gi per server: one shard each), and wait until every server has loaded."""
    api.create(pool)
    model = model_manifest(MODEL, servers, "20Gi", 1)
    model["spec"]["keepPreviousResident"] = True
    api.create(model)
    wait(
        f"{servers} servers loaded",
        lambda: converged(api, models=[MODEL]),
        timeout,
        interval=interval,
    )


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"| {name} | 0 | - | - | - |"
    return (
        f"| {name} | {len(values)} | {statistics.median(values):.3f} | {pct(values, 0.99):.3f} |"
        f" {max(values):.3f} |"
    )


class Bench:
    def __init__(self, api: Api, kubeconfig: str, namespace: str) -> None:
        self.api = api
        self.kubeconfig = kubeconfig
        self.ns = namespace

    def plugin(self, *args: str) -> int:
        return kubectl_ekko([*args, "-n", self.ns, "--kubeconfig", self.kubeconfig])

    def status(self, name: str) -> dict[str, Any]:
        return self.api.get("modelversions", name).get("status") or {}

    def applied_everywhere(self, weights: list[tuple[str, int]]) -> list[dt.datetime] | None:
        # Raw JSON, not validated models: at 1,000 servers one poll would take seconds.
        listing = self.api.custom.list_namespaced_custom_object(
            "ekko.dev", "v1alpha1", self.ns, "serverassignments", _request_timeout=120
        )
        stamps = []
        for a in listing["items"]:
            routing = next(
                (
                    r
                    for r in (a.get("status") or {}).get("routing") or []
                    if r.get("model") == MODEL
                ),
                None,
            )
            have = [(w["version"], w["weight"]) for w in (routing or {}).get("weights") or []]
            if routing is None or have != weights:
                return None
            if routing.get("appliedAt"):
                stamps.append(when(routing["appliedAt"]))
        return stamps or None

    def manual(self, rollbacks: int) -> tuple[list[float], list[float]]:
        name = f"{MODEL}-v2"
        self.api.create(version_manifest("v2", [{"setWeight": 30}, {"pause": {}}]))
        agents_s, operator_s = [], []
        for i in range(rollbacks):
            # At 1,000 servers the canary loads v2 on every server first: minutes, not seconds.
            wait("canary paused at 30%", lambda: self.status(name).get("phase") == "Paused", 900)
            wait(
                "30% applied everywhere",
                lambda: self.applied_everywhere([("v1", 70), ("v2", 30)]),
                600,
                interval=0.5,
            )
            assert self.plugin("rollback", MODEL) == 0
            stamps = wait(
                "rollback applied everywhere",
                lambda: self.applied_everywhere([("v1", 100)]),
                120,
                interval=0.5,
            )
            requested = when(
                self.api.get("modelversions", name)["metadata"]["annotations"][
                    "ekko.dev/request-at"
                ]
            )
            agents_s.append((max(stamps) - requested).total_seconds())
            status = wait(
                "operator's record",
                lambda: (s := self.status(name)).get("rollbackSeconds") is not None and s,
                30,
            )
            operator_s.append(float(status["rollbackSeconds"]))
            print(
                f"  rollback {i + 1}/{rollbacks}: agents {agents_s[-1]:.3f}s, operator {operator_s[-1]:.3f}s",
                flush=True,
            )
            if i + 1 < rollbacks:
                time.sleep(0.01)  # a fresh request-at for the retry
                assert self.plugin("retry", MODEL) == 0
                wait("retry started", lambda: self.status(name).get("phase") != "RolledBack", 30)
        return agents_s, operator_s

    def automatic(self, fleet: AgentFleet, runs: int) -> tuple[list[float], list[float], int]:
        fleet.set_fault("v3", error_rate=0.2)
        name = f"{MODEL}-v3"
        self.api.create(
            version_manifest(
                "v3",
                [{"setWeight": 20}, {"analysis": {}}, {"setWeight": 100}],
                interval="5s",
                count=6,
            )
        )
        detect, total, caught = [], [], 0
        for i in range(runs):
            wait(
                "analysis step",
                lambda: (
                    (s := self.status(name)).get("phase") in ("RolledBack", "Promoted")
                    or (s.get("currentStep") == 1 and s.get("phase") == "Progressing")
                ),
                120,
            )
            start = self.status(name).get("stepStartedAt")
            final = wait(
                "verdict",
                lambda: (
                    (s := self.status(name)).get("phase") in ("RolledBack", "Promoted", "Paused")
                    and s
                ),
                120,
            )
            if final["phase"] == "RolledBack":
                caught += 1
                final = wait(
                    "rollback record",
                    lambda: (s := self.status(name)).get("rollbackSeconds") is not None and s,
                    30,
                )
                d = (when(final["rollbackRequestedAt"]) - when(start)).total_seconds()
                detect.append(d)
                total.append(d + float(final["rollbackSeconds"]))
                print(
                    f"  faulty canary {i + 1}/{runs}: detected after {d:.2f}s, applied {final['rollbackSeconds']}s later",
                    flush=True,
                )
            else:
                print(
                    f"  faulty canary {i + 1}/{runs}: NOT rolled back ({final['phase']}: {final.get('message')})",
                    flush=True,
                )
            if i + 1 < runs:
                assert self.plugin("retry", MODEL) == 0
                wait(
                    "retry started",
                    lambda: self.status(name).get("phase") not in ("RolledBack", "Paused"),
                    30,
                )
        return detect, total, caught

    def healthy(self, runs: int) -> int:
        false_rollbacks = 0
        for i in range(runs):
            version = f"h{i}"
            name = f"{MODEL}-{version}"
            self.api.create(
                version_manifest(
                    version,
                    [{"setWeight": 20}, {"analysis": {}}, {"setWeight": 100}],
                    interval="5s",
                    count=3,
                    keep="Never",
                )
            )
            final = wait(
                "verdict",
                lambda name=name: (
                    (s := self.status(name)).get("phase")
                    in ("RolledBack", "Promoted", "Failed", "Paused")
                    and s
                ),
                180,
            )
            false_rollbacks += final["phase"] != "Promoted"
            print(f"  healthy canary {i + 1}/{runs}: {final['phase']}", flush=True)
        return false_rollbacks


@contextlib.contextmanager
def extra_nodes(core: client.CoreV1Api, count: int) -> Iterator[None]:
    """``count`` kwok nodes (bench-node-NNN, 110 pods each) for the run, deleted afterwards."""
    import tempfile

    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(fleet_doc(count), f)
        f.flush()
        nodes = control.load_fleet(Path(f.name))
    for node in nodes:
        with contextlib.suppress(client.exceptions.ApiException):
            core.create_node(node)  # type: ignore[arg-type]
    try:
        yield
    finally:
        for node in nodes:
            with contextlib.suppress(client.exceptions.ApiException):
                core.delete_node(node["metadata"]["name"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rollback",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--servers", type=int, default=50, help="servers the model spreads over (one shard each)"
    )
    parser.add_argument("--rollbacks", type=int, default=20)
    parser.add_argument("--auto-runs", type=int, default=5)
    parser.add_argument("--healthy-runs", type=int, default=5)
    parser.add_argument(
        "--sim-agents",
        type=float,
        default=0.0,
        metavar="HEARTBEAT_SECONDS",
        help="agents in the fleet simulator with this heartbeat (manual rollbacks only)",
    )
    parser.add_argument("--nodes", type=int, default=0, help="kwok nodes to add for the run")
    args = parser.parse_args(argv)
    if args.sim_agents > 0:
        return main_sim(args)

    bc = bench_namespace("bench-rollback")
    kubeconfig, core, ns = bc.kubeconfig, bc.core, bc.namespace
    api = Api(bc.api_client, ns)
    bench = Bench(api, kubeconfig, ns)
    started = time.monotonic()
    try:
        with (
            Prometheus() as prom,
            AgentFleet(kubeconfig, ns) as fleet,
            prom.follow(fleet),
            OperatorProcess(kubeconfig, ns, ("--prometheus-url", prom.url)) as operator,
        ):
            place_one_shard_per_server(
                api, args.servers, pool_manifest(max_servers=args.servers + 10), 600, 1
            )
            print(
                f"placed over {len(api.assignments())} servers in {time.monotonic() - started:.0f}s",
                flush=True,
            )
            manual_agents, manual_operator = (
                bench.manual(args.rollbacks) if args.rollbacks else ([], [])
            )
            with Traffic(
                lambda: [fleet.port(p) for p in fleet.pods()], MODEL, rate=60, max_seconds=3600
            ):
                detect, total, caught = (
                    bench.automatic(fleet, args.auto_runs) if args.auto_runs else ([], [], 0)
                )
                false_rollbacks = bench.healthy(args.healthy_runs) if args.healthy_runs else 0
            print(f"operator log: {operator.log_path}")
    finally:
        core.delete_namespace(ns)
    print()
    print(
        f"Rollback benchmark: {args.servers} servers, 2 cores, kube-apiserver + kwok + one agent process per server"
    )
    print("| measurement | n | p50 s | p99 s | max s |")
    print("|---|---|---|---|---|")
    print(summary("manual rollback: request -> last agent applied", manual_agents))
    print(summary("manual rollback: operator's rollbackSeconds", manual_operator))
    print(summary("faulty canary (20% errors, 5s interval): detection", detect))
    print(summary("faulty canary: detection + every agent applied", total))
    print(
        f"faulty canaries rolled back: {caught}/{args.auto_runs}; healthy canaries rolled back by mistake: {false_rollbacks}/{args.healthy_runs}"
    )
    return 0


def main_sim(args: argparse.Namespace) -> int:
    """Manual rollbacks over ``args.servers`` servers whose agents run in the fleet simulator."""
    bc = bench_namespace("bench-rollback")
    kubeconfig, core, ns = bc.kubeconfig, bc.core, bc.namespace
    api = Api(bc.api_client, ns)
    bench = Bench(api, kubeconfig, ns)
    started = time.monotonic()
    try:
        with (
            extra_nodes(core, args.nodes),
            SimFleetProcess(kubeconfig, ns, heartbeat_seconds=args.sim_agents) as fleet,
            OperatorProcess(kubeconfig, ns) as operator,
        ):
            place_one_shard_per_server(
                api,
                args.servers,
                pool_manifest(max_servers=args.servers + 10, solver_time_limit="20s"),
                1800,
                5,
            )
            print(
                f"placed over {len(api.assignments())} servers in {time.monotonic() - started:.0f}s"
                f" ({load()})",
                flush=True,
            )
            manual_agents, manual_operator = bench.manual(args.rollbacks)
            print(f"operator log: {operator.log_path}; fleet log: {fleet.log_path}")
            print(f"after the rollbacks: {load()}")
    finally:
        core.delete_namespace(ns)
    print()
    print(
        f"Rollback benchmark: {args.servers} servers, {os.cpu_count()} cores, kube-apiserver + "
        "kwok + the fleet simulator (one process for every agent)"
    )
    print("| measurement | n | p50 s | p99 s | max s |")
    print("|---|---|---|---|---|")
    print(summary("manual rollback: request -> last agent applied", manual_agents))
    print(summary("manual rollback: operator's rollbackSeconds", manual_operator))
    return 0


def load() -> str:
    return "load " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    raise SystemExit(main())
