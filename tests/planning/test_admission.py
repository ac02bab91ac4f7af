"""Cross-object admission checks: unknown pool, shard larger than any server, unknown model."""

from __future__ import annotations

from ekko.api.resources import ModelVersion, UpdateStream
from ekko.planning.admission import check_model, check_stream, check_version
from tests.planning.test_converge import POOL, model


def test_a_model_of_a_missing_pool_is_refused_with_the_fix() -> None:
    errors = check_model(model("m"), None)
    assert errors == [
        'pool "p" does not exist in namespace "default"; create the ServerPool first or fix spec.pool'
    ]


def test_a_shard_larger_than_any_server_is_refused_with_sizes() -> None:
    big = model("big").model_copy(
        update={
            "spec": model("big").spec.model_copy(
                update={"shards": model("big").spec.shards.model_copy(update={"size": "80Gi"})}
            )
        }
    )
    errors = check_model(big, POOL)
    assert (
        errors and "big/0 needs" in errors[0] and "80.0 GiB" in errors[0] and "hold 64" in errors[0]
    )
    assert check_model(model("m"), POOL) == []


def test_a_version_of_a_missing_model_is_refused() -> None:
    mv = ModelVersion.model_validate(
        {
            "kind": "ModelVersion",
            "metadata": {"name": "x", "namespace": "prod"},
            "spec": {"model": "ghost", "version": "v2", "artifact": {"uri": "file:///g"}},
        }
    )
    assert check_version(mv, None) == [
        'model "ghost" does not exist in namespace "prod"; a ModelVersion must name an existing Model in spec.model'
    ]
    assert check_version(mv, model("ghost")) == []


def _stream(name: str, model_name: str) -> UpdateStream:
    return UpdateStream.model_validate(
        {
            "kind": "UpdateStream",
            "metadata": {"name": name, "namespace": "prod"},
            "spec": {
                "model": model_name,
                "source": {"endpoints": ["http://trainer:9500"]},
                "tables": [{"name": "t.user", "dim": 9}],
            },
        }
    )


def test_a_stream_needs_its_model_and_is_the_only_one_for_it() -> None:
    s = _stream("s", "ranker")
    assert check_stream(s, None, []) == [
        'model "ranker" does not exist in namespace "prod"; an UpdateStream must name an '
        "existing Model in spec.model"
    ]
    assert check_stream(s, model("ranker"), [s, _stream("other", "scorer")]) == []  # itself: ok
    (error,) = check_stream(s, model("ranker"), [_stream("first", "ranker")])
    assert 'model "ranker" already has an UpdateStream (first)' in error
