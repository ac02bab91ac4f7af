"""The scheduler's exception budget (rest rows by score, then by seq) and its drift significance
(how far a row moved since the version the downstreams hold)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ekko.updates.priority import (
    HIGH,
    NEW,
    REST,
    Ranked,
    Scheduler,
    SchedulerConfig,
    TableContext,
    ekko_priority,
    fill,
    order,
)
from ekko.updates.store import Store, TableSpec, row_wire_bytes
from ekko.updates.versions import Knowledge, VersionVector

from .helpers import deliver, pull
from .test_convergence import MAX_ROW, World

ranked_rows = st.integers(0, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(0, 1e3), min_size=n, max_size=n),
        st.lists(st.sampled_from([NEW, HIGH, REST]), min_size=n, max_size=n),
        st.lists(st.integers(1, 1000), min_size=n, max_size=n),
        st.lists(st.integers(1, 200), min_size=n, max_size=n),
    )
)


@settings(max_examples=200, deadline=None)
@given(ranked_rows, st.integers(0, 5000), st.integers(0, 70))
def test_fill_with_a_rest_budget_keeps_budget_and_class_order(
    rows: tuple[list[float], list[int], list[int], list[int]], budget: int, by_score: int
) -> None:
    scores, classes, seqs, nbytes = rows
    r = Ranked(np.array(scores), np.array(classes, dtype=np.uint8), np.array(seqs, dtype=np.int64))
    sizes = np.array(nbytes, dtype=np.int64)
    chosen = fill(r, budget, sizes, "ekko", by_score)
    assert int(sizes[chosen].sum()) <= budget
    assert len(set(chosen.tolist())) == len(chosen)
    ordered = order(r, "ekko", by_score)
    assert sorted(ordered.tolist()) == list(range(len(seqs)))
    assert np.array_equal(chosen, ordered[: len(chosen)])
    cls = r.classes[ordered].astype(int)
    assert (np.diff(cls) >= 0).all()  # new, then high, then rest
    for c in (NEW, HIGH):
        assert (np.diff(r.scores[ordered][cls == c]) <= 0).all()
    rest = ordered[cls == REST]
    k = min(by_score, len(rest))
    head, tail = rest[:k], rest[k:]
    # The budgeted head is the k best-scored rest rows, by score; the tail goes by seq.
    assert (np.diff(r.scores[head]) <= 0).all()
    if len(head) and len(tail):
        assert r.scores[head].min() >= r.scores[tail].max()
    assert (np.diff(r.seqs[tail]) >= 0).all()
    # Budget 0 is the old order exactly.
    assert np.array_equal(order(r, "ekko", 0), order(r, "ekko"))


def _origin(n_keys: int, dim: int = 2) -> Store:
    s = Store()
    s.declare(TableSpec("emb", dim))
    return s


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    exc_budget=st.integers(0, 12),
    steps=st.integers(5, 60),
)
def test_the_peer_exception_set_stays_within_the_budget(
    seed: int, exc_budget: int, steps: int
) -> None:
    """Rows the rest class sends by score never push the peer's exception set beyond the
    budget; only new and high rows (which always went first) may add more."""
    rng = np.random.default_rng(seed)
    origin, peer = _origin(40), Store()
    sched = Scheduler(SchedulerConfig(high_percentile=1.0, exception_budget=exc_budget))
    keys = np.arange(40)
    seq = 0
    origin.write(
        "emb", keys, rng.normal(size=(40, 2)), epoch=0, origin=1, seqs=keys + 1, publish_time=0
    )
    seq = 40
    deliver(peer, pull(peer, origin, sched))  # the peer holds every key: no new rows from now on
    row = row_wire_bytes(2, "float32")
    for _ in range(steps):
        n = int(rng.integers(1, 15))
        k = rng.choice(40, size=n, replace=False)
        seqs = seq + 1 + np.arange(n)
        seq += n
        origin.write(
            "emb", k, rng.normal(size=(n, 2)), epoch=0, origin=1, seqs=seqs, publish_time=0
        )
        before = peer.knowledge(("emb", 0)).n_exceptions
        resp = pull(peer, origin, sched, budget=int(rng.integers(0, 10)) * row)
        out_of_band = sum(int((b.classes != REST).sum()) for b in resp.batches)
        deliver(peer, resp)
        after = peer.knowledge(("emb", 0)).n_exceptions
        assert after <= max(before, exc_budget) + out_of_band
    # And it still converges.
    for _ in range(200):
        if peer.same_state(origin):
            break
        deliver(peer, pull(peer, origin, sched, budget=3 * row))
    assert peer.same_state(origin)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 6),
    cache=st.sampled_from([2, 8, 1000]),
    exc_budget=st.sampled_from([0, 1, 3, 1024]),
    steps=st.integers(10, 120),
)
def test_random_topologies_converge_with_any_exception_budget(
    seed: int, n: int, cache: int, exc_budget: int, steps: int
) -> None:
    rng = np.random.default_rng(seed)
    world = World(rng, n, cache, "ekko")
    world.scheds = [Scheduler(SchedulerConfig(exception_budget=exc_budget)) for _ in range(n)]
    for _ in range(steps):
        x = rng.random()
        if x < 0.35:
            world.write()
        elif x < 0.85:
            fate = str(rng.choice(["deliver", "deliver", "drop", "duplicate", "delay"]))
            world.pull(
                int(rng.integers(0, len(world.edges))), int(rng.integers(0, 8 * MAX_ROW)), fate
            )
        else:
            world.deliver_late()
    while world.in_flight:
        world.deliver_late()
    world.heal(budget=int(rng.integers(MAX_ROW, 6 * MAX_ROW)))
    for u, d in world.edges:
        assert pull(world.stores[d], world.stores[u], world.scheds[u], 1 << 30).n_rows == 0


def test_drift_measures_the_move_since_the_downstreams_version() -> None:
    origin, peer = _origin(3), Store()
    sched = Scheduler()
    base = np.zeros((3, 2))
    origin.write("emb", [0, 1, 2], base, epoch=0, origin=1, seqs=[1, 2, 3], publish_time=0)
    deliver(peer, pull(peer, origin, sched))  # the cut is now the peer's vector (seq 3)
    pull(peer, origin, sched)  # the responder learns the peer holds seq 3
    assert [k.vector for k in origin.downstreams(("emb", 0))] == [VersionVector.of({(0, 1): 3})]
    # Key 0 drifts in ten small steps; key 1 jumps once (bigger last write); key 2 oscillates.
    seq = 3
    for i in range(10):
        seq += 1
        origin.write(
            "emb", [0], [[0.3 * (i + 1), 0.0]], epoch=0, origin=1, seqs=[seq], publish_time=0
        )
    seq += 1
    origin.write("emb", [1], [[1.0, 0.0]], epoch=0, origin=1, seqs=[seq], publish_time=0)
    for v in (2.0, -2.0, 0.0):
        seq += 1
        origin.write("emb", [2], [[v, 0.0]], epoch=0, origin=1, seqs=[seq], publish_time=0)
    c = origin.changes_since(("emb", 0), peer.knowledge(("emb", 0)))
    assert c.drift is not None
    drift = dict(zip(c.keys.tolist(), c.drift.tolist(), strict=True))
    last = dict(zip(c.keys.tolist(), c.magnitudes.tolist(), strict=True))
    assert np.isclose(drift[0], 3.0) and np.isclose(last[0], 0.3)
    assert np.isclose(drift[1], 1.0) and np.isclose(last[1], 1.0)
    assert np.isclose(drift[2], 0.0) and np.isclose(last[2], 2.0)
    scores = ekko_priority(c, TableContext(1.0, 1.0))
    by_key = dict(zip(c.keys.tolist(), scores.tolist(), strict=True))
    assert by_key[0] > by_key[1] > by_key[2]
    # Once the peer holds everything, the baseline follows at the next write.
    deliver(peer, pull(peer, origin, sched))
    pull(peer, origin, sched)
    seq += 1
    origin.write("emb", [0], [[3.5, 0.0]], epoch=0, origin=1, seqs=[seq], publish_time=0)
    c = origin.changes_since(("emb", 0), peer.knowledge(("emb", 0)))
    assert c.drift is not None and np.allclose(c.drift, [0.5])


def test_a_silent_peer_stops_holding_the_cut_back() -> None:
    origin = _origin(2)
    origin.write("emb", [0, 1], np.zeros((2, 2)), epoch=0, origin=1, seqs=[1, 2], publish_time=0)
    sched = Scheduler(SchedulerConfig(peer_ttl=3))
    slow = Store().pull_request(1 << 20, peer="slow")
    fast_store = Store()
    deliver(fast_store, sched.respond(origin, fast_store.pull_request(1 << 20, peer="fast")))
    sched.respond(origin, slow)
    assert len(origin.downstreams(("emb", 0))) == 2
    for _ in range(4):
        sched.respond(origin, fast_store.pull_request(1 << 20, peer="fast"))
    assert [k.vector for k in origin.downstreams(("emb", 0))] == [VersionVector.of({(0, 1): 2})]


def test_saved_stores_without_a_baseline_still_load() -> None:
    origin = _origin(2)
    origin.write("emb", [0, 1], np.ones((2, 2)), epoch=0, origin=1, seqs=[1, 2], publish_time=0)
    arrays = {k: v for k, v in origin.to_arrays().items() if not k.endswith("base_values")}
    back = Store.from_arrays(arrays)
    assert back.same_state(origin)
    c = back.changes_since(("emb", 0), Knowledge())
    assert c.drift is not None and np.allclose(c.drift, 0.0)
