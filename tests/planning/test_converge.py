"""Make-before-break convergence: table tests and a simulated migration that must never dip."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ekko.api.resources import Model, ServerPool
from ekko.planning.converge import (
    CreateServer,
    DeleteServer,
    Desired,
    RecreateServer,
    WriteAssignment,
    converge,
)
from ekko.planning.state import PoolState, ServerObs, ShardKey

POOL = ServerPool.model_validate(
    {
        "kind": "ServerPool",
        "metadata": {"name": "p"},
        "spec": {
            "template": {"image": "engine:1"},
            "capacity": {"memory": "64Gi", "compute": 100},
            "maxServers": 20,
        },
    }
)


def model(name: str, shards: int = 2, replicas: int = 1) -> Model:
    return Model.model_validate(
        {
            "kind": "Model",
            "metadata": {"name": name},
            "spec": {
                "pool": "p",
                "version": "v1",
                "artifact": {"uri": f"file:///m/{name}"},
                "shards": {"count": shards, "size": "1Gi"},
                "replicas": replicas,
            },
        }
    )


def desired(placement: dict[str, set[ShardKey]]) -> Desired:
    return Desired({k: frozenset(v) for k, v in placement.items()}, {k: "a" for k in placement})


def settled(name: str, shards: set[ShardKey], models: list[Model]) -> ServerObs:
    """A server whose assignment says `shards` (version v1) and whose agent loaded them all."""
    state = PoolState(POOL, tuple(models), ())
    spec = converge(state, desired({name: shards}))
    write = next(a for a in spec if isinstance(a, WriteAssignment))
    return ServerObs(
        name,
        "a",
        pod_ready=True,
        spec_shards=write.shards,
        loaded=frozenset((s.model, s.shard, s.version) for s in write.shards),
    )


def test_an_empty_pool_creates_servers_and_assigns_every_version() -> None:
    m = model("m")
    actions = converge(PoolState(POOL, (m,), ()), desired({"p-0": {("m", 0), ("m", 1)}}))
    assert actions[0] == CreateServer("p-0", "a")
    write = actions[1]
    assert isinstance(write, WriteAssignment)
    assert [(s.model, s.shard, s.version, s.drain) for s in write.shards] == [
        ("m", 0, "v1", False),
        ("m", 1, "v1", False),
    ]
    assert write.shards[0].bytes == 2**30
    assert write.new  # no assignment observed: created, not patched first
    # A pod without its assignment (the write failed last pass): created too.
    pod_only = ServerObs("p-0", "a", pod_ready=True, assignment_exists=False)
    again = converge(PoolState(POOL, (m,), (pod_only,)), desired({"p-0": {("m", 0)}}))
    assert [a.new for a in again if isinstance(a, WriteAssignment)] == [True]


def test_a_moved_shard_drains_on_its_old_server_until_the_new_one_serves_it() -> None:
    m = model("m")
    old = settled("p-0", {("m", 0), ("m", 1)}, [m])
    new = ServerObs("p-1", "a", pod_ready=False)
    want = desired({"p-0": {("m", 1)}, "p-1": {("m", 0)}})
    actions = converge(PoolState(POOL, (m,), (old, new)), want)
    writes = {a.server: a for a in actions if isinstance(a, WriteAssignment)}
    assert [(s.shard, s.drain) for s in writes["p-0"].shards] == [(0, True), (1, False)]
    assert [(s.shard, s.drain) for s in writes["p-1"].shards] == [(0, False)]

    # The new server loads shard 0 but its pod is not ready yet: still drain, nothing dropped.
    old2 = replace(old, spec_shards=writes["p-0"].shards)
    new2 = replace(new, spec_shards=writes["p-1"].shards, loaded=frozenset({("m", 0, "v1")}))
    assert converge(PoolState(POOL, (m,), (old2, new2)), want) == []

    # Ready: the old copy goes.
    new3 = replace(new2, pod_ready=True)
    actions = converge(PoolState(POOL, (m,), (old2, new3)), want)
    assert actions == [
        WriteAssignment("p-0", "a", tuple(s for s in old2.spec_shards if s.shard == 1))
    ]


def test_a_server_left_empty_is_deleted_and_a_deleted_model_unloads_at_once() -> None:
    m, gone = model("m"), model("gone")
    keep = settled("p-0", {("m", 0), ("m", 1)}, [m])
    spare = settled("p-1", {("gone", 0)}, [gone])
    actions = converge(PoolState(POOL, (m,), (keep, spare)), desired({"p-0": {("m", 0), ("m", 1)}}))
    assert actions == [WriteAssignment("p-1", "a", ())]
    emptied = replace(spare, spec_shards=(), loaded=frozenset())
    actions = converge(
        PoolState(POOL, (m,), (keep, emptied)), desired({"p-0": {("m", 0), ("m", 1)}})
    )
    assert actions == [DeleteServer("p-1")]


def test_a_failed_pod_is_recreated_and_a_converged_pool_needs_nothing() -> None:
    m = model("m")
    server = settled("p-0", {("m", 0), ("m", 1)}, [m])
    want = desired({"p-0": {("m", 0), ("m", 1)}})
    assert converge(PoolState(POOL, (m,), (server,)), want) == []
    failed = replace(server, pod_failed=True, pod_ready=False)
    assert converge(PoolState(POOL, (m,), (failed,)), want) == [RecreateServer("p-0")]
    missing = replace(server, pod_exists=False, pod_ready=False, loaded=frozenset())
    assert converge(PoolState(POOL, (m,), (missing,)), want) == [CreateServer("p-0", "a")]


def _random_placement(
    rng: random.Random, models: list[Model], servers: list[str]
) -> dict[str, set[ShardKey]]:
    out: dict[str, set[ShardKey]] = {s: set() for s in servers}
    for m in models:
        for index in range(m.spec.shards.count or 0):
            for s in rng.sample(servers, m.spec.replicas):
                out[s].add((m.metadata.name, index))
    return {k: v for k, v in out.items() if v}


class Cluster:
    """A tiny simulated fleet: assignments, pods that become ready, agents that load."""

    def __init__(self, models: list[Model]) -> None:
        self.models = models
        self.servers: dict[str, ServerObs] = {}

    def state(self) -> PoolState:
        return PoolState(POOL, tuple(self.models), tuple(self.servers.values()))

    def apply(self, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, CreateServer):
                self.servers[a.name] = ServerObs(a.name, a.zone, assignment_exists=False)
            elif isinstance(a, WriteAssignment):
                s = self.servers.get(a.server) or ServerObs(a.server, a.zone, pod_exists=False)
                keys = {(x.model, x.shard, x.version) for x in a.shards}
                # Agents unload what is no longer assigned at once (the worst case for safety).
                self.servers[a.server] = replace(
                    s, spec_shards=a.shards, assignment_exists=True, loaded=s.loaded & keys
                )
            elif isinstance(a, DeleteServer):
                del self.servers[a.name]

    def agents_progress(self, rng: random.Random) -> None:
        for name, s in list(self.servers.items()):
            want = {(x.model, x.shard, x.version) for x in s.spec_shards}
            loaded = set(s.loaded) | {k for k in want if rng.random() < 0.5}
            self.servers[name] = replace(
                s, pod_ready=s.pod_ready or rng.random() < 0.5, loaded=frozenset(loaded & want)
            )

    def serving(self) -> dict[ShardKey, int]:
        count: dict[ShardKey, int] = {}
        for s in self.servers.values():
            if s.serving:
                for m, i, _ in s.loaded:
                    count[(m, i)] = count.get((m, i), 0) + 1
        return count


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), replicas=st.integers(1, 3))
def test_a_migration_never_takes_a_shard_below_its_replicas(seed: int, replicas: int) -> None:
    rng = random.Random(seed)
    models = [model("a", 3, replicas), model("b", 2, replicas)]
    servers = [f"p-{i}" for i in range(6)]
    cluster = Cluster(models)
    first = desired(_random_placement(rng, models, servers[:4]))
    for _ in range(30):  # settle the first placement
        cluster.apply(converge(cluster.state(), first))
        cluster.agents_progress(rng)
    assert all(n >= replicas for n in cluster.serving().values())
    second = desired(_random_placement(rng, models, servers[2:]))
    for _ in range(60):
        cluster.apply(converge(cluster.state(), second))
        serving = cluster.serving()
        assert all(
            serving.get((m.metadata.name, i), 0) >= replicas
            for m in models
            for i in range(m.spec.shards.count or 0)
        ), serving
        cluster.agents_progress(rng)
    assert converge(cluster.state(), second) == []
    assert set(cluster.servers) == set(second.servers)


def test_min_servers_keeps_empty_servers_instead_of_deleting_them() -> None:
    m = model("m")
    keep = settled("p-0", {("m", 0), ("m", 1)}, [m])
    empty = ServerObs("p-1", "a", pod_ready=True)
    pool = ServerPool.model_validate(
        POOL.to_wire() | {"spec": POOL.spec.to_wire() | {"minServers": 2}}
    )
    want = desired({"p-0": {("m", 0), ("m", 1)}})
    assert converge(PoolState(pool, (m,), (keep, empty)), want) == []
    assert converge(PoolState(POOL, (m,), (keep, empty)), want) == [DeleteServer("p-1")]
