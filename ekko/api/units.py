"""Kubernetes quantities and duration strings, parsed and validated in one place.

Sizes in Ekko's resources are Kubernetes quantities (``64Gi``, ``500m``, ``1.5T``) and durations are
Go-style strings (``30s``, ``5m``, ``1h30m``). Both are kept as the user wrote them in the resource
and turned into numbers only here, so the CRD patterns, the pydantic types and the parsers cannot
disagree.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

from ekko.api.schema import FieldRule, SchemaOverride

# Unsigned Kubernetes quantity: a number, then a binary suffix, a decimal suffix or an exponent.
# The exponent has at most two digits: the API server's quantity parser truncates a longer one to
# int32 and then computes 10^exponent in full, so "1e9999999999" in a CEL quantity() ties up the
# API server until the request times out (seen with kube-apiserver 1.36). The range rules below
# match this pattern before they parse, since CEL rules run even when the pattern has failed.
QUANTITY_PATTERN = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]{1,2}))?$"
)
# Hours, minutes, seconds and milliseconds, each at most once and in that order (1h30m, 90s,
# 250ms), as Go's time.ParseDuration reads them. Each part has at most six integer digits and no
# fraction finer than a nanosecond, so no duration this admits overflows Go's int64 nanoseconds
# (the API server's CEL duration() would fail) or rounds differently in Go and here.
_PART = r"[0-9]{1,6}(\.[0-9]{1,%d})?%s"
DURATION_PATTERN = (
    "^"
    + "".join(
        f"({_PART % (digits, unit)})?" for unit, digits in (("h", 9), ("m", 9), ("s", 9), ("ms", 6))
    )
    + "$"
)

_QUANTITY_RE = re.compile(QUANTITY_PATTERN)
_DURATION_RE = re.compile(DURATION_PATTERN)
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_NANO = Fraction(1, 10**9)

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
    """Return the value of a Kubernetes quantity (``"64Gi"`` -> 68719476736) as the API server
    holds it: exact, except that a non-zero value below one nano-unit is rounded up to 1n and
    every value to a whole number of nano-units, upwards (Kubernetes' ``ParseQuantity``)."""
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
    # fullmatch, not match: Python's $ also matches before a final newline, Go's does not.
    text = value
    if not _QUANTITY_RE.fullmatch(text):
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
        exact = amount * _BINARY[suffix]
    elif suffix[:1] in ("e", "E") and len(suffix) > 1:  # "E" alone is exa, "E3" an exponent
        exact = amount * Fraction(10) ** int(suffix[1:])
    else:
        exact = amount * _DECIMAL[suffix]
    return _round_up_to_nano(exact)


def _round_up_to_nano(exact: Fraction) -> Fraction:
    nanos = exact / _NANO
    return Fraction(-(-nanos.numerator // nanos.denominator)) * _NANO


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
    return float(duration_seconds(value))


def parse_seconds(value: str) -> float:
    """Return a duration string or a plain number of seconds (``"90"``, ``"1.5"``) in seconds:
    what a command-line flag takes."""
    if value.replace(".", "", 1).isdigit():
        return float(value)
    return parse_duration(value)


def parse_time(value: object, *, naive_as_utc: bool = False) -> datetime | None:
    """Return an RFC 3339 time (``2026-11-29T12:00:00Z``, ``…+02:00``, fractions allowed) as an
    aware datetime; None when absent, not text or unreadable. A time without an offset is no
    instant: None, unless ``naive_as_utc`` (times the API server wrote, which are UTC)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC) if naive_as_utc else None
    return when


def duration_seconds(value: str) -> Fraction:
    """Return a duration string in seconds, exactly."""
    text = value
    if not isinstance(text, str) or not text or not _DURATION_RE.fullmatch(text):
        raise UnitError(
            f"{value!r} is not a duration; use numbers with units h, m, s or ms, in that order "
            "(for example 30s, 5m, 1h30m, 250ms)"
        )
    return sum(
        (Fraction(Decimal(num)) * _SECONDS[unit] for num, unit in _DURATION_PART_RE.findall(text)),
        start=Fraction(0),
    )


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
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise UnitError(f"expected a quantity such as 64Gi or 500m, got {value!r}")
    if isinstance(value, str):
        parse_quantity(value)
    # A plain integer passes the pattern (which only applies to strings), as on the API server;
    # its range (quantity_range, required on every quantity field) judges its sign and size.
    return value


def quantity_range(minimum: str, maximum: str, example: str) -> FieldRule:
    """Bounds of a quantity field: a CEL rule for the API server and its Python twin.

    The rule refuses what does not match the quantity pattern (a negative integer included) or
    what the API server cannot parse, and only then parses: never a string that would make the
    API server compute a huge power of ten. Its twin refuses the same.
    """
    low, high = parse_quantity(minimum), parse_quantity(maximum)
    accepted = f"must be a quantity from {minimum} to {maximum} (for example {example}), got "

    def check(value: object) -> str | None:
        shown = str(value)
        try:
            amount = parse_quantity(value if isinstance(value, int) else shown)
        except UnitError:
            return accepted + shown
        return None if low <= amount <= high else accepted + shown

    q = "quantity(string(self))"
    return FieldRule(
        rule=(
            f"string(self).matches(r'{QUANTITY_PATTERN}') && isQuantity(string(self))"
            f" && {q}.compareTo(quantity('{minimum}')) >= 0"
            f" && {q}.compareTo(quantity('{maximum}')) <= 0"
        ),
        message_expression=f"'{accepted}' + string(self)",
        check=check,
    )


def duration_range(minimum: str, maximum: str) -> FieldRule:
    """Bounds of a duration field: a CEL rule for the API server and its Python twin.

    A string that is no duration at all is left to the pattern, so the user sees one error.
    """
    low, high = duration_seconds(minimum), duration_seconds(maximum)
    accepted = f"must be a duration from {minimum} to {maximum}, got "

    def check(value: str) -> str | None:
        return None if low <= duration_seconds(value) <= high else accepted + value

    return FieldRule(
        rule=(
            f"!self.matches(r'{DURATION_PATTERN}') || (duration(self) >= duration('{minimum}')"
            f" && duration(self) <= duration('{maximum}'))"
        ),
        message_expression=f"'{accepted}' + self",
        check=check,
    )


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
"""A Kubernetes quantity as the user wrote it: ``64Gi``, ``500m`` or a plain integer.

Every field of this type also carries a :func:`quantity_range`: the pattern only covers strings,
so without a range a negative integer would pass the API server."""

Duration = Annotated[
    str,
    AfterValidator(_check_duration),
    SchemaOverride(
        {"type": "string", "pattern": DURATION_PATTERN, "minLength": 2, "maxLength": 32}
    ),
]
"""A duration string as the user wrote it: ``30s``, ``5m``, ``1h30m``; every field of this type
also carries a :func:`duration_range`."""
