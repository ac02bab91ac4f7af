"""Kubernetes quantities and duration strings, parsed and validated in one place.

Sizes in Ekko's resources are Kubernetes quantities (``64Gi``, ``500m``, ``1.5T``) and durations are
Go-style strings (``30s``, ``5m``, ``1h30m``). Both are kept as the user wrote them in the resource
and turned into numbers only here, so the CRD patterns, the pydantic types and the parsers cannot
disagree.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

from ekko.api.schema import SchemaOverride

# Unsigned Kubernetes quantity: a number, then a binary suffix, a decimal suffix or an exponent.
QUANTITY_PATTERN = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$"
# One or more <number><unit> pairs, as Go's time.ParseDuration accepts (without negatives).
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"

_QUANTITY_RE = re.compile(QUANTITY_PATTERN)
_DURATION_RE = re.compile(DURATION_PATTERN)
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_SECONDS = {"ms": Fraction(1, 1000), "s": Fraction(1), "m": Fraction(60), "h": Fraction(3600)}


class UnitError(ValueError):
    """A quantity or duration that cannot be parsed; the message says what was expected."""


def parse_quantity(value: str | int | float) -> Fraction:
    """Return the exact value of a Kubernetes quantity (``"64Gi"`` -> 68719476736)."""
    if isinstance(value, bool):
        raise UnitError(f"expected a quantity such as 64Gi or 500m, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"quantity must not be negative, got {value}")
        return Fraction(value)
    if isinstance(value, float):
        if value < 0:
            raise UnitError(f"quantity must not be negative, got {value}")
        return Fraction(Decimal(repr(value)))
    text = value.strip()
    if not _QUANTITY_RE.match(text):
        raise UnitError(
            f"{value!r} is not a Kubernetes quantity; use a number with an optional suffix "
            "such as 64Gi, 1.5T, 500m or 2e9"
        )
    number, suffix = _split_quantity(text)
    try:
        amount = Fraction(Decimal(number))
    except InvalidOperation as err:  # pragma: no cover - the pattern already guards this
        raise UnitError(f"{value!r} is not a Kubernetes quantity") from err
    if suffix in _BINARY:
        return amount * _BINARY[suffix]
    if suffix[:1] in ("e", "E"):
        return amount * Fraction(10) ** int(suffix[1:])
    return amount * _DECIMAL[suffix]


def _split_quantity(text: str) -> tuple[str, str]:
    for index, char in enumerate(text):
        if not (char.isdigit() or char == "."):
            return text[:index], text[index:]
    return text, ""


def quantity_bytes(value: str | int | float) -> int:
    """Return a memory quantity as whole bytes, rounding fractions of a byte up."""
    exact = parse_quantity(value)
    return int(-(-exact.numerator // exact.denominator))


def quantity_float(value: str | int | float) -> float:
    """Return a quantity as a float (compute units, where exactness does not matter)."""
    return float(parse_quantity(value))


def parse_duration(value: str) -> float:
    """Return a duration string (``"1m30s"``, ``"250ms"``) in seconds."""
    text = value.strip() if isinstance(value, str) else value
    if not isinstance(text, str) or not _DURATION_RE.match(text):
        raise UnitError(
            f"{value!r} is not a duration; use a number with a unit: ms, s, m or h "
            "(for example 30s, 5m, 1h30m)"
        )
    total = sum(
        (Fraction(Decimal(num)) * _SECONDS[unit] for num, unit in _DURATION_PART_RE.findall(text)),
        start=Fraction(0),
    )
    return float(total)


def format_bytes(value: float) -> str:
    """Render a byte count the way a user reads it (``68719476736`` -> ``64 GiB``)."""
    for unit, size in (
        ("PiB", 2**50),
        ("TiB", 2**40),
        ("GiB", 2**30),
        ("MiB", 2**20),
        ("KiB", 2**10),
    ):
        if abs(value) >= size:
            scaled = value / size
            return f"{scaled:.0f} {unit}" if scaled == int(scaled) else f"{scaled:.1f} {unit}"
    return f"{value:.0f} B"


def _check_quantity(value: object) -> object:
    if isinstance(value, float) and value == int(value):
        value = int(value)
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise UnitError(f"expected a quantity such as 64Gi or 500m, got {value!r}")
    parse_quantity(value)
    return value


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


Quantity = Annotated[
    str | int,
    BeforeValidator(_check_quantity),
    SchemaOverride(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN,
            # Bounded so CEL rules over quantities fit the API server's cost budget.
            "maxLength": 32,
        }
    ),
]
"""A Kubernetes quantity as the user wrote it: ``64Gi``, ``500m`` or a plain integer."""

Duration = Annotated[
    str,
    AfterValidator(_check_duration),
    SchemaOverride({"type": "string", "pattern": DURATION_PATTERN, "maxLength": 32}),
]
"""A duration string as the user wrote it: ``30s``, ``5m``, ``1h30m``."""
