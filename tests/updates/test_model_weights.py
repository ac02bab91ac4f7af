"""A server in two streams: one pull may carry two models' rows, ranked by each model's weight
(``p_m``, set by the operator per duty); a pull may ask for some models only."""

from __future__ import annotations

import numpy as np

from ekko.updates.codec import decode_request, encode_request
from ekko.updates.node import Node, NodeConfig, Upstream
from ekko.updates.priority import Scheduler
from ekko.updates.store import PullRequest, Store, TableSpec, row_wire_bytes
from ekko.updates.versions import Knowledge

N = 50


def two_models() -> tuple[Store, dict[tuple[str, int], Knowledge]]:
    """Both models' rows written once (the puller holds them), then all changed alike: the light
    model's changes first (older: FIFO would send them first)."""
    s = Store()
    s.declare(TableSpec("light.user", 4, model="light"))
    s.declare(TableSpec("heavy.user", 4, model="heavy"))
    keys = np.arange(N)
    rng = np.random.default_rng(0)
    seq = 1
    for table in ("light.user", "heavy.user"):
        s.write(table, keys, np.ones((N, 4)), epoch=0, origin=1, seqs=seq + keys, publish_time=0.0)
        seq += N
    known = {shard: s.knowledge(shard) for shard in s.shards()}
    delta = 1 + rng.random((N, 4))
    for table in ("light.user", "heavy.user"):
        s.write(table, keys, 1 + delta, epoch=0, origin=1, seqs=seq + keys, publish_time=0.0)
        seq += N
    return s, known


def rows_sent(weights: dict[str, float], budget_rows: int) -> dict[str, int]:
    store, known = two_models()
    sched = Scheduler()
    sched.model_weights = weights
    request = PullRequest(known, budget_rows * row_wire_bytes(4, "float32"))
    response = sched.respond(store, request)
    return {b.table: b.n for b in response.batches if b.n}


def test_the_heavier_models_rows_go_first_under_a_shared_budget() -> None:
    # (The oldest unsent row may go along: the rest class keeps some seq order.)
    heavy_first = rows_sent({"heavy": 0.8, "light": 0.2}, N)
    assert heavy_first.get("heavy.user", 0) >= 0.9 * N >= 10 * heavy_first.get("light.user", 0)
    light_first = rows_sent({"heavy": 0.2, "light": 0.8}, N)
    assert light_first.get("light.user", 0) >= 0.9 * N >= 10 * light_first.get("heavy.user", 0)
    # Equal weights: both models compete on their rows' significance alone.
    equal = rows_sent({"heavy": 0.5, "light": 0.5}, N)
    assert set(equal) == {"heavy.user", "light.user"}


def test_a_pull_for_some_models_gets_only_their_tables() -> None:
    store, known = two_models()
    request = PullRequest(known, 1 << 30, models=("light",))
    response = Scheduler().respond(store, request)
    assert {b.table for b in response.batches if b.n} == {"light.user"}
    assert decode_request(encode_request(request)).models == ("light",)
    assert decode_request(encode_request(PullRequest(known, 10))).models == ()


def test_a_table_that_names_no_model_goes_to_every_puller() -> None:
    store, known = two_models()
    store.declare(TableSpec("shared", 4))
    store.write("shared", [1], np.ones((1, 4)), epoch=0, origin=1, seqs=[10_000], publish_time=0.0)
    response = Scheduler().respond(store, PullRequest(known, 1 << 30, models=("light",)))
    assert {b.table for b in response.batches if b.n} == {"light.user", "shared"}


def test_each_model_falls_back_along_its_own_route() -> None:
    """One puller per upstream; it asks for the models whose earlier upstreams all fail."""
    lead, deputy, origin = "http://lead", "http://deputy", "http://origin"
    node = Node(
        NodeConfig(
            upstreams=(Upstream(lead), Upstream(deputy), Upstream(origin)),
            routes=(("ranker", (lead, deputy)), ("tagger", (lead, origin))),
        )
    )
    assert [node.pulling_for(i) for i in range(3)] == [("ranker", "tagger"), None, None]
    node.upstreams[0].healthy = False  # the shared leader fails: each model to its fallback
    assert [node.pulling_for(i) for i in range(3)] == [
        ("ranker", "tagger"),  # still retried, for both
        ("ranker",),
        ("tagger",),
    ]
    node.upstreams[0].healthy = True
    assert [node.pulling_for(i) for i in range(3)] == [("ranker", "tagger"), None, None]
    # Without routes: the legacy order over every upstream, for every table.
    plain = Node(NodeConfig(upstreams=(Upstream(lead), Upstream(deputy))))
    assert [plain.pulling_for(i) for i in range(2)] == [(), None]
