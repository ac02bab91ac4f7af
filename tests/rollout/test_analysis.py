"""Analysis verdicts and tallies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ekko.api.resources import AnalysisMetric
from ekko.rollout.analysis import Measurement, due, evaluate, holds, record

NOW = datetime(2026, 11, 28, tzinfo=UTC)


def metric(**kw: Any) -> AnalysisMetric:
    base = {"name": "m", "query": "q", "successCondition": "result < 0.05", "noData": "Hold"}
    return AnalysisMetric.model_validate(base | kw)


@pytest.mark.parametrize(
    ("cond", "value", "expected"),
    [
        ("result < 0.05", 0.01, True),
        ("result < 0.05", 0.05, False),
        ("result >= 1e3", 1000, True),
        ("result != 0", 0, False),
        ("result == -1.5", -1.5, True),
        ("result<=2", 2, True),
    ],
)
def test_conditions(cond: str, value: float, expected: bool) -> None:
    assert holds(cond, value) is expected


@pytest.mark.parametrize(
    ("kw", "measurement", "verdict"),
    [
        ({}, Measurement("m", NOW, 0.01), "Successful"),
        ({}, Measurement("m", NOW, 0.5), "Failed"),
        ({}, Measurement("m", NOW, None), "Inconclusive"),
        ({"noData": "Fail"}, Measurement("m", NOW, None), "Failed"),
        ({"noData": "Pass"}, Measurement("m", NOW, float("nan")), "Successful"),
        ({}, Measurement("m", NOW, error="connection refused"), "Error"),
        ({"failureCondition": "result > 0.2"}, Measurement("m", NOW, 0.3), "Failed"),
        (
            {"successCondition": None, "failureCondition": "result > 0.2"},
            Measurement("m", NOW, 0.1),
            "Successful",
        ),
    ],
)
def test_evaluate(kw: dict[str, Any], measurement: Measurement, verdict: str) -> None:
    assert evaluate(metric(**kw), measurement) == verdict


def test_failure_limit_and_consecutive_errors() -> None:
    m = metric(failureLimit=1, consecutiveErrorLimit=1)
    r = record(m, None, Measurement("m", NOW, 0.5))
    assert r.phase == "Running" and r.failed == 1
    r = record(m, r, Measurement("m", NOW, error="x"))
    assert r.phase == "Running" and r.consecutive_errors == 1
    r = record(m, r, Measurement("m", NOW, 0.01))
    assert r.consecutive_errors == 0 and r.errors == 1
    r = record(m, r, Measurement("m", NOW, error="x"))
    r = record(m, r, Measurement("m", NOW, error="x"))
    assert r.phase == "Error"
    r2 = record(m, record(m, None, Measurement("m", NOW, 0.5)), Measurement("m", NOW, 0.6))
    assert r2.phase == "Failed"


def test_count_completes_and_due_follows_the_interval() -> None:
    m = metric(count=2, interval="5s")
    r = record(m, None, Measurement("m", NOW, 0.01))
    assert r.phase == "Running" and r.last_value == "0.01"
    assert not due(m, r, NOW + timedelta(seconds=4), NOW)
    assert due(m, r, NOW + timedelta(seconds=5), NOW)
    r = record(m, r, Measurement("m", NOW, 0.02))
    assert r.phase == "Successful"
    assert not due(m, r, NOW + timedelta(seconds=50), NOW)


def test_the_first_measurement_waits_one_interval_after_the_step_starts() -> None:
    m = metric(interval="5s")
    assert not due(m, None, NOW + timedelta(seconds=3), NOW)
    assert due(m, None, NOW + timedelta(seconds=5), NOW)
