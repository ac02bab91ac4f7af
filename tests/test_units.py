"""The shared vocabulary of ``ekko.api.units`` that replaced per-module copies: seconds from a
flag, and RFC 3339 times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from ekko.api.units import UnitError, format_bytes, parse_seconds, parse_time


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("1.5", 1.5), ("1m30s", 90.0), ("250ms", 0.25)]
)
def test_a_flag_takes_a_duration_or_plain_seconds(text: str, seconds: float) -> None:
    assert parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["-1", "1.5.2", "ten", "30x", ""])
def test_a_flag_refuses_what_is_neither(text: str) -> None:
    with pytest.raises(UnitError):
        parse_seconds(text)


NOON = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-29T12:00:00Z", NOON),
        ("2026-11-29T12:00:00.250000Z", NOON + timedelta(milliseconds=250)),
        ("2026-11-29T14:00:00+02:00", NOON),
        ("2026-11-29T12:00:00+00:00", NOON),
    ],
)
def test_rfc3339_times_are_aware_instants(text: str, expected: datetime) -> None:
    when = parse_time(text)
    assert when == expected and when is not None and when.tzinfo is not None


def test_an_offset_is_kept() -> None:
    when = parse_time("2026-11-29T14:00:00+02:00")
    assert when is not None and when.utcoffset() == timezone(timedelta(hours=2)).utcoffset(None)


@pytest.mark.parametrize("value", [None, "", 17, "yesterday", "2026-13-01T00:00:00Z"])
def test_absent_or_unreadable_times_are_none(value: object) -> None:
    assert parse_time(value) is None


def test_a_time_without_offset_is_no_instant_unless_the_api_wrote_it() -> None:
    assert parse_time("2026-11-29T12:00:00") is None
    assert parse_time("2026-11-29T12:00:00", naive_as_utc=True) == NOON


def test_bytes_moved_read_like_the_rest_of_ekko() -> None:
    # `ekko plan`'s "moved:" line used its own formatter ("1.5 GiB", "64.0 GiB").
    assert format_bytes(1.5 * 2**30) == "1.5 GiB"
    assert format_bytes(0) == "0 B"
