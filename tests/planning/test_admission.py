"""Cross-object admission checks: unknown pool, shard larger than any server, unknown model."""

from __future__ import annotations

from typing import Any

from ekko.api.resources import ModelVersion, ServerPool, UpdateStream
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
        errors and "big/0 needs" in errors[0] and "80 GiB" in errors[0] and "hold 64" in errors[0]
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


def _embedding_pool() -> ServerPool:
    doc = POOL.model_dump(by_alias=True, mode="json", exclude_none=True)
    doc["spec"]["template"]["engine"] = "embedding"
    return ServerPool.model_validate(doc)


def _tables_stream(tables: list[dict[str, Any]], key_mapping: str = "Replicated") -> UpdateStream:
    doc = _stream("s", "ranker").model_dump(by_alias=True, mode="json", exclude_none=True)
    doc["spec"]["tables"] = tables
    doc["spec"]["keyMapping"] = key_mapping
    return UpdateStream.model_validate(doc)


def test_an_embedding_pools_stream_must_carry_user_and_item_tables_of_one_width() -> None:
    pool = _embedding_pool()
    good = _tables_stream(
        [
            {"name": "ranker.user", "dim": 9},
            {"name": "ranker.item", "dim": 9},
            {"name": "ranker.dense", "kind": "Dense", "dim": 4},
        ]
    )
    assert check_stream(good, model("ranker"), [], pool) == []
    # The same stream on a pool whose engine does not read rows: any tables go.
    assert check_stream(_tables_stream([{"name": "x", "dim": 1}]), model("ranker"), [], POOL) == []

    (missing,) = check_stream(
        _tables_stream([{"name": "ranker.user", "dim": 9}]), model("ranker"), [], pool
    )
    assert missing.startswith("spec.tables: Required value:") and "'item' table" in missing
    assert "ranker.item" in missing  # the fix, spelled out

    (widths,) = check_stream(
        _tables_stream([{"name": "u.user", "dim": 9}, {"name": "u.item", "dim": 17}]),
        model("ranker"),
        [],
        pool,
    )
    assert "u.user has dim 9 and u.item has dim 17" in widths

    errors = check_stream(
        _tables_stream(
            [{"name": "user", "dim": 1}, {"name": "item", "kind": "Dense", "dim": 1}], "Modulo"
        ),
        model("ranker"),
        [],
        pool,
    )
    assert [e.split(":")[0] for e in errors] == [
        "spec.keyMapping",
        "spec.tables[user].dim",
        "spec.tables[item].kind",
        "spec.tables[item].dim",
    ], errors


def test_only_the_operator_writes_assignment_specs() -> None:
    from ekko.planning.admission import check_assignment_write

    op = "system:serviceaccount:ekko-system:ekko-operator"
    spec = {"pool": "p", "shards": [{"model": "m", "shard": 0}]}
    assert check_assignment_write("UPDATE", spec, {**spec, "shards": []}, op, op) == []
    assert check_assignment_write("CREATE", None, spec, op, op) == []
    # Someone else: metadata-only updates pass, spec changes and creations do not.
    assert check_assignment_write("UPDATE", spec, dict(spec), "alice", op) == []
    (edit,) = check_assignment_write("UPDATE", spec, {**spec, "shards": []}, "alice", op)
    assert edit.startswith('user "alice" may not change a ServerAssignment\'s spec')
    assert op in edit and "change those instead" in edit
    (create,) = check_assignment_write("CREATE", None, spec, "alice", op)
    assert "may not create ServerAssignments" in create
    # The operator could not learn its own name: nothing is refused.
    assert check_assignment_write("UPDATE", spec, {}, "alice", None) == []
