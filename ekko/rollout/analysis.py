"""Analysis verdicts: one measurement against a metric's conditions, and the running tally.

Follows the vocabulary users know from Argo Rollouts (successCondition, failureCondition,
failureLimit, inconclusiveLimit, consecutiveErrorLimit), with one addition: what an empty query
result means is the metric's explicit ``noData`` policy, not an accident of the query.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from ekko.api.conditions import Operator, parse_condition
from ekko.api.resources import AnalysisMetric, AnalysisResult
from ekko.api.units import parse_duration

Verdict = Literal["Successful", "Failed", "Inconclusive", "Error"]

_OPS: dict[Operator, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class Measurement:
    """One query of one metric: a value, no data (``value is None``), or an error."""

    metric: str
    at: datetime
    value: float | None = None
    error: str | None = None


def holds(condition: str, value: float) -> bool:
    """Whether ``result <op> number`` holds for value (the grammar is the CRD's pattern, so a
    condition the API server admitted always parses; raises ValueError otherwise)."""
    op, threshold = parse_condition(condition)
    return _OPS[op](value, threshold)


def evaluate(metric: AnalysisMetric, measurement: Measurement) -> Verdict:
    """The verdict of one measurement."""
    if measurement.error is not None:
        return "Error"
    value = measurement.value
    if value is None or math.isnan(value):
        return {"Hold": "Inconclusive", "Fail": "Failed", "Pass": "Successful"}[metric.no_data]  # type: ignore[return-value]
    if metric.failure_condition is not None and holds(metric.failure_condition, value):
        return "Failed"
    if metric.success_condition is not None:
        return "Successful" if holds(metric.success_condition, value) else "Failed"
    return "Successful"


def holding(
    metric: AnalysisMetric,
    result: AnalysisResult | None,
    measurement: Measurement,
    since: datetime | None,
) -> bool:
    """Whether an empty result is held (neither counted nor judged) rather than inconclusive.

    With ``noData: Hold`` a step keeps measuring until its first data arrives, for at most
    ``noDataTimeout`` after the step began (``since``): a canary that was not scraped twice yet,
    or whose rate window is not filled, has no data through no fault of its own. Once data has
    arrived in the step, or the bound has passed, an empty result is inconclusive.
    """
    if metric.no_data != "Hold" or measurement.error is not None:
        return False
    if measurement.value is not None and not math.isnan(measurement.value):
        return False
    had_data = result is not None and result.successful + result.failed > 0
    if had_data or since is None:
        return False
    waited = (measurement.at - since).total_seconds()
    return waited < parse_duration(metric.no_data_timeout)


def record(
    metric: AnalysisMetric,
    result: AnalysisResult | None,
    measurement: Measurement,
    since: datetime | None = None,
) -> AnalysisResult:
    """The tally after one more measurement, with its phase; ``since`` is when the analysis step
    began (for ``noData: Hold``'s bound; without it an empty result is never held)."""
    base = result or AnalysisResult(metric=metric.name, phase="Running")
    if holding(metric, result, measurement, since):
        return base.evolve(
            **{
                "no_data": base.no_data + 1,
                "last_value": "no data (holding)",
                "last_measured": measurement.at,
            }
        )
    verdict = evaluate(metric, measurement)
    successful = base.successful + (verdict == "Successful")
    failed = base.failed + (verdict == "Failed")
    inconclusive = base.inconclusive + (verdict == "Inconclusive")
    errors = base.errors + (verdict == "Error")
    consecutive = base.consecutive_errors + 1 if verdict == "Error" else 0
    taken = successful + failed + inconclusive
    if failed > metric.failure_limit:
        phase: Literal["Running", "Successful", "Failed", "Inconclusive", "Error"] = "Failed"
    elif consecutive > metric.consecutive_error_limit:
        phase = "Error"
    elif inconclusive > metric.inconclusive_limit:
        phase = "Inconclusive"
    elif metric.count is not None and taken >= metric.count:
        phase = "Successful"
    else:
        phase = "Running"
    shown = (
        f"error: {measurement.error}"[:64]
        if measurement.error is not None
        else "no data"
        if measurement.value is None
        else f"{measurement.value:.6g}"
    )
    return AnalysisResult(
        metric=metric.name,
        phase=phase,
        successful=successful,
        failed=failed,
        inconclusive=inconclusive,
        errors=errors,
        consecutive_errors=consecutive,
        no_data=base.no_data,
        last_value=shown,
        last_measured=measurement.at,
    )


def seconds_until_due(
    metric: AnalysisMetric, result: AnalysisResult | None, now: datetime, since: datetime
) -> float:
    """Seconds until the next measurement: one interval after the last one, or after ``since``
    (the start of the analysis step) for the first, so that the new weights have had a full
    interval of traffic before they are judged."""
    last = (
        result.last_measured if result is not None and result.last_measured is not None else since
    )
    return max(0.0, parse_duration(metric.interval) - (now - last).total_seconds())


def due(
    metric: AnalysisMetric, result: AnalysisResult | None, now: datetime, since: datetime
) -> bool:
    """Whether the metric should be measured now."""
    if result is not None and result.phase != "Running":
        return False
    return seconds_until_due(metric, result, now, since) <= 0.05


def address_allowed(address: str, default: str, allowed: tuple[str, ...]) -> bool:
    """Whether analysis may query ``address``: the operator's own Prometheus, or one under a
    prefix the operator was started with (``--allow-prometheus-address``). Without the check a
    ModelVersion author could make the operator GET any URL and promote on the answer."""
    if address.rstrip("/") == default.rstrip("/"):
        return True
    return any(
        address.startswith(prefix.rstrip("/") + "/") or address == prefix.rstrip("/")
        for prefix in allowed
        if prefix
    )
