"""Generate the CustomResourceDefinitions in ``crds/`` from the api types.

Pydantic's own JSON schema uses ``$ref``, ``anyOf`` with null and ``const``, which Kubernetes
refuses in a structural schema, so the generator walks the types itself and emits only what the
API server accepts: every node typed, no references, no exclusive bounds, int-or-string written
the Kubernetes way, CEL rules as ``x-kubernetes-validations``. Run ``make crds`` (``python -m
ekko.api.crdgen crds``) after changing a type; a unit test fails when the files drift.
"""

from __future__ import annotations

import copy
import sys
import types
import typing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ekko.api.meta import GROUP, VERSION, ApiModel, Resource
from ekko.api.resources import (
    Model,
    ModelVersion,
    ServerAssignment,
    ServerPool,
    UpdateStream,
)
from ekko.api.schema import FieldRule, ListSchema, PreserveUnknown, SchemaOverride


class SchemaError(TypeError):
    """A type the generator cannot express as a structural schema."""


@dataclass(frozen=True)
class CrdInfo:
    """Names and printer columns of one CRD: presentation, not part of the types."""

    resource: type[Resource]
    plural: str
    short_names: tuple[str, ...]
    columns: tuple[dict[str, Any], ...]


def _col(
    name: str, path: str, kind: str = "string", priority: int = 0, desc: str = ""
) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": kind, "jsonPath": path}
    if priority:
        column["priority"] = priority
    if desc:
        column["description"] = desc
    return column


_AGE = _col("Age", ".metadata.creationTimestamp", "date")

CRDS: tuple[CrdInfo, ...] = (
    CrdInfo(
        ServerPool,
        "serverpools",
        ("esp", "pool"),
        (
            _col("Wanted", ".status.serversWanted", "integer", desc="Servers the plan needs"),
            _col("Ready", ".status.serversReady", "integer", desc="Servers ready"),
            _col(
                "Updated",
                ".status.updatedServers",
                "integer",
                desc="Servers made from the current template",
            ),
            _col("Plan", ".status.plan.status", desc="Status of the last plan"),
            _col("Bound", ".status.plan.lowerBound", "integer", desc="Lower bound on servers"),
            _col("Gap%", ".status.plan.gapPercent", "number", 1, "Percent above the bound"),
            _AGE,
        ),
    ),
    CrdInfo(
        Model,
        "models",
        ("em",),
        (
            _col("Pool", ".spec.pool"),
            _col("Stable", ".status.stableVersion", desc="Version serving by default"),
            _col("Canary", ".status.canaryVersion", desc="Version under rollout"),
            _col("Weight", ".status.canaryWeight", "integer", desc="Percent on the canary"),
            _col("Ready", ".status.ready", desc="Ready/wanted shard replicas"),
            _AGE,
        ),
    ),
    CrdInfo(
        ModelVersion,
        "modelversions",
        ("emv", "mv"),
        (
            _col("Model", ".spec.model"),
            _col("Version", ".spec.version"),
            _col("Phase", ".status.phase"),
            _col("Step", ".status.currentStep", "integer"),
            _col("Weight", ".status.weight", "integer", desc="Percent of traffic"),
            _col("Rollback-s", ".status.rollbackSeconds", "number", 1, "Measured rollback time"),
            _AGE,
        ),
    ),
    CrdInfo(
        ServerAssignment,
        "serverassignments",
        ("esa",),
        (
            _col("Pool", ".spec.pool"),
            _col("Zone", ".spec.zone"),
            _col("Loaded", ".status.shardsLoaded", "integer", desc="Shard replicas loaded"),
            _col("Ready", '.status.conditions[?(@.type=="Ready")].status'),
            _AGE,
        ),
    ),
    CrdInfo(
        UpdateStream,
        "updatestreams",
        ("eus",),
        (
            _col("Model", ".spec.model"),
            _col("State", ".status.state"),
            _col("Lag-P99", ".status.freshness.p99Seconds", "number", desc="Seconds, all servers"),
            _col("WAN/s", ".status.traffic.wanBytesPerSecond", "integer", desc="WAN bytes/s"),
            _col("Epoch", ".status.epoch", "integer"),
            _AGE,
        ),
    ),
)


def schema_of_model(cls: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of a pydantic model (an object with typed properties)."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, field in cls.model_fields.items():
        key = field.alias or name
        if not field.description:
            raise SchemaError(f"{cls.__name__}.{name} has no description")
        prop = schema_of(field.annotation, field.metadata)
        prop = {k: v for k, v in prop.items() if k != "description"} | {
            "description": field.description
        }
        default = field.default
        if default is not PydanticUndefined and isinstance(default, bool | int | float | str):
            prop["default"] = default
        properties[key] = prop
        if field.is_required():
            required.append(key)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if cls.__doc__:
        # Used where no field describes the object, as for the items of a list.
        schema["description"] = cls.__doc__.strip().splitlines()[0]
    if required:
        schema["required"] = required
    rules = getattr(cls, "__cel__", ()) if issubclass(cls, ApiModel) else ()
    if rules:
        schema["x-kubernetes-validations"] = [
            {"rule": r.rule, "message": r.message}
            | ({"fieldPath": r.field_path} if r.field_path else {})
            | ({"reason": r.reason} if r.reason else {})
            for r in rules
        ]
    return schema


def schema_of(annotation: Any, metadata: list[Any] | tuple[Any, ...] = ()) -> dict[str, Any]:
    """The structural schema of one annotated type, with the CEL rules on its own value."""
    meta = list(metadata)
    tp = annotation
    while get_origin(tp) is typing.Annotated:
        base, *extra = get_args(tp)
        meta.extend(_flatten_meta(extra))
        tp = base
    schema = _schema_of(tp, meta)
    for rule in (item.cel() for item in meta if isinstance(item, FieldRule)):
        rules = schema.setdefault("x-kubernetes-validations", [])
        if rule not in rules:  # an optional field's rule is met once per union arm
            rules.append(rule)
    return schema


def _schema_of(tp: Any, meta: list[Any]) -> dict[str, Any]:
    for item in meta:
        if isinstance(item, SchemaOverride):
            return copy.deepcopy(item.schema)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        arms = [a for a in get_args(tp) if a is not type(None)]
        if len(arms) != 1:
            raise SchemaError(f"union {tp} needs a SchemaOverride")
        return schema_of(arms[0], meta)
    if origin is Literal:
        values = list(get_args(tp))
        if not all(isinstance(v, str) for v in values):
            raise SchemaError(f"only string literals are supported: {tp}")
        return {"type": "string", "enum": values}
    if origin is list:
        (item_type,) = get_args(tp)
        schema: dict[str, Any] = {"type": "array", "items": schema_of(item_type)}
        _constrain(schema, meta, {"max_length": "maxItems", "min_length": "minItems"})
        for item in meta:
            if isinstance(item, ListSchema) and item.list_type:
                schema["x-kubernetes-list-type"] = item.list_type
                if item.map_keys:
                    schema["x-kubernetes-list-map-keys"] = list(item.map_keys)
        return schema
    if origin is dict:
        key_type, value_type = get_args(tp)
        if key_type is not str:
            raise SchemaError(f"map keys must be strings: {tp}")
        if any(isinstance(m, PreserveUnknown) for m in meta) or value_type is Any:
            return {
                "type": "object",
                "description": "A Kubernetes object fragment, kept as written.",
                "x-kubernetes-preserve-unknown-fields": True,
            }
        schema = {"type": "object", "additionalProperties": schema_of(value_type)}
        _constrain(schema, meta, {"max_length": "maxProperties"})
        return schema
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return schema_of_model(tp)
    return _scalar(tp, meta)


def _flatten_meta(extra: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in extra:
        if isinstance(item, FieldInfo):
            out.extend(item.metadata)
        else:
            out.append(item)
    return out


def _scalar(tp: Any, meta: list[Any]) -> dict[str, Any]:
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        schema: dict[str, Any] = {"type": "integer"}
        _constrain(schema, meta, {"ge": "minimum", "le": "maximum"})
        return schema
    if tp is float:
        schema = {"type": "number"}
        _constrain(schema, meta, {"ge": "minimum", "le": "maximum"})
        return schema
    if tp is str:
        schema = {"type": "string"}
        _constrain(
            schema,
            meta,
            {"max_length": "maxLength", "min_length": "minLength", "pattern": "pattern"},
        )
        return schema
    if tp is datetime:
        return {"type": "string", "format": "date-time"}
    raise SchemaError(f"no structural schema for {tp!r}")


def _constrain(schema: dict[str, Any], meta: list[Any], names: dict[str, str]) -> None:
    for item in meta:
        for attr in ("gt", "lt"):
            if getattr(item, attr, None) is not None:
                raise SchemaError("exclusive bounds are not structural; use ge/le")
        for attr, key in names.items():
            value = getattr(item, attr, None)
            if value is not None:
                schema[key] = value


def crd_for(info: CrdInfo) -> dict[str, Any]:
    """The CustomResourceDefinition of one resource type."""
    resource = info.resource
    kind = resource.model_fields["kind"].default
    fields = resource.model_fields
    spec_schema = schema_of(fields["spec"].annotation, fields["spec"].metadata)
    spec_schema["description"] = fields["spec"].description
    status_schema = schema_of(fields["status"].annotation, fields["status"].metadata)
    status_schema["description"] = fields["status"].description
    root = {
        "type": "object",
        "description": (resource.__doc__ or kind).strip(),
        "properties": {
            "apiVersion": {"type": "string", "description": "API version: ekko.dev/v1alpha1."},
            "kind": {"type": "string", "description": f"Kind: {kind}."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "required": ["spec"],
    }
    return _crd(
        f"{info.plural}.{GROUP}",
        {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": info.plural,
                "singular": kind.lower(),
                "shortNames": list(info.short_names),
                "categories": ["ekko"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(info.columns),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    )


def _crd(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A CustomResourceDefinition with the labels and annotations every generated one carries."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/part-of": "ekko"},
            "annotations": {"ekko.dev/generated-by": "ekko.api.crdgen; do not edit"},
        },
        "spec": spec,
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """Every CRD of Ekko's own resources by its file name (``ekko.dev_serverpools.yaml`` …)."""
    return {f"{GROUP}_{info.plural}.yaml": crd_for(info) for info in CRDS}


def peering_crd(scope: str) -> dict[str, Any]:
    """kopf's peering resource: operators with the same peering name pause all but one.

    kopf keeps one object (``ekko``) per watched namespace, or one cluster-wide, and writes each
    running operator's identity, priority and last keep-alive into its status.
    """
    kind = "ClusterKopfPeering" if scope == "Cluster" else "KopfPeering"
    plural = kind.lower() + "s"
    return _crd(
        f"{plural}.kopf.dev",
        {
            "group": "kopf.dev",
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "Operators sharing this peering: one acts, the others pause.",
                            "properties": {
                                "status": {
                                    "type": "object",
                                    "description": "Peers by identity: priority and last keep-alive.",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    )


def every_crd() -> dict[str, dict[str, Any]]:
    """Everything ``crds/`` holds: Ekko's resources and kopf's peering resources."""
    return all_crds() | {
        "kopf.dev_clusterkopfpeerings.yaml": peering_crd("Cluster"),
        "kopf.dev_kopfpeerings.yaml": peering_crd("Namespaced"),
    }


def render(crd: dict[str, Any]) -> str:
    """The YAML text of a CRD as committed in ``crds/``."""
    header = "# Generated by `make crds` (python -m ekko.api.crdgen) from ekko/api. Do not edit.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=100)


def write(directory: Path) -> list[Path]:
    """Write every CRD into ``directory``; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, crd in every_crd().items():
        path = directory / name
        path.write_text(render(crd))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m ekko.api.crdgen DIR [DIR …]``: write the CRDs into each directory."""
    targets = (argv if argv is not None else sys.argv[1:]) or ["crds"]
    if any(t in ("-h", "--help") for t in targets):
        print(
            "usage: ekko crds [DIR ...]\n\nWrite Ekko's CustomResourceDefinitions (and kopf's "
            "peering CRDs) into each DIR (default: crds)."
        )
        return 0
    options = [t for t in targets if t.startswith("-")]
    if options:
        print(
            f"ekko crds: unknown option {options[0]}; usage: ekko crds [DIR ...]", file=sys.stderr
        )
        return 2
    for target in targets:
        for path in write(Path(target)):
            print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
