"""``--log-format json``: one JSON object per log line, for log pipelines (Loki, Elasticsearch)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    """time (RFC 3339, UTC), level, logger, message, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure(level: int, fmt: str) -> None:
    """Root logging in the chosen format: ``text`` (the default) or ``json``."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)


class RefusalsAreNotErrors(logging.Filter):
    """kopf logs a webhook handler's refusal as "Webhook 'validate-model' failed permanently:
    …" at ERROR. A refused manifest is the webhook doing its job (the user sees the reason in
    kubectl): keep the line, at INFO, worded as what it is."""

    PREFIX = "Webhook '"
    MARK = "' failed permanently: "

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and not record.exc_info:
            text = record.getMessage()
            if text.startswith(self.PREFIX) and self.MARK in text:
                handler, _, reason = text[len(self.PREFIX) :].partition(self.MARK)
                record.msg = "Admission refused by %s: %s"
                record.args = (handler, reason)
                record.levelno = logging.INFO
                record.levelname = logging.getLevelName(logging.INFO)
        return True
