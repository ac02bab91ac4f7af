"""The embedding engine: rows arrive in its store (as the update node writes them), /score
answers from them with the same maths as the trainer, and labelled pairs count loss per view."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from ekko.agent.decide import ReplicaKey
from ekko.agent.engines import EmbeddingEngine, ScoringError, make_engine, model_tables
from ekko.agent.metrics import AgentMetrics
from ekko.agent.runtime import Agent, StatusWriter
from ekko.agent.server import make_app, parse_score_request
from ekko.api.resources import AssignedShard
from ekko.updates.priority import Scheduler
from ekko.updates.publisher import Publisher
from ekko.updates.scoring import DENSE, ITEM, USER, LogisticMF
from ekko.updates.store import TableSpec

DIM = 8


def trained(hidden: int = 0) -> LogisticMF:
    mf = LogisticMF(DIM, hidden=hidden, seed=2)
    rng = np.random.default_rng(5)
    for _ in range(400):
        u, i = int(rng.integers(40)), int(rng.integers(30))
        mf.step(u, i, float((u + i) % 3 == 0))
    return mf


def publish_all(pub: Publisher, mf: LogisticMF, prefix: str = "ranker.") -> None:
    for role in (USER, ITEM, DENSE):
        rows = mf.tables[role]
        keys = np.flatnonzero(mf.known[role]) if role != DENSE else np.arange(rows.shape[0])
        pub.publish(prefix + role, keys, rows[keys])


def publisher_for(mf: LogisticMF, model: str = "ranker") -> Publisher:
    pub = Publisher(
        origin=1,
        tables=[
            TableSpec("ranker.user", DIM + 1, model=model),
            TableSpec("ranker.item", DIM + 1, model=model),
            TableSpec("ranker.dense", mf.width(DENSE), model=model),
        ],
    )
    publish_all(pub, mf)
    return pub


def replicate(pub: Publisher, engine: EmbeddingEngine) -> None:
    """What the update node does: pull everything the origin has and apply it in place."""
    for spec in pub.store.specs():
        engine.store.declare(spec)
    response = Scheduler().respond(pub.store, engine.store.pull_request(1 << 30))
    for batch in response.batches:
        engine.store.apply(batch)


def shard(model: str = "ranker") -> AssignedShard:
    return AssignedShard(model=model, shard=0, version="v1", uri="file:///unused", bytes=100)


@pytest.mark.parametrize("hidden", [0, 3])
def test_scores_match_the_trainer(hidden: int) -> None:
    mf = trained(hidden)
    engine = EmbeddingEngine()
    asyncio.run(engine.load(shard()))
    replicate(publisher_for(mf), engine)
    users, items = np.arange(45), np.arange(45) % 35  # some keys cold on both sides
    scored = engine.score("ranker", users, items)
    np.testing.assert_allclose(scored.scores, mf.score_many(users, items), rtol=1e-6)
    assert scored.cold_users == 5 and scored.cold_items == 5


def test_rows_updated_in_place_change_scores() -> None:
    mf = trained()
    pub = publisher_for(mf)
    engine = EmbeddingEngine()
    asyncio.run(engine.load(shard()))
    replicate(pub, engine)
    before = engine.score("ranker", [1], [2]).scores[0]
    for _ in range(30):
        mf.step(1, 2, 1.0)
    publish_all(pub, mf)
    replicate(pub, engine)
    after = engine.score("ranker", [1], [2]).scores[0]
    assert after > before
    assert after == pytest.approx(mf.score(1, 2), rel=1e-6)


def test_labelled_pairs_count_loss_per_view() -> None:
    registry = CollectorRegistry()
    engine = EmbeddingEngine(registry)
    asyncio.run(engine.load(shard()))
    replicate(publisher_for(trained()), engine)
    labels = [1.0, 0.0, float("nan")]
    scored = engine.score("ranker", [1, 2, 3], [4, 5, 6], labels)
    p = scored.scores
    expect = -(math.log(p[0]) + math.log(1 - p[1])) / 2
    assert scored.logloss == pytest.approx(expect)

    def value(name: str) -> float:
        v = registry.get_sample_value(name, {"model": "ranker", "view": "live"})
        assert v is not None
        return v

    assert value("ekko_agent_scores_total") == 3
    assert value("ekko_agent_scores_labelled_total") == 2
    assert value("ekko_agent_score_logloss_total") == pytest.approx(2 * expect)


def test_zero_series_declared_at_load() -> None:
    registry = CollectorRegistry()
    engine = EmbeddingEngine(registry)
    asyncio.run(engine.load(shard("other")))
    labels = {"model": "other", "view": "live"}
    assert registry.get_sample_value("ekko_agent_scores_total", labels) == 0
    assert registry.get_sample_value("ekko_agent_score_logloss_total", labels) == 0


def test_refusals() -> None:
    engine = EmbeddingEngine()
    with pytest.raises(ScoringError, match="holds no shard"):
        engine.score("ranker", [1], [1])
    asyncio.run(engine.load(shard()))
    with pytest.raises(ScoringError, match="no user and item tables"):
        engine.score("ranker", [1], [1])
    replicate(publisher_for(trained()), engine)
    with pytest.raises(ScoringError, match="unknown view"):
        engine.score("ranker", [1], [1], view="yesterday")
    with pytest.raises(ScoringError, match="no baseline view"):
        engine.score("ranker", [1], [1], view="baseline")
    with pytest.raises(ScoringError, match="labels"):
        engine.score("ranker", [1], [1], [1.0, 0.0])
    asyncio.run(engine.unload(ReplicaKey("ranker", 0, "v1")))
    with pytest.raises(ScoringError, match="holds no shard"):
        engine.score("ranker", [1], [1])


def test_tables_belong_to_models_by_spec() -> None:
    engine = EmbeddingEngine()
    engine.store.declare(TableSpec("user", 3, model="a"))
    engine.store.declare(TableSpec("b.user", 3, model="b"))
    engine.store.declare(TableSpec("b.item", 3, model="b"))
    engine.store.declare(TableSpec("b.extra", 3, model="b"))
    assert model_tables(engine.store, "a") == {"user": "user"}
    assert model_tables(engine.store, "b") == {"user": "b.user", "item": "b.item"}


def test_make_engine_embedding() -> None:
    assert make_engine("embedding", sim_bandwidth=1.0).name == "embedding"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ([], "JSON object"),
        ({"requests": []}, "give the model"),
        ({"model": "m", "requests": []}, "1 to"),
        ({"model": "m", "requests": [{"user": -1, "item": 2}]}, "non-negative"),
        ({"model": "m", "requests": [{"user": 1, "item": "x"}]}, "integer"),
        ({"model": "m", "requests": [{"user": 1, "item": 2, "label": 0.5}]}, "label"),
        ({"model": "m", "user": 1, "item": 2, "view": "old"}, "view must be"),
    ],
)
def test_parse_score_request_refuses(body: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_score_request(body)


def test_parse_score_request() -> None:
    assert parse_score_request({"model": "m", "user": 1, "item": 2}) == (
        "m",
        None,  # the agent chooses: live, or the baseline during a rollback and for its sliver
        [1],
        [2],
        None,
    )
    assert parse_score_request({"model": "m", "user": 1, "item": 2, "view": "baseline"})[1] == (
        "baseline"
    )
    _, _, users, items, labels = parse_score_request(
        {"model": "m", "requests": [{"user": 1, "item": 2, "label": 1}, {"user": 3, "item": 4}]}
    )
    assert (users, items) == ([1, 3], [2, 4])
    assert labels is not None and labels[0] == 1.0 and math.isnan(labels[1])


def test_score_endpoint() -> None:
    async def scenario() -> None:
        async def patch(body: dict[str, Any]) -> None:
            return None

        metrics = AgentMetrics()
        engine = EmbeddingEngine(metrics.registry)
        agent = Agent(engine, StatusWriter(patch, metrics), metrics)
        mf = trained()
        async with TestClient(TestServer(make_app(agent))) as client:
            resp = await client.post("/score", json={"model": "ranker", "user": 1, "item": 2})
            assert resp.status == 503
            await engine.load(shard())
            replicate(publisher_for(mf), engine)
            resp = await client.post(
                "/score",
                json={"model": "ranker", "requests": [{"user": 1, "item": 2, "label": 1}]},
            )
            assert resp.status == 200
            body = await resp.json()
            assert body["scores"][0] == pytest.approx(mf.score(1, 2), abs=1e-6)
            assert body["logloss"] == pytest.approx(-math.log(mf.score(1, 2)), rel=1e-4)
            resp = await client.post("/score", data=b"{")
            assert resp.status == 400
            text = (await (await client.get("/metrics")).read()).decode()
            assert 'ekko_agent_scores_labelled_total{model="ranker",view="live"} 1.0' in text

    asyncio.run(scenario())


def test_score_endpoint_on_another_engine() -> None:
    async def scenario() -> None:
        async def patch(body: dict[str, Any]) -> None:
            return None

        metrics = AgentMetrics()
        agent = Agent(make_engine("sim", sim_bandwidth=1.0), StatusWriter(patch, metrics), metrics)
        async with TestClient(TestServer(make_app(agent))) as client:
            resp = await client.post("/score", json={"model": "m", "user": 1, "item": 2})
            assert resp.status == 501

    asyncio.run(scenario())
