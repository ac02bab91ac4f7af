"""Query Prometheus's HTTP API for analysis measurements.

One instant query per measurement; the first sample of the result is the value, an empty result
is "no data" (the metric's noData policy decides what that means), anything else is an error.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime

from ekko.rollout.analysis import Measurement

TIMEOUT_SECONDS = 5.0


def render(query: str, model: str, version: str, stable: str = "") -> str:
    """The query with ``{{model}}``, ``{{version}}`` (the canary) and ``{{stable}}`` (the version
    it is compared with) filled in."""
    return (
        query.replace("{{model}}", model)
        .replace("{{version}}", version)
        .replace("{{stable}}", stable)
    )


def measure(address: str, metric: str, query: str, now: datetime) -> Measurement:
    """Run one instant query (blocking; call it from a thread)."""
    url = f"{address.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            body = json.load(response)
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as err:
        return Measurement(metric, now, error=f"query failed: {err}")
    if body.get("status") != "success":
        return Measurement(metric, now, error=str(body.get("error", "query failed"))[:200])
    data = body.get("data", {})
    result = data.get("result")
    if data.get("resultType") == "scalar":
        result = [{"value": result}]
    if not result:
        return Measurement(metric, now, value=None)
    try:
        value = float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return Measurement(metric, now, error="unexpected result shape")
    return Measurement(metric, now, value=None if math.isnan(value) else value)
