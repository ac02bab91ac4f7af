"""Cuts and undo logs: a view at a cut equals a full copy taken at the cut, restore gives the cut
back at a new epoch, the fence keeps old-epoch rows above the cut out, the cap is respected."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ekko.updates.snapshots import (
    SOURCE_RESTORE_SEQ,
    CutLog,
    Fence,
    fence,
    knowledge_at,
    max_epoch,
    row_bytes,
)
from ekko.updates.store import Batch, Store, TableSpec
from ekko.updates.versions import Knowledge, VersionVector

DIM = 3
KEYS = 12
TABLES = (TableSpec("user", DIM, shards=2), TableSpec("item", DIM))


def _store() -> Store:
    s = Store()
    for spec in TABLES:
        s.declare(spec)
    return s


def _copy(store: Store) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A full copy of every table over the whole key space (values, found)."""
    keys = np.arange(KEYS)
    return {spec.name: tuple(x.copy() for x in store.get(spec.name, keys)) for spec in TABLES}  # type: ignore[misc]


class Writer:
    """The origin: writes through the CutLog hook, with increasing seqs."""

    def __init__(self, store: Store, log: CutLog) -> None:
        self.store, self.log, self.seq, self.epoch = store, log, 0, 0

    def write(self, table: str, keys: list[int], values: np.ndarray) -> None:
        self.seq += 1
        self.log.before_write(self.store, table, keys)
        self.store.write(
            table, keys, values, epoch=self.epoch, origin=1, seqs=self.seq, publish_time=0.0
        )


op = st.one_of(
    st.tuples(
        st.just("w"),
        st.sampled_from([t.name for t in TABLES]),
        st.lists(st.integers(0, KEYS - 1), min_size=1, max_size=5, unique=True),
        st.floats(-10, 10, allow_nan=False, width=32),
    ),
    st.tuples(st.just("cut")),
    st.tuples(st.just("drop"), st.integers(0, 5)),
)


@settings(max_examples=50, deadline=None)
@given(st.lists(op, min_size=1, max_size=30))
def test_view_at_cut_equals_full_copy(ops: list[tuple[object, ...]]) -> None:
    store, log = _store(), CutLog()
    w = Writer(store, log)
    copies: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    taken: list[int] = []
    for o in ops:
        if o[0] == "cut":
            cid = len(taken) + 1
            taken.append(cid)
            log.take(store, cid, now=float(cid))
            copies[cid] = _copy(store)
        elif o[0] == "drop":
            # Any retained cut, the middle ones too: older cuts must keep reading through it.
            assert isinstance(o[1], int)
            if copies:
                gone = sorted(copies)[o[1] % len(copies)]
                log.drop(gone)
                del copies[gone]
        else:
            _, table, keys, x = o
            assert isinstance(table, str) and isinstance(keys, list) and isinstance(x, float)
            w.write(table, keys, np.full((len(keys), DIM), x, dtype=np.float32) + np.arange(DIM))
    assert [c.id for c in log.cuts()] == sorted(copies)
    for cid, copy in copies.items():
        view = log.view(store, cid)
        for name, (values, found) in copy.items():
            got, got_found = view.get(name, np.arange(KEYS))
            np.testing.assert_array_equal(got, values)
            np.testing.assert_array_equal(got_found, found)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(op, min_size=1, max_size=25),
    st.lists(op, min_size=1, max_size=25),
)
def test_restore_gives_back_the_cut(
    before: list[tuple[object, ...]], after: list[tuple[object, ...]]
) -> None:
    store, log = _store(), CutLog()
    w = Writer(store, log)

    def run(ops: list[tuple[object, ...]]) -> None:
        for o in ops:
            if o[0] == "w":
                _, table, keys, x = o
                assert isinstance(table, str) and isinstance(keys, list) and isinstance(x, float)
                w.write(table, keys, np.full((len(keys), DIM), x, dtype=np.float32))

    run(before)
    log.take(store, 1, now=1.0)
    expected = _copy(store)
    run(after)
    epoch_before = max_epoch(store)
    result = log.restore(store, 1, now=2.0)
    assert result.epoch == epoch_before + 1
    for name, (values, _) in expected.items():
        got, _ = store.get(name, np.arange(KEYS))
        np.testing.assert_array_equal(got, values)  # rows born after the cut read as zeros
    # The view at the restored cut is the live state again, at no cost.
    assert log.cut_bytes(1) == 0
    # Restore is idempotent: a second restore to the same cut changes nothing.
    again = log.restore(store, 1, now=3.0)
    for name, (values, _) in expected.items():
        np.testing.assert_array_equal(store.get(name, np.arange(KEYS))[0], values)
    assert sum(again.rows.values()) == 0


def test_restore_keeps_older_cuts_and_drops_newer() -> None:
    store, log = _store(), CutLog()
    w = Writer(store, log)
    w.write("item", [0, 1], np.ones((2, DIM), dtype=np.float32))
    log.take(store, 1, now=1.0)
    c1 = _copy(store)
    w.write("item", [1, 2], 2 * np.ones((2, DIM), dtype=np.float32))
    log.take(store, 2, now=2.0)
    c2 = _copy(store)
    w.write("item", [2, 3], 3 * np.ones((2, DIM), dtype=np.float32))
    log.take(store, 3, now=3.0)
    w.write("item", [0], 4 * np.ones((1, DIM), dtype=np.float32))
    log.restore(store, 2, now=4.0)
    assert [c.id for c in log.cuts()] == [1, 2]
    np.testing.assert_array_equal(store.get("item", np.arange(KEYS))[0], c2["item"][0])
    np.testing.assert_array_equal(log.view(store, 1).get("item", np.arange(KEYS))[0], c1["item"][0])


def test_epoch_fences_old_rows_above_the_cut() -> None:
    store, log = _store(), CutLog()
    w = Writer(store, log)
    w.write("item", [0], np.ones((1, DIM), dtype=np.float32))  # seq 1
    log.take(store, 1, now=1.0)
    w.write("item", [0, 1], 5 * np.ones((2, DIM), dtype=np.float32))  # seq 2: harmful
    result = log.restore(store, 1, now=2.0)
    assert result.fence == Fence(1, result.cut.vectors)
    # A straggler of the old epoch above the cut (seq 3) and a late pre-cut write (seq 1).
    straggler = Batch.of(
        "item",
        0,
        [1, 2, 3],
        epochs=0,
        origins=1,
        seqs=[3, 3, 1],
        publish_times=0.0,
        values=np.full((3, DIM), 7.0),
        covered=VersionVector.of({(0, 1): 3}),
    )
    kept = fence(straggler, result.fence)
    assert kept.keys.tolist() == [3]
    assert kept.covered == straggler.covered  # seen, so not pulled again and again
    store.apply(kept)
    vals, found = store.get("item", [0, 1, 2, 3])
    assert vals[:, 0].tolist() == [1.0, 0.0, 0.0, 7.0]
    assert found.tolist() == [True, True, False, True]
    # New-epoch rows pass the fence untouched.
    fresh = Batch.of(
        "item", 0, [0], epochs=1, origins=1, seqs=9, publish_times=0.0, values=np.zeros((1, DIM))
    )
    assert fence(fresh, result.fence) is fresh
    assert fence(fresh, None) is fresh


def test_before_apply_records_what_a_batch_overwrites() -> None:
    store, log = _store(), CutLog()
    Writer(store, log).write("user", [0, 2], np.ones((2, DIM), dtype=np.float32))
    log.take(store, 1, now=0.0)
    batch = Batch.of(
        "user", 0, [0, 4], epochs=0, origins=2, seqs=5, publish_times=0.0, values=np.zeros((2, DIM))
    )
    log.before_apply(store, batch)
    store.apply(batch)
    vals, found = log.view(store, 1).get("user", [0, 2, 4])
    assert vals[:, 0].tolist() == [1.0, 1.0, 0.0]
    assert found.tolist() == [True, True, False]
    assert log.bytes == 2 * row_bytes(DIM)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, KEYS - 1), min_size=1, max_size=6), min_size=1, max_size=20),
    st.integers(0, 12),
    st.integers(1, 4),
)
def test_cap_is_respected_and_oldest_dropped(
    writes: list[list[int]], cap_rows: int, every: int
) -> None:
    cap = cap_rows * row_bytes(DIM)
    store, log = _store(), CutLog(cap_bytes=cap)
    w = Writer(store, log)
    cid = 0
    for i, keys in enumerate(writes):
        if i % every == 0:
            cid += 1
            log.take(store, cid, now=float(i))
            copy = _copy(store)
            newest = cid
        w.write("item", keys, np.full((len(keys), DIM), float(i), dtype=np.float32))
        assert log.bytes <= cap
        assert log.bytes == sum(log.cut_bytes(c.id) for c in log.cuts())
        ids = [c.id for c in log.cuts()]
        # Dropped cuts are always the oldest: what remains is a suffix of the cuts taken.
        assert ids == list(range(cid - len(ids) + 1, cid + 1))
    if log.has(newest):
        np.testing.assert_array_equal(
            log.view(store, newest).get("item", np.arange(KEYS))[0], copy["item"][0]
        )
    assert log.peak_bytes <= cap


def test_cut_ids_increase_and_unknown_cut_is_an_error() -> None:
    store, log = _store(), CutLog()
    log.take(store, 5, now=0.0)
    with pytest.raises(ValueError, match="not newer"):
        log.take(store, 5, now=1.0)
    with pytest.raises(KeyError, match="no retained cut"):
        log.view(store, 4)
    with pytest.raises(ValueError, match="does not fence"):
        Writer(store, log).write("item", [0], np.ones((1, DIM), dtype=np.float32))
        log.restore(store, 5, now=1.0, epoch=0)


def test_knowledge_at_is_the_pointwise_minimum() -> None:
    a = Knowledge(VersionVector.of({(0, 1): 5, (0, 2): 3}))
    b = Knowledge(VersionVector.of({(0, 1): 4}))
    assert knowledge_at([a, b]) == VersionVector.of({(0, 1): 4})
    assert knowledge_at([]) == VersionVector()


def test_dense_view() -> None:
    store, log = Store(), CutLog()
    store.declare(TableSpec("dense", 2, kind="dense", shape=(3,)))
    store.write("dense", [0, 1], np.ones((2, 2)), epoch=0, origin=1, seqs=1, publish_time=0.0)
    log.take(store, 1, now=0.0)
    log.before_write(store, "dense", [1])
    store.write("dense", [1], np.full((1, 2), 9.0), epoch=0, origin=1, seqs=2, publish_time=0.0)
    assert log.view(store, 1).dense("dense").tolist() == [1.0, 1.0, 1.0]
    assert store.dense("dense").tolist() == [1.0, 1.0, 9.0]


# --- the node's cut and restore endpoints, on loopback ----------------------------------------


def test_node_cut_and_restore_over_http() -> None:
    import asyncio

    import aiohttp
    from prometheus_client import CollectorRegistry

    from ekko.updates.node import Node, NodeConfig, Upstream
    from ekko.updates.publisher import Publisher
    from ekko.updates.wire import CUT_PATH, RESTORE_PATH

    spec = TableSpec("emb", 4, shards=2, model="ranker")

    async def until(cond: object, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not cond():  # type: ignore[operator]
            assert loop.time() < deadline, "timed out"
            await asyncio.sleep(0.02)

    async def scenario() -> None:
        pub = Publisher(1, [spec], registry=CollectorRegistry())
        port = await pub.start("127.0.0.1", 0)
        cfg = NodeConfig(
            name="n",
            upstreams=(Upstream(f"http://127.0.0.1:{port}"),),
            listen="127.0.0.1:0",
            wait=0.5,
            retry=0.1,
        )
        node = Node(cfg, CollectorRegistry())
        nport = await node.start()
        base = f"http://127.0.0.1:{nport}"
        keys = np.arange(20)
        try:
            async with aiohttp.ClientSession() as http:
                pub.publish("emb", keys, np.ones((20, 4)))
                await until(lambda: node.store.same_state(pub.store))
                good = node.store.get("emb", keys)[0].copy()
                async with http.post(base + CUT_PATH, json={"cut": 1}) as r:
                    assert r.status == 200
                    body = await r.json()
                    assert body["cut"] == 1 and body["retained"] == [1]
                # A harmful update reaches the node.
                pub.publish("emb", keys[:10], np.full((10, 4), 50.0))
                await until(lambda: node.store.same_state(pub.store))
                async with http.post(base + RESTORE_PATH, json={"cut": 1, "epoch": 1}) as r:
                    assert r.status == 200
                    assert await r.json() == {"cut": 1, "epoch": 1, "rows": {"emb": 10}}
                np.testing.assert_array_equal(node.store.get("emb", keys)[0], good)
                # The publisher has not restored yet: its old-epoch rows above the cut are fenced.
                pub.publish("emb", keys[10:12], np.full((2, 4), 70.0))
                await asyncio.sleep(0.3)
                np.testing.assert_array_equal(node.store.get("emb", keys)[0], good)
                # Resumed at the new epoch (from the trainer's checkpoint): rows flow again.
                pub.epoch = 1
                pub.publish("emb", keys[:1], np.full((1, 4), 2.0))
                await until(lambda: float(node.store.get("emb", [0])[0][0, 0]) == 2.0)
                # Errors: unknown cut, bad body, an epoch that fences nothing.
                async with http.post(base + RESTORE_PATH, json={"cut": 9}) as r:
                    assert r.status == 404
                async with http.post(base + RESTORE_PATH, data=b"[") as r:
                    assert r.status == 400
                async with http.post(base + CUT_PATH, json={"cut": "x"}) as r:
                    assert r.status == 400
                async with http.post(base + RESTORE_PATH, json={"cut": 1, "epoch": 0}) as r:
                    assert r.status == 409
                # The publisher keeps cuts too: both cut, a harmful burst, both restore at
                # epoch 2: each is back to its own state at the cut, and rows flow again.
                pub_base = f"http://127.0.0.1:{port}"
                async with http.post(pub_base + CUT_PATH, json={"cut": 2}) as r:
                    assert r.status == 200
                    announced = (await r.json())["vectors"]
                    assert announced and announced[0]["table"] == "emb"
                async with http.post(base + CUT_PATH, json={"cut": 2, "vectors": "x"}) as r:
                    assert r.status == 400 and "vectors" in (await r.json())["error"]
                async with http.post(base + CUT_PATH, json={"cut": 2, "vectors": announced}) as r:
                    assert r.status == 200
                    assert (await r.json())["vectors"] == announced  # named by the publisher
                burst = keys[5:8]
                node_clean = node.store.get("emb", burst)[0].copy()
                pub_clean = pub.store.get("emb", burst)[0].copy()
                pub.publish("emb", burst, np.full((3, 4), -40.0))
                await until(lambda: float(node.store.get("emb", [5])[0][0, 0]) == -40.0)
                for url in (pub_base, base):
                    async with http.post(url + RESTORE_PATH, json={"cut": 2, "epoch": 2}) as r:
                        assert r.status == 200, await r.text()
                assert pub.epoch == 2
                np.testing.assert_array_equal(pub.store.get("emb", burst)[0], pub_clean)
                # Whichever restored first, the node ends with the source's restored rows (here
                # they differ from its own cut: the publisher never undid the first burst).
                await until(
                    lambda: np.array_equal(
                        node.store.get("emb", burst)[0], pub.store.get("emb", burst)[0]
                    )
                )
                assert not np.array_equal(node_clean, pub_clean)
                pub.publish("emb", keys[:1], np.full((1, 4), 3.0))  # at epoch 2: admitted
                await until(lambda: float(node.store.get("emb", [0])[0][0, 0]) == 3.0)
        finally:
            await node.stop()
            await pub.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def _pull(origin: Store, replica: Store, log: CutLog, budget: int, f: Fence | None = None) -> None:
    """One pull of at most ``budget`` bytes, as a node applies it (fence, cut log, apply)."""
    from ekko.updates.priority import Scheduler

    for spec in origin.specs():
        replica.declare(spec)
    response = Scheduler().respond(origin, replica.pull_request(budget))
    for pulled in response.batches:
        b = fence(pulled, f)
        log.before_apply(replica, b)
        replica.apply(b)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([t.name for t in TABLES]),
            st.lists(st.integers(0, KEYS - 1), min_size=1, max_size=4, unique=True),
        ),
        min_size=2,
        max_size=16,
    ),
    st.integers(0, 15),
    st.lists(st.integers(40, 400), min_size=1, max_size=8),
)
def test_replicas_behind_the_announced_cut_end_with_the_publishers_state(
    writes: list[tuple[str, list[int]]], cut_at: int, budgets: list[int]
) -> None:
    """The publisher announces cut 1 (its vectors); a replica that lags (small pulls) takes it
    with those vectors; both restore at epoch 1. The publisher holds its state at the cut, and
    after one pull the replica holds exactly the publisher's (its restored rows lose to the
    source's, so a pre-image older than the cut's value is corrected)."""
    origin, olog = _store(), CutLog()
    replica, rlog = _store(), CutLog()
    w = Writer(origin, olog)
    cut_at %= len(writes)
    at_cut = None
    for n, (table, keys) in enumerate(writes):
        if n == cut_at:
            announced = olog.take(origin, 1, now=1.0)
            at_cut = _copy(origin)
            rlog.take(replica, 1, now=1.0, vectors=announced.vectors)
        w.write(table, keys, np.full((len(keys), DIM), float(n + 1), dtype=np.float32))
        _pull(origin, replica, rlog, budgets[n % len(budgets)])  # partial: the replica lags
    assert at_cut is not None
    olog.restore(origin, 1, now=2.0, epoch=1, seq=SOURCE_RESTORE_SEQ)
    r = rlog.restore(replica, 1, now=2.0, epoch=1)
    keys = np.arange(KEYS)
    for spec in TABLES:
        np.testing.assert_array_equal(origin.get(spec.name, keys)[0], at_cut[spec.name][0])
    _pull(origin, replica, rlog, 1 << 30, r.fence)
    for spec in TABLES:
        np.testing.assert_array_equal(replica.get(spec.name, keys)[0], at_cut[spec.name][0])
    assert replica.same_state(origin)
