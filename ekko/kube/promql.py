"""Query Prometheus's HTTP API for analysis measurements.

Part of the client layer (``ekko.kube``) because it is the operator's client of an outside
service: the decision it feeds (``ekko.rollout.analysis``) stays pure, and urllib stays here
(import-linter contract "HTTP clients only in the client layer").

One instant query per measurement; the first sample of the result is the value, an empty result
is "no data" (the metric's noData policy decides what that means), anything else is an error.
"""

from __future__ import annotations

import json
import math
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

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


@dataclass(frozen=True)
class PrometheusAuth:
    """How to reach a Prometheus that wants more than a plain GET (Thanos, Mimir, Cortex):
    extra headers (e.g. ``X-Scope-OrgID`` for a tenant), a bearer token read from a file on
    every query (so a rotated token is picked up), and a CA bundle for its TLS certificate."""

    headers: tuple[tuple[str, str], ...] = ()
    bearer_token_file: str | None = None
    ca_file: str | None = None

    def request_headers(self) -> dict[str, str]:
        out = dict(self.headers)
        if self.bearer_token_file:
            out["Authorization"] = "Bearer " + Path(self.bearer_token_file).read_text().strip()
        return out

    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None


def measure(
    address: str,
    metric: str,
    query: str,
    now: datetime,
    auth: PrometheusAuth | None = None,
) -> Measurement:
    """Run one instant query (blocking; call it from a thread)."""
    url = f"{address.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    auth = auth or PrometheusAuth()
    try:
        request = urllib.request.Request(url, headers=auth.request_headers())
        with urllib.request.urlopen(
            request, timeout=TIMEOUT_SECONDS, context=auth.ssl_context()
        ) as response:
            body = json.load(response)
    except urllib.error.HTTPError as err:
        return Measurement(metric, now, error=f"query failed: HTTP {err.code} {err.reason}")
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
