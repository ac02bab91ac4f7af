"""The agent's HTTP endpoints: /healthz, /readyz, /metrics, /infer, /score and (opt-in) /fault."""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ekko.agent import decide
from ekko.agent.runtime import Agent

AGENT_KEY = web.AppKey("agent", Agent)


def make_app(agent: Agent, enable_fault_injection: bool = False) -> web.Application:
    app = web.Application()
    app[AGENT_KEY] = agent
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/infer", infer)
    app.router.add_post("/infer", infer)
    app.router.add_post("/score", score)
    if enable_fault_injection:
        app.router.add_get("/fault", get_faults)
        app.router.add_post("/fault", set_fault)
        app.router.add_delete("/fault", clear_faults)
    return app


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    if agent.ready:
        return web.Response(text="ready\n")
    reason = "no assignment seen" if not agent.seen else "shards still loading or failed"
    return web.Response(status=503, text=f"not ready: {reason}\n")


async def metrics(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    return web.Response(body=agent.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def infer(request: web.Request) -> web.Response:
    model = request.query.get("model", "")
    if not model:
        return _json(400, {"error": "give the model: /infer?model=<name>"})
    status, body = await request.app[AGENT_KEY].infer(model)
    return _json(status, body)


MAX_SCORE_PAIRS = 10000


def parse_score_request(
    body: Any,
) -> tuple[str, str | None, list[int], list[int], list[float] | None]:
    """``{"model": m, "view": "live", "requests": [{"user": u, "item": i, "label": 0|1}, ...]}``
    (or one pair at the top level) -> (model, view, users, items, labels or None). Raises
    ValueError with a message for the caller."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError('give the model: {"model": "<name>", "requests": [...]}')
    view = body.get("view")
    if view is not None and view not in ("live", "baseline"):
        raise ValueError('view must be "live", "baseline" or absent (the agent chooses)')
    pairs = body.get("requests")
    if pairs is None:
        pairs = [body]
    if not isinstance(pairs, list) or not 1 <= len(pairs) <= MAX_SCORE_PAIRS:
        raise ValueError(f"requests must be a list of 1 to {MAX_SCORE_PAIRS} pairs")
    users: list[int] = []
    items: list[int] = []
    labels: list[float] = []
    for j, pair in enumerate(pairs):
        if not isinstance(pair, dict):
            raise ValueError(f"requests[{j}] must be an object")
        user, item, label = pair.get("user"), pair.get("item"), pair.get("label")
        if not isinstance(user, int) or not isinstance(item, int) or user < 0 or item < 0:
            raise ValueError(f"requests[{j}] needs non-negative integer user and item")
        if label is not None and label not in (0, 1):
            raise ValueError(f"requests[{j}].label must be 0, 1 or absent")
        users.append(user)
        items.append(item)
        labels.append(float("nan") if label is None else float(label))
    any_label = not all(math.isnan(x) for x in labels)
    return model, view, users, items, labels if any_label else None


async def score(request: web.Request) -> web.Response:
    try:
        model, view, users, items, labels = parse_score_request(await request.json())
    except (ValueError, json.JSONDecodeError) as err:
        return _json(400, {"error": str(err)})
    status, body = request.app[AGENT_KEY].score(model, users, items, labels, view)
    return _json(status, body)


def _faults_wire(agent: Agent) -> list[dict[str, Any]]:
    return [
        {
            **({"model": model} if model else {}),
            "version": version,
            "errorRate": fault.error_rate,
            "extraLatencyMs": fault.extra_latency_ms,
        }
        for (model, version), fault in sorted(agent.faults.items(), key=lambda kv: str(kv[0]))
    ]


async def get_faults(request: web.Request) -> web.Response:
    return _json(200, _faults_wire(request.app[AGENT_KEY]))


async def set_fault(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    try:
        key, fault = decide.parse_fault(await request.json())
    except (ValueError, json.JSONDecodeError) as err:
        return _json(400, {"error": str(err)})
    if fault.error_rate == 0 and fault.extra_latency_ms == 0:
        agent.faults.pop(key, None)
    else:
        agent.faults[key] = fault
    return _json(200, _faults_wire(agent))


async def clear_faults(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    agent.faults.clear()
    return _json(200, [])
