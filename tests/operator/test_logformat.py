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


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_refused_admission_is_info_and_a_handler_crash_stays_an_error() -> None:
    """kopf's own wording, through a logger set up as the operator sets up kopf.objects."""
    from ekko.operator.logformat import RefusalsAreNotErrors

    logger = logging.getLogger("test.kopf.objects")
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    capture = Capture()
    logger.addHandler(capture)
    logger.addFilter(RefusalsAreNotErrors())
    reason = "spec.replicas: must be at least 1; the pool 'p' has no server that fits 'big'"
    logger.error(f"Webhook 'validate-model' failed permanently: {reason}")
    logger.error("Handler 'place' failed permanently: the API said no")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("Webhook 'validate-model' failed permanently: boom")
    refused, other, crash = capture.records
    assert refused.levelno == logging.INFO
    assert refused.getMessage() == f"Admission refused by validate-model: {reason}"
    assert other.levelno == logging.ERROR  # not a webhook: untouched
    assert crash.levelno == logging.ERROR and crash.exc_info  # a bug keeps its traceback
