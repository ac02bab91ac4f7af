"""Cuts per model: two models (two update streams) share one store on a server; each stream's
manager takes and restores its own cuts, and one model's rollback never touches the other's rows,
epoch or in-flight updates."""

from __future__ import annotations

import numpy as np
import pytest

from ekko.updates.snapshots import ModelCuts, max_epoch
from ekko.updates.store import Batch, Store, TableSpec
from ekko.updates.versions import VersionVector

DIM = 3
KEYS = np.arange(6)


def _store() -> Store:
    s = Store()
    for model in ("a", "b"):
        s.declare(TableSpec(f"{model}.user", DIM, model=model))
        s.declare(TableSpec(f"{model}.item", DIM, model=model, shards=2))
    return s


def _batch(table: str, part: int, keys: list[int], epoch: int, seq: int, x: float) -> Batch:
    return Batch.of(
        table,
        part,
        keys,
        epochs=epoch,
        origins=1,
        seqs=seq,
        publish_times=0.0,
        values=np.full((len(keys), DIM), x, dtype=np.float32),
        covered=VersionVector.of({(epoch, 1): seq}),
    )


class Replica:
    """A server's store fed the way the node feeds it: fence, cut logs, apply."""

    def __init__(self) -> None:
        self.store = _store()
        self.cuts = ModelCuts()
        self.seq = 0

    def pull(self, table: str, keys: list[int], x: float, epoch: int = 0) -> None:
        self.seq += 1
        parts = self.store.spec(table).shards
        for part in range(parts):
            mine = [k for k in keys if k % parts == part]
            if mine:
                b = self.cuts.fence(self.store, _batch(table, part, mine, epoch, self.seq, x))
                self.cuts.before_apply(self.store, b)
                self.store.apply(b)

    def rows(self, table: str) -> np.ndarray:
        return self.store.get(table, KEYS)[0].copy()


def test_restoring_one_model_leaves_the_other_untouched() -> None:
    r = Replica()
    for t in ("a.user", "a.item", "b.user", "b.item"):
        r.pull(t, KEYS.tolist(), 1.0)
    r.cuts.log("a").take(r.store, 1, now=1.0)
    r.cuts.log("b").take(r.store, 1, now=1.0)  # each stream numbers its cuts from 1
    a_at_cut = {t: r.rows(t) for t in ("a.user", "a.item")}
    # Both models move on; model a's update is harmful, b's is good training.
    r.pull("a.item", [0, 1, 2], -50.0)
    r.pull("b.item", [0, 1, 2], 2.0)
    r.pull("b.user", [3], 3.0)
    b_now = {t: r.rows(t) for t in ("b.user", "b.item")}

    result = r.cuts.restore(r.store, 1, model="a", now=2.0)

    assert set(result.rows) == {"a.item"}  # only a's logged rows are written back
    for t, rows in a_at_cut.items():
        np.testing.assert_array_equal(r.rows(t), rows)
    for t, rows in b_now.items():  # b keeps its newer rows
        np.testing.assert_array_equal(r.rows(t), rows)
    assert (max_epoch(r.store, "a"), max_epoch(r.store, "b")) == (1, 0)
    # b's cut is intact: its view still reads b as it was at b's cut 1.
    np.testing.assert_array_equal(
        r.cuts.log("b").view(r.store, 1).get("b.item", KEYS)[0], np.ones((len(KEYS), DIM))
    )
    # a's old-epoch stragglers are fenced; b's epoch-0 rows keep flowing.
    r.pull("a.item", [3], -50.0)
    r.pull("b.item", [3], 4.0)
    assert r.rows("a.item")[3, 0] == 1.0
    assert r.rows("b.item")[3, 0] == 4.0


def test_each_model_restores_at_its_own_epoch() -> None:
    """A model whose state went back three times does not stop another's first rollback (one
    store-wide epoch refused it: epoch 1 below the store's 3)."""
    r = Replica()
    r.pull("a.item", [0], 1.0)
    r.pull("b.item", [0], 1.0)
    for epoch in (1, 2, 3):
        r.cuts.log("a").take(r.store, epoch, now=float(epoch))
        r.pull("a.item", [0], -9.0, epoch=epoch - 1)
        r.cuts.restore(r.store, epoch, model="a", now=float(epoch), epoch=epoch)
    r.cuts.log("b").take(r.store, 1, now=5.0)
    r.pull("b.item", [0], -9.0)
    assert r.cuts.restore(r.store, 1, model="b", now=6.0, epoch=1).epoch == 1
    assert r.rows("b.item")[0, 0] == 1.0
    assert (max_epoch(r.store, "a"), max_epoch(r.store, "b")) == (3, 1)


def test_a_cut_of_one_model_names_only_its_tables() -> None:
    r = Replica()
    r.pull("a.item", [0, 1], 1.0)
    r.pull("b.item", [0, 1], 1.0)
    cut = r.cuts.log("a").take(r.store, 1, now=1.0)
    assert {table for table, _ in cut.vectors} == {"a.user", "a.item"}
    r.pull("b.item", [0], 5.0)  # b's rows cost a's log nothing
    assert r.cuts.log("a").bytes == 0
    with pytest.raises(KeyError):
        r.cuts.restore(r.store, 1, model="b", now=2.0)


def test_the_cap_is_per_model_and_follows_a_new_setting() -> None:
    cuts = ModelCuts(1000)
    a, b = cuts.log("a"), cuts.log("b")
    assert (a.cap_bytes, b.cap_bytes) == (1000, 1000)
    cuts.cap_bytes = 64
    assert (a.cap_bytes, b.cap_bytes, cuts.log("c").cap_bytes) == (64, 64, 64)


def test_a_log_without_a_model_covers_every_table() -> None:
    """A cut and restore that name no model (one model per node) work as before."""
    r = Replica()
    r.pull("a.item", [0], 1.0)
    r.pull("b.item", [0], 1.0)
    r.cuts.log(None).take(r.store, 1, now=1.0)
    r.pull("a.item", [0], -9.0)
    r.pull("b.item", [0], -9.0)
    assert r.cuts.of("a") is r.cuts.of("b") is r.cuts.log(None)
    r.cuts.restore(r.store, 1, model=None, now=2.0)
    assert (r.rows("a.item")[0, 0], r.rows("b.item")[0, 0]) == (1.0, 1.0)
