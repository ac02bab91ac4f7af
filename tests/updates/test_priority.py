"""The scheduler: budgets, class order new > high > rest, FIFO, custom priorities, the sketch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ekko.updates.priority import (
    HIGH,
    NEW,
    REST,
    QuantileSketch,
    Ranked,
    Scheduler,
    SchedulerConfig,
    TableContext,
    fill,
    order,
)
from ekko.updates.store import Candidates, Store, TableSpec, row_wire_bytes
from ekko.updates.versions import Knowledge, VersionVector

ranked_rows = st.integers(0, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(0, 1e3), min_size=n, max_size=n),
        st.lists(st.sampled_from([NEW, HIGH, REST]), min_size=n, max_size=n),
        st.lists(st.integers(1, 1000), min_size=n, max_size=n),
        st.lists(st.integers(1, 200), min_size=n, max_size=n),
    )
)


@settings(max_examples=200, deadline=None)
@given(ranked_rows, st.integers(0, 5000), st.sampled_from(["ekko", "fifo"]))
def test_fill_never_exceeds_the_budget_and_keeps_the_order(
    rows: tuple[list[float], list[int], list[int], list[int]], budget: int, policy: str
) -> None:
    scores, classes, seqs, nbytes = rows
    r = Ranked(np.array(scores), np.array(classes, dtype=np.uint8), np.array(seqs, dtype=np.int64))
    sizes = np.array(nbytes, dtype=np.int64)
    chosen = fill(r, budget, sizes, policy)  # type: ignore[arg-type]
    assert int(sizes[chosen].sum()) <= budget
    assert len(set(chosen.tolist())) == len(chosen)
    unsent = np.setdiff1d(np.arange(len(seqs)), chosen)
    if policy == "ekko":
        got = r.classes[chosen]
        assert (np.diff(got.astype(int)) >= 0).all()  # new, then high, then rest
        if len(unsent):
            # Nothing of a lower class went while a higher-class row waited.
            assert got.max(initial=0) <= r.classes[unsent].min()
        for cls in (NEW, HIGH):
            s = r.scores[chosen][got == cls]
            assert (np.diff(s) <= 0).all()
        assert (np.diff(r.seqs[chosen][got == REST]) >= 0).all()
    else:
        assert (np.diff(r.seqs[chosen]) >= 0).all()
    ordered = order(r, policy)  # type: ignore[arg-type]
    assert np.array_equal(chosen, ordered[: len(chosen)])
    if len(chosen) < len(ordered):  # a prefix: the next row would not have fitted
        assert int(sizes[chosen].sum() + sizes[ordered[len(chosen)]]) > budget


def _store(rng: np.random.Generator, n: int) -> Store:
    s = Store()
    s.declare(TableSpec("a", 8, model="m1", weight=1.0))
    s.declare(TableSpec("b", 4, shards=2, model="m2", weight=0.25))
    for seq in range(1, 4):
        keys = rng.choice(n, size=n // 2, replace=False)
        s.write(
            "a",
            keys,
            rng.normal(size=(len(keys), 8)) * seq,
            epoch=0,
            origin=1,
            seqs=seq * 1000 + np.arange(len(keys)),
            publish_time=0.0,
        )
        s.write(
            "b",
            keys,
            rng.normal(size=(len(keys), 4)),
            epoch=0,
            origin=1,
            seqs=seq * 1000 + 500 + np.arange(len(keys)),
            publish_time=0.0,
        )
    return s


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.integers(0, 4000), st.sampled_from(["float32", "float16", "int8"]))
def test_a_response_never_exceeds_the_budget(seed: int, budget: int, dtype: str) -> None:
    rng = np.random.default_rng(seed)
    store = _store(rng, 40)
    known = Knowledge(VersionVector.of({(0, 1): int(rng.integers(0, 3600))}))
    request = Store().pull_request(budget, dtype)  # type: ignore[arg-type]
    request = type(request)({s: known for s in store.shards()}, budget, dtype)  # type: ignore[arg-type]
    response = Scheduler().respond(store, request)
    spent = sum(b.n * row_wire_bytes(store.spec(b.table).dim, dtype) for b in response.batches)  # type: ignore[arg-type]
    assert spent <= budget
    assert response.complete == (response.backlog == 0)


def test_new_rows_first_then_high_then_rest_with_model_weight() -> None:
    s = Store(magnitude_alpha=1.0)
    s.declare(TableSpec("t", 2))
    s.write(
        "t",
        [1, 2, 3, 4],
        [[1, 0], [1, 0], [1, 0], [1, 0]],
        epoch=0,
        origin=1,
        seqs=[1, 2, 3, 4],
        publish_time=0.0,
    )
    known = Knowledge(VersionVector.of({(0, 1): 4}))
    # Row 1 changes a lot, 2 and 3 a little, 5 is new.
    s.write(
        "t",
        [1, 2, 3, 5],
        [[9, 0], [1.1, 0], [1.2, 0], [0, 0.1]],
        epoch=0,
        origin=1,
        seqs=[5, 6, 7, 8],
        publish_time=0.0,
    )
    c = s.changes_since(("t", 0), known)
    sched = Scheduler(SchedulerConfig(high_percentile=0.6))
    r = sched.rank(c, TableContext(s.mean_magnitude("t"), 1.0))
    by_key = dict(zip(c.keys.tolist(), r.classes.tolist(), strict=True))
    assert by_key == {1: HIGH, 2: REST, 3: REST, 5: NEW}
    chosen = fill(r, 3 * row_wire_bytes(2, "float32"), row_wire_bytes(2, "float32"))
    assert c.keys[chosen].tolist() == [5, 1, 2]  # rest in seq order


def test_fifo_and_custom_priority() -> None:
    s = Store()
    s.declare(TableSpec("t", 2))
    s.write("t", [7, 8, 9], np.ones((3, 2)), epoch=0, origin=1, seqs=[3, 1, 2], publish_time=0.0)
    budget = 2 * row_wire_bytes(2, "float32")
    fifo = Scheduler(SchedulerConfig(policy="fifo")).respond(s, Store().pull_request(budget))
    assert sorted(fifo.batches[0].keys.tolist()) == [8, 9]

    def by_key(c: Candidates, ctx: TableContext) -> np.ndarray:
        return c.keys.astype(np.float64)

    custom = Scheduler(SchedulerConfig(priority_fn=by_key, high_percentile=0.0))
    r = custom.respond(s, Store().pull_request(budget))
    # All rows are new to an empty peer: the custom score orders within the new class.
    assert sorted(r.batches[0].keys.tolist()) == [8, 9]
    assert r.batches[0].keys.tolist() == [9, 8]


def test_partial_response_vouches_only_below_the_oldest_unsent_row() -> None:
    s = Store()
    s.declare(TableSpec("t", 2))
    s.write("t", [1, 2, 3], np.ones((3, 2)), epoch=0, origin=1, seqs=[10, 20, 30], publish_time=0.0)
    r = Scheduler(SchedulerConfig(policy="fifo")).respond(
        s, Store().pull_request(row_wire_bytes(2, "float32"))
    )
    assert r.batches[0].keys.tolist() == [1]
    assert r.batches[0].covered.get(0, 1) == 19
    assert not r.complete and r.backlog == 2


@pytest.mark.parametrize("q", [0.1, 0.5, 0.9, 0.99])
def test_quantile_sketch_is_within_one_bucket(q: float) -> None:
    rng = np.random.default_rng(3)
    values = rng.lognormal(0, 2, size=20_000)
    sk = QuantileSketch(per_decade=40, half_life=1e12)
    for chunk in np.array_split(values, 20):
        sk.add(chunk)
    true = float(np.quantile(values, q, method="inverted_cdf"))
    assert abs(sk.quantile(q) / true - 1) <= 10 ** (1 / 40) - 1


def test_quantile_sketch_follows_drift_and_handles_edges() -> None:
    sk = QuantileSketch(half_life=1000)
    assert sk.quantile(0.5) == float("inf")
    sk.add(np.full(5000, 1.0))
    sk.add(np.full(5000, 100.0))
    assert sk.quantile(0.5) == pytest.approx(100.0, rel=0.06)
    sk.add([0.0, -1.0, np.nan])
    assert sk.count > 0
