"""``ekko plan``: solve a placement problem offline, print a summary, write the plan.

    ekko plan -f problem.yaml [-o plan.yaml] [--solver ekko|ffd|bfd|spread|mostallocated|
              seldon|dedicated] [--time-limit 10s] [--plot plan.png]

INPUT is a problem file (format in ``ekko/solver/io.py`` and ``docs/solver.md``) or Kubernetes
manifests of group ekko.dev (``kind: ServerPool`` / ``kind: Model``), which
``ekko.planning.manifests`` turns into a problem.  Bad input prints one clear line and exits 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from ekko.api.units import UnitError, format_bytes, parse_seconds
from ekko.planning import manifests
from ekko.solver import SOLVERS, Plan, Problem, SolveConfig, violations
from ekko.solver.io import ProblemFormatError, plan_to_dict, problem_from_dict

EXIT_OK = 0
EXIT_INFEASIBLE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input or arguments: printed without a traceback, exit code 2."""


def parse_duration(text: str) -> float:
    """A duration as the CRD takes it ('10s', '500ms', '1m30s'), or a plain number of seconds."""
    try:
        seconds = parse_seconds(text)
    except UnitError as e:
        raise UsageError(f"--time-limit: {e}") from None
    if seconds <= 0:
        raise UsageError("--time-limit must be positive")
    return seconds


def read_docs(path: str) -> list[Any]:
    try:
        text = Path(path).read_text() if path != "-" else sys.stdin.read()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise UsageError(f"{path}: not valid YAML: {e}") from None
    if not docs:
        raise UsageError(f"{path}: no YAML document found")
    return docs


def load_problems(paths: list[str]) -> list[tuple[str, Problem]]:
    """The problems in the files: one per ServerPool of the manifests (every file's Models
    join), or the one problem of a problem file."""
    per_file = [(path, read_docs(path)) for path in paths]
    docs = [d for _, file_docs in per_file for d in file_docs]
    if any(isinstance(d, dict) and d.get("kind") in ("ServerPool", "Model") for d in docs):
        try:
            return manifests.problems_from_manifests([d for d in docs if isinstance(d, dict)])
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{', '.join(paths)}: {e}") from None
    if len(paths) != 1:
        raise UsageError("give one problem file, or several files of ServerPool/Model manifests")
    return [("problem", load_problem_docs(paths[0], docs))]


def load_problem(path: str) -> Problem:
    """The one problem of a file (a problem file, or manifests of one pool)."""
    problems = load_problems([path])
    if len(problems) != 1:
        names = ", ".join(name for name, _ in problems)
        raise UsageError(f"{path}: expected exactly one ServerPool in the manifests, found {names}")
    return problems[0][1]


def load_problem_docs(path: str, docs: list[Any]) -> Problem:
    if len(docs) != 1:
        raise UsageError(f"{path}: a problem file holds exactly one YAML document")
    try:
        return problem_from_dict(docs[0])
    except ProblemFormatError as e:
        raise UsageError(f"{path}: {e}") from None


def usage(problem: Problem, plan: Plan) -> dict[str, dict[str, Any]]:
    """Per server: zone, memory and compute used, cap, bytes per model."""
    pool = problem.pool
    out: dict[str, dict[str, Any]] = {}
    for s in plan.servers:
        out[s.id] = {
            "zone": s.zone,
            "mem": 0.0,
            "cpu": 0.0,
            "cap": 1.0 - pool.headroom,
            "by_model": defaultdict(lambda: [0.0, 0.0]),
        }
    for m in problem.models:
        cap = problem.slo(m.slo).utilisation_cap
        for k, holders in enumerate(plan.assignment.get(m.id, ())):
            for sid in holders:
                u = out[sid]
                u["mem"] += m.memory_of(k)
                u["cpu"] += m.load_of(k)
                u["cap"] = min(u["cap"], cap)
                u["by_model"][m.id][0] += m.memory_of(k)
                u["by_model"][m.id][1] += m.load_of(k)
    return out


def summary(problem: Problem, plan: Plan, max_rows: int = 20) -> str:
    pool = problem.pool
    lines = [
        f"pool {pool.name}: {plan.status} plan by {plan.solver} in {plan.solve_seconds:.2f} s",
    ]
    if plan.status == "infeasible":
        lines.append("no valid plan:")
        lines.extend(f"  - {why}" for why in plan.explanation)
        return "\n".join(lines)
    gap = f"{plan.gap:.1%}" if plan.gap != float("inf") else "n/a"
    lines.append(
        f"servers used: {plan.servers_used} (lower bound {plan.lower_bound}, gap {gap}; "
        f"{len(plan.new_servers)} new, max {pool.max_servers})"
    )
    lines.append(f"moved: {format_bytes(plan.bytes_moved)} in {plan.replicas_moved} shard replicas")
    use = usage(problem, plan)
    per_zone: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for u in use.values():
        z = per_zone[u["zone"] or "-"]
        z[0] += 1
        z[1] += u["mem"] / pool.memory_bytes
        z[2] += u["cpu"] / pool.compute_units
    for zone, (n, mem, cpu) in sorted(per_zone.items()):
        lines.append(
            f"zone {zone}: {int(n)} servers, memory {mem / n:.0%}, compute {cpu / n:.0%} (mean)"
        )
    lines.append(f"{'server':<24} {'zone':<8} {'memory':>8} {'compute':>8} {'cap':>5}  models")
    rows = sorted(use.items(), key=lambda kv: (kv[1]["zone"], kv[0]))
    for sid, u in rows[:max_rows]:
        models = ", ".join(sorted(u["by_model"]))
        if len(models) > 40:
            models = models[:37] + "..."
        lines.append(
            f"{sid:<24} {u['zone'] or '-':<8} {u['mem'] / pool.memory_bytes:>8.0%} "
            f"{u['cpu'] / pool.compute_units:>8.0%} {u['cap']:>5.0%}  {models}"
        )
    if len(rows) > max_rows:
        lines.append(f"... and {len(rows) - max_rows} more servers (see the plan file)")
    bad = violations(problem, plan)
    lines.append("checker: ok" if not bad else f"checker: {len(bad)} violations: {bad[0].message}")
    return "\n".join(lines)


def plot(problem: Problem, plan: Plan, path: str) -> None:
    """Per-server memory and compute utilisation, stacked by model."""
    import matplotlib  # noqa: PLC0415  # optional dependency (extra "plot")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    use = usage(problem, plan)
    sids = sorted(use, key=lambda s: (use[s]["zone"], s))
    totals: dict[str, float] = defaultdict(float)
    for u in use.values():
        for mid, (mem, _) in u["by_model"].items():
            totals[mid] += mem
    top = [m for m, _ in sorted(totals.items(), key=lambda kv: -kv[1])[:12]]
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.25 * len(sids) + 2), 7), sharex=True)
    xs = range(len(sids))
    for dim, ax, cap in (
        (0, axes[0], problem.pool.memory_bytes),
        (1, axes[1], problem.pool.compute_units),
    ):
        bottom = [0.0] * len(sids)
        for mid in [*top, "other"]:
            vals = []
            for sid in sids:
                bm = use[sid]["by_model"]
                if mid == "other":
                    v = sum(x[dim] for m, x in bm.items() if m not in top)
                else:
                    v = bm[mid][dim] if mid in bm else 0.0
                vals.append(v / cap)
            ax.bar(xs, vals, bottom=bottom, label=mid, width=0.85)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.axhline(1.0 - problem.pool.headroom, color="black", linestyle="--", linewidth=0.8)
        ax.set_ylabel(["memory", "compute"][dim])
        ax.set_ylim(0, 1.05)
    axes[0].set_title(
        f"{problem.pool.name}: {plan.servers_used} servers ({plan.status}, LB {plan.lower_bound})"
    )
    axes[0].legend(fontsize=6, ncol=4, loc="upper right")
    axes[1].set_xticks(list(xs))
    axes[1].set_xticklabels(sids, rotation=90, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ekko plan", description="Place model shards on a server pool and print the plan."
    )
    ap.add_argument(
        "-f",
        "--filename",
        required=True,
        action="append",
        help="problem YAML or ekko.dev manifests (repeatable; manifests are planned per pool)",
    )
    ap.add_argument("-o", "--output", help="write the plan YAML here")
    ap.add_argument("--solver", default="ekko", choices=sorted(SOLVERS), help="default: ekko")
    ap.add_argument(
        "--time-limit", default="10s", help="deadline, e.g. 10s, 500ms, 1m30s (default 10s)"
    )
    ap.add_argument("--backend", default="cpsat", choices=("cpsat", "highs"))
    ap.add_argument("--plot", help="draw per-server utilisation to this PNG")
    ap.add_argument("--rows", type=int, default=20, help="servers listed in the summary")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:  # argparse already printed the message
        return EXIT_OK if e.code == 0 else EXIT_USAGE
    try:
        limit = parse_duration(args.time_limit)
        check_optional_dependencies(args)
        problems = load_problems(args.filename)
    except UsageError as e:
        print(f"ekko plan: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    config = SolveConfig(time_limit=limit, backend=args.backend)
    code = EXIT_OK
    plans = []
    for name, problem in problems:
        plan = SOLVERS[args.solver](problem, config)
        plans.append(plan_to_dict(plan))
        try:
            if len(problems) > 1:
                print(f"== pool {name}", flush=True)
            print(summary(problem, plan, args.rows), flush=True)
        except BrokenPipeError:  # `ekko plan ... | head`: the reader left; still write the plan
            # As the Python docs advise: point stdout at devnull so the exit flush stays quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        try:
            if args.plot and plan.status != "infeasible":
                target = args.plot if len(problems) == 1 else _suffixed(args.plot, name)
                plot(problem, plan, target)
        except OSError as e:
            print(f"ekko plan: error: cannot write output: {e}", file=sys.stderr)
            return EXIT_USAGE
        if plan.status == "infeasible":
            code = EXIT_INFEASIBLE
    try:
        if args.output:
            Path(args.output).write_text(
                yaml.safe_dump_all(plans, sort_keys=False)
                if len(plans) > 1
                else yaml.safe_dump(plans[0], sort_keys=False)
            )
    except OSError as e:
        print(f"ekko plan: error: cannot write output: {e}", file=sys.stderr)
        return EXIT_USAGE
    return code


def _suffixed(path: str, name: str) -> str:
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{name}{p.suffix}"))


def check_optional_dependencies(args: argparse.Namespace) -> None:
    """Refuse before a long solve what would fail after it: a missing optional package."""
    import importlib.util  # noqa: PLC0415 (only to look, not to load)

    for wanted, module, extra in (
        (args.plot, "matplotlib", "plot"),
        (args.backend == "highs", "highspy", "solver"),
    ):
        if wanted and importlib.util.find_spec(module) is None:
            raise UsageError(
                f"{module} is not installed; install it (pip install {module}, or the "
                f"ekko[{extra}] extra) or leave out the option that needs it"
            )


if __name__ == "__main__":
    raise SystemExit(main())
