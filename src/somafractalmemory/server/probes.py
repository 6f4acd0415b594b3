"""Plain Django views outside /api/v2: liveness, readiness, Prometheus metrics, and the JSON
answers for requests that never reach the API (400, 404, 500)."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from somafractalmemory import __version__, backends, metrics
from somafractalmemory.embedding.cache import cache_health
from somafractalmemory.errors import BadRequest, NotFound, PayloadTooLarge, SFMError
from somafractalmemory.memories import services, tenancy
from somafractalmemory.server.api import error_response


def healthz(request: HttpRequest) -> JsonResponse:
    """The process answers."""
    return JsonResponse({"status": "ok", "version": __version__})


def readyz(request: HttpRequest) -> JsonResponse:
    """Every dependency answers: SQL, the embedding model, the vector index, the cache,
    and the master key opens the tenants' data keys.

    The cache and the vector index are optional: without the cache the service works
    (slower), without the index it still stores (the outbox owes the vector writes) and
    searches SQL's full-text index; either reports `degraded`, and so does a dead-lettered
    vector write (the service works; `sfm doctor` shows it). `notes` says what a back end
    does differently (a Milvus server without BM25, say).
    """
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # a probe reports, it does not raise
        checks["database"] = f"error: {exc}"
    notes: dict[str, list[str]] = {}
    try:
        backends.embedder().dim  # noqa: B018 - loads the model
        services.check_model()
        checks["embedder"] = "ok"
    except Exception as exc:
        checks["embedder"] = f"error: {exc}"
    try:
        index = backends.vector_index()
        index.count()
        checks["vector_index"] = "ok"
        if differs := index.notes():
            notes["vector_index"] = differs
    except Exception as exc:
        checks["vector_index"] = f"error: {exc}"
    checks["keys"] = tenancy.keys_health()
    checks["cache"] = cache_health()
    checks["outbox"] = services.outbox_health()
    optional = ("cache", "outbox", "vector_index")
    required = [v for k, v in checks.items() if k not in optional]
    if any(v != "ok" for v in required):
        status, code = "unavailable", 503
    else:
        healthy = all(checks[k] == "ok" for k in optional)
        status, code = ("ready", 200) if healthy else ("degraded", 200)
    body: dict[str, object] = {"status": status, "checks": checks}
    if notes:
        body["notes"] = notes
    return JsonResponse(body, status=code)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text format: requests, stores, searches, model and index time, outbox."""
    return HttpResponse(metrics.exposition(), content_type=metrics.CONTENT_TYPE)


def json_400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    if isinstance(exception, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return error_response(PayloadTooLarge(f"request body above {limit} bytes"))
    return error_response(BadRequest("bad request"))


def json_404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return error_response(NotFound(f"no route for {request.path}"))


def json_500(request: HttpRequest) -> JsonResponse:
    error = SFMError("internal error; the server log has the details")
    return error_response(error)
