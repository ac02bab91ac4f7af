"""Frame version 3: int8 rows sent as residuals against the value the peer holds.

A responder remembers exactly what it sent each peer (after the encoding's rounding); a row the
peer's knowledge covers at that version travels as a small int8 residual. The receiver adds it
only to a value the same responder delivered; anything else is dropped with what the batch
vouches for, so the next pull sends the full row."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from ekko.updates.codec import (
    CodecError,
    Encoding,
    decode_response,
    encode_response,
    held_values,
    quantize_int8_fp16,
    residual_int8,
)
from ekko.updates.node import Node, NodeConfig
from ekko.updates.priority import Scheduler, SchedulerConfig
from ekko.updates.snapshots import Fence, fence
from ekko.updates.store import Batch, PullResponse, Store, TableSpec, row_wire_bytes
from ekko.updates.versions import VersionVector

from .helpers import deliver, pull, versions

SPEC = TableSpec("emb", 8)
INT8 = Encoding("int8", zstd=True)


def _origin(rng: np.random.Generator, n: int = 50) -> Store:
    s = Store()
    s.declare(SPEC)
    vals = rng.normal(size=(n, SPEC.dim)).astype(np.float32)
    s.write("emb", np.arange(n), vals, epoch=0, origin=1, seqs=np.arange(1, n + 1), publish_time=0)
    return s


def _nudge(
    s: Store,
    rng: np.random.Generator,
    keys: np.ndarray,
    seq0: int,
    size: float,
    epoch: int = 0,
) -> None:
    old, _ = s.get("emb", keys)
    new = old + size * rng.normal(size=old.shape).astype(np.float32)
    seqs = seq0 + np.arange(len(keys))
    s.write("emb", keys, new, epoch=epoch, origin=1, seqs=seqs, publish_time=1.0)


def _stray(s: Store, rng: np.random.Generator, keys: np.ndarray, seq0: int) -> None:
    """An epoch-0 write above any cut taken before it (ignored for a key already at epoch 1)."""
    vals = rng.normal(size=(len(keys), SPEC.dim))
    s.write("emb", keys, vals, epoch=0, origin=1, seqs=seq0 + np.arange(len(keys)), publish_time=1)


def _int8_pull(down: Store, up: Store, sched: Scheduler) -> tuple[PullResponse, bytes]:
    response = sched.respond(up, down.pull_request(1 << 30, "int8", True))
    frame = encode_response(response, INT8)
    return decode_response(frame), frame


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), dim=st.integers(1, 20))
def test_residual_rows_round_trip_to_what_the_sender_expects(seed: int, n: int, dim: int) -> None:
    rng = np.random.default_rng(seed)
    scale = float(10.0 ** rng.uniform(-4, 3))
    bases = (scale * rng.normal(size=(n, dim))).astype(np.float32)
    values = (bases + scale * 10.0 ** rng.uniform(-4, 0) * rng.normal(size=(n, dim))).astype(
        np.float32
    )
    mask = rng.random(n) < 0.7
    batch = Batch.of(
        "t",
        0,
        rng.permutation(10 * n)[:n],
        epochs=0,
        origins=1,
        seqs=1,
        publish_times=0.0,
        values=values,
    )
    batch = Batch(
        batch.table,
        batch.part,
        batch.keys,
        batch.epochs,
        batch.origins,
        batch.seqs,
        batch.publish_times,
        batch.values,
        batch.classes,
        batch.covered,
        base_values=bases,
        base_mask=mask,
    )
    out = decode_response(
        encode_response(PullResponse((TableSpec("t", dim),), (batch,), source=7), INT8)
    )
    got = out.batches[0]
    expect = held_values(values, "int8", bases=bases, mask=mask)
    res = got.residual if got.residual is not None else np.zeros(n, dtype=np.bool_)
    assert out.source == 7  # every int8 frame of version 3 names its responder
    # Keys come back sorted: line the rows up by key.
    order = np.argsort(batch.keys)
    assert not (res & ~mask[order]).any()  # only rows with a base travel as residuals
    held = np.where(res[:, None], bases[order] + got.values, got.values).astype(np.float32)
    assert np.array_equal(held, expect[order])  # bit for bit what the sender remembers
    _, s16 = quantize_int8_fp16(values[order])
    bound = s16.astype(np.float64)[:, None] / 2 * (1 + 1e-6) + 1e-30
    assert np.all(
        np.abs(held.astype(np.float64) - values[order]) <= bound + np.abs(values[order]) * 1e-6
    )


def test_residuals_fall_back_to_full_rows_when_the_change_is_large() -> None:
    values = np.array([[1.0, -1.0, 0.5], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    bases = np.array([[1.01, -1.0, 0.49], [-1.0, -1.0, -1.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    ok, r_q, exps = residual_int8(values, bases, np.ones(3, dtype=np.bool_))
    assert ok.tolist() == [True, False, False]  # sign flip: > 127 steps; zero row: no step
    assert r_q.shape == (1, 3) and exps.shape == (1,)
    assert np.abs(r_q).max() < 127


def test_a_second_pull_sends_small_changes_as_residuals_and_matches_the_senders_memory() -> None:
    rng = np.random.default_rng(1)
    up, down = _origin(rng), Store()
    sched = Scheduler(source=42)
    first, frame1 = _int8_pull(down, up, sched)
    assert all(b.residual is None for b in first.batches)
    deliver(down, first)
    _nudge(up, rng, np.arange(50), 100, 0.01)
    second, frame2 = _int8_pull(down, up, sched)
    assert second.source == 42
    assert second.batches[0].residual is not None and second.batches[0].residual.all()
    assert len(frame2) < 0.75 * len(frame1)
    deliver(down, second)
    assert versions(down) == versions(up)
    held, _ = down.get("emb", np.arange(50))
    (sent,) = (m["emb"] for m in sched._sent.values())
    assert np.array_equal(held, sent.values[sent.lookup(np.arange(50))])
    truth, _ = up.get("emb", np.arange(50))
    _, s16 = quantize_int8_fp16(truth)
    assert np.all(np.abs(held - truth) <= s16.astype(np.float32)[:, None] / 2 * 1.001)


def test_a_residual_from_another_responder_is_dropped_and_the_full_row_follows() -> None:
    rng = np.random.default_rng(2)
    up, down = _origin(rng, 10), Store()
    a, b = Scheduler(source=1), Scheduler(source=2)
    deliver(down, _int8_pull(down, up, a)[0])
    _nudge(up, rng, np.arange(10), 100, 0.01)
    stray, _ = _int8_pull(down, up, a)  # the request acknowledges a's first response
    assert stray.batches[0].residual is not None
    # b never sent this peer anything: it sends full rows.
    assert all(x.residual is None for x in _int8_pull(down, up, b)[0].batches)
    forged = PullResponse(stray.tables, stray.batches, source=2)  # as if from b
    before = down.knowledge(("emb", 0))
    assert deliver(down, forged) == 0
    assert down.knowledge(("emb", 0)) == before  # nothing vouched for
    full, _ = _int8_pull(down, up, a)  # a's memory is ahead of what the peer holds: full rows
    assert all(x.residual is None for x in full.batches)
    deliver(down, full)
    assert versions(down) == versions(up)


def test_a_restored_row_takes_no_residual() -> None:
    rng = np.random.default_rng(3)
    up, down = _origin(rng, 4), Store()
    sched = Scheduler(source=5)
    deliver(down, _int8_pull(down, up, sched)[0])
    _nudge(up, rng, np.arange(4), 100, 0.01)
    resp, _ = _int8_pull(down, up, sched)
    # A local write (what a restore does) between send and apply: its tag is no responder's.
    down.write("emb", [0], np.zeros((1, 8)), epoch=0, origin=1, seqs=[4], publish_time=2.0)
    resolved = down.resolve(resp.batches[0], resp.source)
    assert 0 not in resolved.keys.tolist() and resolved.n == 3
    assert resolved.covered == VersionVector()


def test_older_pullers_get_full_rows() -> None:
    rng = np.random.default_rng(4)
    up, down = _origin(rng, 6), Store()
    sched = Scheduler(source=9)
    deliver(down, _int8_pull(down, up, sched)[0])
    _nudge(up, rng, np.arange(6), 100, 0.01)
    req = down.pull_request(1 << 30, "int8", True)
    old = type(req)(req.knowledge, req.budget_bytes, "int8", True, frame_version=2)
    resp = sched.respond(up, old)
    assert all(b.base_mask is None for b in resp.batches)
    frame = encode_response(resp, Encoding("int8", True, version=2))
    assert frame[4] == 2
    deliver(down, decode_response(frame))
    assert versions(down) == versions(up)


def test_a_mismatched_base_shape_is_refused() -> None:
    b = Batch.of("t", 0, [1], epochs=0, origins=1, seqs=1, publish_times=0.0, values=[[1.0, 2.0]])
    with pytest.raises(ValueError, match="base values"):
        Batch(
            b.table,
            b.part,
            b.keys,
            b.epochs,
            b.origins,
            b.seqs,
            b.publish_times,
            b.values,
            b.classes,
            base_values=np.zeros((1, 3), dtype=np.float32),
            base_mask=np.ones(1, dtype=np.bool_),
        )


MAX_ROW = row_wire_bytes(8, "int8")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 5),
    steps=st.integers(10, 100),
    fencing=st.sampled_from(["none", "raw", "resolved"]),
)
def test_int8_residual_topologies_converge_by_version(
    seed: int, n: int, steps: int, fencing: str
) -> None:
    """Random topologies pulling int8 + zstd through the codec, with drops, duplicates, late
    deliveries and partial budgets: every replica ends at the origin's versions, values within
    the int8 bound per hop, and a pull along any edge is then empty.

    With a fence, the origin restores half way (epoch 1, fence at its vector then) while stray
    epoch-0 rows above the cut keep arriving (as from a peer not restored yet), and every
    replica fences what it pulls: the *raw* batches (residual rows still residuals: the fence
    must keep the residual mark, or a residual is applied as a value) or the resolved ones."""
    rng = np.random.default_rng(seed)
    stores = [_origin(rng, 12)] + [Store() for _ in range(n - 1)]
    edges = [(int(rng.integers(0, d)), d) for d in range(1, n)]
    for _ in range(int(rng.integers(0, n))):
        u, d = (int(x) for x in rng.choice(n, size=2, replace=False))
        if d != 0:
            edges.append((u, d))
    scheds = [Scheduler(SchedulerConfig(), source=i + 1) for i in range(n)]
    late: list[tuple[int, PullResponse]] = []
    seq = 1000

    def exchange(edge: int, budget: int, fate: str) -> None:
        u, d = edges[edge]
        r = pull(stores[d], stores[u], scheds[u], budget, "int8", True)
        before = versions(stores[d])
        if fate in ("deliver", "duplicate"):
            take(d, r)
        if fate in ("duplicate", "delay"):
            late.append((d, r))
        after = versions(stores[d])
        assert all(after[k] >= v for k, v in before.items())

    fences: list[Fence | None] = [None]

    def take(d: int, r: PullResponse) -> None:
        if fences[0] is None:
            deliver(stores[d], r)
            return
        down = stores[d]
        if fencing == "resolved":  # the node's own path (resolve, fence, cut log, apply)
            node = Node(NodeConfig(name=f"n{d}"), CollectorRegistry(), store=down)
            node.fence = fences[0]
            if node._apply(r.tables, r.batches, r.source):
                down.acknowledge(r.source, r.number)
            return
        # A caller that fences what it pulled before resolving it; it acknowledges only if no
        # row was fenced or dropped (a fenced row must not become a residual base).
        dropped = False
        for spec in r.tables:
            down.declare(spec)
        for raw in r.batches:
            resolved = down.resolve(fence(raw, fences[0]), r.source)
            dropped |= resolved.n < raw.n
            down.apply(resolved, r.source)
        if not dropped:
            down.acknowledge(r.source, r.number)

    epoch = 0
    fence_step = steps // 2 if fencing != "none" else -1
    for step in range(steps):
        if step == fence_step:
            cut = {s: stores[0].knowledge(s).vector for s in stores[0].shards()}
            fences[0], epoch = Fence(1, cut), 1
        x = rng.random()
        if x < 0.3:
            keys = rng.choice(12, size=int(rng.integers(1, 5)), replace=False)
            size = float(rng.choice([0.001, 0.05, 3.0]))
            _nudge(stores[0], rng, keys, seq, size, epoch=epoch)
            seq += len(keys)
        elif x < 0.45 and epoch:
            # Stray epoch-0 rows above the cut: the origin holds them, the replicas fence them.
            keys = rng.choice(12, size=int(rng.integers(1, 4)), replace=False)
            _stray(stores[0], rng, keys, seq)
            seq += len(keys)
        elif x < 0.85:
            fate = str(rng.choice(["deliver", "deliver", "drop", "duplicate", "delay"]))
            exchange(int(rng.integers(0, len(edges))), int(rng.integers(0, 8 * MAX_ROW)), fate)
        elif late:
            d, r = late.pop(int(rng.integers(0, len(late))))
            take(d, r)
    while late:
        d, r = late.pop()
        take(d, r)
    if epoch:  # every key at epoch 1 (small changes: residuals), so the fenced rows are superseded
        _nudge(stores[0], rng, np.arange(12), seq, 0.01, epoch=1)
    for _ in range(400):
        if all(versions(s) == versions(stores[0]) for s in stores[1:]):
            break
        for e in range(len(edges)):
            exchange(e, int(rng.integers(MAX_ROW, 6 * MAX_ROW)), "deliver")
    truth, _ = stores[0].get("emb", np.arange(12))
    step = quantize_int8_fp16(truth)[1].astype(np.float64)[:, None]
    for s in stores[1:]:
        assert versions(s) == versions(stores[0])
        held, _ = s.get("emb", np.arange(12))
        # Each hop re-encodes (at most half a step of its own value's scale): n hops at most.
        assert np.all(np.abs(held - truth) <= n * (step / 2 * 1.05 + 1e-6) + 0.02 * np.abs(truth))
    for u, d in edges:
        assert pull(stores[d], stores[u], scheds[u], 1 << 30, "int8", True).n_rows == 0


def test_version_3_zstd_frames_use_the_shared_dictionary_and_older_ones_do_not() -> None:
    rng = np.random.default_rng(5)
    up = _origin(rng, 30)
    resp = Scheduler(source=3).respond(up, Store().pull_request(1 << 30, "int8", True))
    v3 = encode_response(resp, Encoding("int8", True, version=3))
    v2 = encode_response(resp, Encoding("int8", True, version=2))
    assert v3[5] == 3 and v2[5] == 1  # flags: zstd + dictionary, zstd alone
    assert encode_response(resp, INT8)[5] == 1  # version 4: binary metadata, no dictionary
    assert len(v3) < len(v2)
    for frame in (v3, v2):
        got = decode_response(frame)
        assert got.batches[0].keys.tolist() == list(range(30))
    bad = bytearray(v2)
    bad[5] = 3  # a version 2 frame claiming the dictionary
    with pytest.raises(CodecError, match="flags"):
        decode_response(bytes(bad))


def test_the_catalogue_is_left_out_when_the_puller_holds_it() -> None:
    rng = np.random.default_rng(6)
    up, down = _origin(rng, 5), Store()
    sched = Scheduler(source=4)
    first = pull(down, up, sched, dtype="int8", zstd=True)
    assert first.tables == (SPEC,)
    deliver(down, first)
    _nudge(up, rng, np.arange(5), 100, 0.01)
    second = pull(down, up, sched, dtype="int8", zstd=True)
    assert second.tables == ()
    deliver(down, second)
    assert versions(down) == versions(up)
    up.declare(TableSpec("more", 2))  # the responder's catalogue changed: sent again
    assert pull(down, up, sched, dtype="int8", zstd=True).tables == (SPEC, TableSpec("more", 2))


def test_uncompressed_version_3_frames_compress_their_metadata_alone() -> None:
    rng = np.random.default_rng(7)
    up = _origin(rng, 8)
    resp = Scheduler(source=3).respond(up, Store().pull_request(1 << 30))
    v3 = encode_response(resp, Encoding("float32", version=3))
    v2 = encode_response(resp, Encoding("float32", version=2))
    assert v3[5] == 4 and v2[5] == 0  # flags: metadata compressed; nothing compressed
    assert len(v3) < len(v2) - 80
    got = decode_response(v3)
    assert np.array_equal(
        got.batches[0].values, resp.batches[0].values[np.argsort(resp.batches[0].keys)]
    )
    bad = bytearray(v3)
    bad[5] = 5  # zstd body and zstd metadata together: not a valid combination
    with pytest.raises(CodecError, match="flags"):
        decode_response(bytes(bad))


def test_fencing_a_raw_batch_keeps_its_residual_mark() -> None:
    """A caller may fence what it pulled before resolving it: the rows the fence keeps stay
    residuals (added to the held value), never applied as values."""
    rng = np.random.default_rng(6)
    up, down = _origin(rng, 6), Store()
    sched = Scheduler(source=7)
    deliver(down, _int8_pull(down, up, sched)[0])
    cut = {s: up.knowledge(s).vector for s in up.shards()}
    _nudge(up, rng, np.arange(4), 100, 0.01, epoch=1)  # small: residuals
    _stray(up, rng, np.array([4, 5]), 200)  # epoch 0 above the cut: fenced
    raw = _int8_pull(down, up, sched)[0].batches[0]
    assert raw.residual is not None and raw.residual.sum() == 4
    kept = fence(raw, Fence(1, cut))
    assert kept.n == 4 and kept.residual is not None and kept.residual.all()
    down.apply(down.resolve(kept, 7), 7)
    held, _ = down.get("emb", np.arange(4))
    truth, _ = up.get("emb", np.arange(4))
    assert np.all(np.abs(held - truth) <= quantize_int8_fp16(truth)[1][:, None])
