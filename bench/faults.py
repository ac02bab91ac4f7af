"""Faults on the local control plane: does Ekko recover from them without a person?

Scenarios (``--scenarios``, comma-separated; ``all`` runs every one):

- ``outage``: for each outage length S the benchmark stops kube-apiserver (connections are
  refused, as in a restart or an upgrade), waits S seconds, starts it again with the same
  arguments, then changes a model and measures how long the operator takes to converge the pool
  again. It reports whether the operator process survived, its exit code if it stopped, and the
  recovery time.
- ``operator-migration``: a model change that moves shards; the operator is SIGKILLed while
  assignments differ from what the agents hold, and started again after ``--restart-after`` s.
- ``operator-canary``: a ModelVersion canary; the operator is SIGKILLed between two steps (in a
  5 s pause at 30 %) and started again; the rollout must reach Promoted.
- ``agent-load``: a second model is added and the agent of a server that is loading one of its
  shards is SIGKILLed (its pod stays; the fleet restarts it as a kubelet restarts a container).
- ``pod-delete``: the server pod holding the most shard replicas is deleted by hand.
- ``pool-delete``: the ServerPool is deleted while its model exists; the model must say
  ``PoolNotFound`` and no server pod or ServerAssignment may remain.
- ``operator-rollback``: a canary paused at 30 % is rolled back by request; the operator is
  SIGKILLed as soon as the rollback is recorded and started again; it must reach RolledBack with
  every agent routing the model to the stable version.
- ``assignment-edit``: the ServerAssignment holding the most replicas gets ``spec.shards: []`` by
  hand (the bench runs no webhook, so the edit is admitted); the operator must restore it.
- ``pod-edit``: the server pod holding the most replicas is edited by hand with
  ``kubectl patch``: the image of its agent container changed (pod images are mutable; on kwok
  nothing restarts, so the bench shows what the operator does about the edit, not what a new
  image would do), then its ``ekko.dev/pool`` label removed (the pod leaves every
  selector of the pool: the operator's watch, Services, and the bench's own fleet, which stops
  that agent as if the pod were gone). Recovered: the pool converged with every shard at its
  minimum, no pod of the pool still runs the edited image, and the edited pod is gone or
  labelled again; the note says which (and whether the pod was replaced under a new name).
- ``pod-image``: the same image edit alone (the label kept): the pod stays in every selector, so
  this shows whether the replacement of an edited pod is make-before-break.
- ``outage-canary``: a ModelVersion canary in a 20 s pause at 30 %; the API server is stopped for
  the first of ``--outages`` seconds (as in an upgrade of the control plane mid-rollout) and
  started again; the rollout must reach Promoted and the pool converge.

For every fault scenario it reports whether the pool recovered without a person, the seconds from
the fault to recovery, the fewest ready replicas any shard had against the model's
minReadyReplicas, sampled every 0.2 s from the scenario's first step to recovery (a replica
counts when its pod is Ready, its agent process alive and the assignment's status, written since
that process started, lists it loaded), with the number of samples below that minimum, and the
objects left orphaned afterwards. Each scenario runs in a namespace of its own with its own
agents and operator (``--peering``, a fixed ``POD_ID`` as a container restarted in the same pod
keeps).

    EKKO_CLUSTER_DIR=/tmp/ekko-faults python -m bench.faults --outages 20,60,180 --json out.json
    EKKO_CLUSTER_DIR=/tmp/ekko-faults python -m bench.faults --scenarios all --outages 20 --json out.json

Run it on a cluster of its own (EKKO_CLUSTER_DIR): it stops that cluster's API server. Benchmarks
measure; nothing here asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kubernetes import client, config

from e2e.agents import AgentFleet
from e2e.cluster import build, control
from e2e.objects import (
    Api,
    G,
    V,
    converged,
    fresh_namespace,
    model_manifest,
    pool_manifest,
)
from e2e.operator_harness import OperatorProcess
from e2e.test_rollout import version_manifest

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


OUTAGE = "outage"
FAULTS = (
    "operator-migration",
    "operator-canary",
    "agent-load",
    "pod-delete",
    "pool-delete",
    "operator-rollback",
    "assignment-edit",
    "outage-canary",
    "pod-edit",
    "pod-image",
)
SCENARIOS = (OUTAGE, *FAULTS)
SAMPLE_S = 0.2


def parse_scenarios(text: str) -> list[str]:
    """The scenarios named in ``--scenarios`` in the order given; ``all`` is every one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    return names


def below_minimum(
    serving: Mapping[tuple[str, int], int], minimum: Mapping[tuple[str, int], int]
) -> dict[tuple[str, int], int]:
    """The shards of ``minimum`` with fewer serving replicas than their minimum, and how many."""
    return {k: serving.get(k, 0) for k, m in minimum.items() if serving.get(k, 0) < m}


def orphans(
    pools: set[str], pods: Mapping[str, str | None], assignments: Mapping[str, str | None]
) -> list[str]:
    """Objects no live owner accounts for: a server pod or ServerAssignment whose controlling
    pool (None: no owner reference) does not exist, and a pod without its assignment."""
    found = [f"pod/{n}" for n, owner in sorted(pods.items()) if owner not in pools]
    found += [
        f"serverassignment/{n}" for n, owner in sorted(assignments.items()) if owner not in pools
    ]
    found += [f"pod/{n} (no assignment)" for n in sorted(pods) if n not in assignments]
    return found


def _owner(refs: list[dict[str, Any]]) -> str | None:
    """The ServerPool named by the controlling owner reference, if any."""
    return next(
        (r["name"] for r in refs if r.get("kind") == "ServerPool" and r.get("controller")), None
    )


def cluster_orphans(api: Api) -> list[str]:
    pools = {
        p["metadata"]["name"]
        for p in api.custom.list_namespaced_custom_object(G, V, api.ns, "serverpools")["items"]
    }
    pods = {
        p.metadata.name: _owner(
            [
                {"kind": r.kind, "name": r.name, "controller": r.controller}
                for r in p.metadata.owner_references or []
            ]
        )
        # Every pod of the namespace a pool owns or labels: an unlabelled pod a pool still
        # owns (pod-edit) is outside api.pods()'s label selector, not outside the count.
        for p in api.core.list_namespaced_pod(api.ns).items
        if "ekko.dev/pool" in (p.metadata.labels or {})
        or any(r.kind == "ServerPool" for r in p.metadata.owner_references or [])
    }
    items = api.custom.list_namespaced_custom_object(G, V, api.ns, "serverassignments")["items"]
    assignments = {
        a["metadata"]["name"]: _owner(a["metadata"].get("ownerReferences") or []) for a in items
    }
    return orphans(pools, pods, assignments)


class ReadySampler:
    """Every 0.2 s: the ready replicas of every shard of ``models`` against its minimum.

    A replica counts when its pod is Running and Ready, the fleet's agent process for the pod is
    alive, and the assignment's status, written (heartbeat) since that process started, lists
    the shard loaded (any version): a killed agent's status still lists what it held until the
    restarted agent reports, and must not count."""

    def __init__(self, api_client: client.ApiClient, ns: str, fleet: AgentFleet) -> None:
        self.api = Api(api_client, ns)
        self.fleet = fleet
        self.minimum: dict[tuple[str, int], int] = {}
        self.fewest: dict[tuple[str, int], int] = {}
        self.samples = 0
        self.below = 0
        self.widest_gap = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, models: list[str]) -> None:
        for name in models:
            spec = self.api.get("models", name)["spec"]
            need = spec.get("minReadyReplicas", spec.get("replicas", 1))
            for shard in range(spec["shards"]["count"]):
                self.minimum[(name, shard)] = need

    def serving(self) -> Counter[tuple[str, int]]:
        """Ready replicas per shard now."""
        started: dict[str, float] = {}
        for pod in self.fleet.pods():
            try:
                agent = self.fleet.agent(pod)
                if agent.alive():
                    started[pod] = Path(f"/proc/{agent.process.pid}").stat().st_ctime
            except (KeyError, OSError):
                pass  # its pod or process went away meanwhile
        ready = {
            p.metadata.name
            for p in self.api.pods()
            if p.status.phase == "Running"
            and p.metadata.deletion_timestamp is None
            and p.metadata.name in started
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        }
        count: Counter[tuple[str, int]] = Counter()
        for a in self.api.assignments():
            status = a.status
            if a.metadata.name not in ready or status is None or status.heartbeat is None:
                continue
            if status.heartbeat.timestamp() < started[a.metadata.name]:
                continue  # written by an agent before this one: stale until the new one reports
            count.update({(s.model, s.shard) for s in status.loaded})
        return count

    def whole(self) -> bool:
        """Every watched shard has at least its minimum of ready replicas."""
        return not below_minimum(self.serving(), self.minimum)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            try:
                serving = self.serving()
            except Exception:  # a passing API error: this sample is missing, the gap shows it
                serving = None
            now = time.monotonic()
            if serving is not None:
                self.widest_gap = max(self.widest_gap, now - last)
                last = now
                self.samples += 1
                for key in self.minimum:
                    self.fewest[key] = min(self.fewest.get(key, 1 << 30), serving.get(key, 0))
                if below_minimum(serving, self.minimum):
                    self.below += 1
            self._stop.wait(max(0.0, SAMPLE_S - (time.monotonic() - now)))

    def __enter__(self) -> ReadySampler:
        self._thread = threading.Thread(target=self._run, name="ready-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def figures(self) -> dict[str, Any]:
        fewest = min(self.fewest.values()) if self.fewest else None
        return {
            "min_ready_required": min(self.minimum.values()) if self.minimum else None,
            "min_ready_seen": fewest,
            "shards_below_min": sorted(
                f"{m}/{s}" for (m, s), n in self.fewest.items() if n < self.minimum[(m, s)]
            ),
            "samples": self.samples,
            "samples_below_min": self.below,
            "widest_sample_gap_s": round(self.widest_gap, 2),
        }


@contextlib.contextmanager
def scenario_env(
    api_client: client.ApiClient, kubeconfig: str, ns: str
) -> Iterator[tuple[Api, AgentFleet, OperatorProcess]]:
    """A fresh namespace with a pool and a placed model "rank" (4 shards x 8Gi, 2 replicas),
    its agents (loading at 4 GiB/s, so an 8Gi shard takes 2 s) and an operator."""
    fresh_namespace(client.CoreV1Api(api_client), ns, timeout=180)
    api = Api(api_client, ns)
    os.environ["POD_ID"] = f"operator-{ns}"  # kept over restarts, as in a restarted container
    with (
        AgentFleet(kubeconfig, ns, extra_args=("--sim-bandwidth", "4Gi")) as fleet,
        OperatorProcess(kubeconfig, ns, ("--peering",)) as operator,
    ):
        api.create(pool_manifest())
        api.create(model_manifest("rank", 4, "8Gi", 2))
        placed = wait(lambda: converged(api, models=["rank"]), 240)
        if placed is None:
            print(operator.logs()[-3000:])
            raise SystemExit(f"bench: {ns}: the model was not placed in 240 s")
        print(f"{ns}: placed and loaded in {placed:.1f}s", flush=True)
        yield api, fleet, operator


def _unconverged(api: Api) -> bool:
    return any(
        {(s.model, s.shard) for s in a.spec.shards}
        != {(s.model, s.shard) for s in (a.status.loaded if a.status else [])}
        or any(s.drain for s in a.spec.shards)
        for a in api.assignments()
    )


def _step(api: Api, name: str) -> tuple[int, int]:
    """The rollout's current step and weight."""
    status = api.get("modelversions", name).get("status") or {}
    return int(status.get("currentStep", 0)), int(status.get("weight", 0))


def _routed_only(api: Api, model: str, version: str) -> bool:
    """Every agent reports routing all of the model's traffic to this version."""
    routes = [
        r
        for a in api.assignments()
        for r in (a.status.routing if a.status else [])
        if r.model == model
    ]
    return bool(routes) and all(
        [(w.version, w.weight) for w in r.weights] == [(version, 100)] for r in routes
    )


def _phase(api: Api, name: str) -> str:
    return str((api.get("modelversions", name).get("status") or {}).get("phase", ""))


def run_fault(
    name: str,
    api_client: client.ApiClient,
    kubeconfig: str,
    restart_after: float,
    timeout: float,
    *,
    outage: float = 20.0,
) -> dict[str, Any]:
    ns = f"{NS}-{name}"
    with scenario_env(api_client, kubeconfig, ns) as (api, fleet, operator):
        sampler = ReadySampler(api_client, ns, fleet)
        sampler.watch(["rank"])
        note = ""
        with sampler:
            if name == "operator-migration":
                # 24Gi shards: two fit a 64Gi server, where four 8Gi ones shared one: shards move.
                api.patch("models", "rank", {"spec": {"shards": {"size": "24Gi"}}})
                caught = wait(lambda: _unconverged(api), 30, interval=0.05)
                note = "killed mid-migration" if caught is not None else "no migration seen"
                fault_at = time.monotonic()
                operator.stop(hard=True)
                time.sleep(restart_after)
                operator.start()
                done = wait(lambda: converged(api, models=["rank"]) and sampler.whole(), timeout)
            elif name == "operator-canary":
                steps = [{"setWeight": 30}, {"pause": {"duration": "5s"}}, {"setWeight": 100}]
                doc = version_manifest("v2", steps)
                del doc["spec"]["analysis"]  # no analysis step: no Prometheus needed
                api.create(doc)
                caught = wait(lambda: _step(api, "rank-v2") == (1, 30), 120, interval=0.05)
                note = "killed in the pause at 30%" if caught is not None else "pause never seen"
                fault_at = time.monotonic()
                operator.stop(hard=True)
                time.sleep(restart_after)
                operator.start()
                done = wait(lambda: _phase(api, "rank-v2") == "Promoted", timeout)
                if done is not None:
                    done = wait(
                        lambda: converged(api, models=["rank"]) and sampler.whole(), timeout
                    )
            elif name == "outage-canary":
                steps = [{"setWeight": 30}, {"pause": {"duration": "20s"}}, {"setWeight": 100}]
                doc = version_manifest("v2", steps)
                del doc["spec"]["analysis"]  # no analysis step: no Prometheus needed
                api.create(doc)
                caught = wait(lambda: _step(api, "rank-v2") == (1, 30), 120, interval=0.05)
                fault_at = time.monotonic()
                back = apiserver_outage(outage)
                note = (
                    f"API server down {outage:.0f}s (back after {back:.1f}s) in the pause at 30%"
                    if caught is not None
                    else "pause never seen"
                )
                done = wait(lambda: _phase(api, "rank-v2") == "Promoted", timeout)
                if done is not None:
                    done = wait(
                        lambda: converged(api, models=["rank"]) and sampler.whole(), timeout
                    )
            elif name == "operator-rollback":
                doc = version_manifest("v2", [{"setWeight": 30}, {"pause": {}}])
                del doc["spec"]["analysis"]
                api.create(doc)
                paused = wait(lambda: _phase(api, "rank-v2") == "Paused", 120)
                if paused is None:
                    raise SystemExit("bench: operator-rollback: the canary never paused")
                at = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
                request = {"ekko.dev/request": "rollback", "ekko.dev/request-at": at}
                api.patch("modelversions", "rank-v2", {"metadata": {"annotations": request}})

                def started() -> bool:
                    status = api.get("modelversions", "rank-v2").get("status") or {}
                    return bool(status.get("rollbackRequestedAt"))

                wait(started, 30, interval=0.02)
                status = api.get("modelversions", "rank-v2").get("status") or {}
                fault_at = time.monotonic()
                operator.stop(hard=True)
                note = (
                    "killed after the rollback had completed"
                    if status.get("rollbackSeconds") is not None
                    else "killed mid-rollback (requested, not completed)"
                )
                time.sleep(restart_after)
                operator.start()
                done = wait(
                    lambda: (
                        _phase(api, "rank-v2") == "RolledBack"
                        and _routed_only(api, "rank", "v1")
                        and sampler.whole()
                    ),
                    timeout,
                )
            elif name == "assignment-edit":
                held = Counter({a.metadata.name: len(a.spec.shards) for a in api.assignments()})
                victim = held.most_common(1)[0][0]
                edited = next(a for a in api.assignments() if a.metadata.name == victim)
                before = {(r.model, r.shard) for r in edited.spec.shards}
                fault_at = time.monotonic()
                api.patch("serverassignments", victim, {"spec": {"shards": []}})
                note = f"set {victim}'s spec.shards to [] ({held[victim]} replicas)"

                def restored() -> bool:
                    now = next(a for a in api.assignments() if a.metadata.name == victim)
                    return {(r.model, r.shard) for r in now.spec.shards} == before

                fixed = wait(restored, timeout, interval=0.05)
                if fixed is not None:
                    note += f"; spec restored after {fixed:.2f}s"
                done = wait(lambda: converged(api, models=["rank"]) and sampler.whole(), timeout)
            elif name == "agent-load":
                api.create(model_manifest("extra", 4, "8Gi", 1))

                def loading() -> str | None:
                    for a in api.assignments():
                        want = {(s.model, s.shard) for s in a.spec.shards if s.model == "extra"}
                        have = {(s.model, s.shard) for s in (a.status.loaded if a.status else [])}
                        if want - have:
                            return a.metadata.name
                    return None

                victim = None
                deadline = time.monotonic() + 60
                while victim is None and time.monotonic() < deadline:
                    victim = loading()
                    time.sleep(0.05)
                if victim is None:
                    raise SystemExit("bench: agent-load: no server was seen loading")
                restarts = fleet.restarts
                fault_at = time.monotonic()
                fleet.agent(victim).process.kill()
                note = f"killed the agent of {victim} mid-load"
                done = wait(
                    lambda: converged(api, models=["rank", "extra"]) and sampler.whole(), timeout
                )
                note += f"; fleet restarted {fleet.restarts - restarts} agent(s)"
            elif name == "pod-delete":
                held = Counter({a.metadata.name: len(a.spec.shards) for a in api.assignments()})
                victim = held.most_common(1)[0][0]
                fault_at = time.monotonic()
                api.core.delete_namespaced_pod(victim, ns)
                note = f"deleted pod {victim} ({held[victim]} replicas)"

                time.sleep(1.0)  # the deletion is seen before "converged" can mean "after"
                done = wait(lambda: converged(api, models=["rank"]) and sampler.whole(), timeout)
            elif name == "pod-edit":
                fault_at, done, note = _pod_edit(api, sampler, timeout, unlabel=True)
            elif name == "pod-image":
                fault_at, done, note = _pod_edit(api, sampler, timeout, unlabel=False)
            elif name == "pool-delete":
                fault_at = time.monotonic()
                api.custom.delete_namespaced_custom_object(G, V, ns, "serverpools", "pool")

                def gone() -> bool:
                    cond = api.condition("models", "rank")
                    return (
                        cond is not None
                        and cond["status"] == "False"
                        and cond.get("reason") == "PoolNotFound"
                        and not api.pods()
                        and not api.assignments()
                    )

                done = wait(gone, timeout)
                cond = api.condition("models", "rank") or {}
                note = f"model Ready={cond.get('status')} ({cond.get('reason')})"
            else:
                raise ValueError(name)
            took = None if done is None else time.monotonic() - fault_at
            if name == "assignment-edit":
                time.sleep(5.0)  # keep sampling past the agent's unload grace (2 s by default)
        time.sleep(2.0)  # let garbage collection and a last pass settle before counting
        left = cluster_orphans(api)
        alive = operator.proc is not None and operator.proc.poll() is None
        figures = sampler.figures()
        if name == "pool-delete":
            # The servers go away by design: no minimum applies.
            figures.update(min_ready_seen=None, shards_below_min=[], samples_below_min=None)
        row = {
            "scenario": name,
            "note": note,
            "recovered": took is not None,
            "recover_s": None if took is None else round(took, 1),
            "operator_alive": alive,
            "orphans": left,
            **figures,
        }
        print(json.dumps(row), flush=True)
        if took is None:
            print(operator.logs()[-3000:])
        return row


EDITED_IMAGE = "registry.invalid/edited-by-hand:1"


def _pod_edit(
    api: Api, sampler: ReadySampler, timeout: float, *, unlabel: bool
) -> tuple[float, float | None, str]:
    """Edit the busiest server pod by hand (agent image, then with ``unlabel`` the pool label);
    the fault time, seconds to recovery (None: never) and a note on what became of the pod."""
    held = Counter({a.metadata.name: len(a.spec.shards) for a in api.assignments()})
    victim = held.most_common(1)[0][0]
    pod = api.core.read_namespaced_pod(victim, api.ns)
    uid = pod.metadata.uid
    agent = next(c.name for c in pod.spec.containers if c.name == "ekko-agent")
    fault_at = time.monotonic()
    api.core.patch_namespaced_pod(
        victim, api.ns, {"spec": {"containers": [{"name": agent, "image": EDITED_IMAGE}]}}
    )
    note = f"edited pod {victim} ({held[victim]} replicas): agent image"
    if unlabel:
        api.core.patch_namespaced_pod(
            victim, api.ns, [{"op": "remove", "path": "/metadata/labels/ekko.dev~1pool"}]
        )
        note += ", then label removed"

    def fate() -> str:
        """What became of the edited pod: gone, relabelled, or still unlabelled."""
        try:
            now = api.core.read_namespaced_pod(victim, api.ns)
        except client.ApiException as err:
            if err.status == 404:
                return "deleted"
            raise
        if now.metadata.uid != uid:
            return "replaced by a new pod of the same name"
        if now.metadata.deletion_timestamp is not None:
            return "deleted"
        if (now.metadata.labels or {}).get("ekko.dev/pool"):
            return "relabelled (adopted back)"
        return "left unlabelled"

    def edited_serving() -> bool:
        return (
            any(c.image == EDITED_IMAGE for p in api.pods() for c in p.spec.containers)
            and fate() != "deleted"
        )

    def recovered() -> bool:
        return (
            converged(api, models=["rank"])
            and sampler.whole()
            and not edited_serving()
            and fate() != "left unlabelled"
        )

    time.sleep(1.0)  # the edit is seen before "converged" can mean "after"
    done = wait(recovered, timeout)
    servers = sorted(p.metadata.name for p in api.pods())
    note += f"; the pod was {fate()}; servers now {', '.join(servers)}"
    return fault_at, done, note


def run_outages(
    api_client: client.ApiClient, kubeconfig: str, outages: list[float], timeout: float
) -> list[dict[str, Any]]:
    fresh_namespace(client.CoreV1Api(api_client), NS, timeout=120)
    api = Api(api_client, NS)
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
                wait(lambda r=replicas: _served(api, r), timeout) if patched is not None else None
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
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.faults",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenarios",
        default=OUTAGE,
        help=f"comma-separated, in order, or all: {', '.join(SCENARIOS)} (default {OUTAGE})",
    )
    parser.add_argument("--outages", default="20,60,180", help="seconds, comma-separated")
    parser.add_argument("--recover-timeout", type=float, default=240.0)
    parser.add_argument(
        "--restart-after",
        type=float,
        default=2.0,
        help="seconds between SIGKILLing the operator and starting it again (default 2)",
    )
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    try:
        scenarios = parse_scenarios(args.scenarios)
    except ValueError as err:
        parser.error(str(err))
    outages = [float(s) for s in args.outages.split(",") if s]

    control.ensure_up()
    kubeconfig = str(control.kubeconfig_path())
    api_client = config.new_client_from_config(config_file=kubeconfig)
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
    result: dict[str, Any] = {"load_average": [os.getloadavg()]}
    faults: list[dict[str, Any]] = []
    for name in scenarios:
        if name == OUTAGE:
            result["outages"] = run_outages(api_client, kubeconfig, outages, args.recover_timeout)
        else:
            faults.append(
                run_fault(
                    name,
                    api_client,
                    kubeconfig,
                    args.restart_after,
                    args.recover_timeout,
                    outage=outages[0] if outages else 20.0,
                )
            )
            result["faults"] = faults
        result["load_average"].append(os.getloadavg())
    if faults:
        print(
            "\nscenario            recovered  after   min ready seen / needed  "
            "samples below  orphans"
        )
        for r in faults:
            seen = "n/a" if r["min_ready_seen"] is None else str(r["min_ready_seen"])
            print(
                f"{r['scenario']:<20}{'yes' if r['recovered'] else 'NO':<11}"
                f"{(str(r['recover_s']) + 's') if r['recover_s'] is not None else 'never':<8}"
                f"{seen + ' / ' + str(r['min_ready_required']):<25}"
                f"{'n/a' if r['samples_below_min'] is None else str(r['samples_below_min']) + '/' + str(r['samples']):<15}"
                f"{len(r['orphans'])}"
            )
    print(f"load average (1 min) at the start and after each scenario: {result['load_average']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
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
