"""The api types: examples parse, units parse, CEL twins agree with the CRD rules they stand for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from ekko.api.resources import Model, ModelVersion, ServerPool, parse_resource
from ekko.api.units import (
    UnitError,
    format_bytes,
    parse_duration,
    parse_quantity,
    quantity_bytes,
)
from ekko.api.validate import check_manifest

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


def test_examples_have_two_pools_four_models_and_a_canary() -> None:
    kinds = [d["kind"] for d in _example_docs()]
    assert kinds.count("ServerPool") == 2
    assert kinds.count("Model") == 4
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
    ],
)
def test_quantities_parse_exactly(text: str | int, value: float) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["-1Gi", "64 GB", "Gi", "1.2.3", "", "64gb", "1Zi"])
def test_bad_quantities_are_refused_with_advice(text: str) -> None:
    with pytest.raises(UnitError, match="quantity"):
        parse_quantity(text)


def test_quantity_bytes_rounds_fractions_up() -> None:
    assert quantity_bytes("1500m") == 2
    assert quantity_bytes("64Gi") == 68719476736


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1.5s", 1.5)],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5 minutes", "30", "-5s", "1d", "s"])
def test_bad_durations_are_refused_with_advice(text: str) -> None:
    with pytest.raises(UnitError, match="ms, s, m or h"):
        parse_duration(text)


def test_format_bytes_reads_like_a_person_writes() -> None:
    assert format_bytes(64 * 2**30) == "64 GiB"
    assert format_bytes(1.5 * 2**40) == "1.5 TiB"
    assert format_bytes(12) == "12 B"


def test_every_broken_cel_rule_is_reported_not_just_the_first() -> None:
    doc = {
        "pool": "p",
        "version": "v1",
        "artifact": {"uri": "file:///m"},
        "shards": {"count": 2, "size": "20Ti", "items": [{"size": "1Gi"}]},
    }
    with pytest.raises(ValidationError) as err:
        Model.model_validate({"kind": "Model", "spec": doc})
    text = str(err.value)
    assert "shard size must be at most 16Ti" in text
    assert "give either count and size, or items, but not both" in text


def test_wire_form_round_trips() -> None:
    doc = next(d for d in _example_docs() if d["kind"] == "ServerPool")
    pool = ServerPool.model_validate(doc)
    again = ServerPool.model_validate(pool.to_wire())
    assert again == pool
    assert pool.to_wire()["spec"]["capacity"]["memory"] == doc["spec"]["capacity"]["memory"]
