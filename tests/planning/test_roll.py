"""Template roll (ekko.planning.roll): which servers are outdated, what a pass replaces, the pace,
the pool's cap, and a simulated roll that never takes a shard below its replicas."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ekko.api.resources import Model, ServerPool
from ekko.planning.converge import (
    CreateServer,
    DeleteServer,
    Desired,
    RecreateServer,
    converge,
)
from ekko.planning.roll import roll, roll_status
from ekko.planning.state import PoolState, ServerObs
from tests.planning.test_converge import Cluster, _random_placement, desired, model, settled

NEW, OLD = "new", "old"


def pool(max_servers: int = 20, **spec: Any) -> ServerPool:
    return ServerPool.model_validate(
        {
            "kind": "ServerPool",
            "metadata": {"name": "p", "generation": 3},
            "spec": {
                "template": {"image": "engine:2"},
                "capacity": {"memory": "64Gi", "compute": 100},
                "maxServers": max_servers,
                **spec,
            },
        }
    )


def server(name: str, shards: set[tuple[str, int]], m: Model, h: str = OLD, zone: str = "a"):  # type: ignore[no-untyped-def]
    return replace(settled(name, shards, [m]), zone=zone, template_hash=h)


def state(p: ServerPool, m: Model, *servers: ServerObs) -> PoolState:
    return PoolState(p, (m,), servers, template_hash=NEW)


M = model("m", shards=4, replicas=2)
PLACED = {
    "p-0": {("m", 0), ("m", 1)},
    "p-1": {("m", 0), ("m", 1)},
    "p-2": {("m", 2), ("m", 3)},
    "p-3": {("m", 2), ("m", 3)},
}


def fleet(hashes: dict[str, str] | None = None) -> tuple[ServerObs, ...]:
    hashes = hashes or {}
    return tuple(
        server(n, s, M, hashes.get(n, OLD), zone="ab"[i % 2])
        for i, (n, s) in enumerate(sorted(PLACED.items()))
    )


def want() -> Desired:
    return Desired(
        {k: frozenset(v) for k, v in PLACED.items()}, {n: "ab"[i % 2] for i, n in enumerate(PLACED)}
    )


def test_a_pool_on_its_current_template_has_nothing_to_roll() -> None:
    s = state(pool(), M, *fleet({n: NEW for n in PLACED}))
    r = roll(s, want())
    assert r.desired == want() and r.done and r.updated == 4 and r.outdated == ()


def test_failed_and_deleting_pods_are_not_counted_outdated() -> None:
    a, b, c, d = fleet()
    s = state(pool(), M, replace(a, pod_failed=True), replace(b, deleting=True), c, d)
    assert roll(s, want()).outdated == ("p-2", "p-3")


def test_an_outdated_server_is_replaced_by_a_new_one_in_its_zone_holding_its_shards() -> None:
    s = state(pool(), M, *fleet())
    r = roll(s, want())
    assert r.replaced == (("p-0", "p-new-0"),)
    assert "p-0" not in r.desired.servers
    assert r.desired.servers["p-new-0"] == frozenset(PLACED["p-0"])
    assert r.desired.zones["p-new-0"] == "a"
    assert r.in_flight == 1 and not r.done
    # Converge then creates p-new-0, keeps p-0's shards draining, and deletes nothing.
    actions = converge(s, r.desired)
    assert CreateServer("p-new-0", "a") in actions
    assert not any(isinstance(a, DeleteServer) for a in actions)
    drained = next(a for a in actions if getattr(a, "server", "") == "p-0")
    assert drained.shards and all(x.drain for x in drained.shards)  # type: ignore[attr-defined]


def test_a_replacement_never_takes_the_name_of_a_server_just_deleted() -> None:
    # p-0 was replaced by p-new-0 and is gone: the next replacement is not named p-0 (an agent
    # of the old pod could still report into an assignment of that name).
    _, b, c, d = fleet()
    moved = roll(state(pool(), M, *fleet()), want()).desired
    new0 = replace(server("p-new-0", PLACED["p-0"], M, NEW), zone="a")
    r = roll(state(pool(), M, new0, b, c, d), moved)
    assert r.replaced == (("p-1", "p-new-1"),)
    long = ServerPool.model_validate(
        pool().to_wire() | {"metadata": {"name": "x" * 60, "generation": 1}}
    )
    s = PoolState(long, (M,), fleet(), template_hash=NEW)
    assert all(len(new) <= 63 for _, new in roll(s, want()).replaced)


def test_servers_that_serve_nothing_go_first() -> None:
    a, b, c, d = fleet()
    s = state(pool(), M, a, b, replace(c, pod_ready=False), d)
    assert roll(s, want()).replaced == (("p-2", "p-new-0"),)


def test_max_surge_bounds_the_replacements_in_flight() -> None:
    s = state(pool(updateStrategy={"maxSurge": 2}), M, *fleet())
    assert [old for old, _ in roll(s, want()).replaced] == ["p-0", "p-1"]
    # p-0 is being left (not in the placement, still there): one in flight, one more may start.
    moved = roll(state(pool(updateStrategy={"maxSurge": 2}), M, *fleet()), want()).desired
    one = Desired({k: v for k, v in moved.servers.items() if k != "p-new-1"}, moved.zones)
    one = Desired({**one.servers, "p-1": frozenset(PLACED["p-1"])}, one.zones)
    r = roll(s, one)
    assert r.replaced == (("p-1", "p-new-1"),) and r.in_flight == 2
    # With maxSurge 1 and p-0 in flight, nothing starts.
    r1 = roll(state(pool(), M, *fleet()), one)
    assert r1.replaced == () and r1.in_flight == 1 and r1.waiting == ""


def test_at_max_servers_the_roll_waits_and_says_why() -> None:
    s = state(pool(max_servers=4), M, *fleet())
    r = roll(s, want())
    assert r.replaced == () and r.desired == want()
    assert "maxServers 4" in r.waiting and "raise maxServers" in r.waiting
    status = roll_status(r, [], 3, NEW, datetime(2026, 11, 29, tzinfo=UTC))
    cond = next(c for c in status["conditions"] if c["type"] == "TemplateRolledOut")
    assert (cond["status"], cond["reason"]) == ("False", "WaitingForSurge")
    assert status["outdatedServers"] == 4 and status["updatedServers"] == 0
    # One server more and it goes on.
    assert roll(state(pool(max_servers=5), M, *fleet()), want()).replaced == (("p-0", "p-new-0"),)


def test_on_delete_replaces_nothing_but_counts() -> None:
    s = state(pool(updateStrategy={"type": "OnDelete"}), M, *fleet({"p-3": NEW}))
    r = roll(s, want())
    assert r.replaced == () and r.recreate == () and r.outdated == ("p-0", "p-1", "p-2")
    cond = roll_status(r, [], 3, NEW, datetime(2026, 11, 29, tzinfo=UTC))["conditions"][0]
    assert cond["reason"] == "OnDelete"
    # A pod the user deletes comes back (converge creates it; the fleet renders the template as
    # it is now, tests/kube/test_template_hash.py) and is no longer counted outdated.
    a, b, c, d = fleet({"p-3": NEW})
    gone = replace(a, pod_exists=False, pod_ready=False, loaded=frozenset())
    on_delete = pool(updateStrategy={"type": "OnDelete"})
    assert CreateServer("p-0", "a") in converge(state(on_delete, M, gone, b, c, d), want())
    back = replace(a, template_hash=NEW, pod_ready=False, loaded=frozenset())
    assert roll(state(on_delete, M, back, b, c, d), want()).outdated == ("p-1", "p-2")


def test_an_empty_server_kept_by_min_servers_is_recreated_in_place() -> None:
    spare = ServerObs("p-9", "b", pod_ready=True, template_hash=OLD)
    fresh = fleet({n: NEW for n in PLACED})
    s = state(pool(minServers=5), M, *fresh, spare)
    r = roll(s, want())
    assert r.recreate == (RecreateServer("p-9"),) and r.replaced == ()
    assert r.desired.servers["p-9"] == frozenset() and r.desired.zones["p-9"] == "b"
    # Its pod gone, converge creates it again in its zone (and deletes nothing).
    gone = replace(spare, pod_exists=False, pod_ready=False)
    assert converge(state(pool(minServers=5), M, *fresh, gone), r.desired) == [
        CreateServer("p-9", "b")
    ]
    # Without minServers converge deletes it anyway: nothing to recreate.
    assert roll(state(pool(), M, *fresh, spare), want()).recreate == ()


def test_status_says_rolled_out_when_nothing_is_outdated() -> None:
    s = state(pool(), M, *fleet({n: NEW for n in PLACED}))
    status = roll_status(roll(s, want()), [], 3, NEW, datetime(2026, 11, 29, tzinfo=UTC))
    assert status["templateHash"] == NEW and status["updatedServers"] == 4
    assert status["conditions"][0]["status"] == "True"


class RollingCluster(Cluster):
    """The converge tests' simulated fleet, with pods stamped by the template they came from."""

    def __init__(self, models: list[Model], p: ServerPool) -> None:
        super().__init__(models)
        self.pool = p
        self.current = OLD

    def state(self) -> PoolState:
        return PoolState(
            self.pool, tuple(self.models), tuple(self.servers.values()), template_hash=self.current
        )

    def apply(self, actions: list[Any]) -> None:
        super().apply([a for a in actions if not isinstance(a, RecreateServer)])
        for a in actions:
            if isinstance(a, CreateServer):
                self.servers[a.name] = replace(self.servers[a.name], template_hash=self.current)
            if isinstance(a, RecreateServer):
                s = self.servers[a.name]
                self.servers[a.name] = replace(
                    s, pod_exists=False, pod_ready=False, loaded=frozenset()
                )


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    replicas=st.integers(1, 3),
    surge=st.integers(1, 3),
    spares=st.integers(0, 2),
)
def test_a_roll_replaces_every_server_and_never_takes_a_shard_below_its_replicas(
    seed: int, replicas: int, surge: int, spares: int
) -> None:
    rng = random.Random(seed)
    models = [model("a", 3, replicas), model("b", 2, replicas)]
    names = [f"p-{i}" for i in range(5)]
    first = desired(_random_placement(rng, models, names))
    p = pool(
        max_servers=len(first.servers) + spares + surge,
        minServers=len(first.servers) + spares,
        updateStrategy={"maxSurge": surge},
    )
    cluster = RollingCluster(models, p)
    for i in range(spares):  # empty servers kept by minServers
        cluster.servers[f"p-{10 + i}"] = ServerObs(f"p-{10 + i}", "a", template_hash=OLD)
    for _ in range(30):
        cluster.apply(converge(cluster.state(), first))
        cluster.agents_progress(rng)
    assert all(n >= replicas for n in cluster.serving().values())
    cluster.current = NEW  # the template was edited
    plan = first
    for _ in range(200):
        r = roll(cluster.state(), plan)
        plan = r.desired  # the worker keeps the rolled placement
        alive = [s for s in cluster.servers.values() if s.alive]
        assert len(alive) <= p.spec.max_servers
        cluster.apply([*converge(cluster.state(), plan), *r.recreate])
        serving = cluster.serving()
        assert all(
            serving.get((m.metadata.name, i), 0) >= replicas
            for m in models
            for i in range(m.spec.shards.count or 0)
        ), serving
        cluster.agents_progress(rng)
        if r.done and not converge(cluster.state(), plan):
            break
    final = roll(cluster.state(), plan)
    assert final.done, final
    assert all(s.template_hash == NEW for s in cluster.servers.values())
    assert len(cluster.servers) == len(first.servers) + spares
