"""CPU cost of one converged pool pass, in process, with the informer cache filled by hand.

    python -m bench.pass_cost                       # 1,000 nodes, ~600 servers, 10,000 replicas
    python -m bench.pass_cost --nodes 200 --servers 150 --replicas 2000
    python -m bench.pass_cost --profile 25          # cProfile of one pass, the top 25 lines

The reconcile benchmark's workload (``bench.reconcile.model_manifests``, same seed) is placed by
the first-fit-decreasing baseline; every server gets a Ready pod on a Ready node and an
assignment whose agent report says everything is loaded (its pod's UID, a fresh heartbeat). The
real ``PoolWorker.run_pass`` then runs against the real ``Fleet`` reading that cache; writes are
counted instead of sent (a converged pass must make none). It prints the CPU seconds of the
first pass (statuses written) and of converged passes: after nothing changed (the 60 s resync),
and after one agent's report changed (an assignment event).

No cluster and no API server: this measures the operator's own work per pass, which the
cluster bench's converged-idle window sees as CPU-seconds per second.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import io
import json
import pstats
import statistics
import sys
import time
from typing import Any

from kubernetes import client

from bench.reconcile import POOL, Scale, model_manifests, pool_manifest
from ekko.api.resources import Model, ServerPool
from ekko.kube.cache import Cache
from ekko.kube.fleet import Applied, Fleet, server_pod
from ekko.operator.peering import Gate
from ekko.operator.worker import PoolWorker, Workers
from ekko.planning.converge import WriteAssignment, converge
from ekko.planning.desired import desired_from_plan, desired_from_state, plan_inputs
from ekko.planning.problem import build_problem, solve_config
from ekko.solver.baselines import BASELINES

NS = "ekko-bench"
IMAGE = "ekko:latest"


class CountingFleet(Fleet):
    """The real Fleet (observation from the cache) with every write counted, not sent."""

    def __init__(self, cache: Cache) -> None:
        super().__init__(client.ApiClient(), IMAGE, cache=cache)
        self.writes: dict[str, int] = {}
        self._version = 10**8

    def _count(self, what: str, n: int = 1) -> None:
        self.writes[what] = self.writes.get(what, 0) + n

    def apply(self, pool: ServerPool, actions: Any) -> Applied:
        actions = list(actions)
        self._count("actions", len(actions))
        return Applied(done=[type(a).__name__ for a in actions])

    def _write_back(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        """What the watch would deliver after the write: the status merged, a new version."""
        assert self.cache is not None
        store = self.cache.store(plural)
        old = store.get(namespace, name)
        if old is None:
            return
        self._version += 1
        meta = {**old["metadata"], "resourceVersion": str(self._version)}
        store.put({**old, "metadata": meta, "status": {**(old.get("status") or {}), **status}})

    def apply_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any], *_: Any, **__: Any
    ) -> None:
        self._count(f"apply_status {plural}")
        self._write_back(plural, namespace, name, status)

    def apply_statuses(
        self, plural: str, namespace: str, manager: str, writes: Any, force: bool = True
    ) -> list[Any]:
        self._count(f"apply_status {plural}", len(writes))
        for name, status in writes:
            self._write_back(plural, namespace, name, status)
        return [None] * len(writes)

    def patch_status(self, plural: str, *_: Any, **__: Any) -> None:
        self._count(f"patch_status {plural}")

    def event(self, *_: Any, **__: Any) -> None:
        self._count("event")

    def event_on(self, *_: Any, **__: Any) -> None:
        self._count("event")


def _stamp(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def fill(nodes: int, servers: int, replicas: int, seed: int) -> tuple[Cache, ServerPool]:
    """A cache holding a converged pool: nodes, models, pods, assignments with loaded reports."""
    scale = Scale(nodes, servers, replicas, "20s", 0)
    now = dt.datetime.now(dt.UTC)
    cache = Cache(client.ApiClient(), [NS])
    pool_doc = pool_manifest(servers * 2, "20s")
    pool_doc["metadata"] |= {
        "namespace": NS,
        "uid": "pool-uid",
        "generation": 1,
        "resourceVersion": "1",
    }
    pool = ServerPool.model_validate(pool_doc)
    cache.store("serverpools").put(pool_doc)
    model_docs = model_manifests(scale, seed)
    for k, doc in enumerate(model_docs):
        doc["metadata"] |= {
            "namespace": NS,
            "uid": f"m-{k}",
            "generation": 1,
            "resourceVersion": str(10 + k),
        }
        cache.store("models").put(doc)
    zones = ("zone-a", "zone-b", "zone-c")
    for i in range(nodes):
        cache.store("nodes").put(
            {
                "metadata": {
                    "name": f"bench-node-{i:03d}",
                    "labels": {"topology.kubernetes.io/zone": zones[i % 3]},
                    "resourceVersion": str(100000 + i),
                },
                "status": {
                    "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": _stamp(now)}
                    ]
                },
            }
        )
    fleet = Fleet(client.ApiClient(), IMAGE, cache=cache)
    for informer in cache.informers:
        informer.synced.set()
    empty = fleet.observe(pool)
    plan = BASELINES["ffd"](build_problem(empty), solve_config(pool))
    desired = desired_from_plan(plan, empty)
    for i, name in enumerate(sorted(desired.servers)):
        pod = server_pod(pool, name, desired.zones.get(name, ""), IMAGE)
        pod["metadata"] |= {
            "namespace": NS,
            "uid": f"pod-{i}",
            "resourceVersion": str(200000 + i),
            "creationTimestamp": _stamp(now - dt.timedelta(minutes=5)),
            "ownerReferences": [
                {"kind": "ServerPool", "name": POOL, "uid": "pool-uid", "controller": True}
            ],
        }
        pod["spec"]["nodeName"] = f"bench-node-{i % nodes:03d}"
        pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        cache.store("pods").put(pod)
    with_pods = fleet.observe(pool)
    for i, action in enumerate(converge(with_pods, desired)):
        if not isinstance(action, WriteAssignment):
            continue
        shards = [s.to_wire() for s in action.shards]
        cache.store("serverassignments").put(
            {
                "apiVersion": "ekko.dev/v1alpha1",
                "kind": "ServerAssignment",
                "metadata": {
                    "name": action.server,
                    "namespace": NS,
                    "uid": f"a-{i}",
                    "resourceVersion": str(300000 + i),
                    "labels": {"ekko.dev/pool": POOL},
                },
                "spec": {
                    "pool": POOL,
                    "server": action.server,
                    "zone": action.zone,
                    "shards": shards,
                },
                "status": {
                    "loaded": [
                        {k: s[k] for k in ("model", "shard", "version", "bytes")} for s in shards
                    ],
                    "shardsLoaded": len(shards),
                    "bytesLoaded": sum(s["bytes"] for s in shards),
                    "heartbeat": _stamp(now),
                    "podUid": str(
                        cache.store("pods").get(NS, action.server)["metadata"]["uid"]  # type: ignore[index]
                    ),
                },
            }
        )
    fleet.close()
    return cache, pool


def touch_reports(cache: Cache, step: int, every: bool) -> None:
    """A new heartbeat (and resource version) in one agent's report, or in every one (what a
    60 s resync finds when agents heartbeat every 10-30 s), as a watch delivers them."""
    store = cache.store("serverassignments")
    items = sorted(store.items(NS), key=lambda o: o["metadata"]["name"])
    for k, old in enumerate(items if every else items[:1]):
        meta = {**old["metadata"], "resourceVersion": f"9{step:06d}{k:05d}"}
        status = {**old["status"], "heartbeat": _stamp(dt.datetime.now(dt.UTC))}
        store.put({**old, "metadata": meta, "status": status})


def heartbeat_events(cache: Cache, fleet: Fleet, count: int) -> float:
    """CPU seconds per heartbeat-only assignment event, from the watch's JSON line to the
    listeners (the pool workers' filter says it wakes nothing)."""
    workers = Workers(fleet, None, Gate(fleet, "bench", 0, False, enabled=False))
    informer = next(i for i in cache.informers if i.kind.name == "serverassignments")
    informer.notify = lambda kind, event, old, new: (
        fleet._on_cache_event(kind, event, old, new),
        workers.cache_event(kind, event, old, new),
    )
    items = sorted(cache.store("serverassignments").items(NS), key=lambda o: o["metadata"]["name"])
    lines = []
    for k in range(count):
        old = items[k % len(items)]
        meta = {**old["metadata"], "resourceVersion": f"8{k:09d}"}
        stamp = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=k)).strftime("%Y-%m-%dT%H:%M:%SZ")
        obj = {**old, "metadata": meta, "status": {**old["status"], "heartbeat": stamp}}
        lines.append(json.dumps({"type": "MODIFIED", "object": obj}).encode())
    start = time.process_time()
    for line in lines:
        informer.apply(json.loads(line))
    return (time.process_time() - start) / count


async def _inline(func: Any, /, *args: Any, **kwargs: Any) -> Any:
    """``asyncio.to_thread`` run in the calling thread, so cProfile sees the observation."""
    return func(*args, **kwargs)


async def measure(args: argparse.Namespace) -> int:
    t0 = time.process_time()
    cache, pool = fill(args.nodes, args.servers, args.replicas, args.seed)
    print(
        f"# filled: {len(cache.store('nodes'))} nodes, {len(cache.store('models'))} models, "
        f"{len(cache.store('pods'))} pods, {len(cache.store('serverassignments'))} assignments "
        f"({time.process_time() - t0:.1f} CPU-s)",
        file=sys.stderr,
    )
    fleet = CountingFleet(cache)
    gate = Gate(fleet, "bench", 0, False, enabled=False)
    worker = PoolWorker((NS, POOL), fleet, None, gate)
    # The operator that placed it is this one: its plan is what the assignments carry.
    placed = fleet.observe(pool)
    worker.desired = desired_from_state(placed)
    worker.inputs = plan_inputs(placed)
    replicas = sum(
        Model.model_validate(m).spec.replicas * Model.model_validate(m).spec.shards.count
        for m in cache.store("models").items(NS)
    )

    async def timed() -> float:
        start = time.process_time()
        await worker.run_pass()
        return time.process_time() - start

    # The first pass writes every status.
    first = await timed()
    first_writes = dict(fleet.writes)
    fleet.writes.clear()
    idle = [await timed() for _ in range(args.passes)]
    idle_writes = dict(fleet.writes)
    fleet.writes.clear()
    event = []
    for step in range(args.passes):
        touch_reports(cache, step, every=False)
        event.append(await timed())
    event_writes = dict(fleet.writes)
    fleet.writes.clear()
    beats = []
    for step in range(args.passes):
        touch_reports(cache, 1000 + step, every=True)
        beats.append(await timed())
    print(
        f"pool: {len(cache.store('pods'))} servers, {len(cache.store('models'))} models, "
        f"{replicas} replicas, {args.nodes} nodes"
    )
    print(f"first pass (statuses written): {first:.3f} CPU-s; writes {first_writes}")
    print(
        f"converged pass, nothing changed (resync): median {statistics.median(idle):.4f} CPU-s, "
        f"max {max(idle):.4f} over {len(idle)}; writes {idle_writes}"
    )
    print(
        f"converged pass after one report changed: median {statistics.median(event):.4f} CPU-s, "
        f"max {max(event):.4f} over {len(event)}; writes {event_writes}"
    )
    print(
        f"converged pass after every heartbeat changed: median {statistics.median(beats):.4f} "
        f"CPU-s, max {max(beats):.4f} over {len(beats)}; writes {dict(fleet.writes)}"
    )
    per_event = heartbeat_events(cache, fleet, args.events)
    print(
        f"one heartbeat-only assignment event (JSON decoded, stored, listeners told): "
        f"{per_event * 1e3:.3f} ms CPU; at 600 agents every 10 s: "
        f"{per_event * 60:.4f} CPU-s per second"
    )
    if args.profile:
        asyncio.to_thread = _inline  # type: ignore[assignment]
        for label in ("every heartbeat changed", "nothing changed"):
            if label.startswith("every"):
                touch_reports(cache, 10**5, every=True)
            prof = cProfile.Profile()
            prof.enable()
            await worker.run_pass()
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(args.profile)
            print(f"--- profile of one pass, {label} ---")
            print(out.getvalue())
    fleet.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--servers", type=int, default=650)
    ap.add_argument("--replicas", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--events", type=int, default=3000, help="heartbeat events to time")
    ap.add_argument("--profile", type=int, default=0, metavar="LINES")
    args = ap.parse_args(argv)
    return asyncio.run(measure(args))


if __name__ == "__main__":
    sys.exit(main())
