"""Streaming updates on the local control plane (issue 11's `--mode cluster`).

The real operator chooses the topology (one leader per region, followers behind it); real agents
(embedding engine, one process per server) pull over loopback; a publisher in this process writes
``--rows`` rows every 0.1 s to a ``--keys``-row table. It measures:

- lag p50 / p99 (publish at the source → apply on a server), overall and per region, as the
  operator reports it in ``UpdateStream.status`` over its last minute;
- leader loss, ``--leader-losses`` times: a region's leader pod is deleted; time until the
  operator names a new leader, and until every server (the replacement included) holds a marker
  row published right after the loss;
- the operator's CPU seconds per minute while streaming (its process group, from /proc).

Loopback has no WAN delay or bandwidth limit: the lags are the data plane's and the machine's
own (see ``bench/updates.py --mode procs`` for emulated WAN links).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.clusterbench import bench_namespace, wait
from e2e.agents import AgentFleet
from e2e.objects import Api, converged, model_manifest, pool_manifest
from e2e.operator_harness import OperatorProcess
from e2e.statehelpers import DIM, PAIRS, LivePublisher, holders, score
from ekko.updates.scoring import score_rows

MODEL = "ranker"
MARK_USER, MARK_ITEM = PAIRS[0]  # the first pair /score is asked for


def group_cpu_seconds(pgid: int) -> float:
    """utime + stime of every process in a process group."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # pgrp
            total += int(fields[11]) + int(fields[12])
    return total / tick


def stream_manifest(source: str) -> dict[str, Any]:
    return {
        "apiVersion": "ekko.dev/v1alpha1",
        "kind": "UpdateStream",
        "metadata": {"name": MODEL},
        "spec": {
            "model": MODEL,
            "source": {"endpoints": [source], "region": "train"},
            "tables": [
                {"name": f"{MODEL}.user", "dim": DIM + 1},
                {"name": f"{MODEL}.item", "dim": DIM + 1},
            ],
            "compression": {"values": "Float32", "codec": "Zstd"},
            "topology": {"idlePullInterval": "5s"},
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.updates_cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--replicas", type=int, default=6, help="servers of the model")
    ap.add_argument("--keys", type=int, default=10_000, help="user rows in the table")
    ap.add_argument("--rows", type=int, default=50, help="rows published every 0.1 s")
    ap.add_argument("--steady", type=float, default=70.0, help="seconds of steady streaming")
    ap.add_argument("--leader-losses", type=int, default=3)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)

    bc = bench_namespace("bench-updates")
    kubeconfig, core, ns = bc.kubeconfig, bc.core, bc.namespace
    api = Api(bc.api_client, ns)
    live = LivePublisher(MODEL)
    rng = np.random.default_rng(0)
    live.publish(f"{MODEL}.user", np.arange(a.keys), rng.normal(0, 0.3, (a.keys, DIM + 1)))
    live.publish(f"{MODEL}.item", np.arange(100), rng.normal(0, 0.3, (100, DIM + 1)))
    result: dict[str, Any] = {"replicas": a.replicas, "keys": a.keys, "rows_per_s": a.rows * 10}
    load: list[float] = []
    try:
        with (
            AgentFleet(kubeconfig, ns, engine="embedding") as fleet,
            OperatorProcess(kubeconfig, ns) as operator,
        ):
            api.create(pool_manifest(memory="20Gi", max_servers=a.replicas + 4))
            api.create(model_manifest(MODEL, 1, "8Gi", a.replicas))
            wait("model loaded", lambda: converged(api, models=[MODEL]), 300, 1)
            api.create(stream_manifest(live.url))

            def leaders() -> dict[str, str]:
                out = {}
                for x in api.assignments():
                    for d in x.spec.updates:
                        if d.role == "Leader":
                            out[d.region] = x.metadata.name
                return out

            def status() -> dict[str, Any]:
                out: dict[str, Any] = api.get("updatestreams", MODEL).get("status") or {}
                return out

            wait(
                "every server connected",
                lambda: status().get("serversConnected", 0) == a.replicas,
                120,
            )
            stop = [False]

            def trickle() -> None:
                r = np.random.default_rng(1)
                while not stop[0]:
                    keys = r.choice(np.arange(1, a.keys), a.rows, replace=False)
                    live.publish(f"{MODEL}.user", keys, r.normal(0, 0.3, (a.rows, DIM + 1)))
                    time.sleep(0.1)

            thread = threading.Thread(target=trickle, daemon=True)
            thread.start()
            assert operator.proc is not None
            pgid = operator.proc.pid
            cpu0, t0 = group_cpu_seconds(pgid), time.monotonic()
            time.sleep(a.steady)
            cpu1, t1 = group_cpu_seconds(pgid), time.monotonic()
            load.append(os.getloadavg()[0])
            st = status()
            fresh = st.get("freshness") or {}
            result["steady"] = {
                "p50_s": fresh.get("p50Seconds"),
                "p99_s": fresh.get("p99Seconds"),
                "high_p99_s": fresh.get("highP99Seconds"),
                "regions": [
                    (r["region"], r.get("leader"), r.get("lagP50Seconds"), r.get("lagP99Seconds"))
                    for r in fresh.get("regions", [])
                ],
                "rows_per_s_applied": (st.get("traffic") or {}).get("rowsPerSecond"),
                "operator_cpu_s_per_min": round((cpu1 - cpu0) / (t1 - t0) * 60, 2),
                "state": st.get("state"),
            }
            print(json.dumps(result["steady"]), flush=True)

            losses = []
            items = live.call(lambda: live.pub.store.get(f"{MODEL}.item", [MARK_ITEM])[0])
            for n in range(a.leader_losses):
                lead = leaders()
                region = sorted(lead)[n % len(lead)]
                victim = lead[region]
                mark = rng.normal(0, 1, (1, DIM + 1)).astype(np.float32)
                lost = time.monotonic()
                core.delete_namespaced_pod(victim, ns, grace_period_seconds=0)
                live.publish(f"{MODEL}.user", [MARK_USER], mark)
                want = float(score_rows(mark, items)[0])
                wait(
                    f"a new leader in {region}",
                    lambda: leaders().get(region) not in (None, victim),  # noqa: B023
                    120,
                    0.05,
                )
                chosen = time.monotonic() - lost

                def everyone_has_the_mark(want: float = want) -> bool:
                    names = holders(api, MODEL)
                    if len(names) < a.replicas:
                        return False
                    for name in names:
                        try:
                            body = score(fleet.url(name), labelled=False, model=MODEL)
                        except KeyError:
                            return False
                        if body is None or "scores" not in body:
                            return False
                        if abs(float(body["scores"][0]) - want) > 1e-5:
                            return False
                    return True

                wait("every server holding the marker row", everyone_has_the_mark, 180, 0.1)
                healed = time.monotonic() - lost
                load.append(os.getloadavg()[0])
                losses.append({"region": region, "new_leader_s": chosen, "all_fresh_s": healed})
                print(json.dumps(losses[-1]), flush=True)
                time.sleep(5)
            result["leader_losses"] = losses
            stop[0] = True
            thread.join(5)
            print(f"operator log: {operator.log_path}")
    finally:
        with contextlib.suppress(Exception):
            live.close()
        core.delete_namespace(ns)
    result["load_average"] = [round(x, 1) for x in load]
    print(json.dumps(result, indent=2))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
