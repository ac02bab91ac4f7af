"""The agent runs the update node its assignment asks for: rows a publisher writes reach the
embedding engine's store in place and change what /score answers; a re-wired duty keeps the
store; the data-plane address is reported in status."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
import pytest

from ekko.agent.engines import EmbeddingEngine
from ekko.agent.main import advertised_update_url
from ekko.agent.metrics import AgentMetrics
from ekko.agent.runtime import Agent, StatusWriter, UpdatePlane, node_config
from ekko.api.resources import UpdateDuty
from ekko.updates.publisher import Publisher
from ekko.updates.store import TableSpec


def duty(*urls: str, **extra: Any) -> UpdateDuty:
    return UpdateDuty.model_validate(
        {
            "model": "ranker",
            "stream": "ranker",
            "region": "eu",
            "role": "Leader",
            "upstreams": [{"url": u, "region": "train"} for u in urls],
            **extra,
        }
    )


def test_node_config_from_duties() -> None:
    cfg = node_config(
        "srv-0",
        "0.0.0.0:9500",
        [
            duty(
                "http://a:9500",
                values="Int8",
                codec="Zstd",
                policy="Fifo",
                highPercentile=95,
                idlePullSeconds=3,
            )
        ],
    )
    assert (cfg.name, cfg.region, cfg.dtype, cfg.zstd, cfg.policy) == (
        "srv-0",
        "eu",
        "int8",
        True,
        "fifo",
    )
    assert cfg.wait == 3 and cfg.high_percentile == pytest.approx(0.95)
    assert [u.url for u in cfg.upstreams] == ["http://a:9500"]
    assert math.isinf(cfg.upstreams[0].link.rate)
    capped = duty("http://a:9500")
    capped.upstreams[0].bandwidth = 5000
    assert node_config("s", "0.0.0.0:1", [capped]).upstreams[0].link.rate == 5000
    assert node_config("s", "0.0.0.0:1", [duty("http://a:9500", paused=True)]).upstreams == ()
    assert node_config("s", "0.0.0.0:1", []).upstreams == ()


def test_advertised_url() -> None:
    assert advertised_update_url("0.0.0.0:9500", "http://x:1", None) == "http://x:1"
    assert advertised_update_url("0.0.0.0:9500", "", "10.1.2.3") == "http://10.1.2.3:9500"
    assert advertised_update_url("127.0.0.1:9511", "", None) == "http://127.0.0.1:9511"


def assignment(generation: int, duties: list[UpdateDuty]) -> dict[str, Any]:
    return {
        "apiVersion": "ekko.dev/v1alpha1",
        "kind": "ServerAssignment",
        "metadata": {"name": "srv-0", "namespace": "default", "generation": generation},
        "spec": {
            "pool": "pool",
            "server": "srv-0",
            "shards": [
                {"model": "ranker", "shard": 0, "version": "v1", "uri": "file:///x", "bytes": 10}
            ],
            "updates": [d.model_dump(by_alias=True, mode="json") for d in duties],
        },
    }


def held(engine: EmbeddingEngine, table: str, key: int) -> bool:
    return engine.store.has_table(table) and bool(engine.store.get(table, [key])[1].all())


async def wait_for(check: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_agent_runs_the_node_and_scores_fresh_rows() -> None:
    async def scenario() -> None:
        reports: list[dict[str, Any]] = []

        async def patch(body: dict[str, Any]) -> None:
            reports.append(body)

        tables = [
            TableSpec("ranker.user", 3, model="ranker"),
            TableSpec("ranker.item", 3, model="ranker"),
        ]
        pub1, pub2 = Publisher(1, tables), Publisher(2, tables)
        port1, port2 = await pub1.start("127.0.0.1", 0), await pub2.start("127.0.0.1", 0)
        metrics = AgentMetrics()
        engine = EmbeddingEngine(metrics.registry)
        writer = StatusWriter(patch, metrics)
        plane = UpdatePlane("srv-0", "127.0.0.1:0", "", metrics.registry, engine.store)
        agent = Agent(engine, writer, metrics, updates=plane)
        tasks = [asyncio.create_task(writer.run()), asyncio.create_task(agent.run())]
        try:
            agent.on_assignment("ADDED", assignment(1, [duty(f"http://127.0.0.1:{port1}")]))
            await wait_for(lambda: agent.update_address != "" and agent.ready)
            assert plane.node is not None
            pub1.publish("ranker.user", [7], [[1.0, 1.0, 0.0]])
            pub1.publish("ranker.item", [9], [[1.0, 1.0, 0.5]])
            await wait_for(lambda: held(engine, "ranker.user", 7))
            await wait_for(lambda: held(engine, "ranker.item", 9))
            status, body = agent.score("ranker", [7], [9], [1.0])
            assert status == 200
            assert body["scores"][0] == pytest.approx(1 / (1 + math.exp(-2.5)), abs=1e-5)
            await wait_for(lambda: any(r.get("updateAddress") for r in reports))
            address = next(r["updateAddress"] for r in reports if r.get("updateAddress"))
            assert address == agent.update_address
            # Re-wired to another source: the same store, the same endpoint, new rows arrive.
            node_before = plane.node
            agent.on_assignment("MODIFIED", assignment(2, [duty(f"http://127.0.0.1:{port2}")]))
            await wait_for(
                lambda: (
                    plane.config is not None
                    and "127.0.0.1:" + str(port2) in plane.config.upstreams[0].url
                )
            )
            assert plane.node is node_before
            pub2.publish("ranker.user", [8], [np.ones(3)])
            await wait_for(lambda: held(engine, "ranker.user", 8))
            assert engine.store.get("ranker.user", [7])[1].all()  # kept across the re-wiring
            # The stream is deleted: no duties, the node stops pulling and keeps serving.
            agent.on_assignment("MODIFIED", assignment(3, []))
            await wait_for(lambda: plane.config is not None and plane.config.upstreams == ())
            assert agent.update_address != ""
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await plane.stop()
            await pub1.stop()
            await pub2.stop()

    asyncio.run(scenario())


def other(*urls: str, **extra: Any) -> UpdateDuty:
    return duty(*urls, model="tagger", stream="tagger", **extra)


def test_node_config_serves_every_duty() -> None:
    """Two streams on one server: one puller per distinct upstream, a route per model (the
    shared leader carries both models in one pull), each model's weight; a paused duty and a
    removed one lose their route."""
    both = [
        duty("http://lead:9500", "http://deputy:9500", weight=70),
        other("http://lead:9500", "http://tagger-origin:9500", weight=30),
    ]
    cfg = node_config("s", "0.0.0.0:1", both)
    assert [u.url for u in cfg.upstreams] == [
        "http://lead:9500",
        "http://deputy:9500",
        "http://tagger-origin:9500",
    ]
    assert cfg.routes == (
        ("ranker", ("http://lead:9500", "http://deputy:9500")),
        ("tagger", ("http://lead:9500", "http://tagger-origin:9500")),
    )
    assert dict(cfg.model_weights) == {"ranker": 0.7, "tagger": 0.3}
    paused = node_config("s", "0.0.0.0:1", [both[0], other("http://x:1", paused=True)])
    assert paused.routes == (("ranker", ("http://lead:9500", "http://deputy:9500")),)
    assert [u.url for u in paused.upstreams] == ["http://lead:9500", "http://deputy:9500"]
    removed = node_config("s", "0.0.0.0:1", both[1:])
    assert [m for m, _ in removed.routes] == ["tagger"]
    # The first duty paused: the node still pulls the second.
    first_paused = node_config("s", "0.0.0.0:1", [duty("http://a:1", paused=True), both[1]])
    assert [m for m, _ in first_paused.routes] == ["tagger"]


def test_agent_serves_two_streams() -> None:
    """A server in two streams pulls both models (two publishers); pausing one stops only its
    rows; removing a duty drops its upstream."""

    async def scenario() -> None:
        async def patch(body: dict[str, Any]) -> None:
            return None

        pub_r = Publisher(1, [TableSpec("ranker.user", 3, model="ranker")])
        pub_t = Publisher(2, [TableSpec("tagger.user", 3, model="tagger")])
        port_r, port_t = await pub_r.start("127.0.0.1", 0), await pub_t.start("127.0.0.1", 0)
        url_r, url_t = f"http://127.0.0.1:{port_r}", f"http://127.0.0.1:{port_t}"
        metrics = AgentMetrics()
        engine = EmbeddingEngine(metrics.registry)
        writer = StatusWriter(patch, metrics)
        plane = UpdatePlane("srv-0", "127.0.0.1:0", "", metrics.registry, engine.store)
        agent = Agent(engine, writer, metrics, updates=plane)
        tasks = [asyncio.create_task(writer.run()), asyncio.create_task(agent.run())]
        try:
            agent.on_assignment("ADDED", assignment(1, [duty(url_r), other(url_t)]))
            await wait_for(lambda: agent.update_address != "")
            pub_r.publish("ranker.user", [1], [np.ones(3)])
            pub_t.publish("tagger.user", [2], [np.ones(3)])
            await wait_for(lambda: held(engine, "ranker.user", 1))
            await wait_for(lambda: held(engine, "tagger.user", 2))
            # The second stream paused: its rows stop, the first's keep coming.
            agent.on_assignment("MODIFIED", assignment(2, [duty(url_r), other(url_t, paused=True)]))
            await wait_for(lambda: plane.config is not None and len(plane.config.routes) == 1)
            pub_t.publish("tagger.user", [3], [np.ones(3)])
            pub_r.publish("ranker.user", [4], [np.ones(3)])
            await wait_for(lambda: held(engine, "ranker.user", 4))
            await asyncio.sleep(0.3)
            assert not held(engine, "tagger.user", 3)
            # Resumed, then the first stream's duty removed: its publisher is no longer pulled.
            agent.on_assignment("MODIFIED", assignment(3, [other(url_t)]))
            await wait_for(lambda: held(engine, "tagger.user", 3))
            assert plane.config is not None
            assert [u.url for u in plane.config.upstreams] == [url_t]
            pub_r.publish("ranker.user", [5], [np.ones(3)])
            pub_t.publish("tagger.user", [6], [np.ones(3)])
            await wait_for(lambda: held(engine, "tagger.user", 6))
            await asyncio.sleep(0.3)
            assert not held(engine, "ranker.user", 5)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await plane.stop()
            await pub_r.stop()
            await pub_t.stop()

    asyncio.run(scenario())
