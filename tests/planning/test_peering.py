"""The workers' pause rule mirrors kopf's: a live peer of higher or equal priority pauses us."""

from __future__ import annotations

import datetime as dt

from ekko.planning.peering import may_act

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def peer(priority: int, seconds_ago: float, lifetime: int = 15) -> dict[str, object]:
    seen = NOW - dt.timedelta(seconds=seconds_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


def test_alone_or_without_a_peering_object_we_act() -> None:
    assert may_act(None, "me", 0, NOW)
    assert may_act({"me": peer(0, 1)}, "me", 0, NOW)


def test_a_live_peer_of_higher_or_equal_priority_pauses_us() -> None:
    assert not may_act({"me": peer(1, 0), "other": peer(10, 2)}, "me", 1, NOW)
    assert not may_act({"me": peer(1, 0), "other": peer(1, 2)}, "me", 1, NOW)
    assert may_act({"me": peer(10, 0), "other": peer(1, 2)}, "me", 10, NOW)


def test_a_dead_or_malformed_peer_does_not() -> None:
    assert may_act({"other": peer(10, 20)}, "me", 1, NOW)
    assert may_act({"other": {"priority": "x", "lastseen": "never"}}, "me", 1, NOW)


def test_a_peer_time_is_read_by_the_one_rfc3339_parser() -> None:
    """A time without an offset is UTC (it once raised comparing with an aware now, and the
    peer was ignored); an unreadable one is no live peer."""
    naive = {"priority": 5, "lifetime": 60, "lastseen": NOW.replace(tzinfo=None).isoformat()}
    assert not may_act({"other": naive}, "me", 1, NOW)
    zulu = {"priority": 5, "lifetime": 60, "lastseen": NOW.strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert not may_act({"other": zulu}, "me", 1, NOW)
    assert may_act({"other": {"priority": 5, "lastseen": None}}, "me", 1, NOW)
