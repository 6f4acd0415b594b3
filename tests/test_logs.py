"""Request ids on every log record and in the answer; JSON lines when asked."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest

from somafractalmemory import logs
from tests.conftest import Api


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(logs.RequestIdFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def access() -> Iterator[Collect]:
    handler = Collect()
    logger = logging.getLogger("somafractalmemory.access")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_request_id_is_answered_and_on_the_access_line(api: Api, access: Collect) -> None:
    response = api.client.get("/api/v2/memory/mem_nope", headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 404 and response["X-Request-ID"] == "abc-123"
    (line,) = [r for r in access.records if r.request_id == "abc-123"]  # type: ignore[attr-defined]
    assert line.status == 404 and line.route == "/api/v2/memory/<memory_id>"  # type: ignore[attr-defined]
    assert line.getMessage().startswith("GET /api/v2/memory/mem_nope 404")


def test_an_unsafe_request_id_is_replaced(api: Api, access: Collect) -> None:
    for offered in ("has spaces in it", "x" * 65, "new\nline"):
        answered = api.client.get("/healthz", headers={"X-Request-ID": offered})["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", answered)
    first = api.client.get("/healthz")["X-Request-ID"]
    assert first != api.client.get("/healthz")["X-Request-ID"]  # one per request
    assert logs.REQUEST_ID.get() == "-"  # nothing leaks out of a request


def test_json_lines_carry_the_fields_and_the_traceback() -> None:
    logger = logging.getLogger("test.json")
    token = logs.REQUEST_ID.set("req-7")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            failure = sys.exc_info()
            record = logger.makeRecord(
                "test.json",
                logging.ERROR,
                __file__,
                1,
                "failed %s",
                ("store",),
                failure,
                extra={"memories": 3},
            )
        logs.RequestIdFilter().filter(record)
        line = json.loads(logs.JsonFormatter().format(record))
    finally:
        logs.REQUEST_ID.reset(token)
    assert line["message"] == "failed store" and line["level"] == "ERROR"
    assert line["request_id"] == "req-7" and line["memories"] == 3
    assert "ValueError: boom" in line["exception"] and line["logger"] == "test.json"
