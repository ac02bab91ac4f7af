"""Check manifests offline the way the API server will: schema first, then the CEL rules.

``ekko plan -f``, the admission webhook and the unit tests use this to reject bad manifests
without a cluster, with the message a user would see from ``kubectl apply``: the schema errors are
worded as the API server words them, and the CEL rules run as their Python twins (see
:class:`ekko.api.schema.CelRule`). The e2e suite replays the same manifests against a real API
server and requires the same verdict, case by case, to keep the two honest.

:func:`field_errors` is the one way Ekko words a pydantic error for a user: the field as the user
wrote it (``spec.shards.size``), the value, and what would be accepted; never pydantic's dump
(``1 validation error for ModelSpec shard_bytes … For further information visit …``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

import jsonschema
from pydantic import ValidationError

from ekko.api.crdgen import CRDS, crd_for
from ekko.api.meta import API_VERSION
from ekko.api.resources import parse_resource


@cache
def _schemas() -> dict[str, dict[str, Any]]:
    return {
        info.resource.model_fields["kind"].default: crd_for(info)["spec"]["versions"][0]["schema"][
            "openAPIV3Schema"
        ]
        for info in CRDS
    }


def check_manifest(doc: Any) -> list[str]:
    """Return the errors the API server would give for this manifest (empty when it is valid)."""
    if not isinstance(doc, dict):
        return [f"a manifest must be a mapping, got {type(doc).__name__}"]
    kind = doc.get("kind")
    schema = _schemas().get(str(kind))
    if schema is None:
        return [f'no matches for kind "{kind}" in version "{API_VERSION}"']
    if doc.get("apiVersion") != API_VERSION:
        return [f'no matches for kind "{kind}" in version "{doc.get("apiVersion")}"']
    unknown = [f'unknown field "{path}"' for path in _unknown_fields(doc, schema, "")]
    if unknown:
        return ["strict decoding error: " + ", ".join(unknown)]
    body = {k: v for k, v in doc.items() if k != "metadata"}
    validator = jsonschema.Draft7Validator(_as_draft7(schema))
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        return [_schema_message(e) for e in errors]
    try:
        parse_resource(doc)
    except ValidationError as err:
        return field_errors(err)
    return []


def _unknown_fields(value: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in value.items():
            child = f"{path}.{key}" if path else key
            if key not in schema["properties"]:
                if path or key not in ("metadata",):
                    yield child
                continue
            yield from _unknown_fields(sub, schema["properties"][key], child)
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, sub in value.items():
            yield from _unknown_fields(sub, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from _unknown_fields(item, schema["items"], f"{path}[{index}]")


def _as_draft7(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI int-or-string: the pattern applies to strings only, as in Kubernetes."""
    text = json.dumps(schema)
    out: dict[str, Any] = json.loads(text)

    def fix(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("x-kubernetes-int-or-string") and "pattern" in node:
                pattern = node.pop("pattern")
                node["anyOf"] = [{"type": "integer"}, {"type": "string", "pattern": pattern}]
            for child in node.values():
                fix(child)
        elif isinstance(node, list):
            for child in node:
                fix(child)

    fix(out)
    return out


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _shown(value: Any) -> str:
    return (
        json.dumps(value)
        if isinstance(value, str)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number" if isinstance(value, float) else "integer"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _schema_message(error: jsonschema.ValidationError) -> str:
    path = _path(error.absolute_path)
    value: Any = error.instance
    check = error.validator
    rule: Any = error.validator_value
    if check == "required":
        missing = error.message.split("'")[1]
        return f"{path + '.' if path else ''}{missing}: Required value"
    if check == "type":
        return (
            f'{path}: Invalid value: "{_type_name(value)}": {path} in body must be of type '
            f"{rule}: {_shown(value) if not isinstance(value, dict | list) else _type_name(value)}"
        )
    if check == "enum":
        supported = ", ".join(json.dumps(v) for v in rule)
        return f"{path}: Unsupported value: {_shown(value)}: supported values: {supported}"
    if check == "minimum":
        return f"{path}: Invalid value: {value}: {path} in body should be greater than or equal to {rule}"
    if check == "maximum":
        return (
            f"{path}: Invalid value: {value}: {path} in body should be less than or equal to {rule}"
        )
    if check == "pattern":
        return f"{path}: Invalid value: {_shown(value)}: {path} in body should match '{rule}'"
    if check == "maxLength":
        return f"{path}: Too long: may not be more than {rule} bytes"
    if check == "minLength":
        return f"{path}: Invalid value: {_shown(value)}: {path} in body should be at least {rule} chars long"
    if check == "maxItems":
        return f"{path}: Too many: {len(value)}: must have at most {rule} items"
    if check == "minItems":
        return (
            f"{path}: Invalid value: {len(value)}: {path} in body should have at least {rule} items"
        )
    if check == "anyOf":
        # int-or-string quantity: a string that is no quantity, or a value of another type.
        if isinstance(value, str):
            pattern = rule[1]["pattern"]
            return (
                f"{path}: Invalid value: {_shown(value)}: {path} in body should match '{pattern}'"
            )
        return f'{path}: Invalid value: "{_type_name(value)}": {path} in body must be of type integer or string'
    return f"{path}: Invalid value: {error.message}"


def field_errors(
    err: ValidationError, at: str = "", fields: Mapping[str, str] | None = None
) -> list[str]:
    """One line per problem: ``<field>: Invalid value: <value>: <what would be accepted>``.

    ``at`` prefixes the paths (``spec`` when a spec was validated on its own); ``fields`` renames
    the first path element, for types whose fields are not the user's (the solver's
    ``shard_bytes`` is the user's ``spec.shards.size``).
    """
    out = []
    for error in err.errors(include_url=False):
        loc = list(error["loc"])
        if fields and loc and str(loc[0]) in fields:
            loc[0] = fields[str(loc[0])]
        path = _path(([at] if at else []) + loc) or "(object)"
        out.append(_field_message(path, error))
    return out


def _field_message(path: str, error: Any) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    value = error.get("input")
    shown = (
        f'"{_type_name(value)}"'
        if isinstance(value, dict | list)
        else _shown(value if not isinstance(value, str) else value[:80])
    )
    if kind == "missing":
        return f"{path}: Required value"
    if kind == "extra_forbidden":
        return f'{path}: unknown field "{path}"'
    accepted = {
        "greater_than_equal": f"must be at least {ctx.get('ge')}",
        "greater_than": f"must be more than {ctx.get('gt')}",
        "less_than_equal": f"must be at most {ctx.get('le')}",
        "less_than": f"must be less than {ctx.get('lt')}",
        "string_pattern_mismatch": f"must match '{ctx.get('pattern')}'",
        "string_too_long": f"must be at most {ctx.get('max_length')} characters",
        "string_too_short": f"must be at least {ctx.get('min_length')} characters",
        "too_long": f"must have at most {ctx.get('max_length')} items",
        "too_short": f"must have at least {ctx.get('min_length')} items",
        "literal_error": f"must be one of {ctx.get('expected')}",
    }.get(kind)
    if accepted is None:
        # A CEL twin or a unit check (their messages say what is accepted), or a type error
        # ("Input should be a valid integer" -> "must be a valid integer").
        accepted = str(error["msg"]).removeprefix("Value error, ")
        accepted = accepted.replace("Input should be", "must be", 1)
    return f"{path}: Invalid value: {shown}: {accepted}"
