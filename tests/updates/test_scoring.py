"""The numpy scorer: rank-based AUC on known cases, logloss, SGD learns, row updates replay."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ekko.updates.scoring import DENSE, ITEM, USER, LogisticMF, auc, logloss, sigmoid


def test_auc_known_cases() -> None:
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    # one inversion out of 2 x 2 pairs
    assert auc([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.75)
    # a tie between a positive and a negative counts half
    assert auc([0, 1, 1], [0.3, 0.3, 0.9]) == pytest.approx(0.75)
    assert math.isnan(auc([1, 1], [0.2, 0.4]))


def test_auc_matches_pairwise_count() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.4
    s = np.round(rng.random(300), 2)  # many ties
    pos, neg = s[y], s[~y]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auc(y, s) == pytest.approx(pairs / (pos.size * neg.size))


def test_logloss_and_sigmoid() -> None:
    assert logloss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert logloss([1], [1.0]) < 1e-6
    assert np.all(np.isfinite(sigmoid(np.array([-1000.0, 0.0, 1000.0]))))
    assert sigmoid(0.0) == pytest.approx(0.5)


def _learnable(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 30, n)
    items = rng.integers(0, 40, n)
    labels = ((users % 2) == (items % 2)).astype(float)  # a rank-1 pattern MF can learn
    return users, items, labels


@pytest.mark.parametrize("hidden", [0, 4])
def test_sgd_learns_and_emits_rows(hidden: int) -> None:
    users, items, labels = _learnable(6000)
    mf = LogisticMF(8, lr=0.1, hidden=hidden, seed=1)
    preds = np.empty(users.size)
    for j in range(users.size):
        preds[j], updates = mf.step(int(users[j]), int(items[j]), float(labels[j]))
        assert [u.table for u in updates] == [USER, ITEM, DENSE]
        assert updates[0].keys.tolist() == [users[j]]
        assert updates[0].values.shape == (1, 9)
    assert auc(labels[-1000:], preds[-1000:]) > 0.9
    assert mf.score(0, 0) > mf.score(0, 1)


def test_replica_applying_the_rows_scores_like_the_trainer() -> None:
    users, items, labels = _learnable(2000, seed=2)
    trainer = LogisticMF(8, seed=4, hidden=3)
    replica = LogisticMF(8, seed=99, hidden=3)
    for j in range(users.size):
        _, updates = trainer.step(int(users[j]), int(items[j]), float(labels[j]))
        for up in updates:
            replica.apply(up)
    probe_u, probe_i = np.arange(30), np.arange(30)
    assert np.allclose(trainer.score_many(probe_u, probe_i), replica.score_many(probe_u, probe_i))
    # a key neither has seen scores as a zero row, the same on both
    assert trainer.score(1000, 5) == pytest.approx(replica.score(1000, 5))


def test_train_batch_reports_each_row_once() -> None:
    mf = LogisticMF(4, seed=0)
    preds, updates = mf.train_batch([1, 1, 2], [5, 6, 5], [1, 0, 1])
    assert preds.shape == (3,)
    tables = {u.table: u.keys.tolist() for u in updates}
    assert tables == {USER: [1, 2], ITEM: [5, 6], DENSE: [0]}
    assert np.array_equal(updates[0].values, mf.tables[USER][[1, 2]])
