"""Every malformed manifest in tests/data is rejected offline with the message a user sees, and
every edge-case manifest is accepted; e2e/test_smoke.py requires the API server's verdict to be
the same, case by case. Admission refusals are worded for the user, never as pydantic dumps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ekko.api.resources import Model, ServerPool
from ekko.api.validate import check_manifest
from ekko.planning.admission import check_model

DATA = Path(__file__).parent / "data"
CASES: list[dict[str, Any]] = yaml.safe_load((DATA / "bad_manifests.yaml").read_text())
GOOD: list[dict[str, Any]] = yaml.safe_load((DATA / "good_manifests.yaml").read_text())


def test_the_tables_are_large_and_names_are_unique() -> None:
    names = [c["name"] for c in CASES + GOOD]
    assert len(CASES) >= 60 and len(GOOD) >= 10
    assert len(set(names)) == len(names)
    # Every bad case is refused by both checkers: no case may be left to one of them.
    assert all(c.get("apiserver_expect", "") is not None for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_manifest_is_rejected_with_its_message(case: dict[str, Any]) -> None:
    errors = check_manifest(case["manifest"])
    assert errors, f"{case['name']} was accepted"
    assert any(case["expect"] in e for e in errors), errors


@pytest.mark.parametrize("case", GOOD, ids=[c["name"] for c in GOOD])
def test_edge_manifest_is_accepted(case: dict[str, Any]) -> None:
    assert check_manifest(case["manifest"]) == []


def _good(name: str) -> dict[str, Any]:
    return next(c["manifest"] for c in GOOD if c["name"] == name)


def test_every_refusal_names_the_field_the_value_and_what_is_accepted() -> None:
    for case in CASES:
        for error in check_manifest(case["manifest"]):
            if error.startswith("strict decoding error: "):  # kubectl's wording, names the field
                assert 'unknown field "spec.' in error, error
                continue
            field, _, rest = error.partition(": ")
            assert field.startswith("spec") and " " not in field, error
            assert "validation error for" not in error and "type=" not in error, error
            assert rest, error


def test_admission_names_the_users_field_when_the_planner_refuses_a_value() -> None:
    # Bypass the api types (as an object stored before today's bounds would): the planner's own
    # types refuse the value, and the refusal still reads in the user's terms.
    pool = ServerPool.model_validate(_good("pool-integer-quantities"))
    model = Model.model_validate(_good("model-smallest-values"))
    shards = model.spec.shards.model_construct(count=1, size=0, load=0, items=None)
    broken = model.model_copy(update={"spec": model.spec.model_copy(update={"shards": shards})})
    assert check_model(broken, pool) == ["spec.shards.size: Invalid value: 0: must be more than 0"]

    empty = pool.model_copy(
        update={
            "spec": pool.spec.model_copy(
                update={"capacity": pool.spec.capacity.model_construct(memory=0, compute=1)}
            )
        }
    )
    assert check_model(model, empty) == [
        'pool "edge-pool" cannot hold models: spec.capacity.memory: Invalid value: 0: '
        "must be more than 0"
    ]


def test_admission_turns_arithmetic_trouble_into_a_sentence() -> None:
    pool = ServerPool.model_validate(_good("pool-integer-quantities"))
    model = Model.model_validate(_good("model-smallest-values"))
    shards = model.spec.shards.model_construct(count=1, size=1, load=10**400, items=None)
    broken = model.model_copy(update={"spec": model.spec.model_copy(update={"shards": shards})})
    [message] = check_model(broken, pool)
    assert message.startswith('model "edge-model" cannot be placed on pool "edge-pool": ')
    assert "out of range" in message
