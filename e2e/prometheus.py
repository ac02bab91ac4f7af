"""A real Prometheus for e2e tests: scrapes the agents every second.

``Prometheus``: agents on loopback; targets come from a file the harness rewrites as agents come
and go (file service discovery), so Prometheus needs no restart. The binary is Debian's
`prometheus` package (`e2e/install-prometheus.sh`, run by `make tools`).

``PodDiscoveryPrometheus``: agents in server pods on the real node, found by Prometheus itself
through Kubernetes service discovery (``kubernetes_sd_configs``, role pod) and the pods'
``prometheus.io/*`` annotations, as a platform team's Prometheus without prometheus-operator
finds them; it signs in with the kubeconfig it is given (the tests: a ServiceAccount token that
may only list and watch pods). Debian's 2.42 is built without Kubernetes discovery, so this one
is Prometheus 3 built from its Go module (``python -m e2e.cluster build prometheus``, run by
`make tools`).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from e2e.agents import AgentFleet

import yaml

from e2e.procs import dying_with_parent

CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
scrape_configs:
  - job_name: ekko-agents
    file_sd_configs:
      - files: [{targets}]
        refresh_interval: 1s
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """`prometheus` as a child process with its own TSDB in a temp dir."""

    def __init__(self, binary: str | None = None) -> None:
        binary = binary or shutil.which("prometheus")
        if binary is None:
            raise RuntimeError(
                "prometheus is not installed: run `make tools` (e2e/install-prometheus.sh)"
            )
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="ekko-prometheus-"))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets_file = self.dir / "targets.json"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.set_targets({})
        (self.dir / "prometheus.yml").write_text(self.config())
        log = (self.dir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            dying_with_parent(
                [
                    self.binary,
                    f"--config.file={self.dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=2h",
                    "--log.level=warn",
                ]
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready in 30s: {self.logs()}")

    def config(self) -> str:
        """prometheus.yml: agents on loopback from the targets file (a subclass may discover
        them otherwise, e.g. pods on a real node)."""
        return CONFIG.format(targets=json.dumps(str(self.targets_file)))

    def set_targets(self, targets: dict[str, int]) -> None:
        """Scrape these agents: pod name -> port on 127.0.0.1."""
        groups = [
            {"targets": [f"127.0.0.1:{port}"], "labels": {"pod": pod}}
            for pod, port in sorted(targets.items())
        ]
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.targets_file)

    @contextlib.contextmanager
    def follow(self, agents: AgentFleet) -> Iterator[None]:
        """Keep the scrape targets equal to the agents running, while the block runs."""
        stop = threading.Event()

        def sync() -> None:
            while not stop.wait(0.5):
                self.set_targets({pod: agents.port(pod) for pod in agents.pods()})

        thread = threading.Thread(target=sync, daemon=True, name="prometheus-targets")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def targets(self, state: str = "active") -> dict[str, list[dict[str, Any]]]:
        """/api/v1/targets: ``activeTargets`` and ``droppedTargets`` (``state``: active,
        dropped or any)."""
        with urllib.request.urlopen(f"{self.url}/api/v1/targets?state={state}", timeout=5) as r:
            return dict(json.load(r)["data"])

    def query(self, promql: str) -> float | None:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def up_targets(self) -> int:
        value = self.query("count(up == 1)")
        return int(value or 0)

    def logs(self) -> str:
        path = self.dir / "prometheus.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Prometheus:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# The scrape job a Prometheus without prometheus-operator uses for annotated pods (the
# "kubernetes-pods" job of Prometheus's example configuration), limited to one namespace.
POD_SD_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
scrape_configs:
  - job_name: kubernetes-pods
    kubernetes_sd_configs:
      - role: pod
        kubeconfig_file: {kubeconfig}
        namespaces:
          names: [{namespace}]
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
        action: keep
        regex: "true"
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path]
        action: replace
        regex: (.+)
        target_label: __metrics_path__
      - source_labels: [__address__, __meta_kubernetes_pod_annotation_prometheus_io_port]
        action: replace
        regex: ([^:]+)(?::\\d+)?;(\\d+)
        replacement: $1:$2
        target_label: __address__
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
"""


class PodDiscoveryPrometheus(Prometheus):
    """Prometheus 3 discovering the server pods of ``namespace`` through the API server."""

    def __init__(
        self,
        binary: str,
        kubeconfig: Path,
        namespace: str,
        pod_monitors: tuple[dict[str, Any], ...] = (),
    ) -> None:
        """``kubeconfig``: the credentials Prometheus discovers with (a ServiceAccount's);
        ``pod_monitors``: PodMonitor objects to scrape as prometheus-operator would, each as a
        job of its own next to the annotation job."""
        super().__init__(binary)
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.pod_monitors = pod_monitors

    def config(self) -> str:
        text = POD_SD_CONFIG.format(
            kubeconfig=json.dumps(str(self.kubeconfig)), namespace=json.dumps(self.namespace)
        )
        if not self.pod_monitors:
            return text
        doc = yaml.safe_load(text)
        doc["scrape_configs"] += [podmonitor_job(m, self.kubeconfig) for m in self.pod_monitors]
        return str(yaml.safe_dump(doc, sort_keys=False))


def _label_name(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def podmonitor_job(monitor: dict[str, Any], kubeconfig: Path) -> dict[str, Any]:
    """The scrape job prometheus-operator makes of a PodMonitor (the parts the chart uses: label
    selector with matchLabels and Exists, namespaceSelector.matchNames, one endpoint by port
    name and path); anything else is refused rather than ignored."""
    spec = monitor["spec"]
    keep: list[dict[str, Any]] = []
    for key, value in spec["selector"].get("matchLabels", {}).items():
        label = f"__meta_kubernetes_pod_label_{_label_name(key)}"
        keep.append({"source_labels": [label], "action": "keep", "regex": re.escape(value)})
    for expr in spec["selector"].get("matchExpressions", []):
        if expr["operator"] != "Exists":
            raise ValueError(f"unsupported selector operator in {expr}")
        label = f"__meta_kubernetes_pod_labelpresent_{_label_name(expr['key'])}"
        keep.append({"source_labels": [label], "action": "keep", "regex": "true"})
    (endpoint,) = spec["podMetricsEndpoints"]
    port = "__meta_kubernetes_pod_container_port_name"
    keep.append({"source_labels": [port], "action": "keep", "regex": re.escape(endpoint["port"])})
    namespaces = spec["namespaceSelector"]["matchNames"]
    meta = monitor["metadata"]
    return {
        "job_name": f"podMonitor/{meta['namespace']}/{meta['name']}/0",
        "metrics_path": endpoint.get("path", "/metrics"),
        "kubernetes_sd_configs": [
            {"role": "pod", "kubeconfig_file": str(kubeconfig), "namespaces": {"names": namespaces}}
        ],
        "relabel_configs": [
            *keep,
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ],
    }
