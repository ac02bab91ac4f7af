"""Start, check and stop the local control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok, as detached child processes with pid files in the state dir.

The layout follows envtest/kwokctl: loopback-only, a fresh etcd data dir per `up`, fake nodes
from ``e2e/fleet.yaml`` that kwok keeps Ready and whose pods it marks Running.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import build, pki

REPO = Path(__file__).resolve().parents[2]
FLEET_FILE = REPO / "e2e" / "fleet.yaml"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # first address of SERVICE_CIDR: the `kubernetes` Service
POD_CIDR = "10.244.0.0/16"  # kwok hands out pod IPs from here
NODE_IP = "10.0.0.1"
# A fixed, non-loopback host address the API server advertises (the `kubernetes` Service needs a
# non-loopback endpoint for in-cluster clients) and the real node's kubelet uses as its node IP.
# It sits on a dummy interface, or on `lo` where the kernel has no dummy driver (this VM).
HOST_IP = "10.250.0.1"
HOST_IF = "ekko0"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"  # kwok manages nodes annotated kwok.x-k8s.io/node=fake
# Stop order: leaves first, storage last.
COMPONENTS = ("kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")


class ClusterError(RuntimeError):
    pass


def state_dir() -> Path:
    return Path(os.environ.get("EKKO_CLUSTER_DIR") or REPO / ".ekko-cluster").expanduser().resolve()


def kubeconfig_path() -> Path:
    return state_dir() / "kubeconfig"


@contextlib.contextmanager
def lock() -> Iterator[None]:
    """Serialise up/down on one state dir (two shells, or test runners, starting at once)."""
    state_dir().mkdir(parents=True, exist_ok=True)
    with (state_dir() / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pid_file(name: str, state: Path | None = None) -> Path:
    return (state or state_dir()) / "pids" / f"{name}.pid"


def log_file(name: str) -> Path:
    return state_dir() / "logs" / f"{name}.log"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tail(name: str, lines: int = 40) -> str:
    try:
        text = log_file(name).read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {log_file(name)})"
    return f"--- last {min(lines, len(text))} lines of {log_file(name)} ---\n" + "\n".join(
        text[-lines:]
    )


# --- processes ----------------------------------------------------------------------------


def _read_pid(name: str, state: Path | None = None) -> int | None:
    try:
        return int(_pid_file(name, state).read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int, binary: str) -> bool:
    """Whether pid runs `binary` (guards against a recycled pid after a reboot)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return Path(cmdline).name == binary and state != "Z"


def running(name: str, state: Path | None = None) -> int | None:
    """The pid of a component of the cluster in ``state`` (default: this one) if it runs."""
    pid = _read_pid(name, state)
    return pid if pid is not None and _alive(pid, name) else None


def processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of every process of the machine that can still be read."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        yield int(proc.name), argv


def _start(
    name: str, args: list[str], binary: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    binary = binary or build.find_binary(name)
    log = log_file(name)
    with log.open("ab") as out:
        out.write(
            f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {binary} {' '.join(args)}\n".encode()
        )
        out.flush()
        # A new session detaches the child from our terminal, so `up` can return and Ctrl-C in
        # the shell does not reach it; `down` stops it through its pid file.
        proc = subprocess.Popen(
            [str(binary), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=state_dir(),
            env=env,
        )
    _pid_file(name).write_text(str(proc.pid))
    return proc


def _stop(name: str, timeout: float = 10.0) -> None:
    pid = running(name)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid, name):
            time.sleep(0.05)
        if _alive(pid, name):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid, name):
                time.sleep(0.05)
    _pid_file(name).unlink(missing_ok=True)


# --- talking to the API server ------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int
    advertise: str = "127.0.0.1"  # HOST_IP when the host address could be set up

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver}"


def _endpoints_file() -> Path:
    return state_dir() / "endpoints.json"


def load_endpoints() -> Endpoints | None:
    try:
        return Endpoints(**json.loads(_endpoints_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None


class Api:
    """A minimal HTTPS client with the admin cert: enough for readiness checks and nodes."""

    def __init__(self, port: int) -> None:
        p = state_dir() / "pki"
        self.port = port
        self.ctx = ssl.create_default_context(cafile=str(p / "ca.crt"))
        self.ctx.load_cert_chain(str(p / "admin.crt"), str(p / "admin.key"))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 5.0,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.ctx, timeout=timeout
        )
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"Content-Type": content_type})
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw.decode(errors="replace")


def _wait(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    component: str,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ClusterError(
                f"{component} exited with code {proc.returncode} while waiting for {what}\n"
                + _log_tail(component)
            )
        try:
            if check():
                return
        except (OSError, http.client.HTTPException, ssl.SSLError):
            pass
        time.sleep(0.1)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}\n{_log_tail(component)}")


def _run_ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def host_address_device() -> str | None:
    """The interface carrying HOST_IP, if any."""
    out = _run_ip("-o", "-4", "addr", "show").stdout
    for line in out.splitlines():
        fields = line.split()
        if f"{HOST_IP}/32" in fields:
            return fields[1]
    return None


def ensure_host_address() -> bool:
    """Put HOST_IP on a dummy interface (or `lo` without the dummy driver); False if we may not
    (not root): the API server then stays on loopback and a real node cannot join."""
    if host_address_device() is not None:
        return True
    if os.geteuid() != 0:
        return False
    if _run_ip("link", "add", HOST_IF, "type", "dummy").returncode == 0:
        _run_ip("link", "set", HOST_IF, "up")
        device = HOST_IF
    else:  # "Unknown device type": this kernel has no dummy driver
        device = "lo"
    added = _run_ip("addr", "add", f"{HOST_IP}/32", "dev", device, "label", f"{device}:ekko")
    return added.returncode == 0 or host_address_device() is not None


def _host_address_in_use() -> bool:
    """Whether a running API server (of another state dir) advertises HOST_IP."""
    return any(
        Path(argv[0]).name == "kube-apiserver" and f"--advertise-address={HOST_IP}" in argv
        for _, argv in processes()
    )


def remove_host_address() -> None:
    """Remove HOST_IP (and the dummy interface) unless another cluster's API server uses it."""
    if _host_address_in_use():
        return
    device = host_address_device()
    if device is not None:
        _run_ip("addr", "del", f"{HOST_IP}/32", "dev", device)
    if _run_ip("link", "show", HOST_IF).returncode == 0:
        _run_ip("link", "del", HOST_IF)


def _http_ok(url_port: int, path: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", url_port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    finally:
        conn.close()


def healthy() -> bool:
    """Whether a cluster from this state dir is running and serving."""
    ep = load_endpoints()
    if ep is None or any(running(c) is None for c in COMPONENTS):
        return False
    try:
        status, _ = Api(ep.apiserver).request("GET", "/readyz", timeout=3)
    except (OSError, http.client.HTTPException, ssl.SSLError):
        return False
    return status == 200


# --- fleet --------------------------------------------------------------------------------


def load_fleet(path: Path = FLEET_FILE) -> list[dict[str, Any]]:
    """Turn the fleet file into Node objects (metadata and status) for kwok to manage."""
    doc = yaml.safe_load(path.read_text()) or {}
    nodes = []
    for entry in doc.get("nodes", []):
        capacity = {k: str(v) for k, v in entry["capacity"].items()}
        labels = {
            "type": "kwok",
            "kubernetes.io/hostname": entry["name"],
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "topology.kubernetes.io/zone": entry["zone"],
            **{k: str(v) for k, v in (entry.get("labels") or {}).items()},
        }
        nodes.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": entry["name"],
                    "labels": labels,
                    "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                },
                "spec": {"taints": entry.get("taints") or []},
                # Created with the status: kwok's node-initialize stage keeps given capacity.
                "status": {"capacity": capacity, "allocatable": dict(capacity)},
            }
        )
    return nodes


def create_nodes(api: Api, nodes: list[dict[str, Any]]) -> None:
    for node in nodes:
        status, body = api.request("POST", "/api/v1/nodes", node)
        if status == 409:
            continue
        if status >= 300:
            raise ClusterError(f"creating node {node['metadata']['name']} failed: {status} {body}")


def _nodes_ready(api: Api, names: set[str]) -> bool:
    status, body = api.request("GET", "/api/v1/nodes")
    if status != 200:
        return False
    ready = {
        n["metadata"]["name"]
        for n in body["items"]
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in n.get("status", {}).get("conditions", [])
        )
    }
    return names <= ready


# --- up / down ----------------------------------------------------------------------------


def _kwok_config(path: Path) -> None:
    """kwok v0.8.0 standalone exits with "no stages found" unless stages come with --config."""
    docs = [f.read_text().strip() for f in build.stage_files()]
    path.write_text("\n---\n".join(docs) + "\n")


def up(fleet: Path = FLEET_FILE, quiet: bool = False, real_node: bool = False) -> Endpoints:
    """Start a fresh cluster (stopping an old one from this state dir first).

    With ``real_node`` a healthy cluster that advertises HOST_IP is kept (others may be running
    tests on it) and only the real node is added, if it is not running already.
    """
    with lock():
        ep = load_endpoints()
        if not (real_node and healthy() and ep is not None and ep.advertise == HOST_IP):
            ep = _up_with_retry(fleet, quiet)
        if real_node:
            from e2e.cluster import realnode  # here: realnode imports this module

            realnode.up(ep, quiet=quiet)
        return ep


def ensure_up(fleet: Path = FLEET_FILE, quiet: bool = False) -> bool:
    """Start the cluster unless a healthy one runs; return whether it was started."""
    with lock():
        if healthy():
            return False
        _up_with_retry(fleet, quiet)
        return True


def _up_with_retry(fleet: Path, quiet: bool) -> Endpoints:
    """Ports are picked free just before use; if another process grabs one in between, the
    component exits with "address already in use" and the start is tried once more."""
    try:
        return _up_once(fleet, quiet)
    except ClusterError as err:
        if "address already in use" not in str(err):
            raise
        if not quiet:
            print("a port was taken meanwhile; starting again with new ports", flush=True)
        return _up_once(fleet, quiet)


def _up_once(fleet: Path, quiet: bool) -> Endpoints:
    started = time.monotonic()

    def say(msg: str) -> None:
        if not quiet:
            print(f"[up {time.monotonic() - started:5.1f}s] {msg}", flush=True)

    for c in ("etcd", "kwok", "kubernetes"):
        if not build.is_built(build.component(c)):
            raise ClusterError(f"{c} is not built; run: python -m e2e.cluster build")
    _down(quiet=True)
    root = state_dir()
    for sub in ("pids", "logs", "pki"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / ".gitignore").write_text("*\n")
    etcd_data = root / "etcd-data"
    subprocess.run(["rm", "-rf", str(etcd_data)], check=True)
    p = root / "pki"
    advertise = HOST_IP if ensure_host_address() else "127.0.0.1"
    pki.ensure_pki(p, SERVICE_IP, (HOST_IP,))
    ep = Endpoints(*(_free_port() for _ in range(6)), advertise=advertise)
    _endpoints_file().write_text(json.dumps(ep.__dict__))
    kubeconfigs = {}
    for client in pki.CLIENTS:
        kc = root / ("kubeconfig" if client.name == "admin" else f"{client.name}.kubeconfig")
        pki.write_kubeconfig(kc, ep.server, p, client.name)
        kubeconfigs[client.name] = kc
    _kwok_config(root / "kwok.yaml")
    nodes = load_fleet(fleet)
    say(f"state in {root}")

    try:
        etcd = _start(
            "etcd",
            [
                "--name=ekko-e2e",
                f"--data-dir={etcd_data}",
                f"--listen-client-urls=http://127.0.0.1:{ep.etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{ep.etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{ep.etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{ep.etcd_peer}",
                f"--initial-cluster=ekko-e2e=http://127.0.0.1:{ep.etcd_peer}",
                "--unsafe-no-fsync",  # test data: durability is not worth the fsync latency
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ],
        )
        _wait("etcd /health", lambda: _http_ok(ep.etcd_client, "/health"), 30, "etcd", etcd)
        say("etcd ready")

        apiserver = _start(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{ep.etcd_client}",
                # Pods reach the API server through the `kubernetes` Service, whose endpoint
                # is the advertised address: it may not be loopback.
                f"--bind-address={'0.0.0.0' if advertise != '127.0.0.1' else '127.0.0.1'}",
                f"--advertise-address={advertise}",
                f"--secure-port={ep.apiserver}",
                f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
                # The real node's name does not resolve; kwok nodes have no kubelet to dial.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                f"--cert-dir={p}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        api = Api(ep.apiserver)
        _wait(
            "kube-apiserver /readyz",
            lambda: api.request("GET", "/readyz")[0] == 200,
            60,
            "kube-apiserver",
            apiserver,
        )
        say("kube-apiserver ready")
        _bind_kubelet_client(api)

        kcm = _start(
            "kube-controller-manager",
            [
                f"--kubeconfig={kubeconfigs['kube-controller-manager']}",
                f"--authentication-kubeconfig={kubeconfigs['kube-controller-manager']}",
                f"--authorization-kubeconfig={kubeconfigs['kube-controller-manager']}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ep.controller_manager}",
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--root-ca-file={p / 'ca.crt'}",
                f"--cluster-signing-cert-file={p / 'ca.crt'}",
                f"--cluster-signing-key-file={p / 'ca.key'}",
                "--use-service-account-credentials=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # One instance: leader election would only delay the start.
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
                # Scale benches on a loaded machine: kwok renews hundreds of node leases late and
                # the node controller marks the nodes and their pods not Ready (kwok never marks
                # the pods Ready again). EKKO_NODE_MONITOR_GRACE (e.g. 600s) tolerates that.
                *(
                    [f"--node-monitor-grace-period={os.environ['EKKO_NODE_MONITOR_GRACE']}"]
                    if os.environ.get("EKKO_NODE_MONITOR_GRACE")
                    else []
                ),
            ],
        )
        sched = _start(
            "kube-scheduler",
            [
                f"--kubeconfig={kubeconfigs['kube-scheduler']}",
                f"--authentication-kubeconfig={kubeconfigs['kube-scheduler']}",
                f"--authorization-kubeconfig={kubeconfigs['kube-scheduler']}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ep.scheduler}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        kwok = _start(
            "kwok",
            [
                f"--kubeconfig={kubeconfigs['admin']}",
                f"--config={root / 'kwok.yaml'}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                f"--node-ip={NODE_IP}",
                f"--cidr={POD_CIDR}",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{ep.kwok}",
            ],
        )
        create_nodes(api, nodes)
        names = {n["metadata"]["name"] for n in nodes}
        _wait(f"{len(names)} nodes Ready", lambda: _nodes_ready(api, names), 60, "kwok", kwok)
        say(f"{len(names)} nodes Ready")
        # Pods need the namespace's default ServiceAccount, made by the controller manager.
        _wait(
            "default ServiceAccount",
            lambda: (
                api.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200
            ),
            60,
            "kube-controller-manager",
            kcm,
        )
        for name, proc in (("kube-controller-manager", kcm), ("kube-scheduler", sched)):
            if proc.poll() is not None:
                raise ClusterError(f"{name} exited with code {proc.returncode}\n{_log_tail(name)}")
        say("controller-manager and scheduler running")
    except Exception:
        _down(quiet=True)
        raise
    say(f"cluster up in {time.monotonic() - started:.1f}s")
    return ep


def _bind_kubelet_client(api: Api) -> None:
    """Let the API server's kubelet client use the kubelet API (logs, exec, port-forward): the
    real node's kubelet authorises requests by webhook, as kubeadm clusters do."""
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "ekko-e2e:kube-apiserver-kubelet-client"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:kubelet-api-admin",
        },
        "subjects": [
            {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "User",
                "name": pki.APISERVER_KUBELET_CLIENT.common_name,
            }
        ],
    }
    status, body = api.request(
        "POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding
    )
    if status >= 300 and status != 409:
        raise ClusterError(
            f"creating the kubelet-client ClusterRoleBinding failed: {status} {body}"
        )


def down(quiet: bool = False, purge: bool = False) -> None:
    """Stop every component; keep logs and PKI unless purge."""
    with lock():
        _down(quiet)
    if purge:
        subprocess.run(["rm", "-rf", str(state_dir())], check=True)


def _down(quiet: bool = False) -> None:
    root = state_dir()
    from e2e.cluster import realnode  # here: realnode imports this module

    realnode.down(quiet=quiet)  # first: it drains its pods through the API server
    for name in COMPONENTS:
        if not quiet and running(name):
            print(f"stopping {name}", flush=True)
        _stop(name)
    subprocess.run(["rm", "-rf", str(root / "etcd-data")], check=True)
    _endpoints_file().unlink(missing_ok=True)
    if os.geteuid() == 0:
        remove_host_address()


def status() -> dict[str, Any]:
    ep = load_endpoints()
    return {
        "state_dir": str(state_dir()),
        "kubeconfig": str(kubeconfig_path()),
        "server": ep.server if ep else None,
        "processes": {name: running(name) for name in COMPONENTS},
        "real_node": {name: running(name) for name in ("containerd", "kubelet", "kube-proxy")},
        "healthy": healthy(),
    }
