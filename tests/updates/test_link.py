"""The link model: the long-run rate never exceeds bandwidth + burst / T."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ekko.updates.link import Link, LinkSpec, TokenBucket


def test_bucket_refills_to_the_burst_and_runs_into_debt() -> None:
    b = TokenBucket(rate=100, burst=50, now=0)
    assert b.budget(0) == 50
    b.consume(80, 0)
    assert b.level(0) == -30 and b.budget(0) == 0
    assert b.ready_at(10, 0) == pytest.approx(0.4)
    assert b.budget(10) == 50


def test_unlimited_link_only_delays() -> None:
    link = Link(LinkSpec(delay=0.04))
    assert link.send(10**9, 1.0) == pytest.approx(1.04)
    assert link.budget(0) > 10**12


@settings(max_examples=150, deadline=None)
@given(
    st.floats(10, 1e6),
    st.floats(1, 1e5),
    st.floats(0, 0.2),
    st.lists(st.tuples(st.floats(0, 5), st.integers(1, 200_000)), min_size=1, max_size=60),
)
def test_long_run_rate_within_bandwidth_plus_burst(
    rate: float, burst: float, delay: float, sends: list[tuple[float, int]]
) -> None:
    link = Link(LinkSpec(rate, burst, delay), now=0.0)
    arrivals = []
    for t, n in sorted(sends):
        arrivals.append((link.send(n, t), n))
    arrivals.sort()
    total = 0
    for at, n in arrivals:
        total += n
        assert at >= delay
        # Bytes delivered by time `at` fit in burst + rate × (at - delay).
        assert total <= burst + rate * (at - delay) + 1e-6 * max(total, 1)
    # In-order, and never earlier than the delay.
    assert all(a <= b for (a, _), (b, _) in itertools.pairwise(arrivals))
    assert not math.isnan(arrivals[-1][0])


@settings(max_examples=100, deadline=None)
@given(st.floats(10, 1e5), st.floats(1, 1e4), st.lists(st.floats(0, 0.5), min_size=1, max_size=80))
def test_a_puller_spending_its_budget_stays_within_the_rate(
    rate: float, burst: float, gaps: list[float]
) -> None:
    """A puller asks for its budget and spends it: admitted bytes ≤ burst + rate × T."""
    b = TokenBucket(rate, burst, now=0.0)
    now, spent = 0.0, 0
    for g in gaps:
        now += g
        n = b.budget(now)
        b.consume(n, now)
        spent += n
        assert spent <= burst + rate * now + 1e-6
