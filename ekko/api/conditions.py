"""The grammar of analysis conditions (``result < 0.05``), shared by the CRD and the analysis.

One pattern is both the CRD's ``pattern`` and what :func:`parse_condition` reads, so a condition
the API server admits is one the rollout can evaluate. Numbers are decimal, with an optional sign
and exponent (``-1``, ``0.05``, ``.5``, ``2.5e-3``). Their digits and exponent are bounded so that
every admitted number is a finite float and no non-zero one rounds to zero: at most 15 digits
before and after the point and an exponent of at most two digits keep every value between 1e-114
and 1e115 in magnitude. Spaces (and tabs) only, written out: ``\\s`` means more in Python and
Rust regular expressions than in Go's, which the API server uses.
"""

from __future__ import annotations

import re
from typing import Literal, cast

Operator = Literal["<", "<=", ">", ">=", "==", "!="]

NUMBER_PATTERN = r"[-+]?([0-9]{1,15}(\.[0-9]{0,15})?|\.[0-9]{1,15})([eE][-+]?[0-9]{1,2})?"
CONDITION_PATTERN = rf"^result[ \t]*(<=|>=|==|!=|<|>)[ \t]*({NUMBER_PATTERN})$"

_CONDITION_RE = re.compile(CONDITION_PATTERN)


def parse_condition(condition: str) -> tuple[Operator, float]:
    """The operator and threshold of ``result <op> <number>`` (raises ValueError otherwise)."""
    # fullmatch, not match: Python's $ also matches before a final newline, Go's does not.
    match = _CONDITION_RE.fullmatch(condition)
    if not match:
        raise ValueError(
            f"condition {condition!r} is not of the form 'result <op> <number>' with op one of "
            "<, <=, >, >=, ==, != (for example 'result < 0.05' or 'result >= 2.5e-3')"
        )
    return cast(Operator, match.group(1)), float(match.group(2))
