"""Convergence: random connected topologies of replicas under drops, duplicates, reordering and
partial budgeted responses end equal to the origin, and no row's version ever goes back."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ekko.updates.priority import Scheduler, SchedulerConfig
from ekko.updates.store import PullResponse, Store, TableSpec, row_wire_bytes

from .helpers import deliver, pull, versions

SPECS = (
    TableSpec("emb", 3, shards=2, model="m", weight=1.0),
    TableSpec("w", 4, kind="dense", shape=(5, 3), model="m", weight=1.0),
)
MAX_ROW = row_wire_bytes(4, "float32")


def _apply_checked(store: Store, response: PullResponse) -> None:
    before = versions(store)
    deliver(store, response)
    after = versions(store)
    for key, v in before.items():
        assert after[key] >= v, f"{key} went back from {v} to {after[key]}"


class World:
    """An origin and replicas; ``edges`` are (upstream, downstream) pairs the downstream pulls."""

    def __init__(self, rng: np.random.Generator, n: int, cache: int, policy: str) -> None:
        self.rng = rng
        self.stores = [Store(cache_capacity=cache) for _ in range(n)]
        for spec in SPECS:
            self.stores[0].declare(spec)
        self.edges = [(int(rng.integers(0, d)), d) for d in range(1, n)]  # a spanning tree
        for _ in range(int(rng.integers(0, n))):
            u, d = (int(x) for x in rng.choice(n, size=2, replace=False))
            if d != 0:
                self.edges.append((u, d))
        self.scheds = [Scheduler(SchedulerConfig(policy=policy)) for _ in range(n)]  # type: ignore[arg-type]
        self.seq = 0
        self.in_flight: list[tuple[int, PullResponse]] = []

    def write(self) -> None:
        origin = self.stores[0]
        if self.rng.random() < 0.7:
            n = int(self.rng.integers(1, 6))
            keys = self.rng.integers(0, 25, size=n)
            table, dim = "emb", 3
        else:
            keys = np.arange(int(self.rng.integers(1, 6)))
            n, table, dim = len(keys), "w", 4
        seqs = self.seq + 1 + np.arange(n)
        self.seq += n
        values = self.rng.normal(size=(n, dim)).astype(np.float32)
        origin.write(
            table, keys, values, epoch=0, origin=7, seqs=seqs, publish_time=float(self.seq)
        )

    def pull(self, edge: int, budget: int, fate: str) -> None:
        u, d = self.edges[edge]
        response = pull(self.stores[d], self.stores[u], self.scheds[u], budget)
        if fate == "deliver":
            _apply_checked(self.stores[d], response)
        elif fate == "duplicate":
            _apply_checked(self.stores[d], response)
            self.in_flight.append((d, response))
        elif fate == "delay":
            self.in_flight.append((d, response))
        # "drop": lost

    def deliver_late(self) -> None:
        if self.in_flight:
            i = int(self.rng.integers(0, len(self.in_flight)))
            d, response = self.in_flight.pop(i)
            _apply_checked(self.stores[d], response)

    def converged(self) -> bool:
        origin = self.stores[0]
        return all(s.same_state(origin) for s in self.stores[1:])

    def heal(self, budget: int, rounds: int = 400) -> int:
        """Reliable pulls along every edge until every replica equals the origin."""
        for r in range(rounds):
            if self.converged():
                return r
            for edge in range(len(self.edges)):
                self.pull(edge, budget, "deliver")
        raise AssertionError(f"not converged after {rounds} rounds")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 6),
    cache=st.sampled_from([2, 8, 1000]),
    policy=st.sampled_from(["ekko", "fifo"]),
    steps=st.integers(10, 120),
)
def test_random_topologies_converge(seed: int, n: int, cache: int, policy: str, steps: int) -> None:
    rng = np.random.default_rng(seed)
    world = World(rng, n, cache, policy)
    for _ in range(steps):
        x = rng.random()
        if x < 0.35:
            world.write()
        elif x < 0.85:
            fate = str(rng.choice(["deliver", "deliver", "drop", "duplicate", "delay"]))
            budget = int(rng.integers(0, 8 * MAX_ROW))
            world.pull(int(rng.integers(0, len(world.edges))), budget, fate)
        else:
            world.deliver_late()
    # Late and duplicated responses may still arrive while healing: they must not break it.
    while world.in_flight:
        world.deliver_late()
    world.heal(budget=int(rng.integers(MAX_ROW, 6 * MAX_ROW)))
    # Quiescent: another pull along any edge carries nothing.
    for u, d in world.edges:
        r = pull(world.stores[d], world.stores[u], world.scheds[u], 1 << 30)
        assert r.n_rows == 0


def test_priority_chain_with_a_tiny_budget_and_eviction() -> None:
    rng = np.random.default_rng(11)
    world = World(rng, 4, cache=3, policy="ekko")
    world.edges = [(0, 1), (1, 2), (2, 3)]
    for _ in range(200):
        world.write()
        world.pull(int(rng.integers(0, 3)), MAX_ROW, "deliver")
    rounds = world.heal(budget=MAX_ROW, rounds=2000)
    assert rounds > 0
    assert world.stores[0].full_scans > 0
