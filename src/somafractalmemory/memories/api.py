"""HTTP API v2 (Django Ninja): parse, call a service, return a schema. Nothing else."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
)
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from ninja import NinjaAPI, Query, Router
from ninja.errors import HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.responses import Status

from somafractalmemory import __version__, backends, logs, metrics, policy
from somafractalmemory.conf import get_config
from somafractalmemory.embedding.cache import cache_health
from somafractalmemory.errors import (
    BadRequest,
    DatabaseUnavailable,
    Forbidden,
    MalformedJSON,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimited,
    SFMError,
    Unauthorized,
    ValidationFailed,
)
from somafractalmemory.memories import (
    erasure,
    forgetting,
    hierarchy,
    jobs,
    links,
    services,
    tenancy,
)
from somafractalmemory.memories.models import DEFAULT_TENANT, Job, Memory, Tenant
from somafractalmemory.memories.schemas import (
    AuditEntryOut,
    AuditOut,
    BatchIn,
    BatchOut,
    ConsolidateIn,
    ErrorOut,
    ExplainOut,
    ForgetIn,
    GraphOut,
    HalfLivesIn,
    JobOut,
    KeyIn,
    KeyOut,
    KeysOut,
    LinkIn,
    LinkOut,
    LinksOut,
    MemoriesOut,
    MemoryOut,
    MemoryTypeName,
    NamespaceOut,
    NamespacesOut,
    NearDuplicateOut,
    NewKeyOut,
    PageOut,
    PatchIn,
    PurgeIn,
    PurgeOut,
    RelatedOut,
    SearchHitOut,
    SearchIn,
    SearchOut,
    StoreIn,
    StoreOut,
    TenantIn,
    TenantOut,
    TenantsOut,
    UsageOut,
    WeightsIn,
)
from somafractalmemory.retrieval import ranking

log = logging.getLogger(__name__)

api = NinjaAPI(
    title="SomaFractalMemory",
    version=__version__,
    description="Long-term memory for AI agents. Errors: `{error: {code, message, details}}`.",
    openapi_url="/openapi.json",
    docs_url="/docs",
)
READ, WRITE, ADMIN = "memory.read", "memory.write", "admin"
memory = Router(tags=["memory"])
graph_router = Router(tags=["links"])
usage_router = Router(tags=["tenancy"])
namespace_router = Router(tags=["namespaces"])
admin = Router(tags=["admin"])
job_router = Router(tags=["jobs"])
ERRORS: dict[int | frozenset[int], Any] = {
    frozenset({400, 401, 403, 404, 409, 413, 422, 429, 503}): ErrorOut,
}


def error_response(error: SFMError) -> JsonResponse:
    if isinstance(error, QuotaExceeded | RateLimited):
        metrics.DENIALS.labels(error.code).inc()
    response = JsonResponse(error.to_dict(), status=error.status)
    if isinstance(error, RateLimited):
        response["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return response


# -- who is calling, and may they ---------------------------------------------------------


def principal(request: HttpRequest) -> tenancy.Principal:
    """The caller AuthMiddleware found. A request it did not authenticate is refused (fail
    closed): handlers never fall back to a default identity."""
    found = getattr(request, "principal", None)
    if not isinstance(found, tenancy.Principal):
        raise Unauthorized("this request was not authenticated")
    return found


def allow(
    request: HttpRequest, action: str, *, namespace: str | None = None, resource: str = ""
) -> str:
    """Ask the access policy; returns the caller's tenant, or raises 403 with its reason."""
    caller = principal(request)
    decision = policy.decide(
        {
            "tenant": caller.tenant,
            "key_id": caller.key_id,
            "scopes": list(caller.scopes),
            "allowed_namespaces": list(caller.namespaces),
            "action": action,
            "namespace": namespace,
            "resource": resource,
        }
    )
    if not decision.allow:
        tenancy.audit(caller.tenant, caller.actor, action, resource=resource, outcome="denied",
                      details={"namespace": namespace, "reason": decision.reason})  # fmt: skip
        raise Forbidden(decision.reason)
    return caller.tenant


def _visible(request: HttpRequest, memories: list[Memory]) -> list[Memory]:
    """What a namespace-limited key may see of memories reached through links."""
    allowed = principal(request).namespaces
    return [m for m in memories if not allowed or m.namespace in allowed]


def _owned(request: HttpRequest, action: str, memory_id: str) -> tuple[str, Memory]:
    """The caller's memory (404 for another tenant's), once the policy allows `action` on
    its namespace."""
    row = services.get(memory_id, tenant=principal(request).tenant)
    return allow(request, action, namespace=row.namespace, resource=memory_id), row


@api.exception_handler(SFMError)
def _sfm_error(request: HttpRequest, exc: SFMError) -> HttpResponse:
    return error_response(exc)


@api.exception_handler(DatabaseError)
def _database_error(request: HttpRequest, exc: DatabaseError) -> HttpResponse:
    if isinstance(exc, DataError | IntegrityError):
        # Values the database refuses (e.g. characters PostgreSQL text cannot hold).
        return error_response(ValidationFailed(f"the database refused a value: {exc}"))
    if isinstance(exc, OperationalError | InterfaceError):
        log.warning("database unavailable: %s", exc)
        # The broken connection is dropped, so the next request reconnects by itself.
        connection.close_if_unusable_or_obsolete()
        return error_response(DatabaseUnavailable("the database is unavailable; retry shortly"))
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


def _store_out(stored: services.Stored) -> StoreOut:
    m = stored.memory
    return StoreOut(
        id=m.id,
        embedding_id=m.embedding_id,
        importance=m.importance,
        created_at=m.created_at,
        deduplicated=stored.deduplicated,
        near_duplicates=[NearDuplicateOut(id=i, score=s) for i, s in stored.near_duplicates],
    )


def _new(item: StoreIn) -> services.NewMemory:
    return services.NewMemory(**item.model_dump())


def _namespace(name: str | None) -> str:
    return name or get_config().namespace


@memory.post("/store", response={200: StoreOut, **ERRORS}, summary="Store a memory")
def store(request: HttpRequest, body: StoreIn) -> StoreOut:
    tenant = allow(request, WRITE, namespace=_namespace(body.namespace))
    return _store_out(services.store_many([_new(body)], tenant=tenant, report_near=True)[0])


@memory.post("/batch", response={200: BatchOut, **ERRORS}, summary="Store up to 1,000 memories")
def store_batch(request: HttpRequest, body: BatchIn) -> BatchOut:
    tenant = principal(request).tenant
    for name in sorted({_namespace(item.namespace) for item in body.memories}):
        allow(request, WRITE, namespace=name)
    stored = services.store_many([_new(item) for item in body.memories], tenant=tenant)
    return BatchOut(memories=[_store_out(s) for s in stored])


@memory.post("/search", response={200: SearchOut, **ERRORS}, summary="Search memories")
def search(request: HttpRequest, body: SearchIn) -> SearchOut:
    tenant = allow(request, READ, namespace=body.namespace)
    scoring = ranking.Scoring(
        weights=ranking.Weights(**(body.weights or WeightsIn()).model_dump()),
        half_lives=ranking.HalfLives(**(body.half_lives or HalfLivesIn()).model_dump()),
    )
    query = services.Query(
        namespace=body.namespace,
        top_k=body.top_k,
        mode=body.mode,
        filters=body.filters,
        types=tuple(body.types),
        created_after=body.created_after,
        created_before=body.created_before,
        min_score=body.min_score,
        levels=tuple(body.levels),
        scoring=scoring,
    )
    recall = hierarchy.zoom if body.zoom else services.recall
    result = recall(body.query, query, tenant=tenant)
    related: dict[str, list[Memory]] = {}
    if body.expand:
        related = hierarchy.expand([h.memory for h in result.hits], body.expand, tenant=tenant)
        related = {k: _visible(request, v) for k, v in related.items()}
    hits = []
    for hit in result.hits:
        out = _hit_out(hit, scoring if body.explain else None)
        if body.expand:
            setattr(out, body.expand, [_related(m) for m in related.get(hit.memory.id, [])])
        hits.append(out)
    return SearchOut(
        memories=hits,
        latency_ms=round(result.latency_ms, 2),
        mode=result.mode,
        warnings=result.warnings,
    )


def _related(m: Memory) -> RelatedOut:
    return RelatedOut(
        id=m.id, content=m.content, type=m.type, level=m.level, created_at=m.created_at
    )


def _hit_out(hit: services.Hit, scoring: ranking.Scoring | None) -> SearchHitOut:
    m = hit.memory
    explain = None
    if scoring is not None and hit.components is not None:
        explain = ExplainOut(
            relevance=round(hit.components.relevance, 6),
            recency=round(hit.components.recency, 6),
            importance=hit.components.importance,
            retention=round(forgetting.retention(m, timezone.now(), scoring.half_lives), 6),
            weights=dataclasses.asdict(scoring.weights),
            legs={name: {"rank": r, "score": round(s, 6)} for name, (r, s) in hit.legs.items()},
        )
    return SearchHitOut(
        id=m.id,
        content=m.content,
        score=round(hit.score, 4),
        type=m.type,
        level=m.level,
        namespace=m.namespace,
        importance=m.importance,
        metadata=m.metadata,
        created_at=m.created_at,
        explain=explain,
    )


@memory.get("", response={200: PageOut, **ERRORS}, summary="List memories, newest first")
def list_memories(
    request: HttpRequest,
    namespace: str | None = None,
    type: list[MemoryTypeName] = Query([]),  # noqa: B008 - the API's field name
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = None,
    archived: bool = Query(False, description="List only archived memories."),
) -> PageOut:
    tenant = allow(request, READ, namespace=namespace)
    page = services.list_memories(
        tenant=tenant, namespace=namespace, types=type, limit=limit, cursor=cursor,
        archived=archived,
    )  # fmt: skip
    return PageOut(
        memories=[MemoryOut.from_orm(m) for m in page.memories], next_cursor=page.next_cursor
    )


def _job_response(job: Job) -> Status[JobOut]:
    finished = job.status in (Job.Status.SUCCEEDED, Job.Status.FAILED)
    return Status(200 if finished else 202, JobOut.from_orm(job))


@memory.post(
    "/consolidate",
    response={200: JobOut, 202: JobOut, **ERRORS},
    summary="Consolidate episodes into semantic memories and summaries (a job)",
)
def consolidate(request: HttpRequest, body: ConsolidateIn) -> Status[JobOut]:
    namespace = _namespace(body.namespace)
    tenant = allow(request, WRITE, namespace=namespace)
    job = hierarchy.start(
        namespace, tenant=tenant, since=body.since, until=body.until, wait=body.wait
    )
    return _job_response(job)


@memory.post(
    "/forget",
    response={200: JobOut, 202: JobOut, **ERRORS},
    summary="Archive faded, unimportant memories (a job)",
)
def forget_faded(request: HttpRequest, body: ForgetIn) -> Status[JobOut]:
    tenant = allow(request, WRITE, namespace=body.namespace)
    job = forgetting.start(
        tenant=tenant, namespace=body.namespace, dry_run=body.dry_run, wait=body.wait
    )
    return _job_response(job)


@memory.post(
    "/purge",
    response={200: PurgeOut, **ERRORS},
    summary="Erase every memory a filter matches (in a namespace or all), with their traces",
)
def purge(request: HttpRequest, body: PurgeIn) -> PurgeOut:
    caller = principal(request)
    if body.namespace is None and caller.namespaces:
        raise Forbidden("a namespace-limited key erases one namespace at a time: give namespace")
    tenant = allow(request, WRITE, namespace=body.namespace, resource="purge")
    erased = erasure.purge(
        tenant=tenant,
        actor=caller.actor,
        namespace=body.namespace,
        spec=body.filters,
        everything=body.all,
        dry_run=body.dry_run,
    )
    return PurgeOut(**erased.as_dict())


@memory.get("/{memory_id}", response={200: MemoryOut, **ERRORS}, summary="Get one memory")
def get_memory(request: HttpRequest, memory_id: str) -> MemoryOut:
    _, row = _owned(request, READ, memory_id)
    services.reinforce([row.id])
    return MemoryOut.from_orm(row)


@memory.patch("/{memory_id}", response={200: MemoryOut, **ERRORS}, summary="Change a memory")
def patch_memory(request: HttpRequest, memory_id: str, body: PatchIn) -> MemoryOut:
    changes = body.model_dump(exclude_unset=True)
    nulls = sorted(k for k, v in changes.items() if v is None)
    if nulls:
        raise ValidationFailed(f"{nulls[0]}: may not be null", details={"fields": nulls})
    if not changes:
        raise ValidationFailed("nothing to change: give content, type, importance or metadata")
    tenant, _ = _owned(request, WRITE, memory_id)
    return MemoryOut.from_orm(services.update(memory_id, changes, tenant=tenant))


@memory.delete("/{memory_id}", response={200: dict, **ERRORS}, summary="Delete a memory")
def delete_memory(request: HttpRequest, memory_id: str) -> dict[str, Any]:
    tenant, row = _owned(request, WRITE, memory_id)
    services.forget(memory_id, tenant=tenant)
    tenancy.audit(tenant, principal(request).actor, "memory.delete", resource=memory_id,
                  details={"namespace": row.namespace})  # fmt: skip
    return {"id": memory_id, "deleted": True}


@memory.post("/{memory_id}/restore", response={200: MemoryOut, **ERRORS}, summary="Un-archive")
def restore(request: HttpRequest, memory_id: str) -> MemoryOut:
    tenant, _ = _owned(request, WRITE, memory_id)
    return MemoryOut.from_orm(forgetting.restore(memory_id, tenant=tenant))


@memory.get("/{memory_id}/children", response={200: MemoriesOut, **ERRORS}, summary="Children")
def children(request: HttpRequest, memory_id: str) -> MemoriesOut:
    tenant, _ = _owned(request, READ, memory_id)
    found = _visible(request, links.children(tenant, memory_id))
    return MemoriesOut(memories=[MemoryOut.from_orm(m) for m in found])


@memory.get("/{memory_id}/parents", response={200: MemoriesOut, **ERRORS}, summary="Parents")
def parents(request: HttpRequest, memory_id: str) -> MemoriesOut:
    tenant, _ = _owned(request, READ, memory_id)
    found = _visible(request, links.parents(tenant, memory_id))
    return MemoriesOut(memories=[MemoryOut.from_orm(m) for m in found])


def _link_out(edge: links.Edge) -> LinkOut:
    return LinkOut(source=edge.source, target=edge.target, kind=edge.kind, weight=edge.weight)


@memory.get("/{memory_id}/links", response={200: LinksOut, **ERRORS}, summary="Links in and out")
def list_links(
    request: HttpRequest,
    memory_id: str,
    kinds: list[str] = Query([]),  # noqa: B008
) -> LinksOut:
    tenant, _ = _owned(request, READ, memory_id)
    edges = links.of(tenant, memory_id, kinds)
    if principal(request).namespaces:
        ends = {e.source for e in edges} | {e.target for e in edges}
        seen = {m.id for m in _visible(request, list(Memory.objects.filter(id__in=ends)))}
        edges = [e for e in edges if e.source in seen and e.target in seen]
    return LinksOut(links=[_link_out(e) for e in edges])


@memory.post("/{memory_id}/links", response={200: LinkOut, **ERRORS}, summary="Add a link")
def add_link(request: HttpRequest, memory_id: str, body: LinkIn) -> LinkOut:
    tenant, _ = _owned(request, WRITE, memory_id)
    _owned(request, WRITE, body.target)  # the target's namespace must be the key's too
    return _link_out(links.add(tenant, memory_id, body.target, body.kind, body.weight))


@memory.delete("/{memory_id}/links", response={200: dict, **ERRORS}, summary="Remove a link")
def remove_link(request: HttpRequest, memory_id: str, target: str, kind: str) -> dict[str, Any]:
    tenant, _ = _owned(request, WRITE, memory_id)
    links.remove(tenant, memory_id, target, kind)
    return {"source": memory_id, "target": target, "kind": kind, "deleted": True}


@graph_router.get("/{memory_id}", response={200: GraphOut, **ERRORS}, summary="Neighbourhood")
def graph(
    request: HttpRequest,
    memory_id: str,
    depth: int = Query(1, ge=0, le=links.MAX_DEPTH),
    kinds: list[str] = Query([]),  # noqa: B008
) -> GraphOut:
    tenant, _ = _owned(request, READ, memory_id)
    found = links.graph(tenant, memory_id, depth=depth, kinds=kinds)
    nodes = _visible(request, found.nodes)
    seen = {m.id for m in nodes}
    return GraphOut(
        nodes=[MemoryOut.from_orm(m) for m in nodes],
        edges=[_link_out(e) for e in found.edges if e.source in seen and e.target in seen],
        truncated=found.truncated,
    )


@job_router.get("/{job_id}", response={200: JobOut, **ERRORS}, summary="A job's status")
def job_status(request: HttpRequest, job_id: str) -> JobOut:
    job = jobs.get(job_id, tenant=principal(request).tenant)
    allow(request, READ, namespace=job.params.get("namespace"), resource=job_id)
    return JobOut.from_orm(job)


@namespace_router.get("", response={200: NamespacesOut, **ERRORS}, summary="Namespaces, counted")
def list_namespaces(request: HttpRequest) -> NamespacesOut:
    caller = principal(request)
    if caller.namespaces:  # a namespace-limited key lists its own namespaces only
        for name in caller.namespaces:
            allow(request, READ, namespace=name)
        found = [n for n in services.namespaces(tenant=caller.tenant)
                 if n.namespace in caller.namespaces]  # fmt: skip
    else:
        found = services.namespaces(tenant=allow(request, READ))
    return NamespacesOut(namespaces=[NamespaceOut(**vars(n)) for n in found])


@namespace_router.get("/{name}", response={200: NamespaceOut, **ERRORS}, summary="One namespace")
def namespace_stats(request: HttpRequest, name: str) -> NamespaceOut:
    tenant = allow(request, READ, namespace=name)
    found = services.namespaces(tenant=tenant, only=name)
    if not found:
        raise NotFound(f"no namespace {name!r}", details={"namespace": name})
    return NamespaceOut(**vars(found[0]))


@namespace_router.delete("/{name}", response={200: PurgeOut, **ERRORS}, summary="Erase a namespace")
def delete_namespace(request: HttpRequest, name: str, dry_run: bool = False) -> PurgeOut:
    tenant = allow(request, WRITE, namespace=name, resource=f"namespace:{name}")
    erased = erasure.purge(
        tenant=tenant, actor=principal(request).actor, namespace=name, everything=True,
        dry_run=dry_run,
    )  # fmt: skip
    return PurgeOut(**erased.as_dict())


@usage_router.get("", response={200: UsageOut, **ERRORS}, summary="The tenant's usage and limits")
def usage(request: HttpRequest) -> UsageOut:
    return UsageOut(**tenancy.usage(allow(request, READ)))


# -- admin: tenants, keys, audit ------------------------------------------------------------


def _operator(request: HttpRequest, what: str) -> str:
    """Tenants are managed by admin keys of the `default` tenant (the operator's)."""
    tenant = allow(request, ADMIN, resource=what)
    if tenant != DEFAULT_TENANT:
        raise Forbidden("only the operator (an admin key of the `default` tenant) manages tenants")
    return tenant


def _audited(request: HttpRequest, action: str, resource: str, **details: Any) -> None:
    caller = principal(request)
    tenancy.audit(caller.tenant, caller.actor, action, resource=resource, details=details)


@admin.get("/tenants", response={200: TenantsOut, **ERRORS}, summary="List tenants")
def list_tenants(request: HttpRequest) -> TenantsOut:
    _operator(request, "tenants")
    rows = Tenant.objects.order_by("id")
    return TenantsOut(tenants=[TenantOut.from_orm(t) for t in rows])


@admin.post("/tenants", response={200: TenantOut, **ERRORS}, summary="Create or update a tenant")
def create_tenant(request: HttpRequest, body: TenantIn) -> TenantOut:
    _operator(request, "tenants")
    tenant = tenancy.create_tenant(body.id, **body.model_dump(exclude={"id"}))
    _audited(request, "tenant.create", body.id, **body.model_dump(exclude={"id"}))
    return TenantOut.from_orm(tenant)


@admin.delete("/tenants/{name}", response={200: dict, **ERRORS}, summary="Delete a tenant")
def delete_tenant(request: HttpRequest, name: str) -> dict[str, Any]:
    _operator(request, f"tenant:{name}")
    if name == DEFAULT_TENANT:
        raise Forbidden("the default tenant cannot be deleted")
    counts = tenancy.delete_tenant(name)
    _audited(request, "tenant.delete", name, **counts)
    return {"tenant": name, "deleted": True, **counts}


@admin.get("/keys", response={200: KeysOut, **ERRORS}, summary="List API keys")
def list_keys(request: HttpRequest, tenant: str | None = None) -> KeysOut:
    caller = allow(request, ADMIN, resource="keys")
    if caller != DEFAULT_TENANT:
        tenant = caller  # a tenant's admin sees its own keys only
    return KeysOut(keys=[KeyOut.from_orm(k) for k in tenancy.list_keys(tenant)])


@admin.post("/keys", response={200: NewKeyOut, **ERRORS}, summary="Create an API key")
def create_key(request: HttpRequest, body: KeyIn) -> NewKeyOut:
    caller = allow(request, ADMIN, resource="keys")
    tenant = body.tenant or caller
    if caller != DEFAULT_TENANT and tenant != caller:
        raise Forbidden("a tenant's admin key creates keys of its own tenant only")
    made = tenancy.create_key(tenant, body.scopes, namespaces=body.namespaces, name=body.name)
    _audited(request, "key.create", made.key.id, tenant=tenant, scopes=made.key.scopes)
    return NewKeyOut(key=made.secret, **KeyOut.from_orm(made.key).model_dump())


@admin.delete("/keys/{key_id}", response={200: KeyOut, **ERRORS}, summary="Revoke an API key")
def revoke_key(request: HttpRequest, key_id: str) -> KeyOut:
    caller = allow(request, ADMIN, resource=key_id)
    key = tenancy.revoke_key(key_id, tenant=None if caller == DEFAULT_TENANT else caller)
    _audited(request, "key.revoke", key_id, tenant=key.tenant_id)
    return KeyOut.from_orm(key)


@admin.get("/audit", response={200: AuditOut, **ERRORS}, summary="The audit log, newest first")
def audit_log(
    request: HttpRequest,
    tenant: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    before: int | None = None,
) -> AuditOut:
    caller = allow(request, ADMIN, resource="audit")
    if caller != DEFAULT_TENANT:
        tenant = caller
    rows = tenancy.audit_log(tenant, limit=limit, before=before)
    return AuditOut(entries=[AuditEntryOut.from_orm(e) for e in rows])


api.add_router("/memory", memory)
api.add_router("/usage", usage_router)
api.add_router("/namespaces", namespace_router)
api.add_router("/admin", admin)
api.add_router("/graph", graph_router)
api.add_router("/jobs", job_router)


# -- probes and fallbacks (plain Django views, outside /api/v2) ---------------------------


def healthz(request: HttpRequest) -> JsonResponse:
    """The process answers."""
    return JsonResponse({"status": "ok", "version": __version__})


def readyz(request: HttpRequest) -> JsonResponse:
    """Every dependency answers: SQL, the embedding model, the vector index, the cache.

    The cache is optional: without it the service works (slower) and reports `degraded`.
    """
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # a probe reports, it does not raise
        checks["database"] = f"error: {exc}"
    try:
        backends.embedder().dim  # noqa: B018 - loads the model
        checks["embedder"] = "ok"
        backends.vector_index().count()
        checks["vector_index"] = "ok"
    except Exception as exc:
        checks.setdefault("embedder", f"error: {exc}")
        checks.setdefault("vector_index", f"error: {exc}")
    checks["cache"] = cache_health()
    required = [v for k, v in checks.items() if k != "cache"]
    if any(v != "ok" for v in required):
        status, code = "unavailable", 503
    else:
        status, code = ("ready", 200) if checks["cache"] == "ok" else ("degraded", 200)
    return JsonResponse({"status": status, "checks": checks}, status=code)


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


PUBLIC = ("/api/v2/openapi.json", "/api/v2/docs")


class AuthMiddleware:
    """Authenticate every API request (Bearer key), then count it against the tenant's
    rate limit. Sets `request.principal`; answers 401/429 in the API's error envelope."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # path_info, not path: routing uses it, and path carries any SCRIPT_NAME prefix.
        where = request.path_info
        if where.startswith("/api/v2/") and not where.startswith(PUBLIC):
            client = request.META.get("REMOTE_ADDR", "")
            try:
                caller = tenancy.authenticate(request.headers.get("Authorization"), client)
                tenancy.check_rate(caller)
            except SFMError as exc:
                return error_response(exc)
            except DatabaseError as exc:
                log.warning("database unavailable during authentication: %s", exc)
                connection.close_if_unusable_or_obsolete()
                return error_response(DatabaseUnavailable("the database is unavailable; retry"))
            request.principal = caller  # type: ignore[attr-defined]
        return self.get_response(request)


def _outbox_depth() -> int:
    try:
        return services.outbox_depth()
    except DatabaseError:
        return -1  # the scrape still answers; readyz says what is wrong


metrics.watch_outbox(_outbox_depth)


ACCESS = logging.getLogger("somafractalmemory.access")


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
            ACCESS.info(
                "%s %s %s %.1f ms", request.method, request.path_info, response.status_code,
                seconds * 1000,
                extra={"method": request.method, "route": route,
                       "status": response.status_code, "ms": round(seconds * 1000, 2)},
            )  # fmt: skip
            return response
        finally:
            logs.REQUEST_ID.reset(token)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text format: requests, stores, searches, model and index time, outbox."""
    return HttpResponse(metrics.exposition(), content_type=metrics.CONTENT_TYPE)


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
