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
from typing import Any

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


class QueryError(Exception):
    """A query Prometheus did not answer with a result (unreachable, HTTP error, bad query)."""


Sample = tuple[dict[str, str], float]
"""One series of an instant vector: its labels and its value."""


MAX_GET_QUERY = 4096
"""Longer queries (a stream's pod matcher over hundreds of servers) are POSTed as a form, which
Prometheus' query API takes too: request lines that long are refused by some proxies."""


def _get(address: str, query: str, auth: PrometheusAuth) -> dict[str, object]:
    url = f"{address.rstrip('/')}/api/v1/query"
    form = urllib.parse.urlencode({"query": query})
    headers = auth.request_headers()
    try:
        if len(form) > MAX_GET_QUERY:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            request = urllib.request.Request(url, data=form.encode(), headers=headers)
        else:
            request = urllib.request.Request(f"{url}?{form}", headers=headers)
        with urllib.request.urlopen(
            request, timeout=TIMEOUT_SECONDS, context=auth.ssl_context()
        ) as response:
            body = json.load(response)
    except urllib.error.HTTPError as err:
        raise QueryError(f"query failed: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as err:
        raise QueryError(f"query failed: {err}") from err
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error", "query failed") if isinstance(body, dict) else "query failed"
        raise QueryError(str(error)[:200])
    data = body.get("data")
    return data if isinstance(data, dict) else {}


def vector(address: str, query: str, auth: PrometheusAuth | None = None) -> list[Sample]:
    """Every series of an instant-vector query (blocking; call it from a thread). NaN values
    (a rate over nothing) are left out."""
    data = _get(address, query, auth or PrometheusAuth())
    if data.get("resultType") != "vector":
        raise QueryError(f"expected an instant vector, got {data.get('resultType')!r}")
    out: list[Sample] = []
    result = data.get("result")
    for series in result if isinstance(result, list) else []:
        try:
            labels = {str(k): str(v) for k, v in series["metric"].items()}
            value = float(series["value"][1])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
            raise QueryError("unexpected result shape") from err
        if not math.isnan(value):
            out.append((labels, value))
    return out


def measure(
    address: str,
    metric: str,
    query: str,
    now: datetime,
    auth: PrometheusAuth | None = None,
) -> Measurement:
    """Run one instant query (blocking; call it from a thread)."""
    try:
        data = _get(address, query, auth or PrometheusAuth())
    except QueryError as err:
        return Measurement(metric, now, error=str(err))
    result: Any = data.get("result")
    if data.get("resultType") == "scalar":
        result = [{"value": result}]
    if not result:
        return Measurement(metric, now, value=None)
    try:
        value = float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return Measurement(metric, now, error="unexpected result shape")
    return Measurement(metric, now, value=None if math.isnan(value) else value)
