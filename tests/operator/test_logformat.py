"""`--log-format json`: each line is one JSON object a log pipeline can parse."""

from __future__ import annotations

import json
import logging

from ekko.operator.logformat import JsonFormatter


def test_a_record_with_a_traceback_is_one_json_line() -> None:
    try:
        raise ValueError("bad value 1.2.3")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "ekko.operator", logging.ERROR, __file__, 1, "Pool %s/%s: failed", ("ns", "p"),
            sys.exc_info(),
        )  # fmt: skip
    line = JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "ERROR" and doc["logger"] == "ekko.operator"
    assert doc["message"] == "Pool ns/p: failed"
    assert "ValueError: bad value 1.2.3" in doc["traceback"]
    assert doc["time"].endswith("+00:00")
