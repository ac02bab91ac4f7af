"""Which stream the operator wires when the webhook could not refuse a bad one."""

from __future__ import annotations

from typing import Any

from ekko.api.resources import UpdateStream
from ekko.planning.updates import stream_refusal


def stream(name: str, model: str, created: str | None) -> UpdateStream:
    meta: dict[str, Any] = {"name": name, "namespace": "ns"}
    if created:
        meta["creationTimestamp"] = created
    return UpdateStream.model_validate(
        {
            "apiVersion": "ekko.dev/v1alpha1",
            "kind": "UpdateStream",
            "metadata": meta,
            "spec": {
                "model": model,
                "source": {"endpoints": ["http://trainer:9500"]},
                "tables": [{"name": "t", "dim": 4}],
            },
        }
    )


FIRST = stream("b-first", "m", "2026-11-01T00:00:00Z")
SECOND = stream("a-second", "m", "2026-11-02T00:00:00Z")
TWIN = stream("a-twin", "m", "2026-11-01T00:00:00Z")
OTHER = stream("other", "n", "2026-10-01T00:00:00Z")


def test_a_stream_of_a_missing_model_says_so() -> None:
    why = stream_refusal(FIRST, False, [FIRST])
    assert why is not None and why.reason == "ModelNotFound" and why.status == "False"
    assert why.type == "Connected"
    assert why.message.startswith('model "m" does not exist in namespace "ns"')


def test_the_oldest_stream_of_a_model_is_the_one() -> None:
    everyone = [SECOND, OTHER, FIRST]
    assert stream_refusal(FIRST, True, everyone) is None
    assert stream_refusal(OTHER, True, everyone) is None  # another model: no conflict
    why = stream_refusal(SECOND, True, everyone)
    assert why is not None and why.reason == "DuplicateStream"
    assert "already has an UpdateStream (b-first)" in why.message


def test_a_tie_in_age_goes_to_the_first_name_and_the_list_may_miss_the_stream() -> None:
    assert stream_refusal(TWIN, True, [FIRST]) is None  # not listed yet (a stale cache)
    why = stream_refusal(FIRST, True, [TWIN, FIRST])
    assert why is not None and "(a-twin)" in why.message


def test_when_the_one_is_deleted_the_next_takes_over() -> None:
    assert stream_refusal(SECOND, True, [SECOND, OTHER]) is None
