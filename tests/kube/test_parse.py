"""Objects from the API server that the api types refuse become InvalidObjectError, worded for
the user, never a pydantic exception that kills the worker reading them."""

from __future__ import annotations

import pytest

from ekko.api.resources import Model
from ekko.kube.client import parse
from ekko.kube.errors import InvalidObjectError


def test_an_unusable_model_is_an_invalid_object_naming_the_field() -> None:
    body = {
        "apiVersion": "ekko.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "bad", "namespace": "ns", "uid": "u1"},
        "spec": {
            "pool": "pool",
            "version": "v1",
            "artifact": {"uri": "file:///a"},
            "shards": {"count": 4, "size": "0"},
        },
    }
    with pytest.raises(InvalidObjectError) as caught:
        parse(Model, body)
    err = caught.value
    assert (err.kind, err.namespace, err.name, err.uid, err.status) == (
        "Model",
        "ns",
        "bad",
        "u1",
        422,
    )
    assert err.problem.startswith("spec.shards.size: Invalid value"), err.problem
    assert "pydantic" not in err.problem and "validation error" not in err.problem
