"""Every malformed manifest in tests/data is rejected offline with the message a user sees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ekko.api.validate import check_manifest

CASES: list[dict[str, Any]] = yaml.safe_load(
    (Path(__file__).parent / "data" / "bad_manifests.yaml").read_text()
)


def test_the_table_is_large_and_names_are_unique() -> None:
    names = [c["name"] for c in CASES]
    assert len(names) >= 25
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_manifest_is_rejected_with_its_message(case: dict[str, Any]) -> None:
    errors = check_manifest(case["manifest"])
    assert errors, f"{case['name']} was accepted"
    assert any(case["expect"] in e for e in errors), errors
