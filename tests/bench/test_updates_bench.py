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


def _small_writes(seed: int = 0):  # type: ignore[no-untyped-def]
    from bench.updates_sim import train_writes

    return train_writes(synthetic_stream(2500, seed=seed), rate=500.0, seed=seed)


def test_sim_is_deterministic_per_seed() -> None:
    from bench.updates_sim import SimConfig, run_config

    w = _small_writes()
    cfg = SimConfig(seed=3, wan_rate=20_000.0)
    a = run_config(w, cfg, 500)
    b = run_config(w, cfg, 500)
    c = run_config(w, SimConfig(seed=4, wan_rate=20_000.0), 500)
    assert a == b
    assert a["lag_cross_region"] != c["lag_cross_region"]


def test_uncapped_replicas_end_equal_to_the_origin() -> None:
    from bench.updates_sim import Sim, SimConfig

    w = _small_writes(1)
    for policy in ("priority", "fifo", "log"):
        sim = Sim(w, SimConfig(policy=policy, seed=1))
        res = sim.run()
        origin = res.nodes[0].ver
        assert all(np.array_equal(n.ver, origin) for n in res.nodes[1:]), policy


def test_lag_zero_replica_scores_like_the_trainer() -> None:
    from bench.updates_sim import fixed_lag_log, served_quality
    from ekko.updates.scoring import auc

    w = _small_writes(2)
    lt, lw = fixed_lag_log(w, 0.0)
    a, _ = served_quality(w, lt, lw, 500)
    assert abs(a - auc(w.labels[500:], w.preds[500:])) < 1e-3
