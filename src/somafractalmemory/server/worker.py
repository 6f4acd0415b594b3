"""The gunicorn worker `sfm serve` runs: gthread, with the requests gunicorn refuses before
Django sees them (a request line or headers too long, a malformed request) answered in the
API's error envelope instead of gunicorn's HTML pages."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from gunicorn.http import errors
from gunicorn.workers.gthread import ThreadWorker

# (status, reason, code) of the parse errors a client causes; anything else is gunicorn's.
REFUSED: tuple[tuple[type[Exception], int, str, str], ...] = (
    (errors.LimitRequestLine, 414, "URI Too Long", "uri_too_long"),
    (errors.LimitRequestHeaders, 431, "Request Header Fields Too Large", "headers_too_large"),
    (errors.ParseException, 400, "Bad Request", "bad_request"),
)


def envelope(exc: Exception) -> bytes | None:
    """The whole HTTP answer for a refused request, or None when it is not a client's."""
    for kind, status, reason, code in REFUSED:
        if isinstance(exc, kind) and not isinstance(
            exc, errors.InvalidResponseHeader | errors.InvalidResponseHeaderName
        ):
            error = {"code": code, "message": f"{reason.lower()}: {exc}", "details": None}
            body = json.dumps({"error": error}).encode()
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            return head.encode() + body
    return None


class JsonErrorWorker(ThreadWorker):
    def handle_error(self, req: Any, client: Any, addr: Any, exc: Exception) -> None:
        answer = envelope(exc)
        if answer is None:
            super().handle_error(req, client, addr, exc)
            return
        self.log.debug("refused a request from %s: %s", addr, exc)
        with contextlib.suppress(OSError):  # the client went away: nothing to answer
            client.sendall(answer)
