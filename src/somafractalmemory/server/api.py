"""The NinjaAPI: the routers of `memories/api.py` under /api/v2, the error envelope
(`{"error": {code, message, details}}`) and the handlers that turn every failure into it."""

from __future__ import annotations

import logging
import math

from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
)
from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI
from ninja.errors import HttpError
from ninja.errors import ValidationError as NinjaValidationError

from somafractalmemory import __version__, metrics
from somafractalmemory.errors import (
    DatabaseUnavailable,
    MalformedJSON,
    NotFound,
    QuotaExceeded,
    RateLimited,
    SFMError,
    ValidationFailed,
)
from somafractalmemory.memories.api import ROUTERS

log = logging.getLogger(__name__)

api = NinjaAPI(
    title="SomaFractalMemory",
    version=__version__,
    description="Long-term memory for AI agents. Errors: `{error: {code, message, details}}`.",
    openapi_url="/openapi.json",
    docs_url="/docs",
)
for prefix, router in ROUTERS.items():
    api.add_router(prefix, router)


def error_response(error: SFMError) -> JsonResponse:
    if isinstance(error, QuotaExceeded | RateLimited):
        metrics.DENIALS.labels(error.code).inc()
    response = JsonResponse(error.to_dict(), status=error.status)
    if isinstance(error, RateLimited):
        response["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return response


def database_unavailable(exc: DatabaseError) -> JsonResponse:
    """A lost or refused database connection: 503, and the broken connection is dropped so
    that the next request reconnects by itself."""
    log.warning("database unavailable: %s", exc)
    connection.close_if_unusable_or_obsolete()
    return error_response(DatabaseUnavailable("the database is unavailable; retry shortly"))


@api.exception_handler(SFMError)
def _sfm_error(request: HttpRequest, exc: SFMError) -> HttpResponse:
    return error_response(exc)


@api.exception_handler(DatabaseError)
def _database_error(request: HttpRequest, exc: DatabaseError) -> HttpResponse:
    if isinstance(exc, DataError | IntegrityError):
        # Values the database refuses (e.g. characters PostgreSQL text cannot hold).
        return error_response(ValidationFailed(f"the database refused a value: {exc}"))
    if isinstance(exc, OperationalError | InterfaceError):
        return database_unavailable(exc)
    raise exc


@api.exception_handler(NinjaValidationError)
def _validation_error(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
    details = [
        {
            "loc": [str(part) for part in err.get("loc", ()) if part not in ("body", "payload")],
            "msg": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in exc.errors
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"]) or "request"
    return error_response(ValidationFailed(f"{where}: {first['msg']}", details=details))


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if exc.status_code == 400 and str(exc).startswith("Cannot parse request body"):
        return error_response(MalformedJSON("request body is not valid JSON"))
    if exc.status_code == 404:
        return error_response(NotFound(str(exc)))
    error = SFMError(str(exc))
    error.status, error.code = exc.status_code, "bad_request" if exc.status_code < 500 else "error"
    return error_response(error)
