"""The node and publisher processes on loopback: they converge in a chain and a star, under tiny
budgets, across a restart, and when the preferred upstream dies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from ekko.updates.link import LinkSpec
from ekko.updates.node import Node, NodeConfig, Upstream
from ekko.updates.priority import Scheduler
from ekko.updates.publisher import Publisher, read_replay, replay
from ekko.updates.store import TableSpec

SPEC = TableSpec("emb", 8, shards=2, model="ranker", weight=1.0)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 60))  # type: ignore[arg-type]


async def converged(pub: Publisher, nodes: list[Node], timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not all(n.store.same_state(pub.store) for n in nodes):
        if loop.time() > deadline:
            lagging = [n.config.name for n in nodes if not n.store.same_state(pub.store)]
            raise AssertionError(f"not converged within {timeout} s: {lagging}")
        await asyncio.sleep(0.02)


def node(name: str, *ups: tuple[int, LinkSpec], **kw: object) -> Node:
    cfg = NodeConfig(
        name=name,
        region="r1",
        upstreams=tuple(Upstream(f"http://127.0.0.1:{port}", link, "r0") for port, link in ups),
        listen="127.0.0.1:0",
        wait=1.0,
        retry=0.1,
        **kw,  # type: ignore[arg-type]
    )
    return Node(cfg, CollectorRegistry())


async def publish_some(pub: Publisher, rng: np.random.Generator, rounds: int, n: int = 50) -> None:
    for _ in range(rounds):
        keys = rng.integers(0, 400, size=n)
        pub.publish("emb", keys, rng.normal(size=(n, 8)))
        await asyncio.sleep(0.005)


FAST = LinkSpec()


@pytest.mark.parametrize("shape", ["chain", "star"])
def test_a_publisher_and_three_nodes_converge(shape: str) -> None:
    async def scenario() -> None:
        pub = Publisher(1, [SPEC], registry=CollectorRegistry())
        port = await pub.start("127.0.0.1", 0)
        a = node("a", (port, FAST), dtype="int8", zstd=True)
        a_port = await a.start()
        up_b = a_port if shape == "chain" else port
        b = node("b", (up_b, FAST))
        b_port = await b.start()
        c = node("c", ((b_port if shape == "chain" else port), FAST))
        await c.start()
        rng = np.random.default_rng(0)
        try:
            await publish_some(pub, rng, 20)
            pub.publish_dense("w", np.arange(12, dtype=np.float32).reshape(3, 4), model="ranker")
            if shape == "star":
                await converged(pub, [b, c])
            else:
                # a holds int8 values; its downstreams get those: compare versions and values
                await converged(pub, [])  # trivially true; wait on versions below
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 15
                while not all(
                    np.array_equal(n.store.snapshot("emb").seqs, pub.store.snapshot("emb").seqs)
                    for n in (a, b, c)
                    if n.store.has_table("emb")
                ) or not c.store.has_table("w"):
                    assert loop.time() < deadline
                    await asyncio.sleep(0.02)
                for n in (a, b, c):
                    err = np.abs(n.store.snapshot("emb").values - pub.store.snapshot("emb").values)
                    assert err.max() < 0.05
            # Lag is measured and labelled; bytes are counted both ways.
            text = c.metrics.render().decode()
            assert (
                'ekko_update_lag_seconds_count{model="ranker",priority_class="new",region="r1"}'
                in text
            )
            assert 'ekko_update_wire_bytes_total{direction="in",peer_region="r0"}' in text
        finally:
            for n in (c, b, a):
                await n.stop()
            await pub.stop()

    run(scenario)


def test_tiny_budgets_still_converge() -> None:
    async def scenario() -> None:
        pub = Publisher(1, [SPEC], registry=CollectorRegistry())
        port = await pub.start("127.0.0.1", 0)
        slow = LinkSpec(rate=200_000, burst=2_000, delay=0.01)
        a = node("a", (port, slow), min_budget=600)
        a_port = await a.start()
        b = node("b", (a_port, slow), min_budget=600)
        await b.start()
        try:
            await publish_some(pub, np.random.default_rng(1), 10)
            await converged(pub, [a, b], timeout=30)
            up = pub.metrics.render().decode()
            assert "ekko_update_backlog_rows" in up
        finally:
            await b.stop()
            await a.stop()
            await pub.stop()

    run(scenario)


def test_a_restarted_node_resumes_from_its_knowledge(tmp_path: Path) -> None:
    async def scenario() -> None:
        pub = Publisher(1, [SPEC], registry=CollectorRegistry())
        port = await pub.start("127.0.0.1", 0)
        state = tmp_path / "a.npz"
        log = tmp_path / "a.csv"
        a = node("a", (port, FAST), state=state, apply_log=log)
        await a.start()
        rng = np.random.default_rng(2)
        try:
            await publish_some(pub, rng, 10)
            await converged(pub, [a])
            await a.stop()
            assert state.exists()
            await publish_some(pub, rng, 2, n=5)
            a2 = node("a2", (port, FAST), state=state, apply_log=log)
            assert a2.store.n_rows("emb") > 0  # resumed, not empty
            await a2.start()
            await converged(pub, [a2])
            assert 0 < a2.rows_pulled <= 10  # only what changed while it was down
            await a2.stop()
            lines = log.read_text().splitlines()
            assert lines[0] == "apply_time,table,key,epoch,origin,seq"
            assert len(lines) > 1 + a2.rows_pulled
        finally:
            await pub.stop()

    run(scenario)


def test_the_fallback_upstream_takes_over_when_the_preferred_dies() -> None:
    async def scenario() -> None:
        pub = Publisher(1, [SPEC], registry=CollectorRegistry())
        port = await pub.start("127.0.0.1", 0)
        leader = node("leader", (port, FAST))
        leader_port = await leader.start()
        follower = node("follower", (leader_port, FAST), (port, FAST))
        await follower.start()
        rng = np.random.default_rng(3)
        try:
            await publish_some(pub, rng, 5)
            await converged(pub, [leader, follower])
            assert follower.active_upstream() == 0
            await leader.stop()
            await publish_some(pub, rng, 5)
            await converged(pub, [follower])
            assert follower.active_upstream() == 1
            text = follower.metrics.render().decode()
            assert (
                f'ekko_update_pulls_total{{outcome="error",upstream="http://127.0.0.1:{leader_port}"}}'
                in text
            )
        finally:
            await follower.stop()
            await pub.stop()

    run(scenario)


def test_replay_file(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    lines = [
        {"declare": {"table": "emb", "dim": 2, "model": "m"}},
        {"t": 0.0, "table": "emb", "key": 1, "values": [1, 2]},
        {"t": 0.0, "table": "emb", "key": 2, "values": [3, 4]},
        {"t": 0.01, "table": "emb", "keys": [1, 3], "values": [[5, 6], [7, 8]]},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    specs, steps = read_replay(path)
    assert [s.name for s in specs] == ["emb"] and len(steps) == 2

    async def scenario() -> None:
        pub = Publisher(1, specs, registry=CollectorRegistry())
        assert await replay(pub, steps, speed=0) == 4
        vals, found = pub.store.get("emb", [1, 2, 3])
        assert found.all() and vals[0].tolist() == [5, 6]

    run(scenario)
    with pytest.raises(ValueError, match="bad replay line"):
        path.write_text('{"t": 0}\n')
        read_replay(path)


def test_publisher_refuses_non_finite_values() -> None:
    pub = Publisher(1, [SPEC], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="non-finite"):
        pub.publish("emb", [1], [[np.nan] * 8])


def test_an_int8_chain_sends_small_changes_as_residuals_and_stays_within_the_int8_bound() -> None:
    """Publisher → a → b, both int8 + zstd (frame version 3): rows rewritten with small changes
    travel as residuals (the responders' memories hold acknowledged rows), and every replica
    ends at the publisher's versions, each hop within half an int8 step of its upstream."""

    async def scenario() -> None:
        pub = Publisher(1, [SPEC], registry=CollectorRegistry())
        port = await pub.start("127.0.0.1", 0)
        a = node("a", (port, FAST), dtype="int8", zstd=True)
        a_port = await a.start()
        b = node("b", (a_port, FAST), dtype="int8", zstd=True)
        await b.start()
        rng = np.random.default_rng(3)
        keys = np.arange(64)
        values = rng.normal(size=(64, 8))
        try:
            loop = asyncio.get_running_loop()
            for _ in range(6):
                values = values + 0.01 * rng.normal(size=values.shape)
                pub.publish("emb", keys, values)
                deadline = loop.time() + 15
                while not all(
                    n.store.has_table("emb")
                    and np.array_equal(n.store.snapshot("emb").seqs, pub.store.snapshot("emb").seqs)
                    for n in (a, b)
                ):
                    assert loop.time() < deadline
                    await asyncio.sleep(0.02)

            # Each responder's memory of what it sent is acknowledged by the next pull (the
            # residual bases), and each replica's rows carry its upstream's tag.
            def acked(sched: Scheduler) -> int:
                return sum(
                    int(t.acked[: t.n].sum()) for m in sched._sent.values() for t in m.values()
                )

            deadline = loop.time() + 15
            while not (acked(pub.server.scheduler) and acked(a.server.scheduler)):
                assert loop.time() < deadline
                await asyncio.sleep(0.02)
            assert (a.store._tables["emb"].tags[:64] == pub.server.scheduler.source).all()
            assert (b.store._tables["emb"].tags[:64] == a.server.scheduler.source).all()
            truth = pub.store.snapshot("emb").values
            for n, hops in ((a, 1), (b, 2)):
                err = np.abs(n.store.snapshot("emb").values - truth)
                step = np.abs(truth).max(axis=1, keepdims=True) / 127
                assert np.all(err <= hops * step * 0.51 + 1e-6)
        finally:
            for n in (b, a):
                await n.stop()
            await pub.stop()

    run(scenario)
