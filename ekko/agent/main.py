"""``ekko agent`` / ``python -m ekko.agent``: command line, wiring and lifetime of one agent."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ekko.agent.decide import Fault, FaultKey, parse_fault
from ekko.agent.engines import DEFAULT_ARTIFACT_ROOT, EmbeddingEngine, make_engine
from ekko.agent.metrics import AgentMetrics
from ekko.agent.runtime import Agent, StatusWriter, UpdatePlane, check_orphan
from ekko.agent.server import make_app
from ekko.api.units import UnitError, parse_quantity
from ekko.kube.agentio import AgentKube
from ekko.kube.errors import KubeError

log = logging.getLogger("ekko.agent")

DEFAULT_LISTEN = "127.0.0.1:9400"
DEFAULT_SIM_BANDWIDTH = "20Gi"
DEFAULT_UPDATE_LISTEN = "0.0.0.0:9500"


def advertised_update_url(listen: str, advertise: str, pod_ip: str | None) -> str:
    """The URL other pods pull updates from: --update-advertise, else the pod IP (downward API
    env POD_IP, else what the pod's hostname resolves to, as /etc/hosts maps it in a pod) with
    the listen port, else empty (the node then reports its loopback URL)."""
    if advertise:
        return advertise
    host, port = parse_listen(listen)
    if host not in ("0.0.0.0", "::"):
        return f"http://{host}:{port}"
    if not pod_ip:
        with contextlib.suppress(OSError):
            pod_ip = socket.gethostbyname(socket.gethostname())
    return f"http://{pod_ip}:{port}" if pod_ip else ""


@dataclass(frozen=True)
class Config:
    pod_name: str
    namespace: str
    kubeconfig: str | None
    host: str
    port: int
    engine: str
    sim_bandwidth: float
    heartbeat_seconds: float
    max_concurrent_loads: int
    enable_fault_injection: bool
    unload_grace: float = 2.0
    faults: tuple[tuple[FaultKey, Fault], ...] = ()
    update_listen: str = DEFAULT_UPDATE_LISTEN
    update_advertise: str = ""
    artifact_root: str = str(DEFAULT_ARTIFACT_ROOT)
    pod_uid: str = ""


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9400`` for IPv6) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen wants host:port, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_args(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        prog="ekko agent",
        description="Ekko data-plane agent: loads the shards its ServerAssignment lists and "
        "applies the Models' routing weights.",
    )
    parser.add_argument(
        "--pod-name",
        default=os.environ.get("POD_NAME"),
        help="server pod (and ServerAssignment) name [env POD_NAME]",
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE"),
        help="namespace of the pod [env POD_NAMESPACE]",
    )
    parser.add_argument(
        "--pod-uid",
        default=os.environ.get("POD_UID", ""),
        help="UID of the server pod, written into every status report [env POD_UID]",
    )
    parser.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config when present, else the"
        " pod's service account)",
    )
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN, help=f"HTTP address (default {DEFAULT_LISTEN})"
    )
    parser.add_argument("--engine", choices=("sim", "reference", "embedding"), default="reference")
    parser.add_argument(
        "--sim-bandwidth",
        default=DEFAULT_SIM_BANDWIDTH,
        help=f"load bandwidth of the sim engine, bytes/s as a quantity (default {DEFAULT_SIM_BANDWIDTH})",
    )
    parser.add_argument("--heartbeat-seconds", type=float, default=10.0)
    parser.add_argument(
        "--max-concurrent-loads", type=int, default=4, help="shards loaded at once (default 4)"
    )
    parser.add_argument(
        "--unload-grace",
        type=float,
        default=2.0,
        help="seconds a replica that left the assignment keeps serving before it is unloaded, "
        "so a hand edit the operator undoes never leaves a shard unserved (default 2)",
    )
    parser.add_argument(
        "--enable-fault-injection",
        action="store_true",
        help="serve POST/GET/DELETE /fault (tests and demos only)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="JSON",
        help='a fault active from the start, as /fault takes it: \'{"version": "v3", "errorRate": 0.2}\' '
        "(repeatable; needs --enable-fault-injection). A harness that starts agents after setting "
        "a fault passes it here, so a version is faulty wherever it is loaded.",
    )
    parser.add_argument(
        "--update-listen",
        default=DEFAULT_UPDATE_LISTEN,
        help="data-plane address of the update node, run when the assignment lists update duties "
        f"(default {DEFAULT_UPDATE_LISTEN}: reachable from other pods)",
    )
    parser.add_argument(
        "--update-advertise",
        default="",
        help="URL peers pull updates from (default http://$POD_IP:<port of --update-listen>)",
    )
    parser.add_argument(
        "--artifact-root",
        default=str(DEFAULT_ARTIFACT_ROOT),
        help="file:// artifacts are read only under this directory (default "
        f"{DEFAULT_ARTIFACT_ROOT})",
    )
    parser.add_argument("--log-level", default=os.environ.get("EKKO_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    if not args.pod_name or not args.namespace:
        parser.error("--pod-name and --namespace (or POD_NAME and POD_NAMESPACE) are required")
    try:
        host, port = parse_listen(args.listen)
        parse_listen(args.update_listen)
        bandwidth = float(parse_quantity(args.sim_bandwidth))
    except (ValueError, UnitError) as err:
        parser.error(str(err))
    if bandwidth <= 0:
        parser.error("--sim-bandwidth must be positive")
    if args.heartbeat_seconds <= 0:
        parser.error("--heartbeat-seconds must be positive")
    if args.max_concurrent_loads < 1:
        parser.error("--max-concurrent-loads must be at least 1")
    if not 0 <= args.unload_grace <= 3600:
        parser.error("--unload-grace must be between 0 and 3600 seconds")
    if args.fault and not args.enable_fault_injection:
        parser.error("--fault needs --enable-fault-injection")
    faults = []
    for text in args.fault:
        try:
            faults.append(parse_fault(json.loads(text)))
        except (ValueError, json.JSONDecodeError) as err:
            parser.error(f"--fault {text!r}: {err}")
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return Config(
        pod_name=args.pod_name,
        pod_uid=args.pod_uid,
        namespace=args.namespace,
        kubeconfig=args.kubeconfig,
        host=host,
        port=port,
        engine=args.engine,
        sim_bandwidth=bandwidth,
        heartbeat_seconds=args.heartbeat_seconds,
        max_concurrent_loads=args.max_concurrent_loads,
        unload_grace=args.unload_grace,
        enable_fault_injection=args.enable_fault_injection,
        faults=tuple(faults),
        update_listen=args.update_listen,
        artifact_root=args.artifact_root,
        update_advertise=advertised_update_url(
            args.update_listen, args.update_advertise, os.environ.get("POD_IP")
        ),
    )


async def _heartbeat(agent: Agent, seconds: float, first: float | None = None) -> None:
    """A heartbeat every ``seconds``, the first after ``first`` (default: one period), so a
    fleet of agents in one process can spread theirs over the period."""
    await asyncio.sleep(seconds if first is None else first)
    while True:
        agent.heartbeat()
        await asyncio.sleep(seconds)


class AssignmentEvents:
    """Hands assignment events to the agent (on its loop), first checking whether a report
    written by another pod's agent means this agent is the orphan (at most one check at once).

    ``current_uid`` reads the UID of the pod that has this agent's name now (None: none)."""

    def __init__(self, agent: Agent, current_uid: Callable[[], Awaitable[str | None]]) -> None:
        self.agent = agent
        self.current_uid = current_uid
        self._checking: asyncio.Future[None] | None = None

    def on_assignment(self, kind: str, obj: dict[str, Any]) -> None:  # on the loop
        reported = str((obj.get("status") or {}).get("podUid") or "")
        foreign = kind != "DELETED" and reported and reported != self.agent.writer.pod_uid
        idle = self._checking is None or self._checking.done()
        if foreign and idle:  # another pod's agent wrote it: are we the orphan?
            self._checking = asyncio.ensure_future(
                check_orphan(self.agent.writer, reported, self.current_uid)
            )
        self.agent.on_assignment(kind, obj)


def agent_tasks(
    agent: Agent, heartbeat_seconds: float, first_beat: float | None = None, name: str = ""
) -> list[asyncio.Task[None]]:
    """Start the loops of one agent: its status writer, its reconcile loop, its heartbeat."""
    suffix = f" {name}" if name else ""
    return [
        asyncio.create_task(agent.writer.run(), name=f"status-writer{suffix}"),
        asyncio.create_task(agent.run(), name=f"reconcile{suffix}"),
        asyncio.create_task(
            _heartbeat(agent, heartbeat_seconds, first_beat), name=f"heartbeat{suffix}"
        ),
    ]


def _start_watches(
    kube: AgentKube, agent: Agent, loop: asyncio.AbstractEventLoop, stop: threading.Event
) -> list[threading.Thread]:
    def call(fn: Any, *args: Any) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    events = AssignmentEvents(agent, lambda: asyncio.to_thread(kube.pod_uid))

    def on_assignment(kind: str, obj: dict[str, Any]) -> None:
        call(events.on_assignment, kind, obj)

    def on_assignments(items: list[dict[str, Any]]) -> None:
        if items:
            on_assignment("ADDED", items[0])
        else:
            call(agent.on_assignment_relist, items)

    def on_model(kind: str, obj: dict[str, Any]) -> None:
        call(agent.on_model, kind, obj, time.monotonic())  # observed now, in the watch thread

    def on_models(items: list[dict[str, Any]]) -> None:
        call(agent.on_models_relist, items, time.monotonic())

    threads = [
        threading.Thread(
            target=kube.watch_assignment,
            args=(
                on_assignments,
                on_assignment,
                stop,
            ),
            name="watch-assignment",
            daemon=True,
        ),
        threading.Thread(
            target=kube.watch_models,
            args=(on_models, on_model, stop),
            name="watch-models",
            daemon=True,
        ),
    ]
    for thread in threads:
        thread.start()
    return threads


async def run(config: Config) -> int:
    try:
        kube = AgentKube(config.namespace, config.pod_name, config.kubeconfig)
    except KubeError as err:
        log.error("%s", err)
        return 1
    loop = asyncio.get_running_loop()
    metrics = AgentMetrics()

    async def patch(body: dict[str, Any]) -> None:
        await asyncio.to_thread(kube.patch_status, body)

    writer = StatusWriter(patch, metrics, pod_uid=config.pod_uid)
    if not config.pod_uid:
        log.warning(
            "no POD_UID: reports carry no pod UID (the operator falls back to report times)"
        )
    engine = make_engine(
        config.engine,
        sim_bandwidth=config.sim_bandwidth,
        registry=metrics.registry,
        artifact_root=Path(config.artifact_root),
    )
    updates = UpdatePlane(
        config.pod_name,
        config.update_listen,
        config.update_advertise,
        metrics.registry,
        engine.store if isinstance(engine, EmbeddingEngine) else None,
    )
    agent = Agent(
        engine,
        writer,
        metrics,
        max_concurrent_loads=config.max_concurrent_loads,
        unload_grace=config.unload_grace,
        updates=updates,
    )
    agent.faults.update(config.faults)
    for key, size in (await agent.engine.inventory()).items():
        agent.loaded[key] = size

    runner = web.AppRunner(make_app(agent, config.enable_fault_injection), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.port).start()
    except OSError as err:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, err)
        await runner.cleanup()
        return 1

    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    stop_watches = threading.Event()
    tasks = agent_tasks(agent, config.heartbeat_seconds)
    _start_watches(kube, agent, loop, stop_watches)
    log.info(
        "started agent for ServerAssignment %s/%s (engine %s, listening on %s:%d)",
        config.namespace,
        config.pod_name,
        config.engine,
        config.host,
        config.port,
    )
    waiter = asyncio.create_task(stopped.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    code = 0
    for task in done:
        if task is not waiter and task.exception() is not None:
            log.error("task %s died: %r", task.get_name(), task.exception())
            code = 1
    log.info("stopping agent")
    stop_watches.set()
    for task in [waiter, *tasks]:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    await runner.cleanup()
    await updates.stop()
    # The watch threads are daemons blocked on a socket; they end with the process.
    return code


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        return asyncio.run(run(config))
    except KeyboardInterrupt:
        return 130
