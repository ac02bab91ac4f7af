"""Markers that the CRD generator reads from the api types.

The resource types are the single source of truth for the CRDs. A few things pydantic cannot say
in a form Kubernetes accepts (int-or-string quantities, CEL rules, list semantics) are attached to
the types with the small markers below and turned into schema by :mod:`ekko.api.crdgen`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import PydanticCustomError, core_schema


@dataclass(frozen=True, eq=False)  # hashed by identity: the schema dict is not hashable
class SchemaOverride:
    """Use this JSON schema fragment for the annotated field type instead of deriving one."""

    schema: dict[str, Any]


@dataclass(frozen=True)
class ListSchema:
    """Kubernetes list semantics for an annotated list field."""

    list_type: str | None = None  # "atomic", "set" or "map"
    map_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class CelRule:
    """A CEL validation rule (``x-kubernetes-validations``) with its offline twin.

    ``rule`` and ``message`` go into the CRD and are enforced by the API server. ``check`` is the
    same rule written in Python over the validated object; the pydantic models call it so that
    manifests are checked the same way offline (``ekko plan``, unit tests) and so that a unit test
    can hold each twin against the API server's verdict in e2e.
    """

    rule: str
    message: str
    check: Callable[[Any], bool] = field(compare=False)
    field_path: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class PreserveUnknown:
    """Keep arbitrary fields below this object (used for embedded Kubernetes objects)."""

    description_only: bool = field(default=False)


@dataclass(frozen=True, eq=False)  # hashed by identity, like SchemaOverride
class FieldRule:
    """A CEL rule on one field's own value, with its Python twin.

    Put in ``Annotated[...]`` after the field's type. ``rule`` and ``message_expression`` go
    into the CRD as an ``x-kubernetes-validations`` entry on the field itself, so the API server
    names the field in its refusal; ``check`` returns the same message (or ``None`` when the value
    passes) and runs in pydantic after the type's own validation. Bounds on quantities and
    durations are written this way (see :func:`ekko.api.units.quantity_range`).
    """

    rule: str
    message_expression: str
    check: Callable[[Any], str | None] = field(compare=False)

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def validate(value: Any) -> Any:
            problem = self.check(value)
            if problem is not None:
                raise PydanticCustomError("field_rule", "{problem}", {"problem": problem})
            return value

        return core_schema.no_info_after_validator_function(validate, handler(source))

    def cel(self) -> dict[str, str]:
        """The ``x-kubernetes-validations`` entry."""
        return {"rule": self.rule, "messageExpression": self.message_expression}
