"""Admission checks the CRD schema cannot make, because they look at other objects.

The schema and CEL rules are the first line; these run in the operator's validating webhook
(second line) and read the pool or model a new object refers to. Pure: the objects come in.
"""

from __future__ import annotations

from ekko.api.resources import Model, ModelVersion, ServerPool
from ekko.planning.problem import model_spec, pool_of
from ekko.solver import Problem, explain


def check_model(model: Model, pool: ServerPool | None) -> list[str]:
    """Why this Model cannot be accepted, in words a user can act on (empty: fine)."""
    namespace = model.metadata.namespace or "default"
    if pool is None:
        return [
            f'pool "{model.spec.pool}" does not exist in namespace "{namespace}"; '
            "create the ServerPool first or fix spec.pool"
        ]
    problem = Problem(pool=pool_of(pool), models=(model_spec(model),))
    return explain(problem)


def check_version(version: ModelVersion, model: Model | None) -> list[str]:
    """Why this ModelVersion cannot be accepted (empty: fine)."""
    if model is None:
        namespace = version.metadata.namespace or "default"
        return [
            f'model "{version.spec.model}" does not exist in namespace "{namespace}"; '
            "a ModelVersion must name an existing Model in spec.model"
        ]
    return []
