"""Admission checks the CRD schema cannot make, because they look at other objects.

The schema and CEL rules are the first line; these run in the operator's validating webhook
(second line) and read the pool or model a new object refers to. Pure: the objects come in.
Every refusal is a sentence for the user: the field as they wrote it, the value, what would be
accepted; never a pydantic dump or a bare Python error.
"""

from __future__ import annotations

from pydantic import ValidationError

from ekko.api.resources import Model, ModelVersion, ServerPool, UpdateStream
from ekko.api.validate import field_errors
from ekko.planning.problem import model_spec, pool_of
from ekko.solver import Problem, explain

# The user's fields behind the solver's, for the (unexpected) case that a value the api types
# admit is one the solver's types refuse: the message must still name what the user wrote.
_POOL_FIELDS = {
    "memory_bytes": "capacity.memory",
    "compute_units": "capacity.compute",
    "headroom": "placement.headroomPercent",
    "max_servers": "maxServers",
    "zones": "zones",
}
_MODEL_FIELDS = {
    "shard_count": "shards.count",
    "shard_bytes": "shards.size",
    "shard_sizes": "shards.items",
    "shard_loads": "shards.items",
    "load": "shards.load",
    "replicas": "replicas",
    "reserve_factor": "keepPreviousResident",
}


def check_model(model: Model, pool: ServerPool | None) -> list[str]:
    """Why this Model cannot be accepted, in words a user can act on (empty: fine)."""
    namespace = model.metadata.namespace or "default"
    if pool is None:
        return [
            f'pool "{model.spec.pool}" does not exist in namespace "{namespace}"; '
            "create the ServerPool first or fix spec.pool"
        ]
    try:
        solver_pool = pool_of(pool)
    except ValidationError as err:
        return [
            f'pool "{pool.metadata.name}" cannot hold models: {e}'
            for e in field_errors(err, at="spec", fields=_POOL_FIELDS)
        ]
    try:
        problem = Problem(pool=solver_pool, models=(model_spec(model),))
        return explain(problem)
    except ValidationError as err:
        return field_errors(err, at="spec", fields=_MODEL_FIELDS)
    except (ValueError, ArithmeticError) as err:
        # The api types' bounds should make this unreachable; say what failed, not how.
        return [
            f'model "{model.metadata.name}" cannot be placed on pool "{pool.metadata.name}": '
            f"its sizes and loads are out of range for the planner ({err})"
        ]


def check_version(version: ModelVersion, model: Model | None) -> list[str]:
    """Why this ModelVersion cannot be accepted (empty: fine)."""
    if model is None:
        namespace = version.metadata.namespace or "default"
        return [
            f'model "{version.spec.model}" does not exist in namespace "{namespace}"; '
            "a ModelVersion must name an existing Model in spec.model"
        ]
    return []


def check_stream(
    stream: UpdateStream, model: Model | None, others: list[UpdateStream]
) -> list[str]:
    """Why this UpdateStream cannot be accepted (empty: fine): its model must exist and have no
    other stream (two streams would wire the same servers twice and fight over their cuts)."""
    namespace = stream.metadata.namespace or "default"
    errors = []
    if model is None:
        errors.append(
            f'model "{stream.spec.model}" does not exist in namespace "{namespace}"; '
            "an UpdateStream must name an existing Model in spec.model"
        )
    taken = sorted(
        o.metadata.name
        for o in others
        if o.spec.model == stream.spec.model and o.metadata.name != stream.metadata.name
    )
    if taken:
        errors.append(
            f'model "{stream.spec.model}" already has an UpdateStream ({", ".join(taken)}); '
            "one stream per model: add the tables to that stream or delete it first"
        )
    return errors
