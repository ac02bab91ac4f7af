"""Template roll on the local control plane: how long an N-server pool takes to follow an edit of
its template, and the fewest ready replicas any shard had meanwhile.

For each N (``--servers 4,8``) and run: a fresh namespace with the real operator and one agent
process per server pod (kwok nodes), a pool and a model that fills exactly N servers (N shards of
20Gi, two replicas, two shards per 64Gi server), then the template's engine image is edited and
the bench waits until every pod carries the new template hash, the pool says TemplateRolledOut
and every shard is loaded with nothing draining. Ready replicas are sampled every 0.2 s as the
fault bench does (pod Ready, agent process alive, the assignment's status written by that process
lists the shard). ``--max-surge`` sets the pool's updateStrategy.maxSurge (default 1).

    python -m bench.template_roll --servers 4,8 --runs 2 --json out.json

Uses the cluster in EKKO_CLUSTER_DIR (started if needed). Benchmarks measure; nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from bench.clusterbench import bench_namespace, wait
from e2e.agents import AgentFleet
from e2e.objects import Api, converged
from e2e.operator_harness import OperatorProcess
from e2e.test_template_roll import MODEL, roll_manifests, roll_once


def one(servers: int, surge: int) -> dict[str, Any]:
    bc = bench_namespace("bench-roll")
    api = Api(bc.api_client, bc.namespace)
    try:
        with (
            AgentFleet(bc.kubeconfig, bc.namespace) as fleet,
            OperatorProcess(bc.kubeconfig, bc.namespace),
        ):
            pool, model = roll_manifests(servers, max_servers=servers + surge)
            pool["spec"]["updateStrategy"] = {"maxSurge": surge}
            api.create(pool)
            api.create(model)
            wait(f"{servers} servers loaded", lambda: converged(api, "pool", [MODEL]), 300, 0.5)
            load_before = os.getloadavg()[0]
            run = roll_once(api, fleet, "engine:2", 900)
            load_after = os.getloadavg()[0]
    finally:
        bc.core.delete_namespace(bc.namespace)
    return {
        "servers": servers,
        "max_surge": surge,
        "seconds": round(run.seconds, 1),
        "min_ready_required": run.minimum,
        "min_ready_seen": run.fewest,
        "samples": run.samples,
        "samples_below_min": run.below,
        "widest_sample_gap_s": run.widest_gap,
        "pods_replaced": run.replaced,
        "load_1m": [round(load_before, 2), round(load_after, 2)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.template_roll",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--servers", default="4,8", help="pool sizes, comma-separated")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--max-surge", type=int, default=1)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    results = []
    for n in (int(x) for x in args.servers.split(",")):
        for _ in range(args.runs):
            result = one(n, args.max_surge)
            print(json.dumps(result), flush=True)
            results.append(result)
            time.sleep(1)
    print()
    print("| servers | maxSurge | roll s | fewest ready (min) | samples (below min) | load 1m |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['servers']} | {r['max_surge']} | {r['seconds']} | "
            f"{r['min_ready_seen']} ({r['min_ready_required']}) | "
            f"{r['samples']} ({r['samples_below_min']}) | {r['load_1m'][0]}–{r['load_1m'][1]} |"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
