"""What the rollout machine sees of a ModelVersion's servers (pure, no cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from ekko.api.resources import Model, ModelVersion, ServerAssignment
from ekko.rollout.observe import observe


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
