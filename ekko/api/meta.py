"""The base of every api type: camelCase on the wire, strict fields, CEL twins, conditions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from ekko.api.schema import CelRule, ListSchema, PreserveUnknown

GROUP: Final = "ekko.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "ekko.dev/v1alpha1"

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""A DNS-1123 label: what Kubernetes accepts as the name of most objects."""

Name = Annotated[str, Field(min_length=1, max_length=63, pattern=NAME_PATTERN)]


class ApiModel(BaseModel):
    """Base for the types of Ekko's resources.

    Unknown fields are errors (the API server prunes them, so a body from the cluster never has
    any; a manifest checked offline should fail the way ``kubectl apply`` does). Subclasses list
    their cross-field rules in ``__cel__``; each runs here as its Python twin.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=False,
    )

    __cel__: ClassVar[tuple[CelRule, ...]] = ()

    def evolve(self, **changes: Any) -> Self:
        """A copy with ``changes`` (by field name), validated like a new object: an unknown field
        or a value of the wrong type is an error, where ``model_copy(update=...)`` takes anything."""
        return type(self).model_validate({**self.model_dump(), **changes})

    @model_validator(mode="after")
    def _check_cel_twins(self) -> Self:
        # Like the API server, report every broken rule, not just the first.
        broken = [rule.message for rule in type(self).__cel__ if not rule.check(self)]
        if broken:
            raise ValueError("; ".join(broken))
        return self

    def to_wire(self) -> dict[str, Any]:
        """The object as Kubernetes stores it: camelCase keys, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Condition(ApiModel):
    """A Kubernetes-style condition: the latest observation of one aspect of the object."""

    type: str = Field(
        max_length=316, description="Type of the condition, such as Ready, Progressing or Degraded."
    )
    status: Literal["True", "False", "Unknown"] = Field(
        description="Whether the condition holds: True, False or Unknown."
    )
    reason: str = Field(
        default="",
        max_length=1024,
        description="One CamelCase word giving the reason for the last transition.",
    )
    message: str = Field(
        default="",
        max_length=32768,
        description="A human-readable sentence about the transition.",
    )
    last_transition_time: datetime | None = Field(
        default=None, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The metadata.generation that the condition was computed from.",
    )


Conditions = Annotated[
    list[Condition],
    ListSchema("map", ("type",)),
    Field(max_length=16, description="The object's conditions (Ready, Progressing, Degraded …)."),
]


class ObjectMeta(BaseModel):
    """The parts of Kubernetes object metadata that Ekko reads; everything else is kept as is."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str = ""
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None


class Resource(BaseModel):
    """A whole custom resource: apiVersion, kind, metadata, spec and status."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    api_version: Literal["ekko.dev/v1alpha1"] = API_VERSION
    kind: str
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    def to_wire(self) -> dict[str, Any]:
        """The object as Kubernetes stores it: camelCase keys, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


EmbeddedObject = Annotated[dict[str, Any], PreserveUnknown()]
"""A piece of a Kubernetes object kept verbatim (a toleration, an affinity term …)."""


def set_condition(conditions: list[Condition], new: Condition, now: datetime) -> list[Condition]:
    """Conditions with ``new`` set; the transition time moves only when the status changes."""
    out = [c for c in conditions if c.type != new.type]
    old = next((c for c in conditions if c.type == new.type), None)
    since = old.last_transition_time if old is not None and old.status == new.status else now
    out.append(new.model_copy(update={"last_transition_time": since}))
    return sorted(out, key=lambda c: c.type)
