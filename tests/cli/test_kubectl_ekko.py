"""``kubectl ekko`` without a cluster: rendering, target choice, refusals, --wait, arguments.

Objects are built with the api types; a fake client stands in for :mod:`ekko.kube.rollouts`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from ekko.api.resources import (
    REQUEST_ANNOTATION,
    REQUEST_AT_ANNOTATION,
    ROLLBACK_TO_ANNOTATION,
    Model,
    ModelVersion,
    ModelVersionStatus,
    ServerAssignment,
    VersionWeight,
)
from ekko.cli import kubectl_ekko as cli
from ekko.cli import rolloutview as view
from ekko.cli.rolloutview import RefusedError
from ekko.rollout.machine import Verb
from ekko.rollout.observe import routing_progress

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
PAUSE_STEPS = [{"setWeight": 30}, {"pause": {}}]


def model(
    stable: str | None = "v1",
    canary: str | None = None,
    previous: str | None = None,
    weights: list[tuple[str, int]] | None = None,
) -> Model:
    status: dict[str, Any] = {
        "stableVersion": stable,
        "canaryVersion": canary,
        "previousVersion": previous,
        "replicasWanted": 20,
        "replicasReady": 20,
    }
    if weights is not None:
        status["weights"] = [{"version": v, "weight": w} for v, w in weights]
    return Model.model_validate(
        {
            "metadata": {"name": "rank", "namespace": "prod"},
            "spec": {
                "pool": "pool",
                "version": "v1",
                "artifact": {"uri": "file:///a/v1"},
                "shards": {"count": 20, "size": "20Gi"},
            },
            "status": {k: v for k, v in status.items() if v is not None},
        }
    )


def version(
    v: str = "v2",
    phase: str = "Paused",
    step: int = 1,
    steps: list[dict[str, Any]] | None = None,
    created: int = 0,
    metrics: list[dict[str, Any]] | None = None,
    **status: Any,
) -> ModelVersion:
    return ModelVersion.model_validate(
        {
            "metadata": {
                "name": f"rank-{v}",
                "namespace": "prod",
                "creationTimestamp": (T0 + timedelta(minutes=created)).isoformat(),
            },
            "spec": {
                "model": "rank",
                "version": v,
                "artifact": {"uri": f"file:///a/{v}"},
                "strategy": {"canary": {"steps": steps or PAUSE_STEPS}},
                "analysis": metrics or [],
            },
            "status": {"phase": phase, "currentStep": step, **status},
        }
    )


def assignment(
    name: str, weights: list[tuple[str, int]] | None, applied: float | None = None
) -> ServerAssignment:
    routing = []
    if weights is not None:
        entry: dict[str, Any] = {
            "model": "rank",
            "weights": [{"version": v, "weight": w} for v, w in weights],
        }
        if applied is not None:
            entry["appliedAt"] = (T0 + timedelta(seconds=applied)).isoformat()
        routing.append(entry)
    return ServerAssignment.model_validate(
        {
            "metadata": {"name": name},
            "spec": {
                "pool": "pool",
                "server": name,
                "shards": [{"model": "rank", "shard": 0, "version": "v1", "uri": "u", "bytes": 1}],
            },
            "status": {"routing": routing},
        }
    )


# -- rendering ------------------------------------------------------------------------------


def test_table_of_a_paused_canary_shows_versions_weights_step_analysis_and_servers() -> None:
    mv = version(
        weight=30,
        serversLoaded=20,
        serversWanted=20,
        message="paused at step 1; run `kubectl ekko promote rank` to continue",
        analysis=[
            {
                "metric": "error-rate",
                "phase": "Successful",
                "successful": 3,
                "failed": 0,
                "lastValue": "0.004",
            }
        ],
    )
    text = view.render_model(model(canary="v2", weights=[("v1", 70), ("v2", 30)]), [mv])
    lines = dict(line.split(":", 1) for line in text.splitlines() if ":" in line[:12])
    assert lines["Stable"].strip() == "v1"
    assert lines["Canary"].strip() == "v2"
    assert lines["Previous"].strip() == "-"
    assert lines["Weights"].strip() == "v1 70% / v2 30%"
    assert lines["Phase"].strip() == "Paused"
    assert lines["Step"].strip() == "2/2 pause (until promoted)"
    assert lines["Servers"].strip() == "20/20 loaded"
    assert lines["Analysis"].strip() == "error-rate: 3 ok, 0 failed, last 0.004 (Successful)"
    assert lines["Rollback"].strip() == "-"
    assert "kubectl ekko promote rank" in lines["Message"]


def test_table_shows_the_last_rollback_and_its_time() -> None:
    old = version(
        "v2",
        "RolledBack",
        created=0,
        rollbackRequestedAt=T0.isoformat(),
        rollbackSeconds=0.412,
    )
    text = view.render_model(model(), [old])
    assert "Rollback:" in text
    assert "2026-11-28T12:00:00.000Z from v2, applied on every server in 0.412s" in text


def test_step_text_for_each_kind_and_past_the_end() -> None:
    steps: list[dict[str, Any]] = [
        {"setWeight": 10},
        {"pause": {"duration": "30s"}},
        {"analysis": {}},
    ]
    metrics: list[dict[str, Any]] = [
        {"name": "e", "query": "q", "successCondition": "result < 1", "noData": "Hold"}
    ]

    def at(i: int) -> str:
        return view.step_text(version(phase="Progressing", step=i, steps=steps, metrics=metrics))

    assert at(0) == "1/3 setWeight 10"
    assert at(1) == "2/3 pause 30s"
    assert at(2) == "3/3 analysis (all metrics)"
    assert at(3) == "3/3 done"


def test_one_line_per_model_without_a_model_name() -> None:
    other = model().model_copy(deep=True)
    other.metadata.name = "chat"
    text = view.render_list(
        [model(canary="v2", weights=[("v1", 70), ("v2", 30)]), other],
        [version(weight=30, serversLoaded=20, serversWanted=20)],
    )
    header, chat, rank = text.splitlines()
    assert header.split()[:7] == [
        "MODEL",
        "STABLE",
        "CANARY",
        "WEIGHTS",
        "PHASE",
        "STEP",
        "SERVERS",
    ]
    assert chat.split()[:5] == ["chat", "v1", "-", "v1", "100%"]
    assert rank.split()[:7] == ["rank", "v1", "v2", "v1", "70%,v2", "30%", "Paused"]
    assert "20/20" in rank


def test_weights_format() -> None:
    assert view.format_weights([]) == "-"
    ws = [VersionWeight(version="v1", weight=90), VersionWeight(version="v2", weight=10)]
    assert view.format_weights(ws) == "v1 90% / v2 10%"


# -- choosing the ModelVersion ------------------------------------------------------------


def test_requests_go_to_the_canarys_modelversion() -> None:
    v1 = version("v1", "Promoted", step=2, created=0)
    v2 = version("v2", "Paused", created=1)
    for verb in ("promote", "pause", "abort", "rollback"):
        assert view.choose_target(verb, model(canary="v2"), [v1, v2]) is v2


def test_rollback_of_a_promoted_model_goes_to_the_stable_modelversion() -> None:
    v2 = version("v2", "Promoted", step=2)
    m = model(stable="v2", previous="v1")
    assert view.choose_target("rollback", m, [v2]) is v2
    assert view.rollback_target(m, v2) == "v1"
    assert view.rollback_target(m, v2, "v1") == "v1"


def test_rollback_during_a_canary_targets_the_stable_version() -> None:
    m = model(canary="v2", weights=[("v1", 70), ("v2", 30)])
    assert view.rollback_target(m, version()) == "v1"


def test_retry_goes_to_the_newest_finished_rollout() -> None:
    a = version("v2", "Aborted", finishedAt=T0.isoformat())
    b = version("v3", "Failed", created=1, finishedAt=(T0 + timedelta(minutes=5)).isoformat())
    assert view.choose_target("retry", model(), [a, b]) is b


@pytest.mark.parametrize(
    ("verb", "m", "versions", "to", "why"),
    [
        ("rollback", model(), [], None, "nothing to roll back to"),
        (
            "rollback",
            model(stable="v2"),
            [version("v2", "Promoted", 2)],
            None,
            "nothing to roll back to",
        ),
        (
            "rollback",
            model(stable="v2", previous="v1"),
            [version("v2", "Promoted", 2)],
            "v0",
            "version v0 is not loaded on rank's servers; only v1 is",
        ),
        ("promote", model(), [version("v1", "Promoted", 2)], None, "no rollout in progress"),
        ("retry", model(canary="v2"), [version()], None, "no aborted, rolled back or failed"),
        ("abort", model(canary="v9"), [version()], None, "has canary v9 but no ModelVersion"),
    ],
)
def test_nothing_to_act_on_is_refused(
    verb: Verb, m: Model, versions: list[ModelVersion], to: str | None, why: str
) -> None:
    with pytest.raises(RefusedError, match=why):
        view.choose_target(verb, m, versions, to)


# -- refusal rules (the machine's own) ----------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "phase", "step", "extra", "why"),
    [
        ("resume", "Paused", 1, {}, "it waits for promote, not resume"),
        ("resume", "Progressing", 0, {}, "it is Progressing, not Paused"),
        ("resume", "Paused", 1, {"pausedByUser": True}, None),
        ("promote", "Loading", 0, {}, "it is still Loading"),
        ("promote", "Progressing", 0, {}, "the current step is not a pause or an analysis"),
        ("promote", "Paused", 1, {}, None),
        ("promote-full", "Progressing", 0, {}, None),
        ("pause", "Progressing", 0, {}, None),
        ("abort", "Paused", 1, {}, None),
        ("abort", "Aborted", 1, {}, "the rollout is Aborted"),
        ("retry", "Paused", 1, {}, "only an aborted, rolled back or failed rollout"),
        ("retry", "Failed", 1, {}, None),
        ("rollback", "Paused", 1, {}, None),
        ("rollback", "Loading", 0, {}, None),
        ("rollback", "Pending", 0, {}, "nothing has been routed to it yet"),
        ("rollback", "Aborted", 1, {}, "already Aborted"),
    ],
)
def test_requests_the_operator_would_refuse_are_refused(
    verb: Verb, phase: str, step: int, extra: dict[str, Any], why: str | None
) -> None:
    m = model(canary="v2", weights=[("v1", 70), ("v2", 30)])
    mv = version(phase=phase, step=step, **extra)
    if why is None:
        view.check_request(verb, m, mv, T0)
    else:
        with pytest.raises(RefusedError, match=why):
            view.check_request(verb, m, mv, T0)


def test_rollback_to_a_version_during_a_canary_must_be_the_stable_one() -> None:
    m = model(canary="v2", weights=[("v1", 70), ("v2", 30)])
    view.check_request("rollback", m, version(), T0, to="v1")
    with pytest.raises(RefusedError, match="returns to the stable version v1, not v0"):
        view.check_request("rollback", m, version(), T0, to="v0")


def test_the_check_ignores_a_request_the_operator_already_handled() -> None:
    # The dry run must not be mistaken for the last handled request.
    mv = version(phase="Paused", handledRequest="2026-11-28T11:00:00.000000Z")
    view.check_request("promote", model(canary="v2"), mv, T0)


# -- requests -----------------------------------------------------------------------------


def test_request_stamp_is_rfc3339_utc_with_microseconds_and_unique() -> None:
    now = datetime(2026, 11, 28, 13, 0, 0, 123456, tzinfo=UTC)
    stamp = view.request_stamp(now)
    assert stamp == "2026-11-28T13:00:00.123456Z"
    assert view.request_stamp(now, stamp) == "2026-11-28T13:00:00.123457Z"
    assert view.parse_stamp(stamp) == now


def test_request_annotations_clear_a_stale_rollback_target() -> None:
    assert view.request_annotations("promote-full", "t") == {
        REQUEST_ANNOTATION: "promote-full",
        REQUEST_AT_ANNOTATION: "t",
        ROLLBACK_TO_ANNOTATION: None,
    }
    assert view.request_annotations("rollback", "t", "v1")[ROLLBACK_TO_ANNOTATION] == "v1"


def test_rollback_routing_patch_is_a_valid_status_that_routes_everything_back() -> None:
    from ekko.rollout.observe import current_weights

    before = model(canary="v2", weights=[("v1", 70), ("v2", 30)])
    body = before.model_dump(by_alias=True, mode="json", exclude_none=True)
    body["status"] |= view.rollback_routing("v1")  # a merge patch of the status subresource
    after = Model.model_validate(body)
    assert current_weights(after) == (VersionWeight(version="v1", weight=100),)
    assert after.status is not None and after.status.canary_weight == 0


# -- --wait judgement ---------------------------------------------------------------------

AT = "2026-11-28T12:00:00.000000Z"


@pytest.mark.parametrize(
    ("verb", "before", "after", "state"),
    [
        ("promote", ("Paused", 1), ("Paused", 1, ""), "waiting"),
        ("promote", ("Paused", 1), ("Progressing", 2, AT), "reached"),
        ("promote", ("Paused", 1), ("Promoted", 2, AT), "reached"),
        ("promote", ("Progressing", 0), ("Progressing", 0, AT), "failed"),
        ("promote-full", ("Paused", 1), ("Promoted", 2, AT), "reached"),
        ("pause", ("Progressing", 0), ("Paused", 0, AT), "reached"),
        ("resume", ("Paused", 1), ("Progressing", 1, AT), "reached"),
        ("resume", ("Paused", 1), ("Paused", 1, AT), "failed"),
        ("abort", ("Paused", 1), ("Paused", 1, ""), "waiting"),
        ("abort", ("Paused", 1), ("Aborted", 1, AT), "reached"),
        ("retry", ("Aborted", 1), ("Pending", 1, AT), "reached"),
        ("retry", ("Aborted", 1), ("Aborted", 1, ""), "waiting"),
        ("promote", ("Paused", 1), ("Failed", 1, ""), "failed"),
    ],
)
def test_wait_judgement(
    verb: Verb, before: tuple[str, int], after: tuple[str, int, str], state: str
) -> None:
    before_status = ModelVersionStatus.model_validate(
        {"phase": before[0], "currentStep": before[1]}
    )
    mv = version(phase=after[0], step=after[1], handledRequest=after[2])
    assert view.judge(verb, AT, before_status, mv).state == state


def test_wait_fails_when_the_modelversion_is_gone() -> None:
    assert view.judge("abort", AT, ModelVersionStatus(), None).state == "failed"


def test_rollback_progress_counts_ready_servers_with_the_new_weights() -> None:
    want = [VersionWeight(version="v1", weight=100)]
    servers = [
        (assignment("s0", [("v1", 100)], applied=0.2), True),
        (assignment("s1", [("v1", 70), ("v2", 30)], applied=-5), True),
        (assignment("s2", [("v1", 100), ("v2", 0)], applied=0.4), True),
        (assignment("s3", None), False),  # not ready: not counted
    ]
    p = routing_progress("rank", want, servers)
    assert (p.applied, p.ready, p.pending, p.done) == (2, 3, ("s1",), False)
    assert view.judge_rollback(AT, version(), p) == view.Progress(
        "waiting", "applied on 2/3 servers"
    )
    servers[1] = (assignment("s1", [("v1", 100)], applied=0.9), True)
    p = routing_progress("rank", want, servers)
    assert p.done and p.seconds_since(T0) == pytest.approx(0.9)
    assert view.judge_rollback(AT, version(), p).state == "reached"


def test_rollback_fails_when_the_operator_handled_it_without_rolling_back() -> None:
    p = routing_progress("rank", [VersionWeight(version="v1", weight=100)], [])
    mv = version(phase="Aborted", handledRequest=AT)
    assert view.judge_rollback(AT, mv, p) == view.Progress(
        "failed", "the operator refused the rollback: it is Aborted"
    )
    # The operator's own words, from the status field, when it wrote them.
    why = "no previous version is still loaded to roll back to"
    mv = version(phase="Promoted", handledRequest=AT, requestRefused=why)
    assert view.judge_rollback(AT, mv, p) == view.Progress(
        "failed", f"the operator refused the rollback: {why}"
    )
    assert view.judge_rollback(AT, version(), p).state == "waiting"  # no ready server yet


def test_operator_seconds_only_for_this_request() -> None:
    mv = version(phase="RolledBack", rollbackRequestedAt=T0.isoformat(), rollbackSeconds=0.5)
    assert view.operator_seconds(mv, T0) == 0.5
    assert view.operator_seconds(mv, T0 + timedelta(seconds=3)) is None
    assert view.operator_seconds(version(), T0) is None


# -- arguments ----------------------------------------------------------------------------


def test_global_flags_before_or_after_the_command() -> None:
    a = cli.parse_args(["-n", "prod", "rollback", "rank", "--to", "v1", "--wait"])
    b = cli.parse_args(["rollback", "rank", "--wait", "--to", "v1", "--namespace", "prod"])
    for args in (a, b):
        assert (args.command, args.model, args.namespace, args.to, args.wait) == (
            "rollback",
            "rank",
            "prod",
            "v1",
            True,
        )
        assert args.kubeconfig is None and args.context is None and args.timeout is None


def test_promote_full_and_timeouts() -> None:
    args = cli.parse_args(["promote", "rank", "--full", "--wait", "--timeout", "2m"])
    assert cli.verb_of(args) == "promote-full" and args.timeout == 120.0
    assert cli.parse_args(["abort", "rank", "--timeout", "30"]).timeout == 30.0
    status = cli.parse_args(["status", "--watch", "--context", "kind"])
    assert status.model is None and status.watch and status.context == "kind"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate", "rank"],
        ["promote"],
        ["abort", "rank", "--timeout", "soon"],
        ["pause", "rank", "--full"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "usage: kubectl ekko" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "rollback" in capsys.readouterr().out


# -- commands against a fake client -------------------------------------------------------


class FakeKube:
    """The RolloutClient's methods over in-memory objects; records writes."""

    def __init__(self, m: Model | None, versions: list[ModelVersion]) -> None:
        self.model = m
        self.versions = {v.metadata.name: v for v in versions}
        self.servers: list[tuple[ServerAssignment, bool]] = []
        self.annotations: list[tuple[str, dict[str, str | None]]] = []
        self.status_patches: list[dict[str, Any]] = []
        self.on_get: Iterator[ModelVersion] | None = None

    def get_model(self, namespace: str, name: str) -> Model | None:
        return self.model if self.model and self.model.metadata.name == name else None

    def list_models(self, namespace: str) -> list[Model]:
        return [self.model] if self.model else []

    def list_versions(self, namespace: str) -> list[ModelVersion]:
        return list(self.versions.values())

    def get_version(self, namespace: str, name: str) -> ModelVersion | None:
        if self.on_get is not None:
            return next(self.on_get, self.versions.get(name))
        return self.versions.get(name)

    def model_servers(
        self, namespace: str, model: str, pool: str
    ) -> list[tuple[ServerAssignment, bool]]:
        return self.servers

    def annotate_version(self, namespace: str, name: str, notes: dict[str, str | None]) -> None:
        self.annotations.append((name, notes))

    def apply_model_routing(self, namespace: str, name: str, routing: dict[str, Any]) -> None:
        self.status_patches.append(routing)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def session(kube: FakeKube) -> tuple[cli.Session, io.StringIO, io.StringIO]:
    out, err, clock = io.StringIO(), io.StringIO(), Clock()
    s = cli.Session(
        kube=kube,
        namespace="prod",
        out=out,
        err=err,
        now=lambda: T0,
        monotonic=clock.monotonic,
        sleep=clock.sleep,
    )
    return s, out, err


def test_rollback_writes_the_request_then_flips_routing_and_waits_for_every_agent() -> None:
    kube = FakeKube(model(canary="v2", weights=[("v1", 70), ("v2", 30)]), [version()])
    kube.servers = [
        (assignment(f"s{i}", [("v1", 100)], applied=0.3 + i / 10), True) for i in range(3)
    ]
    recorded = version(phase="RolledBack", rollbackRequestedAt=T0.isoformat(), rollbackSeconds=0.5)
    kube.on_get = iter([version(), version(), recorded])
    s, out, _ = session(kube)
    code = cli.run_action(s, cli.parse_args(["rollback", "rank", "--wait"]))
    assert code == 0
    name, notes = kube.annotations[0]
    assert name == "rank-v2"
    assert notes[REQUEST_ANNOTATION] == "rollback"
    assert notes[REQUEST_AT_ANNOTATION] == "2026-11-28T12:00:00.000000Z"
    assert kube.status_patches == [view.rollback_routing("v1")]
    text = out.getvalue()
    assert "applied on 3/3 servers" in text
    assert "rolled back rank to v1 on 3 servers in 0.500s" in text
    assert "operator recorded rollbackSeconds 0.500" in text


def test_rollback_wait_without_the_operator_still_succeeds() -> None:
    kube = FakeKube(model(canary="v2", weights=[("v1", 70), ("v2", 30)]), [version()])
    kube.servers = [(assignment("s0", [("v1", 100)], applied=0.2), True)]
    s, out, _ = session(kube)
    assert cli.run_action(s, cli.parse_args(["rollback", "rank", "--wait"])) == 0
    assert "has not recorded the rollback yet" in out.getvalue()


def test_rollback_wait_times_out_with_exit_2() -> None:
    kube = FakeKube(model(canary="v2", weights=[("v1", 70), ("v2", 30)]), [version()])
    kube.servers = [(assignment("s0", [("v1", 70), ("v2", 30)]), True)]
    s, _, err = session(kube)
    args = cli.parse_args(["rollback", "rank", "--wait", "--timeout", "3s"])
    assert cli.run_action(s, args) == 2
    assert (
        "timed out after 3s: rollback of rank applied on 0/1 servers; not yet on s0"
        in err.getvalue()
    )


def test_promote_wait_reaches_the_next_step() -> None:
    kube = FakeKube(model(canary="v2"), [version()])
    kube.on_get = iter(
        [version(), version(phase="Promoted", step=2, handledRequest="2026-11-28T12:00:00.000000Z")]
    )
    s, out, _ = session(kube)
    assert cli.run_action(s, cli.parse_args(["promote", "rank", "--wait"])) == 0
    assert kube.status_patches == []  # only rollback touches routing
    assert "promote of rank-v2: done" in out.getvalue()


def test_abort_wait_fails_when_the_rollout_failed() -> None:
    kube = FakeKube(model(canary="v2"), [version()])
    kube.on_get = iter([version(phase="Failed", message="loading failed: disk full")])
    s, _, err = session(kube)
    assert cli.run_action(s, cli.parse_args(["abort", "rank", "--wait"])) == 1
    assert "loading failed: disk full" in err.getvalue()


def test_refusals_write_nothing() -> None:
    kube = FakeKube(model(canary="v2"), [version()])
    s, _, _ = session(kube)
    with pytest.raises(RefusedError, match="waits for promote"):
        cli.run_action(s, cli.parse_args(["resume", "rank"]))
    with pytest.raises(RefusedError, match='model "chat" not found in namespace "prod"'):
        cli.run_action(s, cli.parse_args(["abort", "chat"]))
    assert kube.annotations == [] and kube.status_patches == []


def test_status_of_one_model_and_of_the_namespace() -> None:
    kube = FakeKube(model(canary="v2", weights=[("v1", 70), ("v2", 30)]), [version(weight=30)])
    s, out, _ = session(kube)
    assert cli.run_status(s, cli.parse_args(["status", "rank"])) == 0
    assert "v1 70% / v2 30%" in out.getvalue()
    s, out, _ = session(FakeKube(None, []))
    assert cli.run_status(s, cli.parse_args(["status"])) == 0
    assert out.getvalue() == "No models in namespace prod.\n"


def test_status_watch_redraws_only_on_change_and_stops_at_the_timeout() -> None:
    kube = FakeKube(model(canary="v2", weights=[("v1", 70), ("v2", 30)]), [version(weight=30)])
    s, out, _ = session(kube)
    assert cli.run_status(s, cli.parse_args(["status", "rank", "-w", "--timeout", "3s"])) == 2
    assert out.getvalue().count("Weights:") == 1


class Unfolding(FakeKube):
    """A rollout that moves through phases, one per look."""

    def __init__(self, phases: list[str]) -> None:
        super().__init__(model(canary="v2"), [version(phase=phases[0])])
        self.phases = iter(phases)

    def list_versions(self, namespace: str) -> list[ModelVersion]:
        phase = next(self.phases, None)
        if phase is not None:
            self.versions = {"rank-v2": version(phase=phase)}
        return list(self.versions.values())


@pytest.mark.parametrize(
    ("end", "code", "said"),
    [("Promoted", 0, ""), ("RolledBack", 1, "rolled back"), ("Failed", 1, "failed"),
     ("Aborted", 3, "aborted")],
)  # fmt: skip
def test_status_watch_exits_when_the_rollout_ends_with_a_code_per_outcome(
    end: str, code: int, said: str
) -> None:
    s, out, err = session(Unfolding(["Pending", "Loading", "Progressing", "Paused", end]))
    assert cli.run_status(s, cli.parse_args(["status", "rank", "--watch"])) == code
    assert out.getvalue().count("Phase:") == 5  # every change drawn, then it stopped
    assert said in err.getvalue()


def test_status_as_json_and_yaml_for_scripts() -> None:
    kube = FakeKube(model(canary="v2", weights=[("v1", 70), ("v2", 30)]), [version(weight=30)])
    s, out, _ = session(kube)
    assert cli.run_status(s, cli.parse_args(["status", "rank", "-o", "json"])) == 0
    doc = json.loads(out.getvalue())
    assert doc["stableVersion"] == "v1" and doc["canaryVersion"] == "v2"
    assert doc["weights"] == [{"version": "v1", "weight": 70}, {"version": "v2", "weight": 30}]
    assert doc["rollout"]["name"] == "rank-v2" and doc["rollout"]["phase"] == "Paused"
    assert doc["rollout"]["weight"] == 30
    s, out, _ = session(kube)
    assert cli.run_status(s, cli.parse_args(["status", "-o", "yaml"])) == 0
    docs = yaml.safe_load(out.getvalue())
    assert [d["model"] for d in docs] == ["rank"]


def test_version_of_the_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    from ekko import __version__

    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out == f"kubectl ekko {__version__}\n"
    assert cli.main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_rollback_summary_gives_both_times_and_flags_whole_second_stamps() -> None:
    want = [VersionWeight(version="v1", weight=100)]
    fine = routing_progress("rank", want, [(assignment("s0", [("v1", 100)], 0.25), True)])
    seen = T0 + timedelta(seconds=0.4)
    assert view.rollback_summary("rank", "v1", fine, T0, seen) == (
        "rolled back rank to v1 on 1 servers in 0.250s (request to the last agent's appliedAt);"
        " seen applied on every server 0.400s after the request"
    )
    coarse = routing_progress("rank", want, [(assignment("s0", [("v1", 100)], 1.0), True)])
    assert "(appliedAt has whole seconds only)" in view.rollback_summary(
        "rank", "v1", coarse, T0, seen
    )


def test_a_timed_pause_shows_when_it_goes_on_and_a_pause_request_says_so() -> None:
    until = T0 + timedelta(seconds=30)
    timed = version(pausedUntil=until.isoformat(), message="paused at step 1 for 30s")
    lines = dict(
        line.split(":", 1)
        for line in view.render_model(model(canary="v2"), [timed]).splitlines()
        if ":" in line[:12]
    )
    assert lines["Phase"].strip() == "Paused (until 2026-11-28T12:00:30.000Z)"
    assert view.phase_text(version(pausedByUser=True).status or ModelVersionStatus()) == (
        "Paused (by request)"
    )
    assert view.phase_text(version().status or ModelVersionStatus()) == "Paused"


@pytest.mark.parametrize(
    ("status", "state"),
    [
        # resumed from a person's pause straight into a timed pause step: resumed
        ({"pausedUntil": "2026-11-28T12:00:30Z"}, "reached"),
        # still paused by a person
        ({"pausedUntil": "2026-11-28T12:00:30Z", "pausedByUser": True}, "failed"),
        # a resume of a timed pause is refused (it goes on by itself)
        ({"pausedUntil": "2026-11-28T12:00:30Z", "requestRefused": "timed pause"}, "failed"),
    ],
)
def test_wait_judgement_of_a_resume_around_a_timed_pause(
    status: dict[str, Any], state: str
) -> None:
    before = ModelVersionStatus.model_validate({"phase": "Paused", "currentStep": 1})
    mv = version(phase="Paused", step=1, handledRequest=AT, **status)
    assert view.judge("resume", AT, before, mv).state == state
