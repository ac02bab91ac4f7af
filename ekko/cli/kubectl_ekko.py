"""``kubectl ekko``: watch rollouts and send requests to them (promote, pause, abort, rollback …).

kubectl runs any ``kubectl-<name>`` on PATH as ``kubectl <name>``; pip installs this one as a
console script. Requests are annotations on the ModelVersion (``ekko.dev/request`` and a unique
``ekko.dev/request-at``), never spec edits, so GitOps tools do not fight them. ``rollback`` also
flips the Model's routing weights itself: agents apply them within a second even while the
operator is down, and the operator records the rollback when it sees the request.

Decisions live in :mod:`ekko.cli.rolloutview` (pure); the API calls in :mod:`ekko.kube.rollouts`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, cast

import yaml
from pydantic import ValidationError

from ekko import __version__
from ekko.api.resources import (
    REQUEST_AT_ANNOTATION,
    RESUME_ANNOTATION,
    ROLLBACK_ANNOTATION,
    ROLLBACK_CUT_ANNOTATION,
    Model,
    ModelUpdateControl,
    ModelVersionStatus,
    ServerAssignment,
    UpdateStream,
    UpdateStreamStatus,
    VersionWeight,
)
from ekko.api.units import UnitError, parse_seconds
from ekko.cli import rolloutview as view
from ekko.cli.rolloutview import RefusedError
from ekko.kube.errors import KubeError
from ekko.rollout.machine import Verb
from ekko.rollout.observe import routing_progress

PROG = "kubectl ekko"
ACTIONS = ("promote", "pause", "resume", "abort", "retry", "rollback")
DEFAULT_WAIT = 120.0
POLL = 0.25
"""Seconds between looks while waiting; the rollback time is measured from agents' stamps, not this."""
ROLLBACK_POLL = 0.1
"""A tighter poll for rollbacks: the time they were seen applied everywhere is an upper bound."""
WATCH_POLL = 1.0
OPERATOR_GRACE = 5.0
"""Seconds a rollback --wait keeps looking for the operator's record once every agent applied it."""

EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT, EXIT_ABORTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


# -- arguments ------------------------------------------------------------------------------


def _duration(text: str) -> float:
    try:
        return parse_seconds(text)
    except UnitError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _globals() -> argparse.ArgumentParser:
    # SUPPRESS so a flag given before the command is not reset by the subcommand's default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-n",
        "--namespace",
        default=argparse.SUPPRESS,
        help="namespace (default: the kube context's, else default)",
    )
    common.add_argument("--kubeconfig", default=argparse.SUPPRESS, help="path to the kubeconfig")
    common.add_argument("--context", default=argparse.SUPPRESS, help="kube context to use")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _globals()
    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[common],
        description="Watch Ekko rollouts and send requests to them. Requests are annotations on "
        "the ModelVersion (the spec is never edited).",
        epilog="exit codes: 0 done (or goal reached, or the watched rollout promoted), 1 refused "
        "or failed (or rolled back), 2 timed out or bad usage, 3 the watched rollout was aborted",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("version", help="print the plugin's version")

    status = sub.add_parser(
        "status",
        parents=[common],
        help="rollout state of a model, or one line per model",
        description="Stable, canary and previous versions, weights, phase, step, analysis, "
        "servers loaded and the last rollback of a model; without MODEL one line per model.",
    )
    status.add_argument("model", nargs="?", metavar="MODEL")
    status.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="redraw on changes; with MODEL, exit when its rollout ends: 0 promoted, "
        "1 rolled back or failed, 3 aborted",
    )
    status.add_argument(
        "--timeout", type=_duration, help="stop watching after this long; exit 2 with MODEL"
    )
    status.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default="table",
        help="table (default), or json/yaml for scripts (one document per change with --watch)",
    )

    updates = sub.add_parser(
        "updates",
        parents=[common],
        usage="%(prog)s [pause|resume|rollback] MODEL [options]",
        help="freshness and health of a model's streamed updates; "
        "`updates pause|resume|rollback MODEL`",
        description="State, lag (overall, high-priority, per region with its leader), WAN and "
        "raw bytes, compression, backlog, servers and the model-state manager of the model's "
        "UpdateStream. `pause MODEL` / `resume MODEL` stop and restart pulling everywhere "
        "through an annotation on the stream (the spec is never edited); servers keep serving "
        "what they hold; `resume` also resumes a model-state manager paused for a person. "
        "`rollback MODEL [--to-cut N]` serves the baseline cut (or cut N) on every server at "
        "once, even while the operator is down, and asks the operator to restore the state to "
        "it at the next epoch.",
    )
    updates.add_argument("words", nargs="+", metavar="MODEL", help="[pause|resume|rollback] MODEL")
    updates.add_argument(
        "--to-cut", type=int, metavar="N", help="rollback: the retained cut to go back to"
    )
    updates.add_argument(
        "--wait", action="store_true", help="rollback: wait until the state is restored"
    )
    updates.add_argument("-w", "--watch", action="store_true", help="redraw on changes")
    updates.add_argument("--timeout", type=_duration, help="stop watching after this long")
    updates.add_argument(
        "-o", "--output", choices=("table", "json", "yaml"), default="table", help="output format"
    )

    helps = {
        "promote": "move the canary past its pause or analysis step (--full: promote now)",
        "pause": "pause the rollout",
        "resume": "resume a rollout paused by `pause`",
        "abort": "abort the rollout: all traffic back on the stable version",
        "retry": "start an aborted, rolled back or failed rollout again",
        "rollback": "route all traffic back now: to the stable version during a canary, else to "
        "the previous version (works while the operator is down)",
    }
    for verb in ACTIONS:
        p = sub.add_parser(verb, parents=[common], help=helps[verb], description=helps[verb])
        p.add_argument("model", metavar="MODEL")
        if verb == "promote":
            p.add_argument("--full", action="store_true", help="skip the remaining steps")
        if verb == "rollback":
            p.add_argument("--to", metavar="VERSION", help="version to return to (must be loaded)")
        p.add_argument("--wait", action="store_true", help="wait until the request took effect")
        p.add_argument(
            "--timeout",
            type=_duration,
            help=f"give up waiting after this long (default {DEFAULT_WAIT:.0f}s); exit 2",
        )
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    for name in ("namespace", "kubeconfig", "context"):
        if not hasattr(args, name):
            setattr(args, name, None)
    for name, default in (("watch", False), ("wait", False), ("full", False), ("to", None)):
        if not hasattr(args, name):
            setattr(args, name, default)
    if args.command == "updates":
        words = args.words
        if len(words) == 2 and words[0] in ("pause", "resume", "rollback"):
            args.action, args.model = words
        elif len(words) == 1:
            args.action, args.model = "show", words[0]
        else:
            argparse.ArgumentParser(prog=f"{PROG} updates").error(
                f"give MODEL, or pause|resume|rollback MODEL (got {' '.join(words)!r})"
            )
        if args.to_cut is not None and args.action != "rollback":
            argparse.ArgumentParser(prog=f"{PROG} updates").error("--to-cut is for rollback")
    return args


def verb_of(args: argparse.Namespace) -> Verb:
    if args.command == "promote" and args.full:
        return "promote-full"
    return cast("Verb", args.command)


# -- running --------------------------------------------------------------------------------


@dataclass
class Session:
    """What a command runs with; the clock and streams are injectable for tests."""

    kube: Any  # ekko.kube.rollouts.RolloutClient or a test double with the same methods
    namespace: str
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    err: IO[str] = field(default_factory=lambda: sys.stderr)
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def fail(self, text: str) -> None:
        print(f"{PROG}: {text}", file=self.err, flush=True)

    def model(self, name: str) -> Model:
        model = self.kube.get_model(self.namespace, name)
        if model is None:
            raise RefusedError(f'model "{name}" not found in namespace "{self.namespace}"')
        return cast("Model", model)


def run_status(s: Session, args: argparse.Namespace) -> int:
    output = getattr(args, "output", "table")

    def draw() -> tuple[str, int | None]:
        """The text to show, and the exit code if the watched rollout has ended."""
        versions = s.kube.list_versions(s.namespace)
        if args.model:
            model = s.model(args.model)
            ended = view.finished(view.watched_version(model, versions))
            if output != "table":
                return _dump(view.status_document(model, versions), output), ended
            return view.render_model(model, versions), ended
        models = s.kube.list_models(s.namespace)
        if output != "table":
            return _dump([view.status_document(m, versions) for m in models], output), None
        return (
            view.render_list(models, versions) or f"No models in namespace {s.namespace}.\n"
        ), None

    if not args.watch:
        s.out.write(draw()[0])
        s.out.flush()
        return EXIT_OK
    deadline = s.monotonic() + args.timeout if args.timeout else None
    tty = s.out.isatty() and output == "table"
    last = None
    while True:
        text, ended = draw()
        if text != last:
            if tty:
                s.out.write("\x1b[H\x1b[2J")
            elif last is not None and output == "table":
                s.out.write("\n")
            if output == "table":
                stamp = s.now().astimezone(UTC).strftime("%H:%M:%S")
                s.out.write(f"{text}(updated {stamp}; Ctrl-C to stop)\n")
            else:
                s.out.write(text)
            s.out.flush()
            last = text
        if ended is not None:
            if ended != EXIT_OK:
                s.fail(f"the rollout of {args.model} ended {_ENDED[ended]}")
            return ended
        if deadline is not None and s.monotonic() >= deadline:
            if args.model:
                s.fail(f"timed out after {args.timeout:g}s; the rollout of {args.model} goes on")
                return EXIT_TIMEOUT
            return EXIT_OK
        s.sleep(WATCH_POLL)


_ENDED = {1: "rolled back or failed", 3: "aborted"}


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def _rate(value: float) -> str:
    for unit, size in (("MiB/s", 2**20), ("KiB/s", 2**10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B/s"


def render_updates(stream: UpdateStream) -> str:
    """The ``kubectl ekko updates MODEL`` table (pure)."""
    st = stream.status or UpdateStreamStatus()
    f, t = st.freshness, st.traffic
    ratio = "-" if t.compression_ratio is None else f"{t.compression_ratio:.2f}x"
    lines = [
        f"UpdateStream {stream.metadata.name} (model {stream.spec.model}): {st.state}"
        + (" (paused)" if stream.spec.paused and st.state != "Paused" else "")
        + f", epoch {st.epoch}",
        f"Lag:      p50 {_seconds(f.p50_seconds)}  p99 {_seconds(f.p99_seconds)}  "
        f"high-priority p99 {_seconds(f.high_p99_seconds)}",
        f"Traffic:  WAN {_rate(t.wan_bytes_per_second)}  raw {_rate(t.raw_bytes_per_second)}  "
        f"compression {ratio}  {t.rows_per_second:g} rows/s  backlog {st.backlog_rows} rows",
        f"Servers:  {st.servers_connected}/{st.servers_wanted} connected, "
        f"{st.servers_lagging} lagging",
    ]
    if f.regions:
        rows = [("REGION", "LEADER", "SERVERS", "LAG-P50", "LAG-P99")] + [
            (
                r.region or "-",
                r.leader or "-",
                str(r.servers),
                _seconds(r.lag_p50_seconds),
                _seconds(r.lag_p99_seconds),
            )
            for r in f.regions
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
        ]
    h = st.health
    if h is not None:
        w = h.last_window
        window = (
            f"last window {w.verdict} {w.mean_loss_difference:+.4f} over {w.samples}"
            if w is not None and w.mean_loss_difference is not None
            else "no window yet"
        )
        cuts = ",".join(str(c.id) for c in h.cuts[-5:]) or "-"
        lines.append(
            f"Health:   {h.phase}"
            + (f", {h.step}" if h.step != "None" else "")
            + f"; baseline cut {h.baseline_cut if h.baseline_cut is not None else '-'}"
            + f" (cuts {cuts}); {window}"
        )
        rb = h.last_rollback
        if rb is not None:
            lines.append(
                f"Last rollback ({rb.trigger}): cut {rb.cut}, epoch {rb.epoch}, decided "
                f"{rb.decided_at.isoformat()}, switched {_seconds(rb.switch_seconds)}, "
                f"restored {_seconds(rb.restore_seconds)}"
                + ("" if rb.resumed_at else " (in progress)")
                + (" (publisher not restored)" if rb.publisher_restored is False else "")
            )
    if st.conditions:
        lines.append(
            "Conditions: " + ", ".join(f"{c.type}={c.status} ({c.reason})" for c in st.conditions)
        )
    return "\n".join(lines) + "\n"


def run_updates(
    s: Session,
    args: argparse.Namespace,
    find: Callable[[str, str], Any],
    set_paused: Callable[[str, str, bool], None] | None = None,
    annotate: Callable[[str, str, dict[str, str]], None] | None = None,
) -> int:
    if args.action == "rollback":
        assert annotate is not None
        return run_state_rollback(s, args, find, annotate)
    if args.action in ("pause", "resume"):
        stream = find(s.namespace, args.model)
        if stream is None:
            raise RefusedError(
                f'no UpdateStream for model "{args.model}" in namespace "{s.namespace}"'
            )
        assert set_paused is not None
        set_paused(s.namespace, stream.metadata.name, args.action == "pause")
        health = stream.status.health if stream.status else None
        if args.action == "resume" and annotate is not None and health is not None:
            stamp = view.request_stamp(s.now(), None)
            annotate(s.namespace, stream.metadata.name, {RESUME_ANNOTATION: stamp})
            if health.step == "Paused":
                s.say(f"UpdateStream {stream.metadata.name}: the model-state manager resumes")
        s.say(
            f"UpdateStream {stream.metadata.name}: "
            + (
                "paused (servers keep serving what they hold)"
                if args.action == "pause"
                else "resumed"
            )
        )
        return EXIT_OK

    def draw() -> str:
        stream = find(s.namespace, args.model)
        if stream is None:
            raise RefusedError(
                f'no UpdateStream for model "{args.model}" in namespace "{s.namespace}"'
            )
        if args.output != "table":
            return _dump(
                stream.model_dump(by_alias=True, mode="json", exclude_none=True), args.output
            )
        return render_updates(stream)

    if not args.watch:
        s.out.write(draw())
        s.out.flush()
        return EXIT_OK
    deadline = s.monotonic() + args.timeout if args.timeout else None
    last = None
    while deadline is None or s.monotonic() < deadline:
        text = draw()
        if text != last:
            s.out.write(text if last is None or args.output != "table" else "\n" + text)
            s.out.flush()
            last = text
        s.sleep(WATCH_POLL)
    return EXIT_OK


def state_switch_progress(
    servers: list[tuple[ServerAssignment, bool]], model: str, cut: int
) -> tuple[int, int, list[str]]:
    """(switched, serving servers, names still on live) after a state rollback to ``cut`` (pure):
    a server counts as switched when it serves the baseline, or does not hold the cut (it says
    so in its report and cannot do better)."""
    done, pending, total = 0, [], 0
    for a, serving in servers:
        if not serving:
            continue
        total += 1
        report = next((u for u in (a.status.updates if a.status else []) if u.model == model), None)
        if report is not None and (report.view == "Baseline" or cut not in report.cuts):
            done += 1
        else:
            pending.append(a.metadata.name)
    return done, total, pending


def run_state_rollback(
    s: Session,
    args: argparse.Namespace,
    find: Callable[[str, str], Any],
    annotate: Callable[[str, str, dict[str, str]], None],
) -> int:
    """Serve the baseline cut on every server now (the Model's control block, as the operator
    would write it) and ask the operator to restore the state to it (an annotation)."""
    stream = find(s.namespace, args.model)
    if stream is None:
        raise RefusedError(f'no UpdateStream for model "{args.model}" in namespace "{s.namespace}"')
    if stream.spec.health is None:
        raise RefusedError(
            f"UpdateStream {stream.metadata.name} has no spec.health: no cuts are kept to roll "
            "back to"
        )
    model = s.model(args.model)
    health = stream.status.health if stream.status else None
    control = (model.status.updates if model.status else None) or ModelUpdateControl()
    if health is not None and health.step != "None":
        raise RefusedError(
            f"a rollback of {args.model}'s state is already under way (step {health.step})"
        )
    retained = [c.id for c in health.cuts] if health is not None else []
    cut = args.to_cut if args.to_cut is not None else control.baseline_cut
    if cut is None:
        raise RefusedError(f"{args.model} has no baseline cut yet (retained cuts: none)")
    if args.to_cut is not None and cut not in retained:
        raise RefusedError(f"cut {cut} is not retained (retained: {retained or 'none'})")
    stamp = view.request_stamp(s.now(), stream.metadata.annotations.get(ROLLBACK_ANNOTATION))
    s.kube.patch_model_status(
        s.namespace,
        args.model,
        {"updates": control.evolve(view="Baseline", baseline_cut=cut).to_wire()},
    )
    annotate(
        s.namespace,
        stream.metadata.name,
        {ROLLBACK_ANNOTATION: stamp, ROLLBACK_CUT_ANNOTATION: str(cut)},
    )
    s.say(
        f"rollback of {args.model}'s state requested: every server serves cut {cut} now; the "
        "operator restores the state to it at the next epoch"
    )
    if not args.wait:
        return EXIT_OK
    timeout = args.timeout if args.timeout is not None else DEFAULT_WAIT
    deadline = s.monotonic() + timeout
    started = s.monotonic()
    last = None
    while True:
        servers = s.kube.model_servers(s.namespace, args.model, model.spec.pool)
        done, total, pending = state_switch_progress(servers, args.model, cut)
        line = f"{done}/{total} servers serve cut {cut}"
        if line != last:
            s.say(f"  {line}")
            last = line
        if total and done == total:
            s.say(f"every server serves cut {cut} ({s.monotonic() - started:.3f}s)")
            break
        if s.monotonic() >= deadline:
            s.fail(f"timed out after {timeout:g}s: not yet on {', '.join(pending[:5])}")
            return EXIT_TIMEOUT
        s.sleep(ROLLBACK_POLL)
    requested = view.parse_stamp(stamp)
    grace = min(deadline, s.monotonic() + max(OPERATOR_GRACE, timeout / 2))
    while True:
        stream = find(s.namespace, args.model)
        health = stream.status.health if stream is not None and stream.status else None
        rb = health.last_rollback if health is not None else None
        if rb is not None and rb.resumed_at is not None and rb.decided_at >= requested:
            s.say(
                f"restored to cut {rb.cut} at epoch {rb.epoch}; serving live again "
                f"(switched {rb.switch_seconds}s, restored {rb.restore_seconds}s after the "
                "operator's decision)"
            )
            return EXIT_OK
        if s.monotonic() >= grace:
            s.say(
                "the operator has not restored the state yet (is it running?); traffic stays "
                f"on cut {cut} until it does; `{PROG} updates {args.model}` shows it"
            )
            return EXIT_OK
        s.sleep(POLL)


def _dump(doc: object, output: str) -> str:
    if output == "json":
        return json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n"
    return "---\n" + yaml.safe_dump(json.loads(json.dumps(doc, default=str)), sort_keys=True)


def run_action(s: Session, args: argparse.Namespace) -> int:
    verb = verb_of(args)
    model = s.model(args.model)
    name = model.metadata.name
    versions = s.kube.list_versions(s.namespace)
    mv = view.choose_target(verb, model, versions, args.to)
    view.check_request(verb, model, mv, s.now(), args.to)
    target = view.rollback_target(model, mv, args.to) if verb == "rollback" else None
    at = view.request_stamp(s.now(), mv.metadata.annotations.get(REQUEST_AT_ANNOTATION))
    before = mv.status
    s.kube.annotate_version(
        s.namespace, mv.metadata.name, view.request_annotations(verb, at, args.to)
    )
    if target is not None:
        s.kube.apply_model_routing(s.namespace, name, view.rollback_routing(target))
        s.say(
            f"rollback of {name} requested on {mv.metadata.name} (version {mv.spec.version});"
            f" routed 100% to {target}"
        )
    else:
        s.say(f"{verb} of {name} requested on {mv.metadata.name} (version {mv.spec.version})")
    if not args.wait:
        return EXIT_OK
    timeout = args.timeout if args.timeout is not None else DEFAULT_WAIT
    if target is not None:
        return wait_rollback(s, model, mv.metadata.name, at=at, target=target, timeout=timeout)
    return wait_request(s, verb, mv.metadata.name, at=at, before=before, timeout=timeout)


def wait_request(
    s: Session,
    verb: Verb,
    mv_name: str,
    *,
    at: str,
    before: ModelVersionStatus | None,
    timeout: float,
) -> int:
    before_status = before or ModelVersionStatus()
    deadline = s.monotonic() + timeout
    last = None
    while True:
        mv = s.kube.get_version(s.namespace, mv_name)
        progress = view.judge(verb, at, before_status, mv)
        if progress.line != last:
            s.say(f"  {progress.line}")
            last = progress.line
        if progress.state == "reached":
            s.say(f"{verb} of {mv_name}: done")
            return EXIT_OK
        if progress.state == "failed":
            s.fail(f"{verb} of {mv_name} failed: {progress.line}")
            return EXIT_FAILED
        if s.monotonic() >= deadline:
            s.fail(f"timed out after {timeout:g}s waiting for {verb} of {mv_name}: {last}")
            return EXIT_TIMEOUT
        s.sleep(POLL)


def wait_rollback(
    s: Session, model: Model, mv_name: str, *, at: str, target: str, timeout: float
) -> int:
    name = model.metadata.name
    requested_at = view.parse_stamp(at)
    want = (VersionWeight(version=target, weight=100),)
    deadline = s.monotonic() + timeout
    last = None
    while True:
        servers = s.kube.model_servers(s.namespace, name, model.spec.pool)
        mv = s.kube.get_version(s.namespace, mv_name)
        routing = routing_progress(name, want, servers)
        progress = view.judge_rollback(at, mv, routing)
        if progress.line != last:
            s.say(f"  {progress.line}")
            last = progress.line
        if progress.state == "failed":
            s.fail(f"rollback of {name} failed: {progress.line}")
            return EXIT_FAILED
        if progress.state == "reached":
            seen_at = s.now()
            break
        if s.monotonic() >= deadline:
            waiting = ", ".join(routing.pending[:5]) + (" …" if len(routing.pending) > 5 else "")
            s.fail(
                f"timed out after {timeout:g}s: rollback of {name} {last}"
                + (f"; not yet on {waiting}" if waiting else "")
            )
            return EXIT_TIMEOUT
        s.sleep(ROLLBACK_POLL)
    s.say(view.rollback_summary(name, target, routing, requested_at, seen_at))
    grace = min(deadline, s.monotonic() + OPERATOR_GRACE)
    while True:
        recorded = view.operator_seconds(mv, requested_at)
        if recorded is not None:
            s.say(f"operator recorded rollbackSeconds {recorded:.3f}")
            return EXIT_OK
        if s.monotonic() >= grace:
            s.say(
                "the operator has not recorded the rollback yet (is it running?);"
                f" `{PROG} status {name}` shows it once it does"
            )
            return EXIT_OK
        s.sleep(POLL)
        mv = s.kube.get_version(s.namespace, mv_name)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2), already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_FAILED
    if args.command == "version":
        print(f"{PROG} {__version__}")
        return EXIT_OK
    try:
        from ekko.kube.client import connect  # noqa: PLC0415 (fast --help)
        from ekko.kube.rollouts import RolloutClient  # noqa: PLC0415 (fast --help)

        connection = connect(args.kubeconfig, args.context)
        api = connection.api
        session = Session(kube=RolloutClient(api), namespace=args.namespace or connection.namespace)
        if args.command == "status":
            return run_status(session, args)
        if args.command == "updates":
            from ekko.kube.updates import UpdateKube  # noqa: PLC0415 (fast --help)

            kube = UpdateKube(api)
            return run_updates(
                session, args, kube.find_stream, kube.set_paused, kube.annotate_stream
            )
        return run_action(session, args)
    except (RefusedError, KubeError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_FAILED
    except ValidationError as err:
        first = err.errors()[0] if err.errors() else {"msg": str(err), "loc": ()}
        where = ".".join(str(p) for p in first["loc"])
        print(
            f"{PROG}: an object in the cluster does not match Ekko's API ({where}: {first['msg']});"
            " are the CRDs and the plugin the same version?",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        if args.command in ("status", "updates") and args.watch:
            return EXIT_OK
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
