"""A version's request series exist at zero before its first request, so rate() counts them all."""

from __future__ import annotations

from ekko.agent.metrics import AgentMetrics


def test_declared_versions_export_zero_counters() -> None:
    metrics = AgentMetrics()
    assert b'version="v2"' not in metrics.render()
    metrics.declare("rank", "v2")
    text = metrics.render().decode()
    assert 'ekko_agent_requests_total{model="rank",version="v2"} 0.0' in text
    assert 'ekko_agent_request_errors_total{model="rank",version="v2"} 0.0' in text
