"""Analysis queries: the placeholders a ModelVersion's query may use."""

from __future__ import annotations

from ekko.promql import render


def test_the_canary_and_the_stable_version_are_filled_in() -> None:
    query = 'a{model="{{model}}",version="{{version}}"} / a{model="{{model}}",version="{{stable}}"}'
    assert (
        render(query, "rank", "v3", "v2")
        == 'a{model="rank",version="v3"} / a{model="rank",version="v2"}'
    )
