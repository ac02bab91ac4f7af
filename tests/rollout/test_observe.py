"""What the rollout machine sees of a ModelVersion's servers (pure, no cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from ekko.api.resources import Model, ModelVersion, ServerAssignment
from ekko.rollout.observe import observe, request_of


def _model(name: str = "rank") -> Model:
    return Model.model_validate(
        {
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {
                "pool": "pool",
                "version": "v1",
                "artifact": {"uri": "file:///a/v1"},
                "shards": {"count": 2, "size": "1Gi"},
            },
            "status": {"stableVersion": "v1", "canaryVersion": "v1"},
        }
    )


def _version(v: str = "v1", model: str = "rank") -> ModelVersion:
    return ModelVersion.model_validate(
        {
            "metadata": {"name": f"{model}-{v}", "namespace": "ns"},
            "spec": {"model": model, "version": v, "artifact": {"uri": f"file:///a/{v}"}},
        }
    )


def _server(failed: list[dict[str, Any]], message: str = "") -> tuple[ServerAssignment, bool]:
    return (
        ServerAssignment.model_validate(
            {
                "metadata": {"name": "s0", "namespace": "ns"},
                "spec": {
                    "pool": "pool",
                    "server": "s0",
                    "shards": [
                        {
                            "model": "rank",
                            "shard": 0,
                            "version": "v1",
                            "uri": "file:///a/v1",
                            "bytes": 1,
                        }
                    ],
                },
                "status": {"failed": failed, "message": message},
            }
        ),
        True,
    )


@pytest.mark.parametrize(
    ("failed", "expected"),
    [
        ([], None),
        # Facts are fields: a v10 failure is not a v1 failure, nor is one of model "ranking",
        # though their names contain "v1" and "rank" (the message once decided this).
        ([{"model": "rank", "shard": 0, "version": "v10", "error": "disk full"}], None),
        ([{"model": "ranking", "shard": 0, "version": "v1", "error": "disk full"}], None),
        (
            [{"model": "rank", "shard": 0, "version": "v1", "error": "digest mismatch"}],
            "s0: shard 0 of v1 failed to load: digest mismatch",
        ),
        (
            [{"model": "rank", "shard": i, "version": "v1", "error": "oom"} for i in range(5)],
            "s0: shard 0 of v1 failed to load: oom (and 4 more)",
        ),
    ],
)
def test_load_failures_are_matched_by_model_and_version_fields(
    failed: list[dict[str, Any]], expected: str | None
) -> None:
    message = "failed to load rank/0@v10: disk full; ranking/0@v1: disk full"
    seen = observe(_version(), _model(), [], [_server(failed, message)])
    assert seen.load_error == expected


def _annotated(**notes: str) -> ModelVersion:
    body = _version("v2").model_dump(by_alias=True, exclude_none=True)
    body["metadata"]["annotations"] = notes
    return ModelVersion.model_validate(body)


@pytest.mark.parametrize(
    ("notes", "problem"),
    [
        ({"ekko.dev/request": "rollbak", "ekko.dev/request-at": "2026-11-29T12:00:00Z"}, "unknown request 'rollbak'"),
        ({"ekko.dev/request": "rollback"}, "has no ekko.dev/request-at stamp"),
        ({"ekko.dev/request": "abort", "ekko.dev/request-at": "2026-11-29T12:00:00Z" + "9" * 200}, "characters long"),
        ({"ekko.dev/request-at": "2026-11-29T12:00:00Z"}, "unknown request ''"),
    ],
)  # fmt: skip
def test_malformed_requests_are_answered_not_ignored(notes: dict[str, str], problem: str) -> None:
    request = request_of(_annotated(**notes))
    assert request is not None and request.problem is not None
    assert problem in request.problem
    assert len(request.at) <= 128  # fits status.handledRequest: the status patch cannot fail


def test_a_naive_stamp_is_no_instant() -> None:
    request = request_of(
        _annotated(**{"ekko.dev/request": "rollback", "ekko.dev/request-at": "2026-11-29T12:00:00"})
    )
    assert request is not None and request.problem is None and request.at_time is None


def test_no_request() -> None:
    assert request_of(_version()) is None


def test_the_stable_version_and_weights_are_the_statuss_else_the_specs() -> None:
    """One definition (Model.stable) for the pool worker, the rollout worker and the plugin."""
    from ekko.api.resources import VersionWeight
    from ekko.planning.state import resident_versions
    from ekko.rollout.observe import current_weights

    doc = _model().model_dump(by_alias=True, mode="json", exclude_none=True)
    promoted = Model.model_validate({**doc, "status": {"stableVersion": "v2"}})
    untouched = Model.model_validate({**doc, "status": None})
    assert promoted.stable() == "v2" and untouched.stable() == "v1"
    assert current_weights(promoted) == (VersionWeight(version="v2", weight=100),)
    assert current_weights(untouched) == (VersionWeight(version="v1", weight=100),)
    assert [r.version for r in resident_versions(promoted, [_version("v2")])] == ["v2"]
    assert observe(_version("v2"), promoted, [], []).stable == "v2"


def test_routing_is_applied_alike_for_the_machine_and_the_plugin() -> None:
    """One judgement (routing_progress) for the rollout machine's Observed and the plugin's
    rollback --wait: a weight of 0 and an absent version route alike, an unready server does not
    count, and the latest appliedAt is the time it took effect."""
    doc = _model().model_dump(by_alias=True, mode="json", exclude_none=True)
    model = Model.model_validate(
        {**doc, "status": {"stableVersion": "v1", "weights": [
            {"version": "v1", "weight": 100}, {"version": "v2", "weight": 0}]}}
    )  # fmt: skip

    def server(name: str, weights: list[dict[str, Any]], at: str, ready: bool = True) -> Any:
        assignment, _ = _server([])
        body = assignment.model_dump(by_alias=True, mode="json", exclude_none=True)
        body["metadata"]["name"] = name
        body["status"]["routing"] = [{"model": "rank", "weights": weights, "appliedAt": at}]
        return ServerAssignment.model_validate(body), ready

    only_v1 = [{"version": "v1", "weight": 100}]
    servers = [
        server("s0", only_v1, "2026-11-30T00:00:01Z"),
        server("s1", [*only_v1, {"version": "v2", "weight": 0}], "2026-11-30T00:00:02Z"),
        server("s2", [{"version": "v2", "weight": 100}], "2026-11-30T00:00:09Z", ready=False),
    ]
    obs = observe(_version("v1"), model, [], servers)
    assert obs.routing_applied
    assert obs.routing_applied_at is not None and obs.routing_applied_at.second == 2
    lagging = [
        *servers[:2],
        server("s3", [{"version": "v2", "weight": 100}], "2026-11-30T00:00:03Z"),
    ]
    assert not observe(_version("v1"), model, [], lagging).routing_applied


# --- observe, one row per branch --------------------------------------------------------------


def _world_model(status: dict[str, Any] | None) -> Model:
    doc = _model().model_dump(by_alias=True, mode="json", exclude_none=True)
    return Model.model_validate({**doc, "status": status})


def _sibling(v: str, phase: str | None, model: str = "rank", name: str = "") -> ModelVersion:
    body = _version(v, model).model_dump(by_alias=True, mode="json", exclude_none=True)
    if name:
        body["metadata"]["name"] = name
    if phase is not None:
        body["status"] = {"phase": phase}
    return ModelVersion.model_validate(body)


def _assigned(
    shards: list[tuple[str, int, bool]],
    loaded: list[tuple[str, int, str]] | None,
    ready: bool = True,
    name: str = "s0",
    failed: list[dict[str, Any]] | None = None,
) -> tuple[ServerAssignment, bool]:
    """A server assigned ``shards`` ((model, shard, drain), at v1) reporting ``loaded``
    ((model, shard, version)); no status at all when ``loaded`` is None."""
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {
            "pool": "pool",
            "server": name,
            "shards": [
                {"model": m, "shard": i, "version": "v1", "uri": "file:///a", "bytes": 1,
                 "drain": drain}
                for m, i, drain in shards
            ],
        },
    }  # fmt: skip
    if loaded is not None:
        body["status"] = {
            "loaded": [{"model": m, "shard": i, "version": v, "bytes": 1} for m, i, v in loaded],
            "failed": failed or [],
        }
    return ServerAssignment.model_validate(body), ready


HOLDING = {"stableVersion": "v1", "canaryVersion": "v2"}


@pytest.mark.parametrize(
    ("status", "siblings", "other"),
    [
        (None, [], None),  # no status: no canary, nobody else
        ({"stableVersion": "v1"}, [], None),  # no canary
        ({"stableVersion": "v1", "canaryVersion": "v3"}, [], None),  # the canary is mine
        (HOLDING, [], "v2"),  # another version's canary, no ModelVersion for it: its version
        (HOLDING, [_sibling("v2", None)], "rank-v2"),  # ... with its ModelVersion: the name
        # Another model's ModelVersion of the same version is not the canary's owner (siblings
        # are the namespace's versions, of every model).
        (HOLDING, [_sibling("v2", "Progressing", "search")], "v2"),
        (HOLDING, [_sibling("v2", None, "search"), _sibling("v2", None)], "rank-v2"),
        # The canary's owner, also in a holding phase, is named once.
        (HOLDING, [_sibling("v2", "Progressing")], "rank-v2"),
        # Siblings hold the rollout in Loading, Progressing and Paused only.
        ({"stableVersion": "v1"}, [_sibling("v4", "Loading")], "rank-v4"),
        ({"stableVersion": "v1"}, [_sibling("v4", "Progressing")], "rank-v4"),
        ({"stableVersion": "v1"}, [_sibling("v4", "Paused")], "rank-v4"),
        ({"stableVersion": "v1"}, [_sibling("v4", "Pending")], None),
        ({"stableVersion": "v1"}, [_sibling("v4", "Promoted")], None),
        ({"stableVersion": "v1"}, [_sibling("v4", "RolledBack")], None),
        ({"stableVersion": "v1"}, [_sibling("v4", None)], None),  # no status yet
        ({"stableVersion": "v1"}, [_sibling("v4", "Progressing", "search")], None),
        # Myself (by name), however my status reads, is not another rollout.
        ({"stableVersion": "v1"}, [_sibling("v3", "Progressing")], None),
        ({"stableVersion": "v1"}, [_sibling("v9", "Progressing", name="rank-v3")], None),
        # Several: the first by name, the same every pass.
        (
            {"stableVersion": "v1"},
            [_sibling("v6", "Progressing"), _sibling("v5", "Paused")],
            "rank-v5",
        ),
        (HOLDING, [_sibling("v0", "Paused", name="a-first")], "a-first"),
    ],
)
def test_another_rollout_holds_the_model(
    status: dict[str, Any] | None, siblings: list[ModelVersion], other: str | None
) -> None:
    seen = observe(_version("v3"), _world_model(status), siblings, [])
    assert seen.other_active == other


@pytest.mark.parametrize(
    ("servers", "loaded"),
    [
        ([], 0),
        ([_assigned([("rank", 0, False), ("rank", 1, False)], [("rank", 0, "v2"), ("rank", 1, "v2")])], 1),
        ([_assigned([("rank", 0, False)], [("rank", 0, "v2")], ready=False)], 0),  # pod not ready
        ([_assigned([("rank", 0, False), ("rank", 1, False)], [("rank", 0, "v2")])], 0),  # one of two
        ([_assigned([("rank", 0, False)], [("rank", 0, "v1")])], 0),  # another version
        ([_assigned([("rank", 0, False)], [("ranking", 0, "v2")])], 0),  # another model's shard
        ([_assigned([("rank", 0, False)], None)], 0),  # no report yet
        # A draining replica moves away: this server need not load it.
        ([_assigned([("rank", 0, False), ("rank", 1, True)], [("rank", 0, "v2")])], 1),
        # Another model's shards are not this rollout's business.
        ([_assigned([("rank", 0, False), ("other", 0, False)], [("rank", 0, "v2")])], 1),
        # More than assigned is still loaded.
        ([_assigned([("rank", 0, False)], [("rank", 0, "v2"), ("rank", 1, "v2")])], 1),
        (
            [
                _assigned([("rank", 0, False)], [("rank", 0, "v2")], name="s0"),
                _assigned([("rank", 1, False)], [("rank", 1, "v1")], name="s1"),
                _assigned([("rank", 1, False)], [("rank", 1, "v2")], name="s2"),
            ],
            2,
        ),
    ],
)  # fmt: skip
def test_servers_loaded_counts_ready_servers_holding_all_their_shards_of_mine(
    servers: list[tuple[ServerAssignment, bool]], loaded: int
) -> None:
    seen = observe(_version("v2"), _world_model(HOLDING), [], servers)
    assert (seen.servers_wanted, seen.servers_loaded) == (len(servers), loaded)


def test_the_first_failing_server_is_reported_and_the_text_is_bounded() -> None:
    def failing(name: str, error: str) -> tuple[ServerAssignment, bool]:
        shard = {"model": "rank", "shard": 1, "version": "v2", "error": error}
        return _assigned([("rank", 1, False)], [], name=name, failed=[shard])

    servers = [
        _assigned([("rank", 0, False)], None, name="s0"),  # no report: no failure either
        failing("s1", "x" * 510),
        failing("s2", "disk full"),
    ]
    seen = observe(_version("v2"), _world_model(HOLDING), [], servers)
    assert seen.load_error is not None and len(seen.load_error) == 500
    assert seen.load_error.startswith("s1: shard 1 of v2 failed to load: xxx")
    only = observe(_version("v2"), _world_model(HOLDING), [], servers[2:])
    assert only.load_error == "s2: shard 1 of v2 failed to load: disk full"


W = [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, ("v1", None, None, ())),  # untouched: the spec's version, nothing else
        ({"stableVersion": "v1"}, ("v1", None, None, ())),
        # Weights are the status's only: the machine tells "none recorded" from "all on stable".
        (
            {"stableVersion": "v2", "previousVersion": "v1", "canaryVersion": "v3", "weights": W},
            ("v2", "v1", "v3", ("v1", "v2")),
        ),
    ],
)
def test_the_models_versions_and_weights(
    status: dict[str, Any] | None, expected: tuple[Any, ...]
) -> None:
    seen = observe(_version("v3"), _world_model(status), [], [])
    assert seen.model_exists
    assert (seen.stable, seen.previous, seen.canary, tuple(w.version for w in seen.weights)) == (
        expected
    )
    assert not seen.routing_applied  # no ready server: nothing applied anything


def test_a_missing_model_is_all_the_machine_learns() -> None:
    from ekko.rollout.machine import Observed

    servers = [_assigned([("rank", 0, False)], [("rank", 0, "v3")])]
    assert observe(_version("v3"), None, [_sibling("v4", "Progressing")], servers) == Observed(
        model_exists=False, stable=None
    )


def test_routing_progress_takes_the_latest_applied_at_and_times_from_the_request() -> None:
    from datetime import UTC, datetime

    from ekko.api.resources import VersionWeight
    from ekko.rollout.observe import routing_progress

    def server(name: str, at: str | None) -> tuple[ServerAssignment, bool]:
        assignment, _ = _assigned([("rank", 0, False)], [], name=name)
        body = assignment.model_dump(by_alias=True, mode="json", exclude_none=True)
        routing: dict[str, Any] = {"model": "rank", "weights": [{"version": "v1", "weight": 100}]}
        if at is not None:
            routing["appliedAt"] = at
        body["status"]["routing"] = [routing]
        return ServerAssignment.model_validate(body), True

    want = [VersionWeight(version="v1", weight=100)]
    requested = datetime(2026, 11, 30, 0, 0, 5, tzinfo=UTC)
    none_yet = routing_progress("rank", want, [server("s0", None)])
    assert none_yet.done and none_yet.last_applied_at is None
    assert none_yet.seconds_since(requested) is None
    progress = routing_progress(
        "rank",
        want,
        [
            server("s0", "2026-11-30T00:00:09Z"),
            server("s1", "2026-11-30T00:00:07Z"),  # earlier, listed later: not the latest
            server("s2", None),
        ],
    )
    assert progress.done and progress.last_applied_at == datetime(2026, 11, 30, 0, 0, 9, tzinfo=UTC)
    assert progress.seconds_since(requested) == 4.0
    # Applied before the request (a clock skew): never a negative time.
    assert progress.seconds_since(datetime(2026, 11, 30, 0, 1, tzinfo=UTC)) == 0.0
    assert not routing_progress("rank", want, []).done  # no ready server: nothing is applied
