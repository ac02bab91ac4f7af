"""A fleet of real agent processes for the e2e suite, one per server pod.

Kwok pods run no containers, so nothing would run the agent sidecar of a server pod. The
:class:`AgentFleet` stands in for the kubelet: it watches the pods labelled ``ekko.dev/pool`` in a
namespace and runs ``python -m ekko.agent --engine sim`` for each one, on its own loopback port,
with POD_NAME / POD_NAMESPACE set as the downward API would. The agent code is the same as in a
real pod; only the engine is simulated.

    with AgentFleet(cluster.kubeconfig, namespace) as fleet:
        port = fleet.wait_started("srv-0")
        requests.get(f"http://127.0.0.1:{port}/infer?model=m")

Agents stop when their pod goes away and when the fleet closes. Each child asks the kernel to
SIGTERM it if the thread that started it dies (PR_SET_PDEATHSIG), so a killed test run leaves no
orphans behind either.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("e2e.agents")

REPO = Path(__file__).resolve().parents[1]
POOL_LABEL = "ekko.dev/pool"

# Run the agent through a tiny launcher that sets the parent-death signal first; it survives exec.
_LAUNCHER = (
    "import ctypes, os, signal, sys;"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM);"  # PR_SET_PDEATHSIG = 1
    "os.getppid() == int(sys.argv[1]) or sys.exit(1);"  # parent already gone: do not start
    "os.execv(sys.executable, [sys.executable, '-m', 'ekko.agent', *sys.argv[2:]])"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def terminate(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process if it still runs; SIGKILL it when it has not exited after ``grace``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(grace)


@dataclass
class AgentProcess:
    pod: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]
    log_file: IO[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        terminate(self.process, grace)
        self.log_file.close()


class AgentFleet:
    """One ``ekko.agent`` process per pod labelled ``ekko.dev/pool`` in ``namespace``."""

    def __init__(
        self,
        kubeconfig: str | None,
        namespace: str,
        *,
        extra_args: Sequence[str] = (),
        log_dir: Path | None = None,
        fault_injection: bool = True,
        engine: str = "sim",
        engines: Mapping[str, str] | None = None,
    ) -> None:
        self.kubeconfig = (
            kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
        )
        self.namespace = namespace
        self.extra_args = list(extra_args)
        self.fault_injection = fault_injection
        self.engine = engine
        self.engines = dict(engines or {})
        """Engine by pool (the pod's ekko.dev/pool label), over ``engine``: a pool's template
        names its engine, as the operator's server pod passes it to the agent."""
        self._pools: dict[str, str] = {}
        self._uids: dict[str, str] = {}
        """The UID of each pod (POD_UID of its agent, as the downward API gives it)."""
        self._held: set[str] = set()
        """Pods whose agent is not started (yet): see ``hold``."""
        self._kept: set[str] = set()
        """Pods whose agent outlives its pod's deletion: see ``hold``."""
        self.orphans: list[AgentProcess] = []
        """Agents kept running after their pod was deleted (stopped when the fleet closes)."""
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"ekko-agents-{namespace}-")
            log_dir = Path(self._tmp.name)
        self.log_dir = log_dir
        self._agents: dict[str, AgentProcess] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._api = config.new_client_from_config(config_file=self.kubeconfig)
        self._core = client.CoreV1Api(self._api)
        self._synced = threading.Event()
        self._faults: dict[str, dict[str, object]] = {}
        self.restarts = 0

    # -- lifetime -----------------------------------------------------------------------------

    def __enter__(self) -> AgentFleet:
        self._thread = threading.Thread(target=self._watch, name="agent-fleet", daemon=True)
        self._thread.start()
        threading.Thread(target=self._supervise, name="agent-supervisor", daemon=True).start()
        if not self._synced.wait(30):
            self.close()
            raise RuntimeError(f"could not list pods in {self.namespace} within 30s")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            agents, self._agents = list(self._agents.values()), {}
            agents += self.orphans
        for agent in agents:
            agent.stop()
        if self._thread is not None:
            self._thread.join(timeout=2)  # blocked in a watch read at worst; it is a daemon
        self._api.close()

    # -- queries ------------------------------------------------------------------------------

    def pods(self) -> list[str]:
        with self._lock:
            return sorted(self._agents)

    def agent(self, pod: str) -> AgentProcess:
        with self._lock:
            return self._agents[pod]

    def port(self, pod: str) -> int:
        return self.agent(pod).port

    def url(self, pod: str) -> str:
        return self.agent(pod).url

    def set_fault(
        self, version: str, error_rate: float = 0.0, extra_latency_ms: float = 0.0
    ) -> None:
        """Make this version fail (or slow down) this share of its requests on every agent:
        the running ones now, and every agent started later from its first request on.

        A fault belongs to the version, not to the agents that happen to run when it is set: a
        canary placed on a server started afterwards must fail just the same (a demo once saw a
        faulty canary pass analysis because it landed on new servers that had no fault).
        """
        fault = {"version": version, "errorRate": error_rate, "extraLatencyMs": extra_latency_ms}
        with self._lock:
            self._faults[version] = fault
            running = list(self._agents.values())
        body = json.dumps(fault).encode()
        for agent in running:
            deadline = time.monotonic() + 30
            while True:
                request = urllib.request.Request(
                    f"{agent.url}/fault",
                    data=body,
                    method="POST",
                    headers={"Content-Type": "application/json"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=5) as response:
                        if response.status != 200:
                            raise RuntimeError(f"/fault on {agent.pod} answered {response.status}")
                    break
                except OSError:
                    if not agent.alive() or time.monotonic() > deadline:
                        break  # gone: a replacement starts with the fault in its arguments
                    time.sleep(0.2)  # started but not listening yet

    def log_text(self, pod: str) -> str:
        return self.agent(pod).log_path.read_text(errors="replace")

    def wait_started(self, pod: str, timeout: float = 30.0) -> int:
        """Wait until the pod's agent answers /healthz; return its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                agent = self._agents.get(pod)
            if agent is not None:
                if not agent.alive():
                    raise RuntimeError(
                        f"agent of pod {pod} exited ({agent.process.returncode}); log:\n"
                        + agent.log_path.read_text(errors="replace")[-4000:]
                    )
                with (
                    contextlib.suppress(OSError, urllib.error.URLError),
                    urllib.request.urlopen(f"{agent.url}/healthz", timeout=1) as resp,
                ):
                    if resp.status == 200:
                        return agent.port
            time.sleep(0.05)
        raise TimeoutError(f"agent of pod {pod} did not answer /healthz within {timeout:.0f}s")

    def _supervise(self) -> None:
        """Restart an agent whose process exited while its pod exists, as a kubelet restarts a
        container. On a busy machine a pre-picked port can be taken by another process before
        the agent binds it ("address already in use"); the agent exits and, unrestarted, its
        server never loads (a demo run once waited for a reranker replica that way)."""
        while not self._stop.wait(1.0):
            with self._lock:
                dead = [a for a in self._agents.values() if not a.alive()]
            for agent in dead:
                if self._stop.is_set():
                    return
                tail = agent.log_path.read_text(errors="replace")[-300:].strip().splitlines()
                log.warning(
                    "agent of pod %s exited (%s): %s; restarting it",
                    agent.pod,
                    agent.process.returncode,
                    tail[-1] if tail else "no log",
                )
                with self._lock:
                    if self._agents.get(agent.pod) is not agent:
                        continue  # its pod went away meanwhile: the watch stopped it
                    del self._agents[agent.pod]
                agent.stop()
                self._start_agent(agent.pod)
                self.restarts += 1

    # -- the watch ----------------------------------------------------------------------------

    def _watch(self) -> None:
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    pods = self._core.list_namespaced_pod(
                        self.namespace, label_selector=POOL_LABEL, _request_timeout=30
                    )
                    resource_version = pods.metadata.resource_version
                    names = {
                        p.metadata.name for p in pods.items if not p.metadata.deletion_timestamp
                    }
                    for p in pods.items:
                        self._pools[p.metadata.name] = (p.metadata.labels or {}).get(POOL_LABEL, "")
                        self._uids[p.metadata.name] = str(p.metadata.uid or "")
                    for name in self.pods():
                        if name not in names:
                            self._stop_agent(name)
                    for name in sorted(names):
                        self._start_agent(name)
                    self._synced.set()
                stream = watch.Watch()
                for event in stream.stream(
                    self._core.list_namespaced_pod,
                    self.namespace,
                    label_selector=POOL_LABEL,
                    resource_version=resource_version,
                    timeout_seconds=60,
                    _request_timeout=(10, 90),
                ):
                    pod: Any = event["object"]
                    resource_version = pod.metadata.resource_version
                    if event["type"] == "DELETED" or pod.metadata.deletion_timestamp:
                        self._stop_agent(pod.metadata.name)
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        self._pools[pod.metadata.name] = (pod.metadata.labels or {}).get(
                            POOL_LABEL, ""
                        )
                        self._replaced(pod.metadata.name, str(pod.metadata.uid or ""))
                        self._start_agent(pod.metadata.name)
                    if self._stop.is_set():
                        stream.stop()
                        break
            except ApiException as err:
                if err.status == 410:
                    resource_version = None
                    continue
                log.warning("pod watch in %s failed: %s", self.namespace, err)
                self._stop.wait(1)
            except Exception as err:  # keep the fleet running through connection trouble
                log.warning("pod watch in %s broke: %s", self.namespace, err)
                self._stop.wait(1)

    def hold(self, pod: str) -> None:
        """Reproduce a force-deleted pod whose container lives on: when ``pod`` is deleted its
        agent keeps running (with the old pod's UID, into ``orphans``), and the agent of the
        same-named pod that replaces it starts only on ``release``."""
        with self._lock:
            self._kept.add(pod)
            self._held.add(pod)

    def release(self, pod: str) -> None:
        """Start the held pod's agent (see ``hold``)."""
        with self._lock:
            self._held.discard(pod)
            self._kept.discard(pod)
        if pod in self._uids:
            self._start_agent(pod)

    def _replaced(self, pod: str, uid: str) -> None:
        """A pod event with this UID: an agent still running for another UID of the name (its
        pod deleted and re-created before the watch saw the deletion) belongs to the old pod."""
        old = self._uids.get(pod)
        self._uids[pod] = uid
        if old and old != uid:
            self._stop_agent(pod)

    def _start_agent(self, pod: str) -> None:
        with self._lock:
            if pod in self._agents or pod in self._held or self._stop.is_set():
                return
            port = free_port()
            log_path = self.log_dir / f"{pod}.log"
            log_file = log_path.open("ab")
            args = [
                "--pod-name", pod,
                "--namespace", self.namespace,
                "--kubeconfig", self.kubeconfig,
                "--engine", self.engines.get(self._pools.get(pod, ""), self.engine),
                "--listen", f"127.0.0.1:{port}",
                # The update node (run only when the assignment lists update duties): its own
                # loopback port, advertised as such to the other agents.
                "--update-listen", f"127.0.0.1:{free_port()}",
                *(["--enable-fault-injection"] if self.fault_injection else []),
                *[a for f in self._faults.values() for a in ("--fault", json.dumps(f))],
                *self.extra_args,
            ]  # fmt: skip
            env = {
                **os.environ,
                "POD_NAME": pod,
                "POD_NAMESPACE": self.namespace,
                "POD_UID": self._uids.get(pod, ""),
            }
            process = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *args],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            self._agents[pod] = AgentProcess(pod, port, log_path, process, log_file)
        log.info("started agent for pod %s on port %d (log %s)", pod, port, log_path)

    def _stop_agent(self, pod: str) -> None:
        with self._lock:
            agent = self._agents.pop(pod, None)
            if agent is not None and pod in self._kept:
                self._kept.discard(pod)
                self.orphans.append(agent)
                log.info("kept the agent of deleted pod %s running (orphan)", pod)
                return
        if agent is not None:
            agent.stop()
            log.info("stopped agent of pod %s", pod)


class SimFleetProcess:
    """``python -m ekko.agent.fleet``: one process running a simulated agent (sim engine, the
    agent's own control loop) for every bound server pod of ``namespace`` — for scale runs where
    one process per pod does not fit the machine. No agent serves HTTP (no /infer, /fault)."""

    def __init__(
        self,
        kubeconfig: str | None,
        namespace: str,
        *,
        heartbeat_seconds: float = 10.0,
        extra_args: Sequence[str] = (),
        log_dir: Path | None = None,
    ) -> None:
        self.kubeconfig = (
            kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
        )
        self.namespace = namespace
        self.args = [
            "--namespace", namespace,
            "--kubeconfig", self.kubeconfig,
            "--heartbeat-seconds", str(heartbeat_seconds),
            *extra_args,
        ]  # fmt: skip
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix=f"ekko-fleet-{namespace}-"))
        self.log_path = self.log_dir / "fleet.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SimFleetProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _FLEET_LAUNCHER, str(os.getpid()), *self.args],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self, grace: float = 15.0) -> None:
        if self.process is not None:
            terminate(self.process, grace)


_FLEET_LAUNCHER = _LAUNCHER.replace("'ekko.agent'", "'ekko.agent.fleet'")
