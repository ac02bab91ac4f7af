"""The update benchmark's pieces: the .inter loader, the synthetic stream, the sim's determinism."""

from __future__ import annotations

import numpy as np

from bench.updates_data import parse_inter, synthetic_stream

INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "196\t242\t3\t881250949\n"
    "186\t302\t3\t891717742\n"
    "22\t377\t1\t878887116\n"
    "196\t51\t5\t881250950\n"
    "22\t242\t4\t878887117\n"
)


def test_parse_inter_orders_by_time_and_numbers_keys() -> None:
    s = parse_inter(INTER)
    assert len(s) == 5
    # time order: 22@...116, 22@...117, 196@...949, 196@...950, 186@...742
    assert s.users.tolist() == [0, 0, 1, 1, 2]
    assert s.items.tolist() == [0, 1, 1, 2, 3]
    assert s.labels.tolist() == [0, 1, 0, 1, 0]
    assert (s.n_users, s.n_items) == (3, 4)


def test_synthetic_stream_is_seeded() -> None:
    a = synthetic_stream(3000, seed=5)
    b = synthetic_stream(3000, seed=5)
    c = synthetic_stream(3000, seed=6)
    assert np.array_equal(a.users, b.users) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.items, c.items)
    assert a.users.max() + 1 == a.n_users and a.items.max() + 1 == a.n_items
    # new users keep arriving: the second half of the stream introduces unseen users
    first_half = set(a.users[:1500].tolist())
    assert any(u not in first_half for u in a.users[1500:].tolist())
    assert 0.2 < a.labels.mean() < 0.8
