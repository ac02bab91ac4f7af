"""The agent's side of the model-state manager, over a real update node's store and cut log: the
baseline view reads the state at its cut, labelled live requests are shadow-scored on it (paired
loss differences as metrics), the control block switches the serving view and restores at a new
epoch, and a replica without the cut says so instead of pretending."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from ekko.agent.engines import BASELINE_VIEW, LIVE_VIEW, EmbeddingEngine
from ekko.agent.metrics import AgentMetrics
from ekko.agent.modelstate import ModelStates, paired_differences
from ekko.agent.runtime import Agent, StatusWriter
from ekko.api.resources import DutyHealth, ModelUpdateControl
from ekko.updates.node import Node, NodeConfig
from ekko.updates.priority import Scheduler
from ekko.updates.publisher import Publisher
from ekko.updates.scoring import ITEM, pair_logloss
from tests.agent.test_embedding import publisher_for, shard, trained

USERS = np.arange(20)
ITEMS = USERS % 7


def pull(pub: Publisher, node: Node) -> None:
    """What the node's puller does with a response (through the cut log and the fence)."""
    for spec in pub.store.specs():
        node.store.declare(spec)
    response = Scheduler().respond(pub.store, node.store.pull_request(1 << 30))
    node._apply(response.tables, response.batches)


def setup() -> tuple[Agent, EmbeddingEngine, Node, Publisher, ModelStates]:
    metrics = AgentMetrics()
    engine = EmbeddingEngine(metrics.registry)
    node = Node(NodeConfig(listen="127.0.0.1:0"), metrics.registry, engine.store)

    async def patch(body: dict[str, Any]) -> None:
        return None

    agent = Agent(engine, StatusWriter(patch, metrics), metrics)
    asyncio.run(engine.load(shard()))
    pub = publisher_for(trained())
    pull(pub, node)
    states = ModelStates(lambda: node, lambda: datetime.now(UTC), lambda: 0.0)
    states.health = {"ranker": DutyHealth(traffic_percent=0.0, shadow_percent=100)}
    agent.states = states
    return agent, engine, node, pub, states


def harm(pub: Publisher, node: Node) -> None:
    """Flip the sign of every item row (a harmful update) and let it reach the node."""
    keys = np.arange(7)
    rows = pub.store.get(f"ranker.{ITEM}", keys)[0]
    pub.publish(f"ranker.{ITEM}", keys, -3 * rows)
    pull(pub, node)


def scores(engine: EmbeddingEngine, view: str = LIVE_VIEW, reader: Any = None) -> np.ndarray:
    return engine.score("ranker", USERS, ITEMS, None, view, reader=reader, count=False).scores


def test_baseline_view_shadow_scores_switch_and_restore() -> None:
    agent, engine, node, pub, states = setup()
    clean = scores(engine)
    node.take_cut(1)
    harm(pub, node)
    harmed = scores(engine)
    assert not np.allclose(clean, harmed)
    # No control block yet: no baseline view, everything live.
    assert states.baseline_reader("ranker") is None
    assert states.choose_view("ranker", None) == LIVE_VIEW

    assert states.on_control("ranker", ModelUpdateControl(baseline_cut=1))
    reader = states.baseline_reader("ranker")
    assert reader is not None
    np.testing.assert_allclose(scores(engine, BASELINE_VIEW, reader), clean)
    assert states.choose_view("ranker", None) == LIVE_VIEW  # trafficPercent 0

    # A labelled live request is shadow-scored on the baseline: paired differences counted.
    labels = (USERS % 2).astype(float)
    status, body = agent.score("ranker", USERS.tolist(), ITEMS.tolist(), labels.tolist())
    assert status == 200 and body["view"] == LIVE_VIEW
    want = pair_logloss(labels, harmed) - pair_logloss(labels, clean)
    registry = engine.metrics.paired.labels("ranker")
    assert registry._value.get() == len(USERS)
    assert engine.metrics.paired_diff.labels("ranker")._value.get() == pytest.approx(
        float(want.sum()), rel=1e-6
    )
    np.testing.assert_allclose(paired_differences(labels, harmed, clean), want)

    # Rollback step 1: every request from the baseline.
    assert states.on_control("ranker", ModelUpdateControl(baseline_cut=1, view="Baseline"))
    assert states.choose_view("ranker", None) == BASELINE_VIEW
    status, body = agent.score("ranker", USERS.tolist(), ITEMS.tolist())
    assert body["view"] == BASELINE_VIEW
    np.testing.assert_allclose(body["scores"], clean.round(6), atol=1e-6)
    (report,) = states.report()
    assert report.view == "Baseline" and report.switched_at is not None and report.cuts == [1]

    # Step 2: restore at epoch 1; the live rows are the cut's again, older-epoch rows fenced.
    assert states.on_control(
        "ranker", ModelUpdateControl(baseline_cut=1, view="Baseline", epoch=1, restore_cut=1)
    )
    np.testing.assert_allclose(scores(engine), clean)
    (report,) = states.report()
    assert report.epoch == 1 and report.restored_at is not None and report.message == ""
    pub.publish(f"ranker.{ITEM}", [0], -np.ones((1, 9)))  # an old-epoch straggler
    pull(pub, node)
    np.testing.assert_allclose(scores(engine), clean)
    # Step 3: live again.
    assert states.on_control("ranker", ModelUpdateControl(baseline_cut=1, epoch=1, restore_cut=1))
    assert states.choose_view("ranker", None) == LIVE_VIEW
    # The same block again changes nothing (idempotent).
    assert not states.on_control(
        "ranker", ModelUpdateControl(baseline_cut=1, epoch=1, restore_cut=1)
    )


def test_recent_view_is_a_second_paired_series_on_the_same_requests() -> None:
    """Baseline at cut 1, a first update, recent view at cut 2, a harm: the baseline series sees
    harm + the first update's gain, the recent series the harm alone, on the same requests."""
    agent, engine, node, pub, states = setup()
    node.take_cut(1)
    base = scores(engine)
    keys = np.arange(7)
    rows = pub.store.get(f"ranker.{ITEM}", keys)[0]
    pub.publish(f"ranker.{ITEM}", keys, 1.5 * rows)
    pull(pub, node)
    node.take_cut(2)
    near = scores(engine)
    harm(pub, node)
    harmed = scores(engine)
    assert states.on_control("ranker", ModelUpdateControl(baseline_cut=1, recent_cut=2))
    recent = states.recent_reader("ranker")
    assert recent is not None
    np.testing.assert_allclose(scores(engine, BASELINE_VIEW, recent), near)
    labels = (USERS % 2).astype(float)
    status, _ = agent.score("ranker", USERS.tolist(), ITEMS.tolist(), labels.tolist())
    assert status == 200
    m = engine.metrics
    to_base = pair_logloss(labels, harmed) - pair_logloss(labels, base)
    to_recent = pair_logloss(labels, harmed) - pair_logloss(labels, near)
    assert m.paired.labels("ranker")._value.get() == len(USERS)
    assert m.paired_recent.labels("ranker")._value.get() == len(USERS)
    assert m.paired_diff.labels("ranker")._value.get() == pytest.approx(float(to_base.sum()))
    assert m.paired_recent_diff.labels("ranker")._value.get() == pytest.approx(
        float(to_recent.sum())
    )
    assert m.paired_recent_diff_sq.labels("ranker")._value.get() == pytest.approx(
        float((to_recent**2).sum())
    )
    assert not np.isclose(to_base.sum(), to_recent.sum())
    # A recent cut this replica does not hold: no recent series, the baseline one goes on.
    assert states.on_control("ranker", ModelUpdateControl(baseline_cut=1, recent_cut=9))
    assert states.recent_reader("ranker") is None
    agent.score("ranker", USERS.tolist(), ITEMS.tolist(), labels.tolist())
    assert m.paired.labels("ranker")._value.get() == 2 * len(USERS)
    assert m.paired_recent.labels("ranker")._value.get() == len(USERS)


def test_a_replica_without_the_cut_says_so_and_cuts_below_the_baseline_go() -> None:
    _, _, node, _, states = setup()
    node.take_cut(1)
    node.take_cut(2)
    node.take_cut(3)
    states.on_control("ranker", ModelUpdateControl(baseline_cut=2))
    assert [c.id for c in node.cuts.of("ranker").cuts()] == [2, 3]
    states.on_control("ranker", ModelUpdateControl(baseline_cut=9, view="Baseline"))
    (report,) = states.report()
    assert report.view == "Live" and "cut 9 is not held" in report.message
    assert states.choose_view("ranker", None) == LIVE_VIEW
    # A restore to a cut it lacks: it takes the epoch and waits for its upstream's rows.
    states.on_control("ranker", ModelUpdateControl(epoch=4, restore_cut=9))
    (report,) = states.report()
    assert report.epoch == 4 and "arrives from upstream" in report.message


def test_traffic_and_shadow_shares() -> None:
    _, _, node, _, _ = setup()
    node.take_cut(1)
    draw = [0.0]
    states = ModelStates(lambda: node, lambda: datetime.now(UTC), lambda: draw[0])
    states.health = {"ranker": DutyHealth(traffic_percent=0.5, shadow_percent=30)}
    states.on_control("ranker", ModelUpdateControl(baseline_cut=1))
    draw[0] = 0.004  # 0.4 % < 0.5 %: the baseline's sliver; 0.4 % < 30 %: shadow-scored
    assert states.choose_view("ranker", None) == BASELINE_VIEW
    assert states.shadow("ranker")[0] is not None
    assert states.shadow("ranker")[1] is None  # no recent view named
    draw[0] = 0.006
    assert states.choose_view("ranker", None) == LIVE_VIEW
    assert states.choose_view("ranker", "baseline") == BASELINE_VIEW  # asked for
    draw[0] = 0.31
    assert states.shadow("ranker") == (None, None)
