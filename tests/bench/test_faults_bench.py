"""The pure helpers of the faults bench: scenario names, shards below minimum, orphans."""

from __future__ import annotations

import pytest

from bench.faults import SCENARIOS, below_minimum, orphans, parse_scenarios


def test_scenarios_keep_their_order_and_all_means_every_one() -> None:
    assert parse_scenarios("pod-delete, outage") == ["pod-delete", "outage"]
    assert parse_scenarios("all") == list(SCENARIOS)
    with pytest.raises(ValueError, match=r"unknown scenario.*nope"):
        parse_scenarios("outage,nope")


def test_below_minimum_counts_missing_shards_as_zero() -> None:
    minimum = {("m", 0): 2, ("m", 1): 2, ("m", 2): 1}
    serving = {("m", 0): 2, ("m", 1): 1, ("other", 0): 0}
    assert below_minimum(serving, minimum) == {("m", 1): 1, ("m", 2): 0}
    assert below_minimum({("m", 0): 2, ("m", 1): 3, ("m", 2): 1}, minimum) == {}


@pytest.mark.parametrize(
    ("pools", "pods", "assignments", "expected"),
    [
        ({"pool"}, {"s0": "pool"}, {"s0": "pool"}, []),
        ({"pool"}, {}, {"s0": "pool"}, []),  # an assignment waiting for its pod is planned
        (set(), {"s0": "pool"}, {"s0": "pool"}, ["pod/s0", "serverassignment/s0"]),
        ({"pool"}, {"s0": None}, {"s0": "pool"}, ["pod/s0"]),
        ({"pool"}, {"s0": "pool"}, {}, ["pod/s0 (no assignment)"]),
    ],
)
def test_orphans_are_objects_no_live_pool_owns(
    pools: set[str],
    pods: dict[str, str | None],
    assignments: dict[str, str | None],
    expected: list[str],
) -> None:
    assert orphans(pools, pods, assignments) == expected
