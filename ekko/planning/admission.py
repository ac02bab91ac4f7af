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
from ekko.updates.scoring import ITEM, USER

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
    stream: UpdateStream,
    model: Model | None,
    others: list[UpdateStream],
    pool: ServerPool | None = None,
) -> list[str]:
    """Why this UpdateStream cannot be accepted (empty: fine): its model must exist and have no
    other stream (two streams would wire the same servers twice and fight over their cuts), and
    its tables must be ones the model's servers can use (see :func:`check_tables`; ``pool`` is
    the model's pool, when it could be read)."""
    namespace = stream.metadata.namespace or "default"
    errors = []
    if pool is not None:
        errors.extend(check_tables(stream, pool))
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


def check_tables(stream: UpdateStream, pool: ServerPool) -> list[str]:
    """Whether the stream's tables match what the pool's engine reads.

    The ``embedding`` engine scores a pair as the dot product of a ``user`` and an ``item`` row
    (each ``dim`` floats: the embedding and a bias), so both tables must be there (a table's role
    is its name or the last dot-separated part of it), be Embedding tables of one width, and
    every replica must hold every row (``keyMapping: Replicated``). Other engines do not read
    the rows, so any tables go.
    """
    if pool.spec.template.engine != "embedding":
        return []
    spec = stream.spec
    where = f'pool "{pool.metadata.name}" runs the embedding engine'
    errors = []
    if spec.key_mapping != "Replicated":
        errors.append(
            f"spec.keyMapping: Unsupported value: {spec.key_mapping!r}: {where}, which needs every "
            "row on every replica; use Replicated"
        )
    by_role = {t.name.rsplit(".", 1)[-1]: t for t in spec.tables}
    missing = [role for role in (USER, ITEM) if role not in by_role]
    if missing:
        errors.append(
            f"spec.tables: Required value: {where}, which scores with a "
            + " and an ".join(repr(r) for r in missing)
            + " table (a table's role is its name or the part after its last dot, e.g. "
            f"ranker.{missing[0]})"
        )
    for role in (USER, ITEM):
        table = by_role.get(role)
        if table is not None and table.kind != "Embedding":
            errors.append(
                f"spec.tables[{table.name}].kind: Unsupported value: {table.kind!r}: the "
                f"{role} table of the embedding engine holds rows keyed by id; use Embedding"
            )
        if table is not None and table.dim < 2:
            errors.append(
                f"spec.tables[{table.name}].dim: Invalid value: {table.dim}: the embedding "
                "engine's rows are the embedding followed by a bias; use at least 2"
            )
    user, item = by_role.get(USER), by_role.get(ITEM)
    if user is not None and item is not None and user.dim != item.dim:
        errors.append(
            f"spec.tables: Invalid value: {user.name} has dim {user.dim} and {item.name} has dim "
            f"{item.dim}: the embedding engine scores their dot product, so give both one dim"
        )
    return errors


def check_assignment_write(
    operation: str,
    old_spec: object,
    new_spec: object,
    user: str,
    operator_user: str | None,
) -> list[str]:
    """Only the operator writes a ServerAssignment's spec: what a server must load is derived
    from the pools and models, and a hand edit (say ``shards: []``) would make an agent unload
    what it serves before the operator puts it back. Labels, annotations and status are anyone's
    with the rights; without a known operator user nothing is refused."""
    if operator_user is None or user == operator_user:
        return []
    if operation == "UPDATE" and old_spec == new_spec:
        return []
    verb = (
        "create ServerAssignments" if operation == "CREATE" else "change a ServerAssignment's spec"
    )
    return [
        f'user "{user}" may not {verb}: the Ekko operator ("{operator_user}") writes them from '
        "the ServerPools and Models; change those instead (labels and annotations may be edited)"
    ]
