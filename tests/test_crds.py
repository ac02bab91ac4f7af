"""The committed CRDs are what the generator writes, and Kubernetes can accept them.

Kubernetes only takes structural schemas: every node typed, no $ref, no anyOf except the
int-or-string form, no const, no exclusive bounds, no additionalProperties beside properties.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ekko.api import crdgen
from ekko.api.units import DURATION_PATTERN

CRD_DIR = Path(__file__).resolve().parent.parent / "crds"
GENERATED = crdgen.all_crds()


def test_committed_crds_match_the_generator() -> None:
    committed = {p.name for p in CRD_DIR.glob("*.yaml")}
    everything = crdgen.every_crd()
    assert committed == set(everything), "run `make crds`"
    for name, crd in everything.items():
        assert (CRD_DIR / name).read_text() == crdgen.render(crd), (
            f"{name} drifted: run `make crds`"
        )


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_schema_is_structural(name: str) -> None:
    for path, node in _nodes(_schema(GENERATED[name])):
        assert "$ref" not in node, path
        assert "const" not in node, path
        assert "exclusiveMinimum" not in node and "exclusiveMaximum" not in node, path
        assert not ("properties" in node and "additionalProperties" in node), path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, path
            assert [a["type"] for a in node["anyOf"]] == ["integer", "string"], path
            assert "type" not in node, path
        else:
            assert node.get("type") in {
                "object",
                "array",
                "string",
                "integer",
                "number",
                "boolean",
            }, path


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_every_field_is_described_for_kubectl_explain(name: str) -> None:
    for path, node in _nodes(_schema(GENERATED[name])):
        if path in ("", ".metadata"):
            continue
        if path.endswith(("[]", "{}")) and node.get("type") != "object":
            continue  # a scalar item is explained by its list's description
        assert node.get("description"), f"{name}: {path} has no description"


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_crd_is_small_enough_for_plain_kubectl_apply(name: str) -> None:
    # kubectl apply keeps the whole object in an annotation limited to 256 KiB.
    assert len(crdgen.render(GENERATED[name]).encode()) < 64 * 1024


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_crd_has_status_columns_names_and_category(name: str) -> None:
    spec = GENERATED[name]["spec"]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert spec["names"]["categories"] == ["ekko"]
    assert spec["names"]["shortNames"]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[-1] == "Age"
    assert len(columns) >= 4


def test_lists_evaluated_by_cel_are_bounded() -> None:
    """CEL cost estimation rejects rules over unbounded lists; every array has maxItems."""
    for name, crd in GENERATED.items():
        for path, node in _nodes(_schema(crd)):
            if path in (".apiVersion", ".kind"):
                continue
            if node.get("type") == "array":
                assert "maxItems" in node, f"{name}: {path}"
            if node.get("type") == "string" and "enum" not in node and "format" not in node:
                assert "maxLength" in node, f"{name}: {path}"


def test_cel_rules_come_with_messages() -> None:
    rules = [
        rule
        for crd in GENERATED.values()
        for _, node in _nodes(_schema(crd))
        for rule in node.get("x-kubernetes-validations", [])
    ]
    assert len(rules) >= 8
    assert all(r["rule"] and (r.get("message") or r.get("messageExpression")) for r in rules)


def _spec(crd: dict[str, Any]) -> dict[str, Any]:
    return _schema(crd)["properties"]["spec"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_every_number_a_user_writes_is_bounded(name: str) -> None:
    """Issue 15 class 1: a value the schema admits is one the planner and the rollout can use.
    Integers and floats carry minimum and maximum; quantities (int-or-string: the pattern only
    covers the string branch) and durations carry a range rule on their own value."""
    for path, node in _nodes(_spec(GENERATED[name]), "spec"):
        rules = [r for r in node.get("x-kubernetes-validations", []) if "messageExpression" in r]
        if node.get("type") in ("integer", "number"):
            assert "minimum" in node and "maximum" in node, f"{name}: {path}"
        elif node.get("x-kubernetes-int-or-string"):
            assert rules and "isQuantity(string(self))" in rules[0]["rule"], f"{name}: {path}"
        elif node.get("pattern") == DURATION_PATTERN:
            assert rules and "duration(self) >=" in rules[0]["rule"], f"{name}: {path}"


def test_range_rules_name_the_value_and_the_bounds() -> None:
    rules = [
        rule
        for crd in GENERATED.values()
        for _, node in _nodes(_schema(crd))
        for rule in node.get("x-kubernetes-validations", [])
        if "messageExpression" in rule
    ]
    assert len(rules) >= 12
    for rule in rules:
        assert " from " in rule["messageExpression"] and ", got ' + " in rule["messageExpression"]


def test_generated_files_load_as_single_documents() -> None:
    for path in CRD_DIR.glob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert len(docs) == 1
        assert docs[0]["kind"] == "CustomResourceDefinition"


def test_the_api_reference_is_current() -> None:
    from ekko.api import docgen

    assert (CRD_DIR.parent / "docs" / "api.md").read_text() == docgen.render(), "run `make crds`"


def test_crds_help_prints_usage_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ekko.api.crdgen import main

    monkeypatch.chdir(tmp_path)
    assert main(["--help"]) == 0
    assert "usage: ekko crds" in capsys.readouterr().out
    assert main(["--bogus"]) == 2
    assert list(tmp_path.iterdir()) == []  # no directory named --help or --bogus
