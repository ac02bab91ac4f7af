"""The api types: examples parse, units parse, CEL twins agree with the CRD rules they stand for."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from ekko.api.resources import (
    Model,
    ModelVersion,
    PlacementPolicy,
    ServerMemory,
    ServerPool,
    ServerPoolSpec,
    ShardLoad,
    parse_resource,
)
from ekko.api.units import (
    UnitError,
    format_bytes,
    parse_duration,
    parse_quantity,
    quantity_bytes,
)
from ekko.api.validate import check_manifest, field_errors

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


def _example_docs() -> list[dict[str, Any]]:
    return [d for path in EXAMPLES for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize(
    "doc", _example_docs(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}"
)
def test_every_example_is_valid_offline(doc: dict[str, Any]) -> None:
    assert check_manifest(doc) == []
    parsed = parse_resource(doc)
    assert parsed.metadata.name == doc["metadata"]["name"]


def test_examples_have_three_pools_five_models_a_canary_and_a_stream() -> None:
    kinds = [d["kind"] for d in _example_docs()]
    assert kinds.count("ServerPool") == 3
    assert kinds.count("Model") == 5
    assert kinds.count("UpdateStream") == 1
    versions = [parse_resource(d) for d in _example_docs() if d["kind"] == "ModelVersion"]
    assert len(versions) == 1
    mv = versions[0]
    assert isinstance(mv, ModelVersion)
    assert mv.spec.strategy is not None
    assert len(mv.spec.strategy.canary.steps) >= 3
    classes = {
        m.spec.slo.slo_class
        for m in (parse_resource(d) for d in _example_docs() if d["kind"] == "Model")
        if isinstance(m, Model)
    }
    assert classes == {"critical", "standard", "batch"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("64Gi", 64 * 2**30),
        ("1.5Ti", 3 * 2**39),
        ("500m", 0.5),
        ("2e3", 2000),
        ("1k", 1000),
        ("10", 10),
        (7, 7),
        (".5Ki", 512),
        ("1E", 10**18),
        ("2E3", 2000),
    ],
)
def test_quantities_parse_exactly(text: str | int, value: float) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["-1Gi", "64 GB", "Gi", "1.2.3", "", "64gb", "1Zi", "64Gi\n"])
def test_bad_quantities_are_refused_with_advice(text: str) -> None:
    with pytest.raises(UnitError, match="quantity"):
        parse_quantity(text)


def test_quantity_bytes_rounds_fractions_up() -> None:
    assert quantity_bytes("1500m") == 2
    assert quantity_bytes("64Gi") == 68719476736


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("1h0m0s", 3600),
        ("999999h", 999999 * 3600),
        ("0.000000001s", 1e-9),
    ],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    # The last four: a unit twice, out of order, seven digits (could overflow Go's int64
    # nanoseconds in a sum), a fraction finer than a nanosecond, and a final newline.
    ["5 minutes", "30", "-5s", "1d", "s", "", "30s30s", "5s1m", "3600000ms", "1.0000001ms", "5s\n"],
)
def test_bad_durations_are_refused_with_advice(text: str) -> None:
    with pytest.raises(UnitError, match="units h, m, s or ms, in that order"):
        parse_duration(text)


def test_format_bytes_reads_like_a_person_writes() -> None:
    assert format_bytes(64 * 2**30) == "64 GiB"
    assert format_bytes(1.5 * 2**40) == "1.5 TiB"
    assert format_bytes(12) == "12 B"


def test_every_broken_cel_rule_is_reported_not_just_the_first() -> None:
    doc = {
        "model": "m",
        "version": "v2",
        "artifact": {"uri": "file:///m"},
        "strategy": {"canary": {"steps": [{"analysis": {"metrics": ["errors"]}}]}},
    }
    with pytest.raises(ValidationError) as err:
        ModelVersion.model_validate({"kind": "ModelVersion", "spec": doc})
    text = str(err.value)
    assert "an analysis step names a metric that spec.analysis does not define" in text
    assert "an analysis step needs at least one metric in spec.analysis" in text


def test_wire_form_round_trips() -> None:
    doc = next(d for d in _example_docs() if d["kind"] == "ServerPool")
    pool = ServerPool.model_validate(doc)
    again = ServerPool.model_validate(pool.to_wire())
    assert again == pool
    assert pool.to_wire()["spec"]["capacity"]["memory"] == doc["spec"]["capacity"]["memory"]


# Bounds: the Python twin of every quantity and duration range, at and beyond its edges. The same
# values are replayed against the API server in tests/data/{bad,good}_manifests.yaml.


def test_quantities_take_the_api_servers_value() -> None:
    # Kubernetes rounds every non-zero quantity up to whole nano-units.
    assert parse_quantity("1e-99") == Fraction(1, 10**9)
    assert parse_quantity("0.0009999999999") == Fraction(1, 1000)
    assert parse_quantity("0e99") == 0


@pytest.mark.parametrize("text", ["1e400", "1e-400", "1e999999999", "0e100"])
def test_exponents_have_at_most_two_digits(text: str) -> None:
    # The API server would compute 10^exponent in full inside a CEL quantity() (a DoS).
    with pytest.raises(UnitError, match="not a Kubernetes quantity"):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("1", True),
        (1, True),
        ("64Gi", True),
        ("1Pi", True),
        ("1.5", True),
        (0, False),
        ("0", False),
        (-64, False),
        ("1m", False),
        ("1e-400", False),
        ("1025Ti", False),
        ("1e400", False),
        ("1e999999999", False),
        (2**70, False),
    ],
)
def test_server_memory_range(value: object, ok: bool) -> None:
    problem = ServerMemory.__metadata__[-1].check(value)  # type: ignore[attr-defined]
    assert (problem is None) == ok, problem
    if not ok:
        assert problem == f"must be a quantity from 1 to 1Pi (for example 64Gi), got {value}"


@pytest.mark.parametrize(
    ("value", "ok"),
    [("0", True), (0, True), ("500m", True), ("1G", True), (-1, False), ("1001M", False)],
)
def test_shard_load_range(value: object, ok: bool) -> None:
    assert (ShardLoad.__metadata__[-1].check(value) is None) == ok  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "ok"),
    [("100ms", True), ("5m", True), ("0s", False), ("99ms", False), ("5m0.001s", False)],
)
def test_solver_time_limit_range(value: str, ok: bool) -> None:
    spec = {"solverTimeLimit": value}
    if ok:
        assert PlacementPolicy.model_validate(spec).solver_time_limit == value
    else:
        with pytest.raises(ValidationError, match=f"from 100ms to 5m, got {value}"):
            PlacementPolicy.model_validate(spec)


# Messages: one formatter (ekko.api.validate.field_errors) for the offline check and the webhook.


def test_field_errors_name_the_users_field_the_value_and_what_is_accepted() -> None:
    doc = {
        "template": {"image": "e"},
        "capacity": {"memory": 0, "compute": "9e99"},
        "maxServers": 0,
        "placement": {"replanDebounce": "10000h", "headroomPercent": "ten"},
        "zones": ["a"] * 40,
    }
    with pytest.raises(ValidationError) as err:
        ServerPoolSpec.model_validate(doc)
    lines = field_errors(err.value, at="spec")
    assert lines == [
        "spec.capacity.memory: Invalid value: 0: must be a quantity from 1 to 1Pi "
        "(for example 64Gi), got 0",
        'spec.capacity.compute: Invalid value: "9e99": must be a quantity from 1m to 1G '
        "(for example 100 or 500m), got 9e99",
        "spec.maxServers: Invalid value: 0: must be at least 1",
        'spec.zones: Invalid value: "array": must have at most 32 items',
        'spec.placement.headroomPercent: Invalid value: "ten": must be a valid integer, '
        "unable to parse string as an integer",
        'spec.placement.replanDebounce: Invalid value: "10000h": must be a duration from 0s '
        "to 1m, got 10000h",
    ]
    text = "\n".join(lines)
    for raw in ("validation error for", "type=", "pydantic", "max_servers", "For further"):
        assert raw not in text


def test_field_errors_rename_the_solvers_fields_to_the_users() -> None:
    from ekko.solver import ModelSpec as SolverModel

    with pytest.raises(ValidationError) as err:
        SolverModel(id="m", shard_count=2, shard_bytes=0)  # type: ignore[arg-type]
    assert field_errors(err.value, at="spec", fields={"shard_bytes": "shards.size"}) == [
        "spec.shards.size: Invalid value: 0: must be more than 0"
    ]


def test_missing_and_unknown_fields_read_like_kubectl() -> None:
    with pytest.raises(ValidationError) as err:
        ServerPoolSpec.model_validate({"template": {"image": "e"}, "maxServers": 2, "replicas": 3})
    assert sorted(field_errors(err.value, at="spec")) == [
        "spec.capacity: Required value",
        'spec.replicas: unknown field "spec.replicas"',
    ]
