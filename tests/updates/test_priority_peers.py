"""Significance against what each peer holds (the scheduler remembers what it sent each peer),
never-received rows ordered by score when ``new_first`` is off, and the bounded sent-rows memory."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ekko.updates.priority import (
    NEW,
    REST,
    Scheduler,
    SchedulerConfig,
    TableContext,
    _SentRows,
)
from ekko.updates.store import PullRequest, Store, TableSpec, row_wire_bytes

from .helpers import deliver

ROW = row_wire_bytes(2, "float32")


def _write(store: Store, keys: list[int], values: list[list[float]], seqs: list[int]) -> None:
    store.write("emb", keys, values, epoch=0, origin=1, seqs=seqs, publish_time=0.0)


def _pull(down: Store, up: Store, sched: Scheduler, peer: str, budget: int) -> list[int]:
    """One pull of ``peer``, applied (and acknowledged in its next pull, with the rows it has
    since taken from elsewhere); returns the keys it carried."""
    resp = sched.respond(up, down.pull_request(budget, peer=peer, source=sched.source))
    deliver(down, resp)
    return [int(k) for b in resp.batches for k in b.keys]


def _scenario(peer_rows: int) -> tuple[list[int], list[int]]:
    """A fast peer got key 1 after its big move, a slow peer did not; then key 1 moves a little
    more and key 2 moves a medium amount. Each peer may take one row."""
    origin, fast, slow = Store(), Store(), Store()
    origin.declare(TableSpec("emb", 2))
    sched = Scheduler(SchedulerConfig(peer_rows=peer_rows))
    _write(origin, [1, 2], [[0, 0], [0, 0]], [1, 2])
    _pull(fast, origin, sched, "fast", 1 << 20)
    _pull(slow, origin, sched, "slow", 1 << 20)
    _write(origin, [1], [[10, 0]], [3])
    assert _pull(fast, origin, sched, "fast", 1 << 20) == [1]
    _write(origin, [2], [[3, 0]], [4])
    _write(origin, [1], [[10.5, 0]], [5])
    return _pull(fast, origin, sched, "fast", ROW), _pull(slow, origin, sched, "slow", ROW)


def test_significance_is_measured_against_the_value_the_peer_was_sent() -> None:
    fast, slow = _scenario(peer_rows=65536)
    # The fast peer holds key 1 at 10: it moved 0.5 for it, key 2 moved 3.
    assert fast == [2]
    # The slow peer holds key 1 at 0: it moved 10.5 for it.
    assert slow == [1]


def test_without_the_memory_the_shared_baseline_overstates_a_fast_peers_drift() -> None:
    # The store's shared baseline is the slowest peer's copy (0), so key 1 looks 10.5 away.
    fast, slow = _scenario(peer_rows=0)
    assert fast == [1]
    assert slow == [1]


def test_a_row_the_peer_did_not_receive_falls_back_to_the_shared_baseline() -> None:
    origin, peer, slow = Store(), Store(), Store()
    origin.declare(TableSpec("emb", 2))
    sched = Scheduler()
    _write(origin, [1, 2], [[0, 0], [0, 0]], [1, 2])
    _pull(peer, origin, sched, "p", 1 << 20)
    _pull(slow, origin, sched, "slow", 1 << 20)  # holds the baseline at 0
    _write(origin, [1], [[10, 0]], [3])
    sched.respond(origin, peer.pull_request(1 << 20, peer="p", source=sched.source))  # lost
    _write(origin, [2], [[3, 0]], [4])
    _write(origin, [1], [[10.5, 0]], [5])
    # The peer's knowledge does not cover key 1 at seq 3, so the remembered value is not used.
    assert _pull(peer, origin, sched, "p", ROW) == [1]


def test_a_row_the_peer_took_from_another_upstream_is_not_measured_against_what_was_sent() -> None:
    """Knowledge covering the sent version does not mean the peer holds the sent value: here it
    took key 1's big move from another upstream. Its next pull says so (the rows it holds from
    this responder that something else overwrote), and the responder measures key 1 by its last
    change (0.5) instead of against the value it sent (10.5): key 2 (3) goes first."""
    origin, leader, peer = Store(), Store(), Store()
    origin.declare(TableSpec("emb", 2))
    sched, other = Scheduler(source=11), Scheduler(source=22)
    _write(origin, [1, 2], [[0, 0], [0, 0]], [1, 2])
    _pull(peer, origin, sched, "p", 1 << 20)
    _pull(leader, origin, sched, "leader", 1 << 20)
    _write(origin, [1], [[10, 0]], [3])
    _pull(leader, origin, sched, "leader", 1 << 20)
    assert _pull(peer, leader, other, "p", 1 << 20) == [1]  # from the other upstream
    _write(origin, [2], [[3, 0]], [4])
    _write(origin, [1], [[10.5, 0]], [5])
    assert _pull(peer, origin, sched, "p", ROW) == [2]


def test_never_received_rows_are_ordered_by_score_when_new_first_is_off() -> None:
    for new_first, want in ((True, [3]), (False, [1])):
        origin = Store(magnitude_alpha=1.0)
        origin.declare(TableSpec("emb", 2))
        _write(origin, [1], [[0, 0]], [1])
        sched = Scheduler(SchedulerConfig(new_first=new_first, new_bonus=0.0, high_percentile=0.5))
        down = Store()
        _pull(down, origin, sched, "p", 1 << 20)
        _write(origin, [1], [[8, 0]], [2])
        _write(origin, [3], [[0.1, 0]], [3])  # new to the peer, tiny
        c = origin.changes_since(("emb", 0), down.knowledge(("emb", 0)))
        r = sched.rank(c, _ctx(origin))
        labels = dict(zip(c.keys.tolist(), r.classes.tolist(), strict=True))
        assert labels[3] == NEW  # still labelled new (metrics), whatever its order
        assert _pull(down, origin, sched, "p", ROW) == want


def _ctx(store: Store) -> TableContext:
    return TableContext(store.mean_magnitude("emb"), 1.0, 0.0)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40),
    st.lists(st.lists(st.integers(0, 80), min_size=0, max_size=30), min_size=1, max_size=12),
)
def test_sent_rows_stay_within_capacity_and_keep_the_latest_sends(
    capacity: int, sends: list[list[int]]
) -> None:
    mem = _SentRows(capacity, 1)
    last: dict[int, int] = {}
    for step, keys in enumerate(sends):
        k = np.array(sorted(set(keys)), dtype=np.int64)
        seqs = np.full(len(k), step + 1, dtype=np.int64)
        mem.put(k, np.zeros_like(k), np.zeros_like(k), seqs, k.reshape(-1, 1) * 10.0 + step)
        for key in k.tolist():
            last[key] = step
        assert mem.n <= capacity and len(mem.slot) == mem.n
        got = mem.lookup(np.array(sorted(last), dtype=np.int64))
        for key, slot in zip(sorted(last), got.tolist(), strict=True):
            if slot >= 0:  # what is remembered is the latest send of that key
                assert mem.seqs[slot] == last[key] + 1
                assert mem.values[slot, 0] == key * 10.0 + last[key]
        # The keys of the latest send are all remembered when they fit.
        if 0 < len(k) <= capacity:
            assert (mem.lookup(k) >= 0).all()


def test_rest_label_is_kept_for_old_rows() -> None:
    origin, down = Store(), Store()
    origin.declare(TableSpec("emb", 2))
    sched = Scheduler(SchedulerConfig(new_first=False, high_percentile=1.0))
    _write(origin, [1, 2], [[0, 0], [0, 0]], [1, 2])
    _pull(down, origin, sched, "p", 1 << 20)
    _write(origin, [1], [[1, 0]], [3])
    c = origin.changes_since(("emb", 0), down.knowledge(("emb", 0)))
    r = sched.rank(c, _ctx(origin))
    assert r.classes.tolist() == [REST]


def test_respond_encoded_fills_the_budget_in_frame_bytes_and_records_only_what_it_returns() -> None:
    from ekko.updates.codec import Encoding, encode_response

    rng = np.random.default_rng(5)
    origin = Store()
    origin.declare(TableSpec("emb", 16))
    n = 3000
    origin.write(
        "emb",
        np.arange(n),
        rng.normal(size=(n, 16)),
        epoch=0,
        origin=1,
        seqs=np.arange(1, n + 1),
        publish_time=0.0,
    )
    enc = Encoding("int8", zstd=True)
    budget = 6000
    sched = Scheduler()
    plain = sched.respond(origin, PullRequest({}, budget, "int8", True, peer="a"))
    down = Store()
    sent = 0
    for _ in range(8):  # the ratio is learnt over a few pulls
        resp, frame = sched.respond_encoded(
            origin,
            PullRequest(down.knowledge_map(), budget, "int8", True, peer="b"),
            lambda r: encode_response(r, enc),
        )
        assert len(frame) <= budget
        assert frame == encode_response(resp, enc)
        deliver(down, resp)
        sent = resp.n_rows
    # Upper-bound budgeting leaves int8 + zstd frames far below the tokens; this fills them.
    assert sent > 1.5 * plain.n_rows
    # The peer memory holds exactly the rows returned to b (what b now holds), none of the
    # larger cuts tried before them.
    mem = next(v for k, v in sched._sent.items() if k.split("#")[0] == "b")["emb"]
    held = {int(k) for k in origin.snapshot("emb").keys if down.get("emb", [k])[1][0]}
    assert {int(k) for k in mem.keys[: mem.n]} == held


def test_a_store_reports_overwritten_rows_to_the_responder_that_delivered_them() -> None:
    from ekko.updates.codec import decode_request, encode_request
    from ekko.updates.store import MAX_SUPERSEDED, Batch

    down = Store()
    down.declare(TableSpec("emb", 2))

    def take(keys: list[int], seq: int, source: int) -> None:
        n = len(keys)
        b = Batch.of(
            "emb",
            0,
            keys,
            epochs=0,
            origins=1,
            seqs=seq,
            publish_times=0.0,
            values=np.zeros((n, 2)),
        )
        down.apply(b, source)

    take([1, 2, 3], 1, source=11)
    take([2, 3], 2, source=22)  # overwrites what 11 delivered
    _write(down, [1, 2], [[5, 5], [5, 5]], [3, 4])  # a local write (a restore) too
    req = down.pull_request(1 << 20, source=11)
    assert req.superseded == (("emb", (1, 2, 3)),) and not req.forget
    assert decode_request(encode_request(req)).superseded == req.superseded
    assert down.pull_request(1 << 20, source=11).superseded == ()  # reported once
    assert down.pull_request(1 << 20, source=22).superseded == (("emb", (2,)),)
    take(list(range(10, 10 + MAX_SUPERSEDED + 1)), 5, source=22)
    take(list(range(10, 10 + MAX_SUPERSEDED + 1)), 6, source=33)
    req = down.pull_request(1 << 20, source=22)
    assert req.forget and req.superseded == ()
    assert decode_request(encode_request(req)).forget
