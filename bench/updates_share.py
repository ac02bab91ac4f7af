"""A server in two streams under a narrow shared cap: which model's rows go first?

    python -m bench.updates_share --json /tmp/share.json     # 2 weightings × 3 seeds, 2–6 min

Two publishers (models ``heavy`` and ``light``, one 32-float table each) feed a leader node (one
route per model, uncapped links); a follower in both streams pulls both models from that leader
over one capped link, so every pull carries both models' rows in one byte budget: exactly the
wiring the agent gives a server whose two streams share a leader (``node_config``). Both models
publish the same row rate; the cap carries ``--cap`` of it. The leader ranks the rows with the
model weights its duties would carry: ``equal`` (Fixed 100/100) and ``traffic`` (TrafficShare
80/20, the heavy model serving four times the requests). Reported per model: rows applied at the
follower and their publish → apply lag (mean, p50, p99), from the follower's own
``ekko_update_lag_seconds`` histogram. Measures, never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from ekko.updates.link import LinkSpec
from ekko.updates.node import Node, NodeConfig, Upstream
from ekko.updates.publisher import Publisher
from ekko.updates.store import TableSpec, row_wire_bytes

MODELS = ("heavy", "light")
DIM = 32
KEYS = 4000
WEIGHTINGS = {"equal": {"heavy": 1.0, "light": 1.0}, "traffic": {"heavy": 0.8, "light": 0.2}}


def lag_buckets(registry: CollectorRegistry, model: str) -> tuple[dict[float, float], float]:
    """A model's cumulative lag buckets (``le`` → rows) and lag sum, from a node's histogram."""
    buckets: dict[float, float] = {}
    total = 0.0
    for metric in registry.collect():
        if metric.name != "ekko_update_lag_seconds":
            continue
        for s in metric.samples:
            if s.labels.get("model") != model:
                continue
            if s.name.endswith("_bucket"):
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name.endswith("_sum"):
                total += s.value
    return buckets, total


def lag_stats(
    now: tuple[dict[float, float], float], before: tuple[dict[float, float], float]
) -> dict[str, float]:
    """Rows, mean and quantiles (bucket upper bounds) of the lag between two readings."""
    buckets = {le: v - before[0].get(le, 0.0) for le, v in now[0].items()}
    count = buckets.get(float("inf"), 0.0)

    def q(p: float) -> float:
        return next((le for le in sorted(buckets) if buckets[le] >= p * count), float("nan"))

    nan = float("nan")
    return {
        "rows_applied": count,
        "lag_mean_s": (now[1] - before[1]) / count if count else nan,
        "lag_p50_s": q(0.5) if count else nan,
        "lag_p99_s": q(0.99) if count else nan,
    }


async def run(weights: dict[str, float], seed: int, rate: float, cap: float, seconds: float) -> Any:
    rng = np.random.default_rng(seed)
    pubs = {
        m: Publisher(i + 1, [TableSpec(f"{m}.emb", DIM, model=m)]) for i, m in enumerate(MODELS)
    }
    urls = {}
    for m, p in pubs.items():
        urls[m] = f"http://127.0.0.1:{await p.start('127.0.0.1', 0)}"
        p.publish(f"{m}.emb", np.arange(KEYS), rng.normal(size=(KEYS, DIM)))
    leader = Node(
        NodeConfig(
            name="leader",
            listen="127.0.0.1:0",
            upstreams=tuple(Upstream(urls[m]) for m in MODELS),
            routes=tuple((m, (urls[m],)) for m in MODELS),
            model_weights=tuple(weights.items()),
            wait=1.0,
        )
    )
    lport = await leader.start()
    lurl = f"http://127.0.0.1:{lport}"
    row_bytes = row_wire_bytes(DIM, "float32")
    link_rate = cap * 2 * rate * row_bytes
    registry = CollectorRegistry()
    follower = Node(
        NodeConfig(
            name="follower",
            listen="127.0.0.1:0",
            upstreams=(
                Upstream(lurl, LinkSpec(rate=link_rate, burst=max(4096.0, link_rate / 10))),
            ),
            routes=tuple((m, (lurl,)) for m in MODELS),
            wait=1.0,
            min_budget=1024,
        ),
        registry,
    )
    await follower.start()
    # Warm up uncapped rows first: everything held before the measured phase.
    while any(
        not follower.store.has_table(f"{m}.emb")
        or not follower.store.get(f"{m}.emb", np.arange(KEYS))[1].all()
        for m in MODELS
    ):
        await asyncio.sleep(0.1)
    base = {m: lag_buckets(registry, m) for m in MODELS}
    start = time.monotonic()
    tick = 0.05
    per_tick = max(1, int(rate * tick))
    while time.monotonic() - start < seconds:
        for m, p in pubs.items():
            keys = rng.choice(KEYS, size=per_tick, replace=False)
            p.publish(f"{m}.emb", keys, rng.normal(size=(per_tick, DIM)))
        await asyncio.sleep(tick)
    await asyncio.sleep(1.0)  # rows in flight land (their lag counts)
    out = {m: lag_stats(lag_buckets(registry, m), base[m]) for m in MODELS}
    await follower.stop()
    await leader.stop()
    for p in pubs.values():
        await p.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.updates_share", description=__doc__)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=400.0, help="rows/s per model")
    ap.add_argument("--cap", type=float, default=0.5, help="link cap / both models' row bytes")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, Any] = {"load_before": os.getloadavg()[0], "runs": {}}
    for name, weights in WEIGHTINGS.items():
        runs = [asyncio.run(run(weights, s, a.rate, a.cap, a.seconds)) for s in range(a.seeds)]
        results["runs"][name] = runs
        for m in MODELS:
            means = [r[m]["lag_mean_s"] for r in runs]
            p99 = [r[m]["lag_p99_s"] for r in runs]
            rows = [r[m]["rows_applied"] for r in runs]
            print(
                f"{name:8s} {m:6s} weight {weights[m]:.1f}: lag mean "
                f"{statistics.median(means):6.2f}s (seeds {min(means):.2f}-{max(means):.2f}), "
                f"p99 <= {statistics.median(p99):g}s, rows applied {statistics.median(rows):.0f}"
            )
    results["load_after"] = os.getloadavg()[0]
    results.update(vars(a) | {"json": str(a.json) if a.json else None})
    if a.json is not None:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
