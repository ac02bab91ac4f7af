"""Reconcile benchmark: the operator on the local control plane with a few hundred kwok nodes.

    EKKO_CLUSTER_DIR=/tmp/ekko-bench python -m bench.reconcile --quick     # ~20 nodes, ~200 replicas
    EKKO_CLUSTER_DIR=/tmp/ekko-bench python -m bench.reconcile             # 200 nodes, ~2000 replicas

Other work in the same checkout can change ekko/ while agents start (a half-written module once
killed two agents mid-run): run it from a snapshot, ``git archive HEAD | tar -x -C DIR``, with
``cd DIR && /path/to/.venv/bin/python -m bench.reconcile``.

It measures what the placement benchmark cannot: the whole loop through a real API server. It
creates simulated nodes (bench-node-NNN over zone-a/b/c), runs ``python -m ekko.operator`` and one
sim agent process per server pod (e2e.agents.AgentFleet), applies one ServerPool and seeded models,
and times

1. apply -> every shard replica loaded (pool Ready, every model Ready, every assignment's loaded
   set equal to its spec), with the solve time and servers the operator reports;
2. a lost node: the bench deletes the node holding the most server pods and force-deletes its pods
   (what the node lifecycle controller's eviction does; PodGC would take longer) -> every shard
   back to its replica count on servers whose new agent has reported;
3. CPU seconds (/proc/<pid>/stat utime+stime) and peak memory (VmHWM) of the operator, the API
   server and etcd, and the agents' total;
4. a re-plan: one model's replicas raised by one -> converged again, with the plan's bytes and
   replicas moved.

A benchmark measures and prints; it asserts nothing (tests assert). It refuses the default state
dir so it never touches a cluster other work is using: set EKKO_CLUSTER_DIR. A cluster already
running there is used and left running; otherwise one is started and stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from e2e import objects
from e2e.agents import AgentFleet, SimFleetProcess, free_port
from e2e.cluster import build, control
from e2e.objects import fresh_namespace
from e2e.operator_harness import OperatorProcess
from ekko.kube.cache import ASSIGNMENTS, MODELS, PODS, POOLS, Cache

G, V = "ekko.dev", "v1alpha1"
NS = "ekko-bench"
POOL = "bench"
POOL_LABEL = "ekko.dev/pool"
ZONES = ("zone-a", "zone-b", "zone-c")
GIB = 1024**3
MIB = 1024**2
POOL_MEMORY_GIB = 64
POOL_COMPUTE = 100
HEADROOM = 0.10  # the PlacementPolicy default
FILL = 0.85  # target share of usable pool memory the shards take, so some slack remains
CLK_TCK = os.sysconf("SC_CLK_TCK")
LIST_TIMEOUT = 180.0

log = logging.getLogger("bench.reconcile")


@dataclass(frozen=True)
class Scale:
    nodes: int
    servers: int  # servers the workload is sized to need (memory bound)
    replicas: int  # shard replicas over all models
    solver_time_limit: str
    timeout: float  # per phase


FULL = Scale(nodes=200, servers=150, replicas=2000, solver_time_limit="20s", timeout=1800)
QUICK = Scale(nodes=20, servers=16, replicas=200, solver_time_limit="5s", timeout=300)


# --- workload ---------------------------------------------------------------------------------


def fleet_doc(nodes: int) -> dict[str, Any]:
    """Nodes big enough that pod capacity never limits placement (cpu, memory and pods)."""
    return {
        "nodes": [
            {
                "name": f"bench-node-{i:03d}",
                "zone": ZONES[i % len(ZONES)],
                "capacity": {"cpu": "64", "memory": "512Gi", "pods": "110"},
            }
            for i in range(nodes)
        ]
    }


def pool_manifest(max_servers: int, solver_time_limit: str) -> dict[str, Any]:
    return objects.pool_manifest(
        POOL,
        max_servers,
        memory=f"{POOL_MEMORY_GIB}Gi",
        compute=str(POOL_COMPUTE),
        solver_time_limit=solver_time_limit,
        replan_debounce="1s",
    )


def model_manifests(scale: Scale, seed: int) -> list[dict[str, Any]]:
    """Seeded models totalling ``scale.replicas`` shard replicas, sized to fill about
    ``scale.servers`` servers' memory (FILL of the usable share)."""
    rng = random.Random(seed)
    shapes: list[tuple[str, int, int, float, int]] = []  # slo, replicas, shards, rel size, load
    total = 0
    max_shards = 32 if scale.replicas >= 1000 else 12
    while total < scale.replicas:
        r = rng.random()
        slo = "critical" if r < 0.2 else ("standard" if r < 0.7 else "batch")
        reps = {"critical": 3, "standard": 2, "batch": 1}[slo]
        shards = rng.randint(2, max_shards)
        shards = min(shards, max(1, (scale.replicas - total) // reps))
        rel = min(4.0, max(0.25, rng.lognormvariate(0.0, 0.6)))
        load = rng.choice((1, 2, 3, 5))
        shapes.append((slo, reps, shards, rel, load))
        total += reps * shards
    usable = POOL_MEMORY_GIB * GIB * (1 - HEADROOM)
    rel_bytes = sum(reps * shards * rel for _, reps, shards, rel, _ in shapes)
    unit = FILL * scale.servers * usable / rel_bytes
    out = []
    for k, (slo, reps, shards, rel, load) in enumerate(shapes):
        size_mib = max(64, math.floor(min(rel * unit, usable / 2) / MIB))
        out.append(
            {
                "apiVersion": f"{G}/{V}",
                "kind": "Model",
                "metadata": {"name": f"m{k:03d}-{slo}"},
                "spec": {
                    "pool": POOL,
                    "version": "v1",
                    "artifact": {"uri": f"file:///artifacts/m{k:03d}/v1"},
                    "shards": {"count": shards, "size": f"{size_mib}Mi", "load": str(load)},
                    "replicas": reps,
                    "keepPreviousResident": False,
                    "slo": {"class": slo},
                },
            }
        )
    return out


# --- processes --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def status_kib(pid: int, key: str) -> int | None:
    """A ``kB`` line of /proc/<pid>/status (VmHWM: peak resident set, VmRSS: current)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Usage:
    """CPU seconds of the watched processes at a moment."""

    at: float
    cpu: dict[str, float]
    agents: int


@dataclass
class Watched:
    """The processes whose CPU and memory the benchmark reports."""

    pids: dict[str, int]
    fleet: AgentFleet | None = None
    agent_peak_rss_kib: int = 0
    agent_peak_count: int = 0
    agent_cpu: dict[int, float] = field(default_factory=dict)  # last seen, kept after exit
    agent_restarts: int = 0

    def agent_pids(self) -> list[int]:
        if self.fleet is None:
            return []
        out = []
        for pod in self.fleet.pods():
            with contextlib.suppress(KeyError):
                out.append(self.fleet.agent(pod).process.pid)
        return out

    def restart_dead_agents(self) -> None:
        """Start again an agent that exited while its pod exists.

        AgentFleet picks a free port in the parent and the child binds it only after its imports
        (tens of seconds on a loaded machine); meanwhile the kernel may hand the port out as an
        ephemeral port of one of the hundreds of API connections, and the agent exits with
        "address already in use". A kubelet would restart the container; so does the bench.
        """
        if self.fleet is None:
            return
        for pod in self.fleet.pods():
            with contextlib.suppress(KeyError):
                agent = self.fleet.agent(pod)
                if agent.process.poll() not in (None, 0):
                    # AgentFleet has no public restart; its own stop and start do one.
                    self.fleet._stop_agent(pod)
                    self.fleet._start_agent(pod)
                    self.agent_restarts += 1

    def sample(self) -> Usage:
        self.restart_dead_agents()
        cpu = {name: cpu_seconds(pid) or 0.0 for name, pid in self.pids.items()}
        agents = self.agent_pids()
        for pid in agents:
            seconds = cpu_seconds(pid)
            if seconds is not None:
                self.agent_cpu[pid] = seconds
        # Agents that exited count with their CPU as last sampled (up to one interval short).
        cpu["agents"] = sum(self.agent_cpu.values())
        rss = sum(status_kib(p, "VmRSS") or 0 for p in agents)
        self.agent_peak_rss_kib = max(self.agent_peak_rss_kib, rss)
        self.agent_peak_count = max(self.agent_peak_count, len(agents))
        return Usage(time.monotonic(), cpu, len(agents))

    def peaks(self) -> dict[str, int | None]:
        return {name: status_kib(pid, "VmHWM") for name, pid in self.pids.items()}


class EchoAgents:
    """A stand-in for the agents where their processes do not fit the machine (``--echo-agents``;
    ~64 MiB and ~0.8 CPU-s of start-up each would need ~40 GiB for 600 servers). One thread
    follows the ServerAssignments and the server pods and reports, for each server, its spec's
    shards as loaded (as the sim engine would, without the load time), again for every new pod
    of a server, plus a heartbeat every ``heartbeat`` seconds as each agent writes. It is not the
    agent's code path: it measures the operator and the API server under the same load, nothing
    about the agents."""

    def __init__(self, kubeconfig: str, heartbeat: float) -> None:
        api = config.new_client_from_config(config_file=kubeconfig)
        self.custom: Any = client.CustomObjectsApi(api)
        self.core: Any = client.CoreV1Api(api)
        self.heartbeat = heartbeat
        self.specs: dict[str, list[dict[str, Any]]] = {}
        self.pod_uids: dict[str, str] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.writes = 0
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="echo")
        self.threads = [
            threading.Thread(target=self._follow_assignments, daemon=True),
            threading.Thread(target=self._follow_pods, daemon=True),
            threading.Thread(target=self._beat, daemon=True),
        ]

    def __enter__(self) -> EchoAgents:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _report(self, name: str, heartbeat_only: bool = False) -> None:
        now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        with self.lock:
            shards = self.specs.get(name)
        if shards is None or name not in self.pod_uids:
            return
        status: dict[str, Any] = {"heartbeat": now}
        if not heartbeat_only:
            loaded = [
                {
                    "model": s["model"],
                    "shard": s["shard"],
                    "version": s["version"],
                    "bytes": s["bytes"],
                }
                for s in shards
            ]
            status |= {
                "loaded": loaded,
                "shardsLoaded": len(loaded),
                "bytesLoaded": sum(s["bytes"] for s in loaded),
            }
        with contextlib.suppress(ApiException):
            self.custom.patch_namespaced_custom_object_status(
                G, V, NS, "serverassignments", name, {"status": status}
            )
            self.writes += 1

    def _follow_assignments(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(Exception):
                for event in watch.Watch().stream(
                    self.custom.list_namespaced_custom_object, G, V, NS, "serverassignments",
                    timeout_seconds=60,
                ):  # fmt: skip
                    obj = event["object"]
                    name = obj["metadata"]["name"]
                    shards = list((obj.get("spec") or {}).get("shards") or [])
                    with self.lock:
                        if event["type"] == "DELETED":
                            self.specs.pop(name, None)
                            continue
                        changed = self.specs.get(name) != shards
                        self.specs[name] = shards
                    if changed:
                        self.pool.submit(self._report, name)

    def _follow_pods(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(Exception):
                for event in watch.Watch().stream(
                    self.core.list_namespaced_pod, NS, label_selector=POOL_LABEL, timeout_seconds=60
                ):
                    pod = event["object"]
                    name, uid = pod.metadata.name, pod.metadata.uid
                    with self.lock:
                        if event["type"] == "DELETED":
                            if self.pod_uids.get(name) == uid:
                                del self.pod_uids[name]
                            continue
                        new = self.pod_uids.get(name) != uid and bool(pod.spec.node_name)
                        if pod.spec.node_name:
                            self.pod_uids[name] = uid
                    if new:  # a new agent starts: it reports what it loaded
                        self.pool.submit(self._report, name)

    def _beat(self) -> None:
        while not self.stop.wait(self.heartbeat):
            with self.lock:
                names = sorted(self.specs)
            for name in names:
                self.pool.submit(self._report, name, True)


# --- observing the cluster --------------------------------------------------------------------


@dataclass
class Snapshot:
    """One list each of the pool, models, assignments and pods (raw JSON)."""

    pool: dict[str, Any]
    models: list[dict[str, Any]]
    assignments: list[dict[str, Any]]
    pods: list[dict[str, Any]]

    def condition(self, obj: dict[str, Any], kind: str = "Ready") -> bool:
        conds = (obj.get("status") or {}).get("conditions") or []
        return any(c["type"] == kind and c["status"] == "True" for c in conds)

    @property
    def pool_status(self) -> dict[str, Any]:
        return self.pool.get("status") or {}

    @property
    def plan(self) -> dict[str, Any]:
        return self.pool_status.get("plan") or {}

    def ready_pods(self) -> dict[str, dict[str, Any]]:
        return {
            p["metadata"]["name"]: p
            for p in self.pods
            if p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions") or []
            )
        }

    def converged(self) -> bool:
        """The same test as e2e/test_operator.py's ``converged``, from three lists instead of
        one GET per model (at 100 models that would be the load we are measuring)."""
        if not self.condition(self.pool) or not all(self.condition(m) for m in self.models):
            return False
        for a in self.assignments:
            want = {(s["model"], s["shard"], s["version"]) for s in a["spec"].get("shards", [])}
            loaded = (a.get("status") or {}).get("loaded") or []
            have = {(s["model"], s["shard"], s["version"]) for s in loaded}
            if want != have or any(s.get("drain") for s in a["spec"].get("shards", [])):
                return False
        return True

    def serving(self, reported_after: dict[str, str] | None = None) -> Counter[tuple[str, int]]:
        """Shard replicas loaded on Running, Ready pods; servers named in ``reported_after``
        count only once their agent's heartbeat is later than the given RFC 3339 time."""
        ready = self.ready_pods()
        count: Counter[tuple[str, int]] = Counter()
        for a in self.assignments:
            name = a["metadata"]["name"]
            status = a.get("status") or {}
            if name not in ready:
                continue
            if name in (reported_after or {}) and not _later(
                status.get("heartbeat"), (reported_after or {})[name]
            ):
                continue
            count.update((s["model"], s["shard"]) for s in status.get("loaded") or [])
        return count

    def short_replicas(self, reported_after: dict[str, str] | None = None) -> int:
        """Shard replicas missing against the models' replica counts."""
        serving = self.serving(reported_after)
        missing = 0
        for m in self.models:
            n = m["spec"]["shards"]["count"]
            for i in range(n):
                missing += max(0, m["spec"]["replicas"] - serving[(m["metadata"]["name"], i)])
        return missing


def _later(stamp: str | None, than: str) -> bool:
    if not stamp:
        return False
    return dt.datetime.fromisoformat(stamp) > dt.datetime.fromisoformat(than)


class Cluster:
    def __init__(self, kubeconfig: str) -> None:
        # The kubernetes client ships no type hints for its config module.
        self.api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.cache: Cache | None = None

    def _raw(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # Long: at 1,000 nodes a saturated API server answered a list in more than 30 s.
        resp = call(*args, _preload_content=False, _request_timeout=LIST_TIMEOUT, **kwargs)
        return json.loads(resp.data)

    def follow(self) -> None:
        """Watch the pool, models, assignments and pods (one informer each) so snapshots read
        memory: polling by lists every second loaded the API server the bench measures and, at
        1,000 nodes, timed out."""
        self.cache = Cache(self.api, [NS], kinds=(POOLS, MODELS, ASSIGNMENTS, PODS))
        self.cache.start()
        if not self.cache.wait_synced(LIST_TIMEOUT):
            raise TimeoutError(f"bench cache not synced: {self.cache.unsynced()}")

    def unfollow(self) -> None:
        if self.cache is not None:
            self.cache.stop()
            self.cache = None

    def snapshot(self) -> Snapshot:
        if self.cache is not None:
            c = self.cache
            return Snapshot(
                c.store("serverpools").get(NS, POOL) or {},
                c.store("models").items(NS),
                c.store("serverassignments").items(NS),
                c.store("pods").items(NS),
            )
        pool = self._raw(self.custom.get_namespaced_custom_object, G, V, NS, "serverpools", POOL)
        models = self._raw(self.custom.list_namespaced_custom_object, G, V, NS, "models")
        assignments = self._raw(
            self.custom.list_namespaced_custom_object, G, V, NS, "serverassignments"
        )
        pods = self._raw(self.core.list_namespaced_pod, NS, label_selector=POOL_LABEL)
        return Snapshot(pool, models["items"], assignments["items"], pods["items"])

    def create(self, doc: dict[str, Any]) -> None:
        plural = doc["kind"].lower() + "s"
        self.custom.create_namespaced_custom_object(G, V, NS, plural, doc)

    def install_crds(self, kubeconfig: str) -> None:
        files = sorted(str(p) for p in (control.REPO / "crds").glob("*.yaml"))
        args = [a for f in files for a in ("-f", f)]
        kubectl = str(build.find_binary("kubectl"))
        env = {**os.environ, "KUBECONFIG": kubeconfig}
        for cmd in (
            ["apply", "--server-side", "--force-conflicts", *args],
            ["wait", "--for=condition=Established", "--timeout=60s", *args],
        ):
            subprocess.run([kubectl, *cmd], env=env, check=True, stdout=subprocess.DEVNULL)

    def fresh_namespace(self) -> None:
        fresh_namespace(self.core, NS, timeout=300)

    def create_nodes(self, count: int) -> list[str]:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump(fleet_doc(count), f)
            f.flush()
            nodes = control.load_fleet(Path(f.name))

        def create(node: dict[str, Any]) -> None:
            try:
                # A Node as a dict: the client serialises it as is (kwok needs the status).
                self.core.create_node(node, _request_timeout=LIST_TIMEOUT)  # type: ignore[arg-type]
            except ApiException as err:
                if err.status != 409:
                    raise

        with ThreadPoolExecutor(8) as pool:  # 1,000 serial creates took 473 s
            list(pool.map(create, nodes))
        names = [n["metadata"]["name"] for n in nodes]
        wait(f"{count} nodes Ready", lambda: self._ready_nodes() >= set(names), 900, interval=5)
        return names

    def _ready_nodes(self) -> set[str]:
        try:
            body = self._raw(self.core.list_node)
        except Exception as err:  # a read timeout under load (urllib3's, not OSError): again
            log.warning("listing nodes failed: %s", err)
            return set()
        return {
            n["metadata"]["name"]
            for n in body["items"]
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions") or []
            )
        }

    def delete_nodes(self, names: list[str]) -> None:
        for name in names:
            with contextlib.suppress(ApiException):
                self.core.delete_node(name)


def wait(what: str, probe: Callable[[], object], timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- the phases -------------------------------------------------------------------------------


@dataclass
class Results:
    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, value: str) -> None:
        self.rows.append((name, value))
        print(f"  {name}: {value}", file=sys.stderr, flush=True)

    def table(self) -> str:
        width = max(len(n) for n, _ in self.rows)
        lines = [f"| {'measure':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
        lines += [f"| {n:<{width}} | {v} |" for n, v in self.rows]
        return "\n".join(lines)


class Phase:
    """Polls snapshots until ``done`` holds, noting when each milestone first held."""

    def __init__(self, cluster: Cluster, watched: Watched, interval: float) -> None:
        self.cluster = cluster
        self.watched = watched
        self.interval = interval
        self.polls = 0
        self.poll_seconds = 0.0

    def run(
        self,
        name: str,
        start: float,
        done: Callable[[Snapshot], bool],
        milestones: dict[str, Callable[[Snapshot], bool]],
        timeout: float,
    ) -> tuple[float, dict[str, float], Snapshot]:
        seen: dict[str, float] = {}
        last_print = 0.0
        while True:
            t = time.monotonic()
            try:
                snap = self.cluster.snapshot()
            except Exception as err:  # an overloaded API server (timeouts): note, poll again
                log.warning("%s: snapshot failed: %s", name, err)
                time.sleep(self.interval)
                continue
            self.polls += 1
            self.poll_seconds += time.monotonic() - t
            self.watched.sample()
            elapsed = t - start
            for label, probe in milestones.items():
                if label not in seen and probe(snap):
                    seen[label] = elapsed
            if done(snap):
                return elapsed, seen, snap
            if elapsed > timeout:
                raise TimeoutError(f"{name}: not done after {timeout:.0f}s; last {progress(snap)}")
            if t - last_print > 10:
                last_print = t
                print(f"  [{name} {elapsed:6.1f}s] {progress(snap)}", file=sys.stderr, flush=True)
            time.sleep(max(0.0, self.interval - (time.monotonic() - t)))


def replaced(
    snap: Snapshot, victims: dict[str, str], test: Callable[[dict[str, Any]], bool]
) -> bool:
    """Whether every lost pod (name -> its old UID) exists again under a new UID and passes
    ``test``."""
    pods = {p["metadata"]["name"]: p for p in snap.pods}
    return all(
        name in pods and pods[name]["metadata"]["uid"] != uid and test(pods[name])
        for name, uid in victims.items()
    )


def progress(snap: Snapshot) -> str:
    st = snap.pool_status
    loaded = sum(len((a.get("status") or {}).get("loaded") or []) for a in snap.assignments)
    wanted = sum(len(a["spec"].get("shards", [])) for a in snap.assignments)
    ready_models = sum(1 for m in snap.models if snap.condition(m))
    return (
        f"servers wanted {st.get('serversWanted')} ready {st.get('serversReady')}, pods "
        f"{len(snap.pods)} ({len(snap.ready_pods())} ready), replicas loaded {loaded}/{wanted}, "
        f"models Ready {ready_models}/{len(snap.models)}"
    )


def all_pods_running(snap: Snapshot) -> bool:
    wanted = snap.pool_status.get("serversWanted") or 0
    return bool(snap.plan) and wanted > 0 and len(snap.ready_pods()) >= wanted


def cpu_delta(a: Usage, b: Usage) -> dict[str, float]:
    return {k: b.cpu.get(k, 0.0) - a.cpu.get(k, 0.0) for k in b.cpu}


def fmt_cpu(delta: dict[str, float], seconds: float) -> str:
    return ", ".join(f"{k} {v:.1f}s" for k, v in delta.items()) + f" (wall {seconds:.1f}s)"


@dataclass(frozen=True)
class OperatorCounts:
    verbs: dict[str, int]
    passes: float
    wakes: dict[str, int] = field(default_factory=dict)


def load() -> str:
    """The load average, as `uptime` shows it: the machine is shared, so every number says how
    busy it was."""
    return "load " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Bench:
    scale: Scale
    seed: int
    interval: float
    cluster: Cluster
    log_dir: Path
    results: Results = field(default_factory=Results)
    echo_heartbeat: float = 0.0
    """> 0: EchoAgents with this heartbeat instead of one agent process per server."""
    sim_heartbeat: float = 0.0
    """> 0: the fleet simulator (one process, the agent's loop per server) with this heartbeat."""
    idle_seconds: float = 10.0
    """Length of the converged-idle window (the pool workers' resync runs every 60 s)."""
    metrics_port: int = field(default_factory=free_port)

    def requests(self) -> OperatorCounts:
        """The operator's own counters: API requests by verb, and pool passes."""
        try:
            text = urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10
            ).read()
        except OSError:
            return OperatorCounts({}, 0.0, {})
        verbs: Counter[str] = Counter()
        wakes: Counter[str] = Counter()
        passes = 0.0
        for line in text.decode().splitlines():
            if line.startswith("ekko_api_requests_total{"):
                labels, _, value = line.partition("} ")
                verb = labels.split('verb="', 1)[1].split('"', 1)[0]
                verbs[verb] += int(float(value))
            elif line.startswith("ekko_pool_passes_total{"):
                passes += float(line.rpartition(" ")[2])
            elif line.startswith("ekko_pool_wakeups_total{"):
                labels, _, value = line.partition("} ")
                wakes[labels.split('kind="', 1)[1].split('"', 1)[0]] += int(float(value))
        return OperatorCounts(dict(verbs), passes, dict(wakes))

    def add_requests(self, label: str, a: OperatorCounts, b: OperatorCounts) -> None:
        """API requests the operator made between two readings, and per pass."""
        passes = b.passes - a.passes
        delta = {
            v: b.verbs.get(v, 0) - a.verbs.get(v, 0) for v in sorted(set(a.verbs) | set(b.verbs))
        }
        text = ", ".join(f"{v} {n}" for v, n in delta.items() if n) or "none"
        per_pass = sum(n for v, n in delta.items() if v != "watch") / passes if passes else 0.0
        wakes = {k: b.wakes.get(k, 0) - a.wakes.get(k, 0) for k in sorted(b.wakes)}
        woke = ", ".join(f"{k} {n}" for k, n in wakes.items() if n) or "none"
        self.results.add(
            f"{label}: operator API requests / passes",
            f"{text}; {passes:.0f} passes, {per_pass:.1f} non-watch requests per pass; "
            f"woken by {woke}",
        )

    def run(self) -> None:
        scale, cluster, r = self.scale, self.cluster, self.results
        cluster.install_crds(str(control.kubeconfig_path()))
        cluster.fresh_namespace()
        t = time.monotonic()
        nodes = cluster.create_nodes(scale.nodes)
        r.add("nodes created and Ready", f"{len(nodes)} in {time.monotonic() - t:.1f}s")
        pids = {
            name: pid
            for name in ("kube-apiserver", "etcd")
            if (pid := control.running(name)) is not None
        }
        try:
            cluster.follow()
            agents: EchoAgents | AgentFleet | SimFleetProcess
            if self.sim_heartbeat > 0:
                agents = SimFleetProcess(
                    str(control.kubeconfig_path()),
                    NS,
                    heartbeat_seconds=self.sim_heartbeat,
                    log_dir=self.log_dir,
                )
            elif self.echo_heartbeat > 0:
                agents = EchoAgents(str(control.kubeconfig_path()), self.echo_heartbeat)
            else:
                agents = AgentFleet(
                    str(control.kubeconfig_path()), NS, fault_injection=False, log_dir=self.log_dir
                )
            with (
                agents as fleet,
                OperatorProcess(
                    str(control.kubeconfig_path()),
                    NS,
                    ("--metrics-port", str(self.metrics_port), "--metrics-address", "127.0.0.1"),
                ) as operator,
            ):
                assert operator.proc is not None
                sim = {"fleet-sim": fleet.pid} if isinstance(fleet, SimFleetProcess) else {}
                watched = Watched(
                    {"operator": operator.proc.pid, **pids, **sim},
                    fleet if isinstance(fleet, AgentFleet) else None,
                )
                try:
                    self.phases(watched, nodes)
                except BaseException:
                    print(operator.logs()[-4000:], file=sys.stderr)
                    if isinstance(fleet, SimFleetProcess):
                        print(fleet.logs()[-2000:], file=sys.stderr)
                    raise
                finally:
                    print(f"operator logs: {operator.log_dir}", file=sys.stderr)
        finally:
            cluster.unfollow()
            cluster.delete_nodes(nodes)
            with contextlib.suppress(ApiException):
                cluster.core.delete_namespace(NS)

    def phases(self, watched: Watched, nodes: list[str]) -> None:
        scale, cluster, r = self.scale, self.cluster, self.results
        models = model_manifests(scale, self.seed)
        replicas = sum(m["spec"]["shards"]["count"] * m["spec"]["replicas"] for m in models)
        shard_bytes = sum(
            m["spec"]["shards"]["count"]
            * m["spec"]["replicas"]
            * int(m["spec"]["shards"]["size"][:-2])
            * MIB
            for m in models
        )
        usable = POOL_MEMORY_GIB * GIB * (1 - HEADROOM)
        memory_bound = math.ceil(shard_bytes / usable)
        r.add(
            "workload",
            f"{len(models)} models, {replicas} shard replicas, {shard_bytes / GIB:.0f} GiB; "
            f"memory bound {memory_bound} servers of {POOL_MEMORY_GIB} GiB",
        )
        phase = Phase(cluster, watched, self.interval)
        first = watched.sample()
        time.sleep(5)  # the operator's own start-up (imports, kopf's first lists) is not idling
        idle0 = watched.sample()
        time.sleep(5)
        idle1 = watched.sample()
        r.add(
            "idle before apply (5 s, no pool)",
            fmt_cpu(cpu_delta(idle0, idle1), idle1.at - idle0.at),
        )

        # 1. apply -> all loaded
        start_usage = watched.sample()
        counts = self.requests()
        t0 = time.monotonic()
        cluster.create(pool_manifest(max(2 * scale.servers, 20), scale.solver_time_limit))
        with ThreadPoolExecutor(8) as creating:  # 306 serial creates took 150 s at 1,000 nodes
            list(creating.map(cluster.create, models))
        applied = time.monotonic() - t0
        total, seen, snap = phase.run(
            "apply",
            t0,
            lambda s: s.converged() and s.short_replicas() == 0,
            {
                "plan computed": lambda s: bool(s.plan.get("computedAt")),
                # The first plan may cover only the models created before its debounce ran
                # out: the whole workload's plan is the first whose bound reaches its memory's.
                "plan of every model in status.plan": lambda s: (
                    (s.plan.get("lowerBound") or 0) >= memory_bound
                ),
                "every model's status placed (written after the plan's writes)": lambda s: (
                    len(s.models) == len(models)
                    and all(
                        (m.get("status") or {}).get("replicasPlaced", -1)
                        >= (m.get("status") or {}).get("replicasWanted", 1)
                        > 0
                        for m in s.models
                    )
                ),
                "every server pod Running and Ready": all_pods_running,
                "every agent reporting": lambda s: (
                    bool(s.plan)
                    and len(s.assignments) >= (s.pool_status.get("serversWanted") or 1)
                    and all((a.get("status") or {}).get("heartbeat") for a in s.assignments)
                ),
            },
            scale.timeout,
        )
        end_usage = watched.sample()
        plan = snap.plan
        r.add("apply: objects created", f"{1 + len(models)} in {applied:.1f}s")
        for label, at in seen.items():
            r.add(f"apply: {label}", f"{at:.1f}s")
        r.add("apply: every replica loaded (converged)", f"{total:.1f}s")
        r.add(
            "apply: plan",
            f"{plan.get('status')}, solveSeconds {plan.get('solveSeconds')}, servers "
            f"{plan.get('serversUsed')} vs lower bound {plan.get('lowerBound')} "
            f"(gap {plan.get('gapPercent')}%)",
        )
        r.add(
            "apply: CPU", fmt_cpu(cpu_delta(start_usage, end_usage), end_usage.at - start_usage.at)
        )
        self.add_requests("apply", counts, self.requests())
        r.add("apply: machine", load())
        time.sleep(3)
        idle0 = watched.sample()
        counts = self.requests()
        time.sleep(self.idle_seconds)
        idle1 = watched.sample()
        window = f"converged, idle ({self.idle_seconds:.0f} s)"
        r.add(window, fmt_cpu(cpu_delta(idle0, idle1), idle1.at - idle0.at))
        self.add_requests(window, counts, self.requests())
        r.add("converged, idle: machine", load())

        # 2. a lost node
        snap = cluster.snapshot()
        on_node = Counter(p["spec"].get("nodeName") for p in snap.pods if p["spec"].get("nodeName"))
        victim, hosted = on_node.most_common(1)[0]
        victims = {
            p["metadata"]["name"]: p["metadata"]["uid"]
            for p in snap.pods
            if p["spec"].get("nodeName") == victim
        }
        lost_replicas = sum(
            len((a.get("status") or {}).get("loaded") or [])
            for a in snap.assignments
            if a["metadata"]["name"] in victims
        )
        before = watched.sample()
        counts = self.requests()
        stamp = dt.datetime.now(dt.UTC).isoformat()
        t0 = time.monotonic()
        cluster.core.delete_node(victim)
        for pod in victims:
            with contextlib.suppress(ApiException):
                cluster.core.delete_namespaced_pod(pod, NS, grace_period_seconds=0)
        after_delete = {name: stamp for name in victims}

        def recovered(s: Snapshot) -> bool:
            pods = {p["metadata"]["name"]: p for p in s.pods}
            fresh = all(
                name in pods
                and pods[name]["metadata"]["uid"] != uid
                and pods[name]["spec"].get("nodeName") not in (None, victim)
                for name, uid in victims.items()
            )
            return fresh and s.converged() and s.short_replicas(after_delete) == 0

        total, seen, snap = phase.run(
            "node loss",
            t0,
            recovered,
            {
                "pool not Ready": lambda s: not s.condition(s.pool),
                # Where the time goes, step by step (each is the first poll that saw it).
                "lost pods recreated": lambda s: replaced(s, victims, lambda p: True),
                "lost pods recreated and bound": lambda s: replaced(
                    s, victims, lambda p: bool(p["spec"].get("nodeName"))
                ),
                "lost pods Running and Ready": lambda s: replaced(
                    s, victims, lambda p: p["metadata"]["name"] in s.ready_pods()
                ),
                "new pods' agents reported": lambda s: all(
                    (a.get("status") or {}).get("podUid")
                    == next(
                        (p["metadata"]["uid"] for p in s.pods if p["metadata"]["name"] == n), None
                    )
                    for a in s.assignments
                    if (n := a["metadata"]["name"]) in victims
                ),
                "every model Ready": lambda s: all(s.condition(m) for m in s.models),
            },
            scale.timeout,
        )
        after = watched.sample()
        r.add(
            "node loss: lost",
            f"node {victim} with {hosted} server pods, {lost_replicas} shard replicas",
        )
        for label, at in seen.items():
            r.add(f"node loss: {label}", f"{at:.1f}s")
        r.add("node loss: every shard back to its replicas, pool Ready", f"{total:.1f}s")
        r.add("node loss: CPU", fmt_cpu(cpu_delta(before, after), after.at - before.at))
        self.add_requests("node loss", counts, self.requests())
        r.add("node loss: machine", load())
        if victim in nodes:  # a reused cluster's own nodes may hold server pods too
            nodes.remove(victim)

        # 4. a re-plan
        time.sleep(3)
        snap = cluster.snapshot()
        before_plan = snap.plan.get("computedAt")
        target = next(m for m in snap.models if m["spec"]["replicas"] == 2)
        name, reps = target["metadata"]["name"], target["spec"]["replicas"] + 1
        shards = target["spec"]["shards"]
        before = watched.sample()
        counts = self.requests()
        t0 = time.monotonic()
        cluster.custom.patch_namespaced_custom_object(
            G, V, NS, "models", name, {"spec": {"replicas": reps}}
        )

        def replanned(s: Snapshot) -> bool:
            model = next(m for m in s.models if m["metadata"]["name"] == name)
            return (
                s.plan.get("computedAt") != before_plan
                and (model.get("status") or {}).get("ready")
                == f"{reps * shards['count']}/{reps * shards['count']}"
                and s.converged()
                and s.short_replicas() == 0
            )

        total, seen, snap = phase.run(
            "re-plan",
            t0,
            replanned,
            {"new plan computed": lambda s: s.plan.get("computedAt") != before_plan},
            scale.timeout,
        )
        after = watched.sample()
        plan = snap.plan
        r.add(
            "re-plan: change",
            f"{name} replicas {reps - 1} -> {reps} ({shards['count']} shards of {shards['size']})",
        )
        for label, at in seen.items():
            r.add(f"re-plan: {label}", f"{at:.1f}s")
        r.add("re-plan: converged", f"{total:.1f}s")
        r.add(
            "re-plan: plan",
            f"{plan.get('status')}, solveSeconds {plan.get('solveSeconds')}, servers "
            f"{plan.get('serversUsed')} vs lower bound {plan.get('lowerBound')}, moved {plan.get('replicasMoved')} replicas / "
            f"{(plan.get('bytesMoved') or 0) / GIB:.1f} GiB",
        )
        r.add("re-plan: CPU", fmt_cpu(cpu_delta(before, after), after.at - before.at))
        self.add_requests("re-plan", counts, self.requests())
        r.add("re-plan: machine", load())

        # 3. totals over the run
        peaks = watched.peaks()
        for proc in watched.pids:
            # The API server and etcd may have run before this benchmark (a reused cluster): CPU
            # counts from the first sample; VmHWM is over the process's whole life.
            r.add(
                f"{proc}: CPU over the run / peak RSS (VmHWM)",
                f"{after.cpu[proc] - first.cpu[proc]:.1f}s / {(peaks[proc] or 0) / 1024:.0f} MiB",
            )
        if watched.fleet is not None:
            r.add(
                "agents: CPU over the run / peak total RSS",
                f"{after.cpu['agents']:.1f}s / {watched.agent_peak_rss_kib / 1024:.0f} MiB "
                f"({watched.agent_peak_count} processes)",
            )
            r.add(
                "agents restarted by the bench (port taken before bind)",
                str(watched.agent_restarts),
            )
        r.add(
            "polling by the bench",
            f"{phase.polls} snapshots, {phase.poll_seconds:.1f}s wall "
            + ("(from its watch cache)" if self.cluster.cache is not None else "(4 lists each)"),
        )


@contextlib.contextmanager
def private_cluster() -> Iterator[bool]:
    """The cluster of EKKO_CLUSTER_DIR: reuse a running one, or start one and stop it after."""
    if not os.environ.get("EKKO_CLUSTER_DIR"):
        raise SystemExit(
            "bench.reconcile: set EKKO_CLUSTER_DIR (e.g. /tmp/ekko-bench) so the benchmark runs on "
            "its own control plane, not the one other work uses"
        )
    if not build.is_built(build.component("kubernetes")):
        raise SystemExit(
            "bench.reconcile: build the control plane first: python -m e2e.cluster build"
        )
    started = control.ensure_up(Path(os.devnull), quiet=True)
    try:
        yield started
    finally:
        if started:
            control.down(quiet=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 nodes, ~200 replicas (minutes)")
    ap.add_argument("--nodes", type=int, help="kwok nodes to create")
    ap.add_argument("--servers", type=int, help="servers the workload is sized to need")
    ap.add_argument("--replicas", type=int, help="shard replicas over all models")
    ap.add_argument("--solver-time-limit", help="the pool's placement.solverTimeLimit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--echo-agents",
        type=float,
        default=0.0,
        metavar="HEARTBEAT_SECONDS",
        help="no agent processes: one thread reports every assignment loaded and heartbeats "
        "(for sizes whose agents do not fit the machine; measures the operator, not the agents)",
    )
    ap.add_argument(
        "--sim-agents",
        type=float,
        default=0.0,
        metavar="HEARTBEAT_SECONDS",
        help="run the agents in the fleet simulator (python -m ekko.agent.fleet: one process, the "
        "agent's own control loop per server, sim engine) with this heartbeat",
    )
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between snapshots")
    ap.add_argument(
        "--idle-seconds",
        type=float,
        default=10.0,
        help="length of the converged-idle CPU window (say 130: two of the workers' 60 s resyncs)",
    )
    ap.add_argument("--log-dir", type=Path, help="keep the agents' logs here (default: a temp dir)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    # Run in the background, a benchmark is stopped with SIGTERM: exit through the finally blocks
    # so the operator, the agents, the nodes and the namespace are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = QUICK if args.quick else FULL
    scale = Scale(
        nodes=args.nodes or base.nodes,
        servers=args.servers or base.servers,
        replicas=args.replicas or base.replicas,
        solver_time_limit=args.solver_time_limit or base.solver_time_limit,
        timeout=base.timeout,
    )
    print(f"# scale {scale}, seed {args.seed}, {os.cpu_count()} CPUs", file=sys.stderr)
    with private_cluster() as started:
        cluster = Cluster(str(control.kubeconfig_path()))
        log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="ekko-bench-agents-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        print(f"# agent logs in {log_dir}", file=sys.stderr)
        bench = Bench(
            scale,
            args.seed,
            args.interval,
            cluster,
            log_dir,
            echo_heartbeat=args.echo_agents,
            sim_heartbeat=args.sim_agents,
            idle_seconds=args.idle_seconds,
        )
        try:
            bench.run()
        finally:
            cluster.api.close()
            if bench.results.rows:  # what was measured before a failure is still worth seeing
                print(bench.results.table(), flush=True)
        if started:
            print("# stopping the cluster this run started", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
