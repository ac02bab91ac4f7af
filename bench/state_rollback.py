"""Model-state manager on the local control plane (issue 12's targets, cluster mode).

The real operator, real agents (embedding engine, one process per server), a publisher in this
process and labelled /score traffic to every server. Then, alternately:

- a **harmful** update (kinds in turn: every item row flipped and magnified; the most popular
  items' rows exploded; a biased batch that adds +2 to every item's bias; every user row zeroed)
  — caught when the operator decides a rollback within ``--catch-within`` seconds; timed from the
  publish to the decision, and from the decision to every server serving the baseline and to
  every server restored, as the servers report them (``status.health.lastRollback``);
- a **clean** update (small noise on every user row, what training does) — a rollback decided
  within ``--catch-within`` seconds of it is a false rollback.

Between episodes it waits for the model to be Healthy with a baseline newer than the last
update, so every episode starts alike. ``--guard-rows N`` turns on the parameter guard
(``spec.health.guard``, optionally ``--guard-step-ratio``): 1,000 trained rows of each table on
keys nobody scores warm it up first, and each caught episode says which signal decided
(``by``: ``guard`` when the Corrupted event names the parameter guard, else ``loss``; when both
fire in the same window the event names the loss). Prints a table and, with ``--json``, the numbers
(``harmful_caught``, ``harmful_runs``, ``false_rollbacks``, ``clean_runs``, ``detect_p50_s``,
``traffic_switch_p99_s``, ``restore_p99_s`` …).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.clusterbench import bench_namespace, wait
from e2e.agents import AgentFleet
from e2e.objects import Api, converged, model_manifest, pool_manifest
from e2e.operator_harness import OperatorProcess
from e2e.statehelpers import (
    DIM,
    ITEMS,
    USERS,
    LivePublisher,
    Traffic,
    holders,
    rows,
    start_publisher,
    stream_manifest,
    urls_of,
)

HEALTH: dict[str, Any] = {
    "action": "Rollback",
    "snapshotInterval": "5s",
    "repeatWindow": "0s",  # episodes follow each other; a repeat must not pause the stream
    "baseline": {"age": "10s", "trafficPercent": 0.5, "shadowPercent": 100},
    "detector": {
        "window": "2s",
        "minSamples": 40,
        "uncertain": 0.05,
        "corrupted": 0.2,
        "confirmations": 2,
        # A harm that lifts the loss by less than `corrupted` but for good (zeroed rows): the
        # CUSUM adds n × (mean − 0.05) per window and declares Corrupted at 100.
        "cusumSlack": 0.05,
        "cusumThreshold": 100,
    },
}
KINDS = ("flip", "explode", "bias", "zero")
WIDE = np.arange(2000, 3000)
"""Keys no request scores (traffic uses 0..39, the trickle 1000..1009): the guard's warm-up."""


def stamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(values, q))


class Bench:
    def __init__(self, api: Api, publisher: LivePublisher) -> None:
        self.api = api
        self.pub = publisher
        self.users = rows(1, USERS)
        self.items = rows(2, ITEMS)
        self.rng = np.random.default_rng(0)

    def health(self) -> dict[str, Any]:
        status = self.api.get("updatestreams", "ranker").get("status") or {}
        out: dict[str, Any] = status.get("health") or {}
        return out

    def settled_after(self, t: float) -> bool:
        """Healthy, no rollback under way, and the baseline cut taken after ``t``."""
        h = self.health()
        taken = {c["id"]: stamp(c["takenAt"]) for c in h.get("cuts", [])}
        b = h.get("baselineCut")
        return (
            h.get("phase") == "Healthy"
            and h.get("step", "None") == "None"
            and b in taken
            and taken[b] > t
        )

    def last_decided(self) -> float:
        rb = self.health().get("lastRollback")
        return stamp(rb["decidedAt"]) if rb else 0.0

    def publish_items(self, values: np.ndarray) -> None:
        self.items = values.astype(np.float32)
        self.pub.publish("ranker.item", np.arange(ITEMS), self.items)

    def publish_users(self, values: np.ndarray) -> None:
        self.users = values.astype(np.float32)
        self.pub.publish("ranker.user", np.arange(USERS), self.users)

    def harm(self, kind: str) -> None:
        if kind == "flip":
            self.publish_items(-4 * self.items)
        elif kind == "explode":
            hot = self.items.copy()
            hot[:8] *= 20  # the most requested items (every pair of the traffic uses 0..39)
            self.publish_items(hot)
        elif kind == "bias":
            biased = self.items.copy()
            biased[:, -1] += 2.0
            self.publish_items(biased)
        else:
            self.publish_users(np.zeros_like(self.users))

    def clean(self) -> None:
        self.publish_users(self.users + self.rng.normal(0, 0.01, self.users.shape))

    def episode(self, harmful: bool, kind: str, catch_within: float) -> dict[str, Any]:
        wait("Healthy with a baseline newer than the last update",
             lambda: self.settled_after(self.updated_at), 120)  # fmt: skip
        before = self.last_decided()
        guarded = self.guard_events()
        users, items = self.users.copy(), self.items.copy()
        at = time.time()
        if harmful:
            self.harm(kind)
        else:
            self.clean()
        self.updated_at = at
        try:
            wait("a decision", lambda: self.last_decided() > before, catch_within)
        except TimeoutError:
            if harmful:  # missed: the trainer publishes the good rows again, as a person would
                self.publish_users(users)
                self.publish_items(items)
                self.updated_at = time.time()
            return {"harmful": harmful, "kind": kind, "caught": False}
        rb = wait(
            "the rollback to finish",
            lambda: (r := self.health().get("lastRollback") or {}).get("resumedAt") and r,
            120,
        )
        decided = stamp(rb["decidedAt"])
        out = {
            "harmful": harmful,
            "kind": kind,
            "caught": True,
            "detect_s": decided - at,
            "switch_s": rb.get("switchSeconds"),
            "restore_s": rb.get("restoreSeconds"),
            "resumed_s": stamp(rb["resumedAt"]) - decided,
            "publisher_restored": rb.get("publisherRestored"),
            "by": "guard" if self.guard_events() > guarded else "loss",
        }
        if kind in ("flip", "explode", "bias"):  # the restore undid them
            self.items = np.asarray(
                self.pub.call(lambda: self.pub.pub.store.get("ranker.item", range(ITEMS))[0])
            )
        else:
            self.users = np.asarray(
                self.pub.call(lambda: self.pub.pub.store.get("ranker.user", range(USERS))[0])
            )
        return out

    updated_at = 0.0

    def guard_events(self) -> int:
        """Corrupted events that name the parameter guard so far."""
        return sum(
            1
            for e in self.api.core.list_namespaced_event(self.api.ns).items
            if e.reason == "Corrupted" and "parameter guard" in (e.message or "")
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.state_rollback",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--harmful", type=int, default=20, help="harmful episodes")
    parser.add_argument("--clean", type=int, default=20, help="clean episodes")
    parser.add_argument("--shards", type=int, default=2, help="model shards (2 replicas each)")
    parser.add_argument(
        "--catch-within", type=float, default=30.0, help="seconds a decision may take"
    )
    parser.add_argument(
        "--z", type=float, default=None, help="detector z (standard errors); absent: the default"
    )
    parser.add_argument(
        "--guard-rows",
        type=int,
        default=None,
        help="turn the parameter guard on (spec.health.guard.rows); absent: off",
    )
    parser.add_argument(
        "--guard-step-ratio",
        type=float,
        default=None,
        help="with --guard-rows: also the update-size test (spec.health.guard.stepRatio)",
    )
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)
    health = json.loads(json.dumps(HEALTH))
    if args.z is not None:
        health["detector"]["z"] = args.z
    if args.guard_rows is not None:
        health["guard"] = {"rows": args.guard_rows}
        if args.guard_step_ratio is not None:
            health["guard"]["stepRatio"] = args.guard_step_ratio

    bc = bench_namespace("bench-state")
    kubeconfig, core, ns = bc.kubeconfig, bc.core, bc.namespace
    api = Api(bc.api_client, ns)
    publisher, close = start_publisher()
    if args.guard_rows is not None:  # past the guard's warm-up (500 rows a table) before any harm
        for table, seed in (("ranker.item", 11), ("ranker.user", 12)):
            trained = np.random.default_rng(seed).normal(0, 0.4, (len(WIDE), DIM + 1))
            publisher.publish(table, WIDE, trained.astype(np.float32))
    results: list[dict[str, Any]] = []
    load: list[float] = []
    try:
        with (
            AgentFleet(kubeconfig, ns, engine="embedding") as fleet,
            OperatorProcess(kubeconfig, ns) as operator,
        ):
            api.create(pool_manifest(memory="20Gi"))
            api.create(model_manifest("ranker", args.shards, "8Gi", 2))
            wait("model loaded", lambda: converged(api, models=["ranker"]), 300, 1)
            api.create(stream_manifest(publisher.url, health))
            names = holders(api)
            bench = Bench(api, publisher)
            with Traffic(urls_of(fleet, names)):
                plan = [("harmful", KINDS[i % len(KINDS)]) for i in range(args.harmful)]
                plan += [("clean", "noise")] * args.clean
                order = np.random.default_rng(1).permutation(len(plan))
                for n, j in enumerate(order, 1):
                    what, kind = plan[j]
                    r = bench.episode(what == "harmful", kind, args.catch_within)
                    load.append(os.getloadavg()[0])
                    results.append(r)
                    print(f"{n}/{len(plan)} {json.dumps(r)} load {load[-1]:.1f}", flush=True)
            print(f"operator log: {operator.log_path}")
    finally:
        close()
        core.delete_namespace(ns)
    harmful = [r for r in results if r["harmful"]]
    clean = [r for r in results if not r["harmful"]]
    caught = [r for r in harmful if r["caught"]]
    numbers: dict[str, Any] = {
        "harmful_runs": len(harmful),
        "harmful_caught": len(caught),
        "caught_by_kind": {
            k: f"{sum(1 for r in caught if r['kind'] == k)}/{sum(1 for r in harmful if r['kind'] == k)}"
            for k in KINDS
        },
        "clean_runs": len(clean),
        "false_rollbacks": sum(1 for r in clean if r["caught"]),
        "detect_p50_s": pct([r["detect_s"] for r in caught], 50),
        "detect_max_s": max((r["detect_s"] for r in caught), default=None),
        "traffic_switch_p50_s": pct(
            [r["switch_s"] for r in caught if r["switch_s"] is not None], 50
        ),
        "traffic_switch_p99_s": pct(
            [r["switch_s"] for r in caught if r["switch_s"] is not None], 99
        ),
        "restore_p50_s": pct([r["restore_s"] for r in caught if r["restore_s"] is not None], 50),
        "restore_p99_s": pct([r["restore_s"] for r in caught if r["restore_s"] is not None], 99),
        "publisher_restored": sum(1 for r in caught if r.get("publisher_restored")),
        "caught_by_guard": sum(1 for r in caught if r.get("by") == "guard"),
        "guard": health.get("guard"),
        "load_average_mean": round(statistics.mean(load), 1) if load else None,
        "window_s": 2,
        "confirmations": 2,
        "z": health["detector"].get("z", 1.5),
    }
    print(json.dumps(numbers, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"numbers": numbers, "episodes": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
