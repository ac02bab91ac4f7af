"""Table tests of the agent's pure decisions."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ekko.agent import decide
from ekko.agent.decide import Fault, ReplicaKey
from ekko.api.meta import Condition
from ekko.api.resources import AssignedShard, ModelRouting, VersionWeight

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def shard(model: str, index: int, version: str = "v1", size: int = 100) -> AssignedShard:
    return AssignedShard(model=model, shard=index, version=version, uri="file:///m", bytes=size)


def key(model: str, index: int, version: str = "v1") -> ReplicaKey:
    return ReplicaKey(model, index, version)


def w(*pairs: tuple[str, int]) -> list[VersionWeight]:
    return [VersionWeight(version=v, weight=n) for v, n in pairs]


@pytest.mark.parametrize(
    ("assigned", "loaded", "to_load", "to_unload"),
    [
        pytest.param([], set(), [], [], id="nothing"),
        pytest.param(
            [shard("a", 0), shard("a", 1)], set(), [key("a", 0), key("a", 1)], [], id="fresh"
        ),
        pytest.param([shard("a", 0)], {key("a", 0)}, [], [], id="converged"),
        pytest.param([], {key("a", 1), key("a", 0)}, [], [key("a", 0), key("a", 1)], id="drain"),
        pytest.param(
            [shard("a", 0), shard("a", 2)],
            {key("a", 0), key("a", 1)},
            [key("a", 2)],
            [key("a", 1)],
            id="swap-one",
        ),
        pytest.param(
            [shard("a", 0, "v2")],
            {key("a", 0, "v1")},
            [key("a", 0, "v2")],
            [key("a", 0, "v1")],
            id="new-version-is-another-shard",
        ),
        pytest.param([shard("a", 0), shard("a", 0)], set(), [key("a", 0)], [], id="duplicate-once"),
        pytest.param(
            [shard("b", 3), shard("a", 1)],
            set(),
            [key("b", 3), key("a", 1)],
            [],
            id="assignment-order-kept",
        ),
    ],
)
def test_diff(
    assigned: list[AssignedShard],
    loaded: set[ReplicaKey],
    to_load: list[ReplicaKey],
    to_unload: list[ReplicaKey],
) -> None:
    got_load, got_unload = decide.diff(assigned, loaded)
    assert [decide.key_of(s) for s in got_load] == to_load
    assert got_unload == to_unload


@given(
    st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 5), st.sampled_from(["v1", "v2"]))),
    st.sets(st.tuples(st.sampled_from("ab"), st.integers(0, 5), st.sampled_from(["v1", "v2"]))),
)
def test_diff_converges(
    assigned_t: list[tuple[str, int, str]], loaded_t: set[tuple[str, int, str]]
) -> None:
    assigned = [shard(m, i, v) for m, i, v in assigned_t]
    loaded = {ReplicaKey(*t) for t in loaded_t}
    to_load, to_unload = decide.diff(assigned, loaded)
    after = (loaded | {decide.key_of(s) for s in to_load}) - set(to_unload)
    assert after == {ReplicaKey(*t) for t in assigned_t}
    assert decide.diff(assigned, after) == ([], [])


@pytest.mark.parametrize(
    ("to_unload", "failed", "expected"),
    [
        ([key("a", 0)], [], [key("a", 0)]),
        ([key("a", 0, "v1")], [key("a", 0, "v2")], []),
        ([key("a", 0, "v1"), key("a", 1, "v1")], [key("a", 0, "v2")], [key("a", 1, "v1")]),
        ([key("a", 0, "v1")], [key("b", 0, "v2")], [key("a", 0, "v1")]),
    ],
)
def test_safe_unloads(
    to_unload: list[ReplicaKey], failed: list[ReplicaKey], expected: list[ReplicaKey]
) -> None:
    assert decide.safe_unloads(to_unload, failed) == expected


@pytest.mark.parametrize(
    ("attempt", "expected"), [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (10**6, 60.0)]
)
def test_backoff(attempt: int, expected: float) -> None:
    assert decide.backoff_seconds(attempt, base=1.0, cap=60.0) == expected


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        ([], []),
        (["v1"], [("v1", 100)]),
        (["v2", "v1"], [("v1", 50), ("v2", 50)]),
        (["a", "b", "c"], [("a", 34), ("b", 33), ("c", 33)]),
        (["v1", "v1"], [("v1", 100)]),
    ],
)
def test_default_weights(versions: list[str], expected: list[tuple[str, int]]) -> None:
    assert decide.default_weights(versions) == w(*expected)


def test_held_versions_prefers_loaded() -> None:
    assigned = [shard("a", 0, "v2"), shard("b", 0, "v1")]
    loaded = [key("a", 0, "v1")]
    assert decide.held_versions(assigned, loaded) == {"a": {"v1"}, "b": {"v1"}}


@pytest.mark.parametrize(
    ("held", "weights", "expected"),
    [
        pytest.param({}, {"a": w(("v1", 100))}, [], id="model-not-held"),
        pytest.param({"a": {"v1"}}, {}, [("a", [("v1", 100)])], id="no-weights-default"),
        pytest.param({"a": {"v1"}}, {"a": []}, [("a", [("v1", 100)])], id="empty-weights-default"),
        pytest.param(
            {"a": {"v1", "v2"}},
            {"a": w(("v1", 90), ("v2", 10))},
            [("a", [("v1", 90), ("v2", 10)])],
            id="model-weights-as-given",
        ),
        pytest.param(
            {"b": {"v1"}, "a": {"v3"}},
            {"b": w(("v1", 0), ("v2", 100))},
            [("a", [("v3", 100)]), ("b", [("v1", 0), ("v2", 100)])],
            id="sorted-and-reported-verbatim",
        ),
    ],
)
def test_routing_for(
    held: dict[str, set[str]],
    weights: dict[str, list[VersionWeight]],
    expected: list[tuple[str, list[tuple[str, int]]]],
) -> None:
    assert decide.routing_for(held, weights) == [
        ModelRouting(model=m, weights=w(*ws)) for m, ws in expected
    ]


@pytest.mark.parametrize(
    ("weights", "loaded", "rand", "expected"),
    [
        (w(("v1", 100)), {"v1"}, 0.0, "v1"),
        (w(("v1", 100)), {"v1"}, 0.999, "v1"),
        (w(("v1", 90), ("v2", 10)), {"v1", "v2"}, 0.89, "v1"),
        (w(("v1", 90), ("v2", 10)), {"v1", "v2"}, 0.9, "v2"),
        (w(("v1", 0), ("v2", 100)), {"v1", "v2"}, 0.0, "v2"),
        (w(("v1", 90), ("v2", 10)), {"v1"}, 0.95, "v1"),  # v2 not here: its share goes to v1
        (w(("v1", 90), ("v2", 10)), {"v3"}, 0.5, None),
        (w(("v1", 0)), {"v1"}, 0.5, None),
        ([], {"v1"}, 0.5, None),
    ],
)
def test_pick_version(
    weights: list[VersionWeight], loaded: set[str], rand: float, expected: str | None
) -> None:
    assert decide.pick_version(weights, loaded, rand) == expected


def test_pick_version_distribution() -> None:
    weights = w(("v1", 70), ("v2", 20), ("v3", 10))
    n = 1000
    counts = Counter(decide.pick_version(weights, {"v1", "v2", "v3"}, i / n) for i in range(n))
    assert counts == {"v1": 700, "v2": 200, "v3": 100}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"version": "v2", "errorRate": 0.2, "extraLatencyMs": 50},
            ((None, "v2"), Fault(0.2, 50.0)),
        ),
        ({"version": "v2", "model": "m"}, (("m", "v2"), Fault(0.0, 0.0))),
        ({"version": "v1", "errorRate": 1}, ((None, "v1"), Fault(1.0, 0.0))),
    ],
)
def test_parse_fault(body: object, expected: object) -> None:
    assert decide.parse_fault(body) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({}, "version"),
        ({"version": ""}, "version"),
        ({"version": "v1", "errorRate": 1.5}, "errorRate"),
        ({"version": "v1", "errorRate": True}, "errorRate"),
        ({"version": "v1", "extraLatencyMs": -1}, "extraLatencyMs"),
        ({"version": "v1", "error_rate": 0.1}, "unknown fields: error_rate"),
        ({"version": "v1", "model": 3}, "model"),
    ],
)
def test_parse_fault_rejects(body: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decide.parse_fault(body)


def test_find_fault_prefers_model_specific() -> None:
    faults = {(None, "v2"): Fault(0.1), ("m", "v2"): Fault(0.5)}
    assert decide.find_fault(faults, "m", "v2") == Fault(0.5)
    assert decide.find_fault(faults, "other", "v2") == Fault(0.1)
    assert decide.find_fault(faults, "m", "v1") is None


@pytest.mark.parametrize(
    ("fault", "rand", "expected"),
    [
        (None, 0.0, (False, 0.0)),
        (Fault(0.2, 50), 0.1, (True, 50.0)),
        (Fault(0.2, 50), 0.2, (False, 50.0)),
        (Fault(0.0, 0), 0.0, (False, 0.0)),
        (Fault(1.0, 0), 0.9999, (True, 0.0)),
    ],
)
def test_fault_outcome(fault: Fault | None, rand: float, expected: tuple[bool, float]) -> None:
    assert decide.fault_outcome(fault, rand) == expected


EARLIER = NOW - timedelta(minutes=5)


@pytest.mark.parametrize(
    ("seen", "assigned", "missing", "failed", "status", "reason", "text"),
    [
        (False, 0, 0, {}, "False", "NoAssignment", "no ServerAssignment"),
        (True, 0, 0, {}, "True", "Loaded", "all 0 assigned"),
        (True, 3, 0, {}, "True", "Loaded", "all 3 assigned"),
        (True, 3, 2, {}, "False", "Loading", "1 of 3 shards loaded"),
        (True, 3, 1, {key("a", 2): "boom"}, "False", "LoadFailed", "a/2@v1: boom"),
    ],
)
def test_ready_condition(
    seen: bool,
    assigned: int,
    missing: int,
    failed: dict[ReplicaKey, str],
    status: str,
    reason: str,
    text: str,
) -> None:
    cond = decide.ready_condition(
        seen=seen,
        assigned=assigned,
        missing=missing,
        failed=failed,
        generation=4,
        previous=None,
        now=NOW,
    )
    assert (cond.type, cond.status, cond.reason) == ("Ready", status, reason)
    assert text in cond.message
    assert cond.observed_generation == 4
    assert cond.last_transition_time == NOW


@pytest.mark.parametrize(
    ("previous_status", "new_missing", "since"),
    [("False", 1, EARLIER), ("True", 1, NOW), ("True", 0, EARLIER)],
)
def test_ready_transition_time(previous_status: str, new_missing: int, since: datetime) -> None:
    previous = Condition(
        type="Ready",
        status=previous_status,
        reason="x",
        last_transition_time=EARLIER,
    )
    cond = decide.ready_condition(
        seen=True,
        assigned=2,
        missing=new_missing,
        failed={},
        generation=1,
        previous=previous,
        now=NOW,
    )
    assert cond.last_transition_time == since


def test_load_error_message() -> None:
    assert decide.load_error_message({}) == ""
    failed = {key("a", i): f"err{i}" for i in range(5)}
    msg = decide.load_error_message(failed)
    assert msg.startswith("failed to load a/0@v1: err0; a/1@v1: err1; a/2@v1: err2")
    assert msg.endswith("(and 2 more)")


def test_build_status_wire() -> None:
    ready = decide.ready_condition(
        seen=True, assigned=2, missing=0, failed={}, generation=3, previous=None, now=NOW
    )
    status = decide.build_status(
        observed_generation=3,
        loaded={key("b", 0): 10, key("a", 1): 20},
        routing=[ModelRouting(model="a", weights=w(("v1", 100)))],
        failed={},
        ready=ready,
        now=NOW,
    )
    wire = status.to_wire()
    assert wire["observedGeneration"] == 3
    assert wire["shardsLoaded"] == 2
    assert wire["bytesLoaded"] == 30
    assert wire["loaded"] == [
        {"model": "a", "shard": 1, "version": "v1", "bytes": 20},
        {"model": "b", "shard": 0, "version": "v1", "bytes": 10},
    ]
    assert wire["routing"] == [{"model": "a", "weights": [{"version": "v1", "weight": 100}]}]
    assert wire["message"] == ""
    assert wire["conditions"][0]["type"] == "Ready"
    assert wire["conditions"][0]["status"] == "True"
    assert wire["conditions"][0]["lastTransitionTime"] == "2026-01-02T03:04:05Z"
