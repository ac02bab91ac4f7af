"""`make demo`: the operator on the local control plane doing placement and a rollout.

1. starts (or reuses) the local control plane and adds the demo nodes; installs the CRDs;
2. runs the operator, one agent per server pod, and a real Prometheus scraping the agents;
3. applies examples/serverpools.yaml and examples/models.yaml and shows the placement, with
   `ekko plan` comparing the optimiser with first-fit decreasing on the same pools;
4. sends traffic, applies examples/modelversion.yaml and walks the canary (promoting it at its
   manual pause with `kubectl ekko promote`);
5. rolls out a faulty version (20% errors) that analysis catches and rolls back, and prints the
   measured detection and rollback times;
6. streams a recommender's parameter rows from a trainer (examples/updatestream.yaml): every
   server stays fresh (lag per region), then a harmful update is caught by the model-state
   manager and the model's state rolled back, with its times.

Everything runs in the namespace `ekko-demo`; the cluster is left running (`make cluster-down`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from e2e.agents import AgentFleet, free_port
from e2e.cluster import build, control
from e2e.helmtools import token_kubeconfig
from e2e.objects import fresh_namespace
from e2e.operator_harness import OperatorProcess
from e2e.prometheus import Prometheus
from e2e.statehelpers import ITEMS, start_publisher
from e2e.statehelpers import Traffic as StreamTraffic
from e2e.traffic import Traffic
from ekko.operator.webhook import webhooks

REPO = Path(__file__).resolve().parents[1]
NS = "ekko-demo"
RELEASE = "ekko"
G, V = "ekko.dev", "v1alpha1"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["KUBECONFIG"] = str(control.kubeconfig_path())
    # A fresh discovery cache per command: kubectl caches the API's resource list, and a list
    # taken before the chart's CRDs were served makes `kubectl get ekko` fail on a new cluster.
    env["KUBECACHEDIR"] = tempfile.mkdtemp(prefix="ekko-demo-kubectl-")
    env["PATH"] = (
        f"{REPO / '.venv' / 'bin'}{os.pathsep}{build.tool_path()}{os.pathsep}{env.get('PATH', '')}"
    )
    return env


def run(*cmd: str, check: bool = True) -> None:
    print(f"$ {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, env=tool_env(), check=False)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: {' '.join(cmd)} failed (exit {proc.returncode})")


def wait(what: str, probe: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise SystemExit(f"demo: timed out after {timeout:.0f}s waiting for {what}")


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


class Demo:
    def __init__(self) -> None:
        self.api = config.new_client_from_config(config_file=str(control.kubeconfig_path()))
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def setup_cluster(self) -> None:
        for node in control.load_fleet(REPO / "e2e" / "demo-fleet.yaml"):
            try:
                self.core.create_node(node)
            except ApiException as err:
                if err.status != 409:
                    raise
        fresh_namespace(self.core, NS, timeout=120)

    def install_chart(self, work: Path) -> tuple[Path, Path]:
        """helm install the chart (CRDs, RBAC, webhook); credentials of its ServiceAccounts.

        kwok runs no containers, so the chart's operator Deployment only shows up as a pod; the
        operator and the agents run here as processes, each with its ServiceAccount's token.
        """
        say("helm install ekko charts/ekko (CRDs, least-privilege RBAC, metrics, webhook)")
        run(
            "helm", "upgrade", "--install", RELEASE, str(REPO / "charts" / "ekko"), "-n", NS,
            "--set", f"operator.watchNamespaces={{{NS}}}", "--take-ownership", "--wait=false",
            # The chart's webhook calls its Service, whose pod kwok never runs: the demo
            # registers the operator process it runs here instead (register_webhook).
            "--set", "webhook.enabled=false",
        )  # fmt: skip
        crds = sorted(str(p) for p in (REPO / "crds").glob("*.yaml"))
        run(
            "kubectl",
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            *[a for f in crds for a in ("-f", f)],
        )
        operator = token_kubeconfig(
            self.api, NS, f"{RELEASE}-operator", work / "operator.kubeconfig"
        )
        agent = token_kubeconfig(self.api, NS, f"{RELEASE}-agent", work / "agent.kubeconfig")
        return operator, agent

    def register_webhook(self, port: int, certs: Path, operator: OperatorProcess) -> None:
        """Register the operator's validators at https://127.0.0.1:port, as the chart does for
        its Service (the operator runs --webhook-unmanaged: its token has no right to)."""
        cert = certs / "tls.crt"
        wait("the operator's webhook certificate", lambda: cert.exists() or operator.check(), 60)
        hooks = webhooks({"url": f"https://127.0.0.1:{port}"}, name_suffix="demo.ekko.dev")
        for hook in hooks:
            hook["clientConfig"]["caBundle"] = base64.b64encode(cert.read_bytes()).decode()
            hook["namespaceSelector"] = {
                "matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [NS]}
                ]
            }
        admission: Any = client.AdmissionregistrationV1Api(self.api)
        body = {"metadata": {"name": "ekko-demo-validate"}, "webhooks": hooks}
        try:
            admission.create_validating_webhook_configuration(body)
        except ApiException as err:
            if err.status != 409:
                raise
            admission.patch_validating_webhook_configuration("ekko-demo-validate", body)

    def apply(self, doc: dict[str, Any]) -> None:
        plural = doc["kind"].lower() + "s"
        self.custom.create_namespaced_custom_object(G, V, NS, plural, doc)

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(G, V, NS, plural, name)  # type: ignore[no-any-return]

    def ready(self, plural: str, name: str) -> bool:
        conditions = (self.get(plural, name).get("status") or {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def phase(self, name: str) -> str:
        return str((self.get("modelversions", name).get("status") or {}).get("phase", ""))


def plan_comparison() -> None:
    say("Offline: `ekko plan` on the example manifests, the optimiser against first-fit decreasing")
    pools = docs(REPO / "examples" / "serverpools.yaml")
    models = docs(REPO / "examples" / "models.yaml")
    for pool in pools:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump_all([pool, *models], f)
        for solver in ("ffd", "ekko"):
            run(
                sys.executable,
                "-m",
                "ekko.cli.plan",
                "-f",
                f.name,
                "--solver",
                solver,
                "--time-limit",
                "5s",
                "--rows",
                "0",
            )


def streamed_updates(demo: Demo, agents: AgentFleet, operator: OperatorProcess) -> None:
    """Part 6: a trainer streams rows to every server of ranker-mf; a harmful update is caught
    and the model's state rolled back."""
    say("Streaming updates: examples/updatestream.yaml; a trainer publishes rows to every server")
    publisher, close = start_publisher("ranker-mf")
    try:
        stream_docs = docs(REPO / "examples" / "updatestream.yaml")
        for doc in stream_docs:
            if doc["kind"] == "ServerPool":
                doc["spec"]["template"]["serviceAccountName"] = f"{RELEASE}-agent"
            if doc["kind"] == "UpdateStream":
                doc["spec"]["source"]["endpoints"] = [publisher.url]  # the trainer, here
            demo.apply(doc)
        wait("ranker-mf placed and loaded", lambda: demo.ready("models", "ranker-mf"), 180)

        def servers() -> list[str]:
            return [
                p.metadata.name
                for p in demo.core.list_namespaced_pod(
                    NS, label_selector="ekko.dev/pool=recsys"
                ).items
            ]

        def streaming() -> dict[str, Any] | None:
            st = demo.get("updatestreams", "ranker-mf").get("status") or {}
            fresh = (st.get("freshness") or {}).get("p99Seconds") is not None
            return st if st.get("state") == "Streaming" and fresh else None

        wait("every server connected and fresh", streaming, 120)
        run("kubectl", "ekko", "updates", "ranker-mf", "-n", NS)

        def urls() -> list[str]:
            out = []
            for name in servers():
                with contextlib.suppress(KeyError):
                    out.append(agents.url(name))
            return out

        with StreamTraffic(urls, model="ranker-mf"):
            print("   labelled /score traffic on every server; each scores a share of it on the "
                  "baseline too (paired loss differences)")  # fmt: skip

            def health() -> dict[str, Any]:
                st = demo.get("updatestreams", "ranker-mf").get("status") or {}
                out: dict[str, Any] = st.get("health") or {}
                return out

            wait(
                "a baseline cut 30s old and a judged window",
                lambda: (
                    health().get("baselineCut") is not None
                    and (health().get("lastWindow") or {}).get("verdict") in ("Good", "Hold")
                ),
                150,
            )
            h = health()
            print(f"   Healthy; baseline cut {h['baselineCut']}; last window {h['lastWindow']}")
            say("A harmful update: the trainer publishes every item row flipped and magnified")
            items = publisher.call(
                lambda: publisher.pub.store.get("ranker-mf.item", range(ITEMS))[0]
            )
            harmed_at = time.time()
            publisher.publish("ranker-mf.item", range(ITEMS), -4 * items)
            done = wait(
                "the model-state manager to roll the state back",
                lambda: h if ((h := health()).get("lastRollback") or {}).get("resumedAt") else None,
                150,
            )
            rb = done["lastRollback"]
            decided = _stamp(rb["decidedAt"]) - harmed_at
            print(
                f"   caught {decided:.1f}s after the harmful rows were published; every server "
                f"served the baseline (cut {rb['cut']}) {rb['switchSeconds']}s after the decision "
                f"and held the restored state at epoch {rb['epoch']} {rb['restoreSeconds']}s after it"
            )
            run("kubectl", "ekko", "updates", "ranker-mf", "-n", NS)
            run(
                "kubectl", "get", "events", "-n", NS, "--field-selector",
                "involvedObject.kind=UpdateStream", "--sort-by=.lastTimestamp", check=False,
            )  # fmt: skip
            operator.check()
    finally:
        close()


def _stamp(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.demo", description=__doc__)
    parser.parse_args(argv)
    if not build.is_built(build.component("kubernetes")):
        build.build_all()
    # The cluster first: its kubeconfig (ports, certificates) is new whenever it (re)starts.
    say("Local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)")
    control.ensure_up()
    demo = Demo()
    demo.setup_cluster()
    work = Path(tempfile.mkdtemp(prefix="ekko-demo-"))
    operator_kubeconfig, agent_kubeconfig = demo.install_chart(work)
    webhook_port = free_port()
    with (
        Prometheus() as prom,
        AgentFleet(
            str(control.kubeconfig_path()),
            NS,
            extra_args=["--kubeconfig", str(agent_kubeconfig)],
            engines={"recsys": "embedding"},
        ) as agents,
        prom.follow(agents),
        OperatorProcess(
            str(operator_kubeconfig),
            NS,
            (
                "--prometheus-url",
                prom.url,
                "--webhook-port",
                str(webhook_port),
                "--webhook-host",
                "127.0.0.1",
                "--webhook-cert-dir",
                str(work / "webhook"),
                "--webhook-unmanaged",
                "--peering",
            ),
        ) as operator,
    ):
        demo.register_webhook(webhook_port, work / "webhook", operator)
        try:
            say(
                "Placement: two pools and four models (examples/serverpools.yaml, examples/models.yaml)"
            )
            for doc in docs(REPO / "examples" / "serverpools.yaml") + docs(
                REPO / "examples" / "models.yaml"
            ):
                if doc["kind"] == "ServerPool":  # server pods run as the chart's agent account
                    doc["spec"]["template"]["serviceAccountName"] = f"{RELEASE}-agent"
                demo.apply(doc)
            names = [d["metadata"]["name"] for d in docs(REPO / "examples" / "models.yaml")]
            wait(
                "every model placed and loaded",
                lambda: (
                    all(demo.ready("models", n) for n in names)
                    and all(demo.ready("serverpools", p) for p in ("gpu-a100", "cpu-large"))
                ),
                240,
            )
            run("kubectl", "get", "ekko", "-n", NS)
            run("kubectl", "get", "pods", "-n", NS, "-o", "wide")
            say("Admission: a model whose shards no server of its pool can hold is refused")
            bad_model = docs(REPO / "examples" / "models.yaml")[0]
            bad_model["metadata"]["name"] = "too-big"
            bad_model["spec"]["shards"] = {"count": 2, "size": "300Gi", "load": "10"}
            try:
                demo.apply(bad_model)
            except ApiException as err:
                print(f"   refused: {json.loads(err.body or '{}').get('message', err.reason)}")
            else:
                raise SystemExit(
                    "demo: the webhook accepted a model no server can hold (it did not answer?)\n"
                    + operator.logs()[-3000:]
                )
            plan_comparison()

            say(
                "Rollout: examples/modelversion.yaml (canary with Prometheus analysis), with traffic"
            )
            with Traffic(
                lambda: [agents.port(p) for p in agents.pods()],
                "ranking-dlrm",
                rate=40,
                max_seconds=900,
            ):
                demo.apply(docs(REPO / "examples" / "modelversion.yaml")[0])
                last = ""
                deadline = time.monotonic() + 400
                while demo.phase("ranking-dlrm-v2") not in (
                    "Promoted",
                    "RolledBack",
                    "Failed",
                    "Aborted",
                ):
                    operator.check()
                    if time.monotonic() > deadline:
                        raise SystemExit("demo: the canary did not finish in 400s")
                    status = demo.get("modelversions", "ranking-dlrm-v2").get("status") or {}
                    line = f"phase {status.get('phase')} step {status.get('currentStep')} weight {status.get('weight')}%: {status.get('message', '')}"
                    if line != last:
                        print(f"   {line}", flush=True)
                        last = line
                    # Promote only at the manual pause step, never past inconclusive analysis:
                    # the Paused condition's reason says which (a field, not the message).
                    paused = next(
                        (c for c in status.get("conditions", []) if c["type"] == "Paused"), {}
                    )
                    if paused.get("status") == "True" and paused.get("reason") == "ManualStep":
                        run("kubectl", "ekko", "promote", "ranking-dlrm", "-n", NS)
                    elif paused.get("status") == "True" and paused.get("reason") != "TimedPause":
                        raise SystemExit(
                            f"demo: the healthy canary paused ({paused.get('reason')}): "
                            f"{status.get('message')}"
                        )
                    time.sleep(1)
                run("kubectl", "ekko", "status", "ranking-dlrm", "-n", NS, check=False)
                ended = demo.phase("ranking-dlrm-v2")
                print(f"   ranking-dlrm-v2 ended {ended}")
                if ended != "Promoted":  # a healthy version must never be rolled back
                    status = demo.get("modelversions", "ranking-dlrm-v2").get("status") or {}
                    raise SystemExit(
                        f"demo: the healthy version v2 ended {ended}, not Promoted: "
                        f"{status.get('message', '')}"
                    )

                say("A faulty version: 20% of ranking-dlrm v3's requests fail; analysis catches it")
                agents.set_fault("v3", error_rate=0.2)
                bad = docs(REPO / "examples" / "modelversion.yaml")[0]
                bad["metadata"]["name"] = "ranking-dlrm-v3"
                bad["spec"]["version"] = "v3"
                bad["spec"]["artifact"] = {"uri": "file:///var/lib/ekko/artifacts/ranking-dlrm/v3"}
                demo.apply(bad)
                wait(
                    "the faulty version to be rolled back",
                    lambda: demo.phase("ranking-dlrm-v3") in ("RolledBack", "Failed", "Promoted"),
                    240,
                )
                if demo.phase("ranking-dlrm-v3") != "RolledBack":
                    raise SystemExit(
                        f"demo: the faulty version v3 ended {demo.phase('ranking-dlrm-v3')}, "
                        "not RolledBack"
                    )
                status = wait(
                    "the rollback to be applied everywhere",
                    lambda: (
                        (s := demo.get("modelversions", "ranking-dlrm-v3")["status"]).get(
                            "rollbackSeconds"
                        )
                        is not None
                        and s
                    ),
                    60,
                )
                print(f"   {status['message']}")
                print(
                    f"   detected at {status['rollbackRequestedAt']}; every agent routed back to v2 "
                    f"{status['rollbackSeconds']:.3f}s later"
                )
                run("kubectl", "get", "modelversions", "-n", NS, "-o", "wide")
                run(
                    "kubectl",
                    "get",
                    "events",
                    "-n",
                    NS,
                    "--field-selector",
                    "involvedObject.kind=ModelVersion",
                    "--sort-by=.lastTimestamp",
                    check=False,
                )
            streamed_updates(demo, agents, operator)
        except BaseException:
            print(operator.logs()[-4000:], file=sys.stderr)
            raise
    say("Done. The cluster keeps running:")
    print(f'export KUBECONFIG={control.kubeconfig_path()}\nexport PATH={build.tool_path()}:"$PATH"')
    print("kubectl get ekko -n ekko-demo    # stop it with: make cluster-down")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
