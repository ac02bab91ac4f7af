"""The update pull topology: one sticky leader per group and region, followers behind it with a
deputy and the source as fallbacks, every replica with a path to the source."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ekko.api.resources import UpdateStreamSpec
from ekko.planning.updates import (
    StreamServer,
    Topology,
    link_rate,
    merge_duties,
    path_to_source,
    plan_topology,
    previous_leaders,
)

SOURCE = "http://trainer:9500"


def spec(**extra: object) -> UpdateStreamSpec:
    body: dict[str, object] = {
        "model": "ranker",
        "source": {"endpoints": [SOURCE], "region": "train"},
        "tables": [{"name": "ranker.user", "dim": 17}],
        **extra,
    }
    return UpdateStreamSpec.model_validate(body)


def srv(
    name: str, region: str, ready: bool = True, shards: frozenset[int] = frozenset({0})
) -> StreamServer:
    return StreamServer(name, region, shards, ready, f"http://{name}:9500" if ready else "")


def upstream_names(t: Topology, server: str) -> list[str]:
    return [u.server or "source" for u in t.duties[server][0].upstreams]


FLEET = [srv("a0", "eu"), srv("a1", "eu"), srv("a2", "eu"), srv("b0", "us"), srv("b1", "us")]


def test_leaders_pull_from_source_then_other_leaders_followers_from_leader() -> None:
    t = plan_topology("s", spec(), FLEET)
    assert t.leaders == {(0, "eu"): "a0", (0, "us"): "b0"}
    assert t.deputies == {(0, "eu"): "a1", (0, "us"): "b1"}
    assert upstream_names(t, "a0") == ["source", "b0"]
    assert upstream_names(t, "b0") == ["source", "a0"]
    assert upstream_names(t, "a1") == ["a0", "source"]  # the deputy falls back to the source
    assert upstream_names(t, "a2") == ["a0", "a1", "source"]
    assert [d.role for d in t.duties["a0"]] == ["Leader"]
    assert [d.role for d in t.duties["a2"]] == ["Follower"]
    assert all(path_to_source(t, s.name, "s") for s in FLEET)


@pytest.mark.parametrize(
    ("previous", "fleet", "leader"),
    [
        ({(0, "eu"): "a2"}, FLEET, "a2"),  # sticky while ready
        ({(0, "eu"): "a2"}, [srv("a0", "eu"), srv("a1", "eu"), srv("a2", "eu", ready=False)], "a1"),
        ({}, [srv("a0", "eu", ready=False), srv("a1", "eu")], "a1"),
        ({(0, "eu"): "gone"}, FLEET, "a1"),  # the previous deputy takes over
    ],
)
def test_leader_is_sticky_and_replaced_when_lost(
    previous: dict[tuple[int, str], str], fleet: list[StreamServer], leader: str
) -> None:
    t = plan_topology("s", spec(), fleet, previous, {(0, "eu"): "a1"})
    assert t.leaders[(0, "eu")] == leader


def test_leader_loss_repoints_followers_and_keeps_other_regions() -> None:
    before = plan_topology("s", spec(), FLEET)
    after_fleet = [s for s in FLEET if s.name != "a0"]
    after = plan_topology("s", spec(), after_fleet, before.leaders, before.deputies)
    assert after.leaders == {(0, "eu"): "a1", (0, "us"): "b0"}
    assert after.leader_changes(before.leaders) == {(0, "eu"): "a1"}
    assert upstream_names(after, "a2") == ["a1", "source"]
    assert after.duties["b0"] != before.duties["b0"]  # its fallback leader moved
    assert after.duties["b1"] == before.duties["b1"]  # untouched


def test_replan_of_an_unchanged_fleet_changes_nothing() -> None:
    t1 = plan_topology("s", spec(), FLEET)
    t2 = plan_topology("s", spec(), list(reversed(FLEET)), t1.leaders, t1.deputies)
    assert t1.duties == t2.duties


def test_unreachable_region_pulls_from_source_without_a_leader() -> None:
    t = plan_topology("s", spec(), [srv("a0", "eu", ready=False), srv("a1", "eu", ready=False)])
    assert t.leaders == {}
    assert upstream_names(t, "a0") == ["source"]
    assert t.duties["a0"][0].role == "Follower"


def test_no_leaders_when_disabled() -> None:
    t = plan_topology("s", spec(topology={"leaderPerRegion": False}), FLEET)
    assert t.leaders == {}
    assert all(upstream_names(t, s.name) == ["source"] for s in FLEET)


def test_modulo_groups_by_shard() -> None:
    fleet = [
        srv("a0", "eu", shards=frozenset({0, 1})),
        srv("a1", "eu", shards=frozenset({1})),
        srv("a2", "eu", shards=frozenset({0})),
    ]
    t = plan_topology("s", spec(keyMapping="Modulo"), fleet)
    assert t.leaders == {(0, "eu"): "a0", (1, "eu"): "a0"}
    assert [d.group for d in t.duties["a0"]] == [0, 1]
    assert upstream_names(t, "a2") == ["a0", "source"]


def test_budgets_and_settings_reach_the_duties() -> None:
    s = spec(
        bandwidth={
            "wan": "1Mi",
            "lan": "10Mi",
            "overrides": [{"fromRegion": "train", "toRegion": "us", "rate": "2Mi"}],
        },
        compression={"values": "Int8", "codec": "Zstd"},
        topology={"idlePullInterval": "30s"},
        paused=True,
    )
    assert link_rate(s, "train", "eu") == 1 << 20
    assert link_rate(s, "train", "us") == 2 << 20
    assert link_rate(s, "eu", "eu") == 10 << 20
    t = plan_topology("s", s, FLEET)
    d = t.duties["a2"][0]
    assert [u.bandwidth for u in d.upstreams] == [10 << 20, 10 << 20, 1 << 20]
    assert (d.values, d.codec, d.idle_pull_seconds, d.paused) == ("Int8", "Zstd", 30, True)
    assert [u.bandwidth for u in t.duties["b0"][0].upstreams] == [2 << 20, 1 << 20]


def test_previous_leaders_and_merge() -> None:
    t = plan_topology("s", spec(), FLEET)
    assert previous_leaders(t.duties, "s") == t.leaders
    other = plan_topology("t", spec(), FLEET).duties["a0"]
    merged = merge_duties([*other, *t.duties["a0"]], "s", [])
    assert merged == list(other)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["eu", "us", "ap"]),
            st.booleans(),
            st.sets(st.integers(0, 2), min_size=1),
        ),
        min_size=1,
        max_size=12,
    ),
    st.booleans(),
    st.data(),
)
def test_properties(
    rows: list[tuple[str, bool, set[int]]], modulo: bool, data: st.DataObject
) -> None:
    fleet = [
        StreamServer(f"s{i}", r, frozenset(sh), ok, f"http://s{i}:9500" if ok else "")
        for i, (r, ok, sh) in enumerate(rows)
    ]
    s = spec(keyMapping="Modulo" if modulo else "Replicated")
    t = plan_topology("st", s, fleet)
    # Exactly one leader per (group, region) that has a candidate, and it is a candidate.
    for (g, r), name in t.leaders.items():
        roles = [
            d
            for n, ds in t.duties.items()
            for d in ds
            if d.group == g and d.region == r and d.role == "Leader"
        ]
        assert len(roles) == 1
        assert next(x for x in fleet if x.name == name).candidate
    groups = {
        (g, x.region) for x in fleet for g in (sorted(x.shards) if modulo else [0]) if x.candidate
    }
    assert set(t.leaders) == groups
    # Every replica reaches the source by first upstreams, without a cycle.
    assert all(path_to_source(t, x.name, "st") for x in fleet)
    # Losing any one server: a re-plan keeps every other leader (stickiness) and paths hold.
    lost = data.draw(st.sampled_from(fleet))
    rest = [x for x in fleet if x.name != lost.name]
    t2 = plan_topology("st", s, rest, t.leaders, t.deputies)
    for key, name in t.leaders.items():
        if name != lost.name and key in t2.leaders:
            assert t2.leaders[key] == name
    assert all(path_to_source(t2, x.name, "st") for x in rest)


# --- status -----------------------------------------------------------------------------------

METRICS = """
# TYPE ekko_update_lag_seconds histogram
ekko_update_lag_seconds_bucket{model="ranker",region="eu",priority_class="new",le="0.1"} 2
ekko_update_lag_seconds_bucket{model="ranker",region="eu",priority_class="new",le="1.0"} 4
ekko_update_lag_seconds_bucket{model="ranker",region="eu",priority_class="new",le="+Inf"} 4
ekko_update_lag_seconds_bucket{model="ranker",region="eu",priority_class="rest",le="0.1"} 0
ekko_update_lag_seconds_bucket{model="ranker",region="eu",priority_class="rest",le="1.0"} 4
ekko_update_lag_seconds_bucket{model="ranker",region="eu",priority_class="rest",le="+Inf"} 4
ekko_update_lag_seconds_bucket{model="other",region="eu",priority_class="rest",le="+Inf"} 99
ekko_update_lag_seconds_count{model="ranker",region="eu",priority_class="new"} 4
ekko_update_lag_seconds_sum{model="ranker",region="eu",priority_class="new"} 1
# TYPE ekko_update_wire_bytes_total counter
ekko_update_wire_bytes_total{direction="in",peer_region="train"} 1000
ekko_update_wire_bytes_total{direction="out",peer_region="eu"} 5000
# TYPE ekko_update_raw_bytes_total counter
ekko_update_raw_bytes_total{direction="in",peer_region="train"} 4000
# TYPE ekko_update_rows_applied_total counter
ekko_update_rows_applied_total{model="ranker",priority_class="new"} 8
# TYPE ekko_update_backlog_rows gauge
ekko_update_backlog_rows{downstream="a1"} 3
# TYPE ekko_update_staleness_seconds gauge
ekko_update_staleness_seconds{model="ranker"} 0
"""


def test_parse_scrape_and_quantiles() -> None:
    from ekko.planning.updates import parse_scrape, quantile

    s = parse_scrape(METRICS, "ranker")
    assert s.lag[("new", 0.1)] == 2 and s.lag[("rest", 1.0)] == 4
    assert ("rest", float("inf")) in s.lag and s.lag[("rest", float("inf"))] == 4
    assert s.wire_in == {"train": 1000} and s.raw_in == {"train": 4000}
    assert (s.rows, s.backlog) == (8, 3)
    assert quantile(0.5, {0.1: 2, 1.0: 4, float("inf"): 4}) == pytest.approx(0.1)
    assert quantile(0.99, {0.1: 2, 1.0: 4, float("inf"): 4}) == pytest.approx(0.1 + 0.9 * 1.96 / 2)
    assert quantile(0.5, {0.1: 0, float("inf"): 0}) is None


def test_stream_status_from_scrapes() -> None:
    import datetime as dt

    from ekko.planning.updates import Scrape, parse_scrape, stream_status

    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    fleet = [srv("a0", "eu"), srv("a1", "eu"), srv("b0", "us", ready=False)]
    t = plan_topology("s", spec(), fleet)
    scrape = parse_scrape(METRICS, "ranker")
    status = stream_status(
        spec(),
        generation=3,
        topology=t,
        servers=fleet,
        scrapes={"a0": scrape, "a1": scrape},
        baselines={"a1": Scrape(wire_in={"train": 500}, raw_in={"train": 1000}, rows=4)},
        window_seconds=10,
        previous=[],
        now=now,
    )
    assert status.observed_generation == 3
    assert (status.servers_wanted, status.servers_connected, status.servers_lagging) == (3, 2, 0)
    assert status.state == "Degraded"  # b0 is not connected
    assert status.traffic.wan_bytes_per_second == 150  # (1000 + 500) / 10 s
    assert status.traffic.compression_ratio == pytest.approx(7000 / 1500, rel=1e-2)
    assert status.traffic.rows_per_second == pytest.approx(1.2)
    assert status.backlog_rows == 6
    assert status.freshness.p99_seconds is not None and status.freshness.p99_seconds < 1.0
    assert [(r.region, r.leader, r.servers) for r in status.freshness.regions] == [
        ("eu", "a0", 2),
        ("us", "", 1),
    ]
    kinds = {c.type: c.status for c in status.conditions}
    assert kinds == {"Connected": "False", "Fresh": "True"}
    paused = stream_status(
        spec(paused=True),
        generation=3,
        topology=t,
        servers=fleet[:2],
        scrapes={"a0": scrape, "a1": scrape},
        baselines={},
        window_seconds=10,
        previous=status.conditions,
        now=now,
    )
    assert paused.state == "Paused"
    assert {c.type: c.status for c in paused.conditions}["Connected"] == "True"
    stale = Scrape(staleness=30.0)
    lagging = stream_status(
        spec(),
        generation=3,
        topology=t,
        servers=fleet[:2],
        scrapes={"a0": scrape, "a1": stale},
        baselines={},
        window_seconds=10,
        previous=[],
        now=now,
    )
    assert lagging.state == "Degraded" and lagging.servers_lagging == 1
    assert {c.type: c.status for c in lagging.conditions}["Fresh"] == "False"


def test_a_restarted_operator_reads_leaders_and_deputies_back() -> None:
    from ekko.planning.updates import previous_deputies

    t = plan_topology("s", spec(), FLEET)
    leaders = previous_leaders(t.duties, "s")
    deputies = previous_deputies(t.duties, "s")
    assert leaders == dict(t.leaders)
    # A region of two names its deputy nowhere; choosing it again gives the same wiring.
    assert deputies == {(0, "eu"): "a1"}
    again = plan_topology("s", spec(), FLEET, leaders, deputies)
    assert again.duties == t.duties


def test_pause_by_annotation() -> None:
    from ekko.planning.updates import PAUSE_ANNOTATION, is_paused

    assert not is_paused(spec(), {})
    assert is_paused(spec(), {PAUSE_ANNOTATION: "true"})
    assert is_paused(spec(paused=True), {})
    t = plan_topology("s", spec(), FLEET, paused=True)
    assert all(d.paused for ds in t.duties.values() for d in ds)


def test_duties_carry_the_baseline_shares_only_when_health_is_on() -> None:
    plain = plan_topology("s", spec(), FLEET)
    assert all(d.health is None for ds in plain.duties.values() for d in ds)
    on = plan_topology(
        "s",
        spec(
            health={
                "baseline": {"trafficPercent": 0.25, "shadowPercent": 40},
                "undoLogBytes": "64Mi",
            }
        ),
        FLEET,
    )
    healths = [d.health for ds in on.duties.values() for d in ds]
    assert len(healths) == len(FLEET) and all(h == healths[0] for h in healths)
    h = healths[0]
    assert h is not None
    assert (h.traffic_percent, h.shadow_percent, h.undo_log_bytes) == (0.25, 40, 64 << 20)


def test_prometheus_answers_read_as_the_same_scrape_as_the_agents_own_metrics() -> None:
    """What the queries return for a server (sums by pod, class and le) is read into the same
    Scrape the agent's /metrics gives, so the status does not depend on where it was read."""
    from ekko.planning.updates import parse_scrape, prometheus_queries, scrapes_from_prometheus

    queries = prometheus_queries("ranker", ["a1", "a0.x"], 60)
    assert set(queries) == {"lag", "wire", "raw", "rows", "backlog", "staleness"}
    # The model and the pods are matched exactly: a dot in a pod name is not a wildcard.
    assert 'model="ranker"' in queries["lag"] and 'pod=~"a0\\\\.x|a1"' in queries["lag"]
    assert queries["rows"].endswith("[60s]))") and "increase(" in queries["wire"]
    assert "increase(" not in queries["backlog"] and "increase(" not in queries["staleness"]

    def answer(pod: str) -> dict[str, list[tuple[dict[str, str], float]]]:
        lag = [
            ({"pod": pod, "priority_class": c, "le": le}, v)
            for c, le, v in [
                ("new", "0.1", 2),
                ("new", "1", 4),
                ("new", "+Inf", 4),
                ("rest", "0.1", 0),
                ("rest", "1", 4),
                ("rest", "+Inf", 4),
            ]
        ]
        return {
            "lag": lag,
            "wire": [({"pod": pod, "peer_region": "train"}, 1000.0)],
            "raw": [({"pod": pod, "peer_region": "train"}, 4000.0)],
            "rows": [({"pod": pod}, 8.0)],
            "backlog": [({"pod": pod}, 3.0)],
            "staleness": [({"pod": pod}, 0.0), ({}, 7.0)],  # a series without a pod: ignored
        }

    results = {k: answer("a0")[k] + answer("a1")[k] for k in answer("a0")}
    scrapes = scrapes_from_prometheus(results)
    agent = parse_scrape(METRICS, "ranker")
    assert set(scrapes) == {"a0", "a1"}
    for s in scrapes.values():
        assert dict(s.lag) == dict(agent.lag)
        assert (s.wire_in, s.raw_in, s.rows, s.backlog, s.staleness) == (
            agent.wire_in,
            agent.raw_in,
            agent.rows,
            agent.backlog,
            agent.staleness,
        )
    assert scrapes_from_prometheus({"lag": [], "rows": []}) == {}  # nothing scraped: not connected


def test_a_replaced_pod_is_known_by_its_uid_also_after_an_operator_restart() -> None:
    from ekko.planning.updates import replaced_servers

    now = {"a0": "new", "a1": "u1"}
    # This operator saw a0's old pod: replaced.
    assert replaced_servers(now, {"a0": "old", "a1": "u1"}, {}) == {"a0"}
    # A restarted operator remembers nothing; the duties recorded the old pod's UID.
    assert replaced_servers(now, {}, {"a0": "old", "a1": "u1"}) == {"a0"}
    # What it saw itself comes first (the duties may not be rewritten yet).
    assert replaced_servers(now, {"a0": "new"}, {"a0": "old"}) == set()
    # Duties written before UIDs were recorded, or a server never seen: not replaced.
    assert replaced_servers(now, {}, {"a0": ""}) == set()
    # A pod gone altogether.
    assert replaced_servers({"a1": "u1"}, {"a0": "x", "a1": "u1"}, {}) == {"a0"}
