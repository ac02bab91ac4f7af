"""Placement benchmark: ekko's solver against the baselines on seeded synthetic fleets.

    python -m bench.placement --sizes S,M,L --seeds 3           # the full table
    python -m bench.placement --sizes S,M --seeds 1             # quick run (< 2 minutes)
    python -m bench.placement --families compute,small-models,large-shards,zone-tight,fleet \
        --sizes S,M --seeds 3                                   # hard families (issue 17)
    python -m bench.placement --families fleet --sizes M --seeds 3 --config-lp 60  # bound study
    python -m bench.placement --deadline --sizes S,M,L,XL --limits 1,10   # the call vs its limit
    python -m bench.placement --deadline --fixed-costs --sizes L,XL --limits 1 --seeds 3

Instances look like large recommendation fleets: lognormal shard sizes (embedding tables split
into equal shards, some models with explicit unequal shards), per-replica load that is not
proportional to size (memory-heavy embedding models next to compute-heavy dense rankers), SLO
classes critical/standard/batch with their caps and exclusions, three zones, rollout reserves.
Every plan is checked with the independent checker; the table reports violations too.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass

from ekko.solver import (
    GIB,
    SOLVERS,
    ModelId,
    ModelSpec,
    Plan,
    Pool,
    Problem,
    Server,
    ServerId,
    SloClassName,
    SolveConfig,
    ZoneId,
    colgen,
    search,
    violations,
)
from ekko.solver import instance as instance_mod

SIZES = {"S": 1_000, "M": 8_000, "L": 25_000, "XL": 30_000}
LIMITS = {"S": 5.0, "M": 10.0, "L": 30.0, "XL": 30.0}
BASELINE_NAMES = ("dedicated", "ffd", "bfd", "spread", "mostallocated", "seldon")


def generate(replicas: int, seed: int) -> Problem:
    """A seeded instance with about ``replicas`` shard replicas."""
    rng = random.Random(seed)
    pool = Pool(
        name="gpu-a",
        memory_bytes=128 * GIB,
        compute_units=1000.0,
        headroom=0.1,
        max_servers=100_000,
        zones=(ZoneId("a"), ZoneId("b"), ZoneId("c")),
    )
    models: list[ModelSpec] = []
    total = 0
    while total < replicas:
        k = len(models)
        r = rng.random()
        slo = "critical" if r < 0.2 else ("standard" if r < 0.7 else "batch")
        reps = {"critical": 3, "standard": 2, "batch": 1}[slo]
        shards = max(1, min(64, round(rng.lognormvariate(math.log(8), 0.9))))
        if rng.random() < 0.6:
            # embedding tables: memory-heavy, light compute per replica
            size = min(40.0, max(0.1, rng.lognormvariate(math.log(4.0), 0.8)))  # GiB
            load = 1000.0 * min(0.08, rng.lognormvariate(math.log(0.012), 0.6))
        else:
            # dense rankers: small, compute-heavy
            size = min(40.0, max(0.1, rng.lognormvariate(math.log(0.8), 0.8)))
            load = 1000.0 * min(0.25, rng.lognormvariate(math.log(0.05), 0.6))
        reserve = 0.25 if slo != "batch" and rng.random() < 0.5 else 0.0
        if rng.random() < 0.2:
            sizes = tuple(int(size * GIB * rng.choice((0.5, 1.0, 1.5))) for _ in range(shards))
            spec = ModelSpec(
                id=ModelId(f"m{k:04d}"),
                shard_sizes=sizes,
                replicas=reps,
                load=load,
                slo=SloClassName(slo),
                reserve_factor=reserve,
            )
        else:
            spec = ModelSpec(
                id=ModelId(f"m{k:04d}"),
                shard_count=shards,
                shard_bytes=int(size * GIB),
                replicas=reps,
                load=load,
                slo=SloClassName(slo),
                reserve_factor=reserve,
            )
        models.append(spec)
        total += shards * reps
    return Problem(pool=pool, models=tuple(models))


FAMILIES = ("fleet", "compute", "small-models", "large-shards", "zone-tight")


def generate_family(family: str, replicas: int, seed: int) -> Problem:
    """Instance families where packing is hard (issue 17), about ``replicas`` shard replicas.

    - fleet: :func:`generate` (the original family);
    - compute: compute-bound pool (loads of 5-35% of a server per replica, sizes of 1-4%),
      decimal loads such as 12.5 that fit exactly under the caps;
    - small-models: very many models of 1-3 small shards;
    - large-shards: few shards per server (a third to a half of usable memory);
    - zone-tight: 3 replicas over 3 zones, mid-size shards.
    """
    if family == "fleet":
        return generate(replicas, seed)
    rng = random.Random(seed * 7919 + FAMILIES.index(family))
    pool = Pool(
        name="p",
        memory_bytes=128 * GIB,
        compute_units=1000.0,
        headroom=0.1,
        max_servers=100_000,
        zones=(ZoneId("a"), ZoneId("b"), ZoneId("c")),
    )
    usable = 128 * 0.9
    models: list[ModelSpec] = []
    total = 0
    while total < replicas:
        k = len(models)
        slo = rng.choice(("critical", "standard", "batch"))
        reps = {"critical": 3, "standard": 2, "batch": 1}[slo]
        if family == "compute":
            shards = rng.randint(1, 16)
            gib = rng.uniform(1.0, 5.0)
            load = rng.choice((50, 75, 100, 125, 150, 200, 250, 300, 350)) + rng.choice(
                (0, 12.5, 25)
            )
        elif family == "small-models":
            shards = rng.randint(1, 3)
            gib = rng.uniform(0.2, 6.0)
            load = round(rng.uniform(1, 40), 1)
        elif family == "large-shards":
            shards = rng.randint(1, 8)
            gib = usable * rng.uniform(0.3, 0.5)
            load = round(rng.uniform(10, 150), 1)
        else:  # zone-tight
            reps = 3
            shards = rng.randint(2, 12)
            gib = rng.uniform(5.0, 30.0)
            load = round(rng.uniform(5, 90), 1)
        models.append(
            ModelSpec(
                id=ModelId(f"m{k:05d}"),
                shard_count=shards,
                shard_bytes=int(gib * GIB),
                replicas=reps,
                load=load,
                slo=SloClassName(slo),
            )
        )
        total += shards * reps
    return Problem(pool=pool, models=tuple(models))


def perturb_load(problem: Problem, plan: Plan, seed: int) -> Problem:
    """+-5% load on 10% of the models; the plan becomes the current placement."""
    rng = random.Random(seed + 1000)
    models = list(problem.models)
    for i in rng.sample(range(len(models)), max(1, len(models) // 10)):
        m = models[i]
        models[i] = m.model_copy(update={"load": m.load * rng.choice((0.95, 1.05))})
    return _with_current(problem.model_copy(update={"models": tuple(models)}), plan)


def lose_server(problem: Problem, plan: Plan, seed: int) -> Problem:
    """One server of the plan disappears."""
    rng = random.Random(seed + 2000)
    gone = rng.choice(plan.servers).id
    base = _with_current(problem, plan)
    pool = base.pool.model_copy(
        update={"servers": tuple(s for s in base.pool.servers if s.id != gone)}
    )
    return base.model_copy(update={"pool": pool})


def _with_current(problem: Problem, plan: Plan) -> Problem:
    pool = problem.pool.model_copy(
        update={"servers": tuple(Server(id=s.id, zone=s.zone) for s in plan.servers)}
    )
    return Problem(
        pool=pool,
        models=problem.models,
        slo_classes=problem.slo_classes,
        current=plan.assignment,
    )


def total_bytes(problem: Problem) -> int:
    return sum(m.size_of(k) * m.replicas for m in problem.models for k in range(m.num_shards))


@dataclass
class Row:
    size: str
    solver: str
    servers: list[int]
    over_lb: list[float]
    seconds: list[float]
    bad: int


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="S,M", help="comma list of S,M,L (default S,M)")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per size (default 1)")
    ap.add_argument("--backends", default="cpsat", help="ekko backends: cpsat,highs")
    ap.add_argument("--no-replan", action="store_true", help="skip the re-plan experiments")
    ap.add_argument("--time-scale", type=float, default=1.0, help="multiply time limits")
    ap.add_argument(
        "--families",
        default="",
        help=f"comma list of {','.join(FAMILIES)}: run only the per-family table (ekko vs the "
        "best baseline, gap to the bound, time and overshoot of the deadline)",
    )
    ap.add_argument(
        "--deadline",
        action="store_true",
        help="run only the deadline table: ekko at each size with each of --limits, wall time "
        "and overshoot beyond the limit, load average",
    )
    ap.add_argument("--limits", default="1", help="comma list of time limits for --deadline")
    ap.add_argument(
        "--config-lp",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --families: also run the configuration LP alone for SECONDS per instance, "
        "started from ekko's plan, and print its bound and ceiling (the master LP's value "
        "rounded up: no configuration-LP bound can exceed it)",
    )
    ap.add_argument(
        "--fixed-costs",
        action="store_true",
        help="with --deadline: A/B the call's fixed costs in one process, the collector on and "
        "exact() uncached (as before issue 17 bug 4's fix) against the code as it is; wall and "
        "CPU seconds per arm",
    )
    args = ap.parse_args(argv)
    if args.deadline:
        sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
        limits = [float(x) for x in args.limits.split(",") if x.strip()]
        if args.fixed_costs:
            return _fixed_costs(sizes, limits[0], args.seeds)
        return _deadline(sizes, limits, args.seeds)
    if args.families:
        fams = [f.strip() for f in args.families.split(",") if f.strip()]
        sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
        return _families(fams, sizes, args.seeds, args.time_scale, args.config_lp)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows: dict[tuple[str, str], Row] = {}
    replan: list[tuple[str, int, str, int, int, float, int]] = []
    for size in sizes:
        limit = LIMITS[size] * args.time_scale
        for seed in range(args.seeds):
            prob = generate(SIZES[size], seed)
            names = [f"ekko[{b}]" for b in backends] + list(BASELINE_NAMES)
            ekko_plan: Plan | None = None
            for name in names:
                if name.startswith("ekko["):
                    backend = name[5:-1]
                    cfg = SolveConfig(time_limit=limit, backend=backend, seed=seed)  # type: ignore[arg-type]
                    fn = SOLVERS["ekko"]
                else:
                    cfg = SolveConfig(time_limit=limit, seed=seed)
                    fn = SOLVERS[name]
                t = time.monotonic()
                plan = fn(prob, cfg)
                secs = time.monotonic() - t
                bad = len(violations(prob, plan))
                row = rows.setdefault((size, name), Row(size, name, [], [], [], 0))
                row.servers.append(plan.servers_used)
                row.over_lb.append(100.0 * (plan.servers_used / plan.lower_bound - 1))
                row.seconds.append(secs)
                row.bad += bad + (plan.status == "infeasible")
                print(
                    f"# {size} seed={seed} {name}: {plan.servers_used} servers "
                    f"(LB {plan.lower_bound}) {secs:.1f}s {plan.status} {'; '.join(plan.notes)}",
                    file=sys.stderr,
                )
                if name == f"ekko[{backends[0]}]":
                    ekko_plan = plan
            if args.no_replan or ekko_plan is None:
                continue
            for label, change in (("load +-5% on 10%", perturb_load), ("server lost", lose_server)):
                changed = change(prob, ekko_plan, seed)
                scratch_prob = changed.model_copy(
                    update={
                        "current": {},
                        "pool": changed.pool.model_copy(update={"servers": ()}),
                    }
                )
                cfg = SolveConfig(time_limit=limit, seed=seed)
                scratch = SOLVERS["ekko"](scratch_prob, cfg)
                t = time.monotonic()
                re = SOLVERS["ekko"](changed, cfg)
                secs = time.monotonic() - t
                bad = len(violations(changed, re)) + (re.status == "infeasible")
                share = 100.0 * re.bytes_moved / total_bytes(changed)
                replan.append(
                    (size, seed, label, re.servers_used, scratch.servers_used, share, bad)
                )
                print(
                    f"# {size} seed={seed} re-plan {label}: {re.servers_used} vs scratch "
                    f"{scratch.servers_used}, moved {share:.2f}% ({re.replicas_moved} "
                    f"replicas) {secs:.1f}s {'; '.join(re.notes)}",
                    file=sys.stderr,
                )
    _print_tables(rows, replan, sizes, backends)
    return 0


def _deadline(sizes: list[str], limits: list[float], seeds: int) -> int:
    """Wall time of the whole call against its limit (issue 17: the limit bounds the call)."""
    print(
        "| size | replicas | limit s | wall s | overshoot s | overshoot % | servers | status "
        "| start | load avg |"
    )
    print("|" + "---|" * 10)
    for size in sizes:
        for seed in range(seeds):
            prob = generate(SIZES[size], seed)
            for limit in limits:
                t = time.monotonic()
                plan = SOLVERS["ekko"](prob, SolveConfig(time_limit=limit, seed=seed))
                secs = time.monotonic() - t
                bad = len(violations(prob, plan))
                start = next(
                    (n[7:].split(",")[0] for n in plan.notes if n.startswith("start:")), ""
                )
                over = max(0.0, secs - limit)
                print(
                    f"| {size} | {prob.total_replicas} | {limit:g} | {secs:.2f} | {over:.2f} | "
                    f"{100 * over / limit:.0f}% | {plan.servers_used} | {plan.status}"
                    f"{f' ({bad} violations)' if bad else ''} | {start} | "
                    f"{os.getloadavg()[0]:.1f} |",
                    flush=True,
                )
    return 0


def _fixed_costs(sizes: list[str], limit: float, seeds: int) -> int:
    """Wall and CPU seconds of the call, each instance twice per arm, arms interleaved: before
    (``search._solve``: the cyclic collector on; ``exact`` uncached) and now (``solve``)."""
    cached = instance_mod.exact
    runs: dict[str, list[tuple[float, float]]] = {"before": [], "now": []}
    try:
        for size in sizes:
            for seed in range(seeds):
                prob = generate(SIZES[size], seed)
                for arm in ("before", "now", "before", "now"):
                    instance_mod.exact = cached.__wrapped__ if arm == "before" else cached  # type: ignore[misc]
                    cached.cache_clear()
                    call = search._solve if arm == "before" else search.solve
                    wall, cpu = time.monotonic(), time.process_time()
                    call(prob, SolveConfig(time_limit=limit, seed=seed))
                    runs[arm].append((time.monotonic() - wall, time.process_time() - cpu))
    finally:
        instance_mod.exact = cached  # type: ignore[misc]
    print("| arm | wall median s | wall max s | CPU median s | CPU max s | load avg |")
    print("|" + "---|" * 6)
    for arm, xs in runs.items():
        walls, cpus = [w for w, _ in xs], [c for _, c in xs]
        print(
            f"| {arm} | {statistics.median(walls):.2f} | {max(walls):.2f} | "
            f"{statistics.median(cpus):.2f} | {max(cpus):.2f} | {os.getloadavg()[0]:.1f} |"
        )
    return 0


def _lns_steps(plan: Plan) -> str:
    """'improving/tried' from the plan's LNS note (work done, whatever the machine's speed)."""
    note = next((n for n in plan.notes if n.startswith("LNS: ")), "")
    words = note.split()
    return f"{words[1]}/{words[-1]}" if len(words) >= 6 else "—"


def _config_lp(prob: Problem, plan: Plan, seconds: float) -> tuple[int, int, float]:
    """The configuration LP alone for ``seconds``, started from the plan's servers: (bound,
    ceiling = the master LP's value rounded up, seconds)."""
    inst = instance_mod.build_instance(prob)
    item_of = {(it.model, k): it.index for it in inst.items for k in it.shards}
    counts: dict[tuple[int, ServerId], int] = {}
    for mid, shards in plan.assignment.items():
        for k, sids in enumerate(shards):
            for sid in sids:
                key = (item_of[mid, k], sid)
                counts[key] = counts.get(key, 0) + 1
    sh = colgen.shapes_of(inst)
    res = colgen.config_lp_bound(inst, seconds, patterns=colgen.patterns_of(sh, counts))
    return res.bound, math.ceil(res.lp_value - 1e-6), res.seconds


def _families(fams: list[str], sizes: list[str], seeds: int, scale: float, cg: float) -> int:
    extra = " config LP alone: bound / ceiling / s |" if cg else ""
    print(
        "| family | size | replicas | ekko servers | best baseline | ekko - best | gap to LB "
        "| LB from | time s | overshoot s | violations | LNS steps improving/tried | load avg |"
        + extra
    )
    print("|" + "---|" * (14 if cg else 13))
    for fam in fams:
        for size in sizes:
            limit = LIMITS[size] * scale
            for seed in range(seeds):
                prob = generate_family(fam, SIZES[size], seed)
                cfg = SolveConfig(time_limit=limit, seed=seed)
                t = time.monotonic()
                plan = SOLVERS["ekko"](prob, cfg)
                secs = time.monotonic() - t
                bad = len(violations(prob, plan)) + (plan.status == "infeasible")
                base: dict[str, int] = {}
                for name in BASELINE_NAMES:
                    bp = SOLVERS[name](prob, cfg)
                    bad += len(violations(prob, bp))
                    if bp.status != "infeasible":
                        base[name] = bp.servers_used
                best = min(base, key=lambda n: base[n])
                source = next((n for n in plan.notes if n.startswith("lower bound")), "")
                gap = 100.0 * (plan.servers_used - plan.lower_bound) / max(plan.servers_used, 1)
                print(
                    f"| {fam} | {size} | {prob.total_replicas} | {plan.servers_used} | "
                    f"{base[best]} ({best}) | {plan.servers_used - base[best]:+d} | {gap:.1f}% | "
                    f"{source.rsplit(' from ', 1)[-1]} | {secs:.1f} | {max(0.0, secs - limit):.2f} "
                    f"| {bad} | {_lns_steps(plan)} | {os.getloadavg()[0]:.1f} |",
                    end="",
                )
                if cg:
                    b, ceiling, took = _config_lp(prob, plan, cg)
                    print(f" {b} / {ceiling} / {took:.1f} |", end="")
                print(flush=True)
                print(f"# {fam} {size} seed={seed}: {'; '.join(plan.notes)}", file=sys.stderr)
    return 0


def _print_tables(
    rows: dict[tuple[str, str], Row],
    replan: list[tuple[str, int, str, int, int, float, int]],
    sizes: list[str],
    backends: list[str],
) -> None:
    print(
        "| size | solver | servers (mean) | % over LB | fewer than "
        + " | fewer than ".join(BASELINE_NAMES)
        + " | time p50 s | time p99 s | violations |"
    )
    print("|" + "---|" * (7 + len(BASELINE_NAMES)))
    for size in sizes:
        for (sz, name), row in rows.items():
            if sz != size:
                continue
            mean = statistics.mean(row.servers)
            fewer = []
            for b in BASELINE_NAMES:
                base = rows.get((size, b))
                if base is None or name == b:
                    fewer.append("—")
                    continue
                vals = [100.0 * (1 - s / t) for s, t in zip(row.servers, base.servers, strict=True)]
                fewer.append(f"{statistics.mean(vals):.1f}%")
            print(
                f"| {size} | {name} | {mean:.1f} | {statistics.mean(row.over_lb):.1f}% | "
                + " | ".join(fewer)
                + f" | {pct(row.seconds, 0.5):.1f} | {pct(row.seconds, 0.99):.1f} | {row.bad} |"
            )
    if replan:
        print()
        print(
            "| size | seed | change | servers re-plan | servers from scratch | bytes moved | "
            "violations |"
        )
        print("|---|---|---|---|---|---|---|")
        for size, seed, label, n_re, n_sc, share, bad in replan:
            print(f"| {size} | {seed} | {label} | {n_re} | {n_sc} | {share:.2f}% | {bad} |")
    del backends


if __name__ == "__main__":
    raise SystemExit(main())
