"""The light fleet simulator: many agents' control loops in one process (issue 18).

    python -m ekko.agent.fleet --namespace NS [--kubeconfig K] [--heartbeat-seconds 10]

One agent process per server takes ~64 MiB and ~0.8 CPU-s to start, so a scale run of 1,000
servers does not fit a small machine. This runs, in one process and one asyncio loop, one
:class:`~ekko.agent.runtime.Agent` per server pod of the namespace — the same object, status
writer, reconcile loop, heartbeat and orphan check as ``python -m ekko.agent`` (``agent_tasks``
and ``AssignmentEvents`` of :mod:`ekko.agent.main`), with the sim engine. What differs is only
the plumbing around them:

* **Watches are shared.** One informer per kind for the namespace (:class:`ekko.kube.fleetio
  .FleetKube`): a ServerAssignment event goes to its server's agent, a Model event to every agent,
  so the API server serves three watches instead of two per agent.
* **The fleet is the kubelet.** An agent starts when its server pod is bound to a node (with the
  pod's UID, as the downward API gives it) and stops when the pod is deleted or replaced; its
  engine's memory dies with it, as a container's would.
* **No HTTP server, no update node.** Nothing serves /infer or /metrics per agent (the fleet's
  agents share one metrics object and log a summary); update duties are ignored.
* **Heartbeats are spread** over the period by the pod's name, not all at the same instant.
* **Status patches share a thread pool** of ``--writers`` threads (a real agent has its own).
* **Readiness, one way.** Every ``probe_seconds`` the fleet marks Ready again the pod of a ready
  agent that is marked not Ready (the node controller does that when kwok's node leases lag on a
  loaded machine, and kwok never undoes it; a kubelet's passing probe would).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from ekko.agent.engines import SimEngine
from ekko.agent.main import DEFAULT_SIM_BANDWIDTH, AssignmentEvents, agent_tasks
from ekko.agent.metrics import AgentMetrics
from ekko.agent.runtime import Agent, StatusWriter
from ekko.api.units import UnitError, parse_quantity
from ekko.kube.errors import KubeError
from ekko.kube.fleetio import FleetKube

log = logging.getLogger("ekko.agent.fleet")

Obj = dict[str, Any]
PodAction = Literal["start", "stop", "replace", "none"]
PatchBy = Callable[[str, dict[str, Any]], None]
"""(server name, status fields) -> None; blocking, run in the fleet's writer threads."""


def pod_action(running_uid: str | None, event: str, pod: Obj | None) -> PodAction:
    """What a pod event means for the agent of that pod's name (pure).

    ``running_uid`` is the UID the running agent was started with (None: no agent runs). An agent
    runs while its pod exists, is bound to a node and is not being deleted; a pod re-created
    under the same name (another UID) gets a new agent."""
    meta = (pod or {}).get("metadata") or {}
    uid = str(meta.get("uid") or "")
    alive = (
        event != "DELETED"
        and pod is not None
        and not meta.get("deletionTimestamp")
        and bool((pod.get("spec") or {}).get("nodeName"))
    )
    if running_uid is None:
        return "start" if alive else "none"
    if event == "DELETED" or meta.get("deletionTimestamp"):
        return "stop" if uid in ("", running_uid) else "none"  # another pod of the name: not ours
    if alive and uid and uid != running_uid:
        return "replace"
    return "none"


def needs_ready(pod: Obj | None, uid: str) -> bool:
    """Whether this agent's pod (``uid``) is marked not Ready while it runs (pure): what a
    kubelet's passing readiness probe would undo."""
    if pod is None:
        return False
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp") or str(meta.get("uid") or "") != uid:
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") != "True" for c in conditions)


def heartbeat_offset(name: str, seconds: float) -> float:
    """When, within the first period, this server's first heartbeat goes (stable per name), so
    the fleet's heartbeats reach the API server spread over the period, not in bursts."""
    return (zlib.crc32(name.encode()) % 10_000) / 10_000 * seconds


@dataclass(frozen=True)
class FleetConfig:
    namespace: str
    kubeconfig: str | None = None
    sim_bandwidth: float = float(parse_quantity(DEFAULT_SIM_BANDWIDTH))
    heartbeat_seconds: float = 10.0
    max_concurrent_loads: int = 4
    unload_grace: float = 2.0
    writers: int = 16
    """Status patches in flight at once over the whole fleet."""
    probe_seconds: float = 5.0
    """How often pods of ready agents are checked for a lost Ready condition."""


@dataclass
class SimAgent:
    """One simulated server: the agent, its pod's UID and its running loops."""

    name: str
    uid: str
    agent: Agent
    events: AssignmentEvents
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    started_at: float = 0.0


class Fleet:
    """The agents of one namespace's server pods, on the running loop.

    Fed by :meth:`on_event` (on the loop) with the cache's events; ``patch`` writes a server's
    status (blocking; called in writer threads); ``pod_uid`` reads the UID of the pod that has a
    name now (the orphan check), ``current`` the cached object of a kind."""

    def __init__(
        self,
        config: FleetConfig,
        patch: PatchBy,
        current: Callable[[str, str], Obj | None],
        models: Callable[[], list[Obj]],
        mark_ready: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self._patch = patch
        self._current = current
        self._models = models
        self._mark_ready = mark_ready
        self.readied = 0
        self.metrics = AgentMetrics()
        """Shared by every agent: counters add up over the fleet; gauges are the last writer's."""
        self.agents: dict[str, SimAgent] = {}
        self.started = 0
        self.stopped = 0
        self.died = 0
        self.writes = 0
        self.write_errors = 0
        self._executor = ThreadPoolExecutor(config.writers, thread_name_prefix="fleet-write")

    # -- events (on the loop) -----------------------------------------------------------------

    def on_event(self, kind: str, event: str, old: Obj | None, new: Obj | None) -> None:
        obj = new if new is not None else old
        if obj is None:
            return
        if kind == "pods":
            self._on_pod(event, obj)
        elif kind == "serverassignments":
            sim = self.agents.get(_name(obj))
            if sim is not None:
                sim.events.on_assignment(event, obj)
        elif kind == "models":
            observed = time.monotonic()
            for sim in list(self.agents.values()):
                sim.agent.on_model(event, obj, observed)

    def _on_pod(self, event: str, pod: Obj) -> None:
        name = _name(pod)
        running = self.agents.get(name)
        action = pod_action(running.uid if running else None, event, pod)
        if action in ("stop", "replace"):
            self.stop_agent(name)
        if action in ("start", "replace"):
            self.start_agent(name, str((pod.get("metadata") or {}).get("uid") or ""))

    # -- agents -------------------------------------------------------------------------------

    def start_agent(self, name: str, uid: str) -> SimAgent:
        loop = asyncio.get_running_loop()

        async def patch(body: dict[str, Any]) -> None:
            try:
                await loop.run_in_executor(self._executor, self._patch, name, body)
            except KubeError:
                self.write_errors += 1
                raise
            self.writes += 1

        writer = StatusWriter(patch, self.metrics, pod_uid=uid)
        agent = Agent(
            SimEngine(bandwidth=self.config.sim_bandwidth),
            writer,
            self.metrics,
            max_concurrent_loads=self.config.max_concurrent_loads,
            unload_grace=self.config.unload_grace,
        )

        async def current_uid() -> str | None:
            pod = self._current("pods", name)
            return None if pod is None else str((pod.get("metadata") or {}).get("uid") or "")

        sim = SimAgent(name, uid, agent, AssignmentEvents(agent, current_uid))
        # What a starting agent's first lists would return: the Models, then its assignment.
        agent.on_models_relist(self._models(), time.monotonic())
        assignment = self._current("serverassignments", name)
        if assignment is not None:
            sim.events.on_assignment("ADDED", assignment)
        sim.tasks = agent_tasks(
            agent,
            self.config.heartbeat_seconds,
            heartbeat_offset(name, self.config.heartbeat_seconds),
            name,
        )
        for task in sim.tasks:
            task.add_done_callback(self._died)
        sim.started_at = time.monotonic()
        self.agents[name] = sim
        self.started += 1
        log.debug("started agent %s (pod %s)", name, uid)
        return sim

    def _died(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.died += 1
            log.error("agent task %s died: %r", task.get_name(), task.exception())

    def stop_agent(self, name: str) -> None:
        sim = self.agents.pop(name, None)
        if sim is None:
            return
        for task in sim.tasks:
            task.cancel()
        self.stopped += 1
        log.debug("stopped agent %s (pod %s)", name, sim.uid)

    async def close(self) -> None:
        tasks = [t for sim in self.agents.values() for t in sim.tasks]
        for name in list(self.agents):
            self.stop_agent(name)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def probe(self) -> None:
        """Mark Ready again the pods of ready agents that lost their Ready condition."""
        if self._mark_ready is None:
            return
        loop = asyncio.get_running_loop()
        mark = self._mark_ready

        async def ready(name: str) -> None:
            try:
                await loop.run_in_executor(self._executor, mark, name)
                self.readied += 1
            except KubeError as err:
                log.warning("could not mark pod %s Ready: %s", name, err)

        await asyncio.gather(
            *(
                ready(sim.name)
                for sim in list(self.agents.values())
                if sim.agent.ready and needs_ready(self._current("pods", sim.name), sim.uid)
            )
        )

    # -- reporting ----------------------------------------------------------------------------

    def summary(self) -> str:
        ready = sum(1 for s in self.agents.values() if s.agent.seen and s.agent.ready)
        loaded = sum(len(s.agent.loaded) for s in self.agents.values())
        return (
            f"{len(self.agents)} agents ({ready} ready), {loaded} replicas loaded; started "
            f"{self.started}, stopped {self.stopped}, died {self.died}; status writes "
            f"{self.writes}, failed {self.write_errors}; pods marked Ready again {self.readied}"
        )


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


async def run(config: FleetConfig, summary_seconds: float = 30.0) -> int:
    try:
        kube = FleetKube(config.namespace, config.kubeconfig, pool_size=config.writers + 4)
    except KubeError as err:
        log.error("%s", err)
        return 1
    loop = asyncio.get_running_loop()
    cache = kube.cache

    def current(kind: str, name: str) -> Obj | None:
        return cache.store(kind).get(config.namespace, name)

    fleet = Fleet(
        config,
        kube.patch_status,
        current,
        lambda: cache.store("models").items(config.namespace),
        kube.mark_pod_ready,
    )

    def listen(kind: str, event: str, old: Obj | None, new: Obj | None) -> None:
        if not loop.is_closed():  # the informer's thread: hand over to the loop
            loop.call_soon_threadsafe(fleet.on_event, kind, event, old, new)

    cache.listen(listen)
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    cache.start()
    log.info("fleet simulator for namespace %s started", config.namespace)
    try:
        last_summary = time.monotonic()
        while not stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), config.probe_seconds)
            await fleet.probe()
            if time.monotonic() - last_summary >= summary_seconds:
                last_summary = time.monotonic()
                log.info("%s", fleet.summary())
    finally:
        log.info("stopping: %s", fleet.summary())
        await fleet.close()
        await asyncio.to_thread(kube.close)
    return 0


def parse_args(argv: list[str] | None) -> tuple[FleetConfig, str]:
    parser = argparse.ArgumentParser(
        prog="python -m ekko.agent.fleet",
        description="Run one simulated agent (sim engine) per server pod of a namespace, all in "
        "this process: scale runs of the operator without one process per server.",
    )
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--kubeconfig", default=None)
    parser.add_argument("--sim-bandwidth", default=DEFAULT_SIM_BANDWIDTH)
    parser.add_argument("--heartbeat-seconds", type=float, default=10.0)
    parser.add_argument("--max-concurrent-loads", type=int, default=4)
    parser.add_argument("--unload-grace", type=float, default=2.0)
    parser.add_argument(
        "--writers", type=int, default=16, help="status patches in flight at once (default 16)"
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        bandwidth = float(parse_quantity(args.sim_bandwidth))
    except (ValueError, UnitError) as err:
        parser.error(str(err))
    if bandwidth <= 0 or args.heartbeat_seconds <= 0 or args.writers < 1:
        parser.error("--sim-bandwidth, --heartbeat-seconds and --writers must be positive")
    config = FleetConfig(
        namespace=args.namespace,
        kubeconfig=args.kubeconfig,
        sim_bandwidth=bandwidth,
        heartbeat_seconds=args.heartbeat_seconds,
        max_concurrent_loads=args.max_concurrent_loads,
        unload_grace=args.unload_grace,
        writers=args.writers,
    )
    return config, args.log_level


def main(argv: list[str] | None = None) -> int:
    config, level = parse_args(argv)
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # A thousand agents log every load; the fleet's own summary says what matters.
    logging.getLogger("ekko.agent").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("ekko.agent.fleet").setLevel(level.upper())
    try:
        return asyncio.run(run(config))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
