"""The verdict table of docs/rollout.md, row by row: what one measurement counts as."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ekko.api.resources import AnalysisMetric, AnalysisResult
from ekko.rollout.analysis import Measurement, address_allowed, record

STEP = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def metric(no_data: str, **extra: object) -> AnalysisMetric:
    return AnalysisMetric.model_validate(
        {
            "name": "errors",
            "query": "q",
            "successCondition": "result < 0.05",
            "failureCondition": "result >= 0.5",
            "interval": "5s",
            "noData": no_data,
            "noDataTimeout": "30s",
        }
        | extra
    )


def after(seconds: float, value: float | None = None, error: str | None = None) -> Measurement:
    return Measurement("errors", STEP + timedelta(seconds=seconds), value, error)


HAD_DATA = AnalysisResult(metric="errors", phase="Running", successful=1)


@pytest.mark.parametrize(
    ("row", "policy", "prior", "measurement", "counted"),
    [
        ("failureCondition holds", "Hold", None, after(5, 0.7), "failed"),
        ("successCondition does not hold", "Hold", None, after(5, 0.1), "failed"),
        ("conditions pass", "Hold", None, after(5, 0.01), "successful"),
        ("query error", "Hold", None, after(5, error="connection refused"), "errors"),
        ("no data, Fail", "Fail", None, after(5), "failed"),
        ("no data, Pass", "Pass", None, after(5), "successful"),
        ("NaN is no data", "Fail", None, after(5, float("nan")), "failed"),
        ("no data yet, within the timeout", "Hold", None, after(25), "no_data"),
        ("no data after data arrived", "Hold", HAD_DATA, after(10), "inconclusive"),
        ("no data, timeout passed", "Hold", None, after(30), "inconclusive"),
    ],
)
def test_what_one_measurement_counts_as(
    row: str,
    policy: str,
    prior: AnalysisResult | None,
    measurement: Measurement,
    counted: str,
) -> None:
    before = prior or AnalysisResult(metric="errors", phase="Running")
    after_ = record(metric(policy), prior, measurement, since=STEP)
    fields = ("successful", "failed", "inconclusive", "errors", "no_data")
    grew = [f for f in fields if getattr(after_, f) != getattr(before, f)]
    assert grew == [counted], row


def test_without_a_step_start_nothing_is_held() -> None:
    assert record(metric("Hold"), None, after(1)).inconclusive == 1


def test_a_held_result_keeps_the_metric_running() -> None:
    r = None
    for t in (5, 10, 15, 20, 25):
        r = record(metric("Hold"), r, after(t), since=STEP)
        assert r.phase == "Running" and r.last_measured == STEP + timedelta(seconds=t)
    assert r is not None and r.no_data == 5 and r.last_value == "no data (holding)"
    r = record(metric("Hold"), r, after(30), since=STEP)
    assert r.phase == "Inconclusive"


@pytest.mark.parametrize(
    ("address", "allowed", "ok"),
    [
        ("http://prom:9090", (), True),  # the operator's own
        ("http://prom:9090/", (), True),
        ("http://evil.example/api", (), False),
        ("http://169.254.169.254/latest/meta-data", (), False),
        ("https://thanos.monitoring:9091", ("https://thanos.monitoring:9091",), True),
        ("https://thanos.monitoring:9091/tenant-a", ("https://thanos.monitoring:9091",), True),
        ("https://thanos.monitoring:90910", ("https://thanos.monitoring:9091",), False),
        ("https://thanos.monitoring:9091.evil.example", ("https://thanos.monitoring:9091",), False),
    ],
)
def test_analysis_queries_only_allowed_prometheus_addresses(
    address: str, allowed: tuple[str, ...], ok: bool
) -> None:
    assert address_allowed(address, "http://prom:9090", allowed) is ok
