"""Log records with the id of the request they belong to, as text or as JSON lines.

The request middleware sets `REQUEST_ID` (the caller's `X-Request-ID` when it is a sane
token, else a new one) and answers it in `X-Request-ID`; every record logged while the
request runs carries it as `request_id` (`-` outside requests).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
TEXT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def request_id(offered: str | None) -> str:
    """The caller's id when it is a short token (it ends up in logs), else a new one."""
    return offered if offered and _SANE.fullmatch(offered) else uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, and any
    `extra` fields given to the call; the traceback as `exception`."""

    STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
        "message",
        "asctime",
        "request_id",
        "taskName",
    }

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", REQUEST_ID.get()),
        }
        line.update({k: v for k, v in vars(record).items() if k not in self.STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def logging_config(log_format: str) -> dict[str, object]:
    """Django's LOGGING for `log_format` (`text` or `json`)."""
    formatter = {"()": JsonFormatter} if log_format == "json" else {"format": TEXT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"main": formatter},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "main",
                "filters": ["request_id"],
            }
        },
        "root": {"handlers": ["console"], "level": "INFO"},
        "loggers": {"django.request": {"level": "ERROR"}},
    }
