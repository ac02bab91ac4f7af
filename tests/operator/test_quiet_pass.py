"""A converged pool's pass: the real worker against the real Fleet reading a filled cache.

The cache holds a small converged pool (``bench.pass_cost.fill``: pods Ready, every assignment's
report loaded and from the current pod); writes are counted and stored back as the watch would
deliver them. A pass that sees what the last quiet pass saw skips converging and reporting; any
change to what is observed (a report, a node, a model) makes a full pass again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from bench.pass_cost import NS, CountingFleet, fill, touch_reports
from ekko.operator import worker as worker_module
from ekko.operator.peering import Gate
from ekko.operator.worker import PoolWorker
from ekko.planning.desired import desired_from_state, plan_inputs


@pytest.fixture
def converges(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of the pure ``converge`` the worker makes."""
    calls: list[int] = []
    real = worker_module.converge

    def counted(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(worker_module, "converge", counted)
    return calls


def test_a_pass_that_sees_what_a_quiet_pass_saw_skips_and_any_change_ends_the_skip(
    converges: list[int],
) -> None:
    cache, pool = fill(nodes=20, servers=16, replicas=200, seed=0)
    fleet = CountingFleet(cache)
    worker = PoolWorker((NS, "bench"), fleet, None, Gate(fleet, "t", 0, False, enabled=False))
    placed = fleet.observe(pool)
    worker.desired, worker.inputs = desired_from_state(placed), plan_inputs(placed)

    async def scenario() -> None:
        assert await worker.run_pass() is False  # statuses written (and stored back)
        assert fleet.writes["apply_status models"] > 0
        fleet.writes.clear()
        await worker.run_pass()  # sees its own writes: nothing to do
        assert (len(converges), worker.skipped, fleet.writes) == (2, 0, {})
        assert await worker.run_pass() is False  # the same again: skipped
        touch_reports(cache, 1, every=True)  # heartbeats only: the same observation
        await worker.run_pass()
        assert (len(converges), worker.skipped) == (2, 2)

        # An agent reports a replica gone: a full pass, and the model's status says so.
        store = cache.store("serverassignments")
        victim = sorted(store.items(NS), key=lambda o: o["metadata"]["name"])[0]
        status = {**victim["status"], "loaded": victim["status"]["loaded"][1:]}
        store.put(
            {
                **victim,
                "metadata": {**victim["metadata"], "resourceVersion": "x1"},
                "status": status,
            }
        )
        await worker.run_pass()
        assert len(converges) == 3
        assert fleet.writes.get("apply_status models") == 1

        # A node lost by the clock alone (not Ready for longer than the grace; no new event):
        # the observation differs, so the pass is not skipped.
        fleet.writes.clear()
        await worker.run_pass()  # sees its write
        await worker.run_pass()
        skipped = worker.skipped
        nodes = cache.store("nodes")
        pod = cache.store("pods").items(NS)[0]
        node = nodes.get("", pod["spec"]["nodeName"])
        assert node is not None
        long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        stamp = long_ago.strftime("%Y-%m-%dT%H:%M:%SZ")
        down = {"type": "Ready", "status": "False", "lastTransitionTime": stamp}
        nodes.put({**node, "status": {"conditions": [down]}})
        calls = len(converges)
        await worker.run_pass()
        assert worker.skipped == skipped and len(converges) == calls + 1
        assert fleet.writes.get("actions", 0) >= 1  # the lost server's pod is recreated

    asyncio.run(scenario())
    fleet.close()
