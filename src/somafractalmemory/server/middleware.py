"""Every request passes here: an id and an access line (`RequestMiddleware`), API errors
for framework-made 405s (`JsonErrorsMiddleware`), and authentication with the tenant's rate
limit (`AuthMiddleware`)."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse

from somafractalmemory import logs, metrics
from somafractalmemory.conf import get_config
from somafractalmemory.errors import (
    ForeignOrigin,
    LengthRequired,
    MethodNotAllowed,
    SFMError,
    UnsupportedMediaType,
)
from somafractalmemory.memories import tenancy
from somafractalmemory.memories.access import client_address
from somafractalmemory.server.api import database_unavailable, error_response

PUBLIC = ("/api/v2/openapi.json", "/api/v2/docs")
ACCESS = logging.getLogger("somafractalmemory.access")


class AuthMiddleware:
    """Authenticate every API request (Bearer key), then count it against the tenant's
    rate limit. Sets `request.principal`; answers 401/429 in the API's error envelope."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # path_info, not path: routing uses it, and path carries any SCRIPT_NAME prefix.
        where = request.path_info
        if where.startswith("/api/v2/") and not where.startswith(PUBLIC):
            client = client_address(request)
            try:
                caller = tenancy.authenticate(request.headers.get("Authorization"), client)
                tenancy.check_rate(caller)
            except SFMError as exc:
                return error_response(exc)
            except DatabaseError as exc:
                return database_unavailable(exc)
            request.principal = caller  # type: ignore[attr-defined]
        return self.get_response(request)


LOOPBACK = ("localhost", "127.0.0.1", "::1")
WITH_BODY = ("POST", "PUT", "PATCH", "DELETE")


def _host(authority: str) -> str:
    """The host of a `Host` header or an origin's authority, without port or brackets."""
    authority = authority.rsplit("@", 1)[-1].strip().lower()
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0]
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def _local(host: str) -> bool:
    allowed = {h.strip().lower() for h in get_config().allowed_hosts.split(",") if h.strip()}
    return host in LOOPBACK or host.startswith("127.") or host in allowed


class GuardMiddleware:
    """What a web page could abuse: API bodies must be JSON (415 otherwise: `text/plain`
    needs no CORS preflight), and while `auth` is optional only loopback (or
    `allowed_hosts`) Host and Origin headers are answered (403 `foreign_origin`)."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if get_config().auth != "required":
            origin = request.headers.get("Origin")
            host = _host(request.META.get("HTTP_HOST") or request.META.get("SERVER_NAME", ""))
            if not _local(host):
                return error_response(ForeignOrigin(f"host {host!r} is not this machine"))
            if origin is not None and not _local(_host(origin.split("://", 1)[-1])):
                return error_response(ForeignOrigin(f"origin {origin!r} is not this machine"))
        if request.path_info.startswith("/api/v2/") and request.method in WITH_BODY:
            sized = request.META.get("CONTENT_LENGTH") not in (None, "", "0")
            chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
            kind = request.content_type or ""
            if chunked and not sized:
                return error_response(LengthRequired("send the body with a Content-Length"))
            # JSON lines too (`POST /import`): like JSON, a type a web page elsewhere cannot
            # send without asking first (a CORS preflight this service never answers).
            json_like = kind in ("application/json", "application/x-ndjson")
            if (sized or chunked) and not (json_like or kind.endswith("+json")):
                return error_response(
                    UnsupportedMediaType(
                        f"request bodies are application/json (or application/x-ndjson for "
                        f"an import), not {kind!r}"
                    )
                )
        return self.get_response(request)


class RequestMiddleware:
    """Per request: an id (the caller's `X-Request-ID` when sane, else new) on every log
    record and in the answer; one access log line; counts and times for /metrics by method,
    route pattern (not path: ids would make a series per memory) and status."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        token = logs.REQUEST_ID.set(logs.request_id(request.headers.get("X-Request-ID")))
        try:
            response: HttpResponse = self.get_response(request)
            response["X-Request-ID"] = logs.REQUEST_ID.get()
            match = getattr(request, "resolver_match", None)
            route = "/" + match.route if match is not None and match.route else "unmatched"
            seconds = time.perf_counter() - started
            metrics.LATENCY.labels(request.method, route).observe(seconds)
            metrics.REQUESTS.labels(request.method, route, str(response.status_code)).inc()
            ms = round(seconds * 1000, 2)
            ACCESS.info(
                "%s %s %s %.1f ms",
                request.method,
                request.path_info,
                response.status_code,
                seconds * 1000,
                extra={
                    "method": request.method,
                    "route": route,
                    "status": response.status_code,
                    "ms": ms,
                },
            )
            return response
        finally:
            logs.REQUEST_ID.reset(token)


class JsonErrorsMiddleware:
    """Framework-made 405s answer in the API's error envelope too."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response: HttpResponse = self.get_response(request)
        if response.status_code == 405 and response.get("Content-Type", "").startswith("text/html"):
            allowed = response.get("Allow", "")
            error = MethodNotAllowed(f"{request.method} is not allowed here; allowed: {allowed}")
            new = error_response(error)
            new["Allow"] = allowed
            return new
        return response
