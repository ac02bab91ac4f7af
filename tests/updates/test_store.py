"""The store: idempotent monotone apply, dense chunks, the cache floor and full scans, restart."""

from __future__ import annotations

import numpy as np
import pytest

from ekko.updates.priority import Scheduler
from ekko.updates.store import Batch, Store, TableSpec
from ekko.updates.versions import Knowledge, VersionVector

from .helpers import deliver, pull


def emb(dim: int = 4, shards: int = 1) -> TableSpec:
    return TableSpec("emb", dim, shards=shards, model="m", weight=1.0)


def batch(keys: list[int], seqs: list[int], value: float, origin: int = 1) -> Batch:
    n = len(keys)
    return Batch.of(
        "emb",
        0,
        keys,
        epochs=0,
        origins=origin,
        seqs=seqs,
        publish_times=1.0,
        values=np.full((n, 4), value),
    )


def test_apply_is_idempotent_and_monotone() -> None:
    s = Store()
    s.declare(emb())
    assert s.apply(batch([1, 2], [5, 6], 1.0)).applied == 2
    assert s.apply(batch([1, 2], [5, 6], 1.0)).applied == 0  # duplicate
    older = s.apply(batch([1], [3], 9.0))  # reordered: an older write arrives late
    assert older.applied == 0 and older.ignored == 1
    assert s.get("emb", [1])[0][0, 0] == 1.0
    assert s.apply(batch([1], [7], 2.0)).applied == 1
    assert s.get("emb", [1])[0][0, 0] == 2.0
    # Within one batch the newest version of a key wins, whatever the order.
    s.apply(batch([3, 3, 3], [9, 11, 10], 0.0))
    assert s.snapshot("emb").seqs[s.snapshot("emb").keys == 3][0] == 11


def test_apply_tracks_magnitude_and_rejects_wrong_shapes() -> None:
    s = Store(magnitude_alpha=1.0)
    s.declare(emb())
    s.apply(batch([1], [1], 1.0))
    assert s.mean_magnitude("emb") == pytest.approx(2.0)  # |(1,1,1,1)|
    s.apply(batch([1], [2], 1.5))
    assert s.mean_magnitude("emb") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="dim"):
        s.apply(
            Batch.of(
                "emb", 0, [1], epochs=0, origins=1, seqs=3, publish_times=0, values=np.zeros((1, 3))
            )
        )
    with pytest.raises(ValueError, match="exists as"):
        s.declare(emb(dim=8))


def test_dense_tensors_travel_as_chunks() -> None:
    spec = TableSpec("w", 4, kind="dense", shape=(3, 3))
    origin, replica = Store(), Store()
    origin.declare(spec)
    tensor = np.arange(9, dtype=np.float32).reshape(3, 3)
    flat = np.zeros(spec.n_chunks * 4, dtype=np.float32)
    flat[:9] = tensor.reshape(-1)
    origin.write(
        "w", np.arange(spec.n_chunks), flat, epoch=0, origin=1, seqs=[1, 2, 3], publish_time=0.0
    )
    deliver(replica, pull(replica, origin, Scheduler()))
    assert np.array_equal(replica.dense("w"), tensor)


def test_a_pull_below_the_cache_floor_is_a_full_scan_and_still_converges() -> None:
    origin = Store(cache_capacity=4)
    origin.declare(emb())
    replica = Store()
    for seq in range(1, 21):
        origin.write(
            "emb", [seq % 10], np.full(4, seq), epoch=0, origin=1, seqs=seq, publish_time=0.0
        )
    assert origin.floor(("emb", 0)).get(0, 1) > 0
    deliver(replica, pull(replica, origin, Scheduler()))
    assert origin.full_scans == 1
    assert replica.same_state(origin)
    # Caught up: the next pull is answered from the cache (or skipped), not scanned.
    origin.write("emb", [3], np.full(4, 99), epoch=0, origin=1, seqs=21, publish_time=0.0)
    deliver(replica, pull(replica, origin, Scheduler()))
    assert origin.full_scans == 1 and replica.same_state(origin)


def test_unchanged_shard_is_skipped_without_reading_rows() -> None:
    origin = Store()
    origin.declare(emb(shards=2))
    origin.write(
        "emb", [0, 1, 2, 3], np.ones((4, 4)), epoch=0, origin=1, seqs=[1, 2, 3, 4], publish_time=0.0
    )
    before = origin.shard_version(("emb", 0))
    origin.write("emb", [1], np.ones(4), epoch=0, origin=1, seqs=5, publish_time=0.0)
    assert origin.shard_version(("emb", 0)) == before
    assert origin.shard_version(("emb", 1)) != before
    caught_up = Knowledge(VersionVector.of({(0, 1): 4}))
    assert origin.nothing_newer(("emb", 0), caught_up)
    assert not origin.nothing_newer(("emb", 1), caught_up)
    assert origin.changes_since(("emb", 0), caught_up).n == 0


def test_new_rows_are_those_the_peer_never_received() -> None:
    origin = Store()
    origin.declare(emb())
    origin.write("emb", [1, 2], np.ones((2, 4)), epoch=0, origin=1, seqs=[1, 2], publish_time=0.0)
    peer = Knowledge(VersionVector.of({(0, 1): 2}))
    origin.write(
        "emb", [1, 3], np.ones((2, 4)) * 2, epoch=0, origin=1, seqs=[3, 4], publish_time=0.0
    )
    c = origin.changes_since(("emb", 0), peer)
    assert dict(zip(c.keys.tolist(), c.new.tolist(), strict=True)) == {1: False, 3: True}


def test_restart_from_arrays_resumes_from_knowledge() -> None:
    origin = Store()
    origin.declare(emb(shards=2))
    rng = np.random.default_rng(1)
    origin.write(
        "emb",
        np.arange(50),
        rng.normal(size=(50, 4)),
        epoch=0,
        origin=1,
        seqs=np.arange(1, 51),
        publish_time=0.0,
    )
    replica = Store()
    deliver(replica, pull(replica, origin, Scheduler(), budget=1000))
    restored = Store.from_arrays(replica.to_arrays())
    assert restored.same_state(replica)
    assert restored.knowledge_map() == replica.knowledge_map()
    for _ in range(20):
        deliver(restored, pull(restored, origin, Scheduler(), budget=1000))
    assert restored.same_state(origin)
