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
