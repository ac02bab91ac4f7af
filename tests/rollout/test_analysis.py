"""Analysis verdicts and tallies."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from ekko.api.conditions import CONDITION_PATTERN, parse_condition
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


# One grammar: every condition the CRD admits, the analysis can evaluate, and the other way round
# (issue 13: `result < 1.2.3` passed the old pattern and raised ValueError in holds()).
GOOD_CONDITIONS = [
    "result < .5",
    "result >= -1.5e-3",
    "result\t!= +2E99",
    "result == 1.",
    "result > -0",
    "result <= 123456789012345.123456789012345",
    "result<1e-99",
]
BAD_CONDITIONS = [
    "result < 1.2.3",
    "result > -",
    "result < 1e",
    "result >= 5e+-3",
    "result < 1e400",
    "result == .",
    "result\u00a0< 1",
    "result < 1\n",
    "result < 1234567890123456",
    "result < nan",
    "result < inf",
    "errors are low",
]


@pytest.mark.parametrize("cond", GOOD_CONDITIONS)
def test_admitted_conditions_evaluate_to_finite_thresholds(cond: str) -> None:
    metric(successCondition=cond)  # the CRD pattern's twin admits it
    _, threshold = parse_condition(cond)
    assert math.isfinite(threshold)
    assert threshold == 0 or abs(threshold) > 1e-300  # nothing non-zero underflows to zero
    holds(cond, 0.5)


@pytest.mark.parametrize("cond", BAD_CONDITIONS)
def test_refused_conditions_are_refused_by_both(cond: str) -> None:
    with pytest.raises(ValidationError, match="String should match pattern"):
        metric(successCondition=cond)
    with pytest.raises(ValueError, match="result <op> <number>"):
        holds(cond, 0.5)


def test_the_crd_pattern_is_the_analysis_grammar() -> None:
    for name in ("success_condition", "failure_condition"):
        [constraint] = [
            m for m in AnalysisMetric.model_fields[name].metadata if hasattr(m, "pattern")
        ]
        assert constraint.pattern == CONDITION_PATTERN


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
