"""The NinjaAPI: the routers of `memories/api.py` under /api/v2, the error envelope
(`{"error": {code, message, details}}`) and the handlers that turn every failure into it."""

from __future__ import annotations

import logging
import math
from typing import Any

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
from ninja.openapi.schema import OpenAPISchema
from ninja.operation import Operation

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


class DocumentedAPI(NinjaAPI):
    """The NinjaAPI with what its generated document lacks for client generators: the
    bearer key scheme (keys are checked by middleware, which Ninja does not see; optional
    when the service runs with `auth: optional`), and operation ids that are the routes'
    function names (`store`, `search`, `get_memory`: stable and readable)."""

    def get_openapi_operation_id(self, operation: Operation) -> str:
        return str(operation.view_func.__name__)

    def get_openapi_schema(self, **kwargs: Any) -> OpenAPISchema:
        schema = super().get_openapi_schema(**kwargs)
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`sfm_...`) as `Authorization: Bearer <key>`; without "
            "one, requests act as the `default` tenant where `auth` is `optional`.",
        }
        schema["security"] = [{"bearer": []}, {}]
        return schema


api = DocumentedAPI(
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
