"""HTTP API v2 routes (Django Ninja): parse, authorize, call one verb, return a schema.

The NinjaAPI that mounts these routers, its error envelope and handlers live in
`server/api.py`; who may do what in `access.py`; the verbs in `services.py`.
"""

from __future__ import annotations

import io
import re
from datetime import datetime
from typing import Any

from django.http import HttpRequest, StreamingHttpResponse
from ninja import Query, Router
from ninja.responses import Status

from somafractalmemory.conf import get_config
from somafractalmemory.errors import Forbidden, NotFound, ValidationFailed
from somafractalmemory.memories import links, services, tenancy
from somafractalmemory.memories.access import (
    ADMIN,
    READ,
    WRITE,
    allow,
    audited,
    operator,
    owned,
    principal,
    readable,
    visible,
)
from somafractalmemory.memories.jobs import consolidation, forgetting, runner
from somafractalmemory.memories.models import DEFAULT_TENANT, Job
from somafractalmemory.memories.schemas import (
    ERRORS,
    NAMESPACE_PATTERN,
    AuditEntryOut,
    AuditOut,
    BatchIn,
    BatchOut,
    ConsolidateIn,
    ForgetIn,
    GraphOut,
    HalfLivesIn,
    HiddenOut,
    ImportOut,
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
    NewKeyOut,
    PageOut,
    PatchIn,
    PolicyIn,
    PolicyOut,
    PurgeIn,
    PurgeOut,
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

memory = Router(tags=["memory"])
graph_router = Router(tags=["links"])
usage_router = Router(tags=["tenancy"])
namespace_router = Router(tags=["namespaces"])
admin = Router(tags=["admin"])
job_router = Router(tags=["jobs"])
transfer_router = Router(tags=["transfer"])


def _namespace(name: str | None) -> str:
    return name or get_config().namespace


@memory.post("/store", response={200: StoreOut, **ERRORS}, summary="Store a memory")
def store(request: HttpRequest, body: StoreIn) -> StoreOut:
    tenant = allow(request, WRITE, namespace=_namespace(body.namespace))
    return StoreOut.of(services.store_many([body.to_new()], tenant=tenant, report_near=True)[0])


@memory.post("/batch", response={200: BatchOut, **ERRORS}, summary="Store up to 1,000 memories")
def store_batch(request: HttpRequest, body: BatchIn) -> BatchOut:
    tenant = principal(request).tenant
    for name in sorted({_namespace(item.namespace) for item in body.memories}):
        allow(request, WRITE, namespace=name)
    stored = services.store_many([item.to_new() for item in body.memories], tenant=tenant)
    return BatchOut(memories=[StoreOut.of(s) for s in stored])


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
        zoom=body.zoom,
        expand=body.expand,
        visible=principal(request).namespaces,
        reinforce=body.reinforce,
        as_of=body.as_of,
    )
    result = services.search(body.query, query, tenant=tenant)
    explain = scoring if body.explain else None
    return SearchOut(
        memories=[SearchHitOut.of(h, explain=explain, expand=body.expand) for h in result.hits],
        latency_ms=round(result.latency_ms, 2),
        mode=result.mode,
        warnings=result.warnings,
        hidden=[HiddenOut(id=i, reason=why) for i, why in sorted(result.hidden.items())]  # type: ignore[arg-type]
        if body.explain
        else None,
    )


@memory.get("", response={200: PageOut, **ERRORS}, summary="List memories, newest first")
def list_memories(
    request: HttpRequest,
    namespace: str | None = None,
    type: list[MemoryTypeName] = Query([]),  # noqa: B008 - the API's field name
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = None,
    archived: bool = Query(False, description="List only archived memories."),
    as_of: datetime | None = Query(None, description="Only those valid then (default: now)."),  # noqa: B008
    include_invalid: bool = Query(
        False, description="Also those not valid `as_of`: superseded, expired, not yet valid."
    ),
    key: str | None = Query(None, description="Only this key's versions (now: its current one)."),
) -> PageOut:
    tenant = allow(request, READ, namespace=namespace)
    page = services.list_memories(
        tenant=tenant,
        namespace=namespace,
        types=type,
        limit=limit,
        cursor=cursor,
        archived=archived,
        as_of=as_of,
        include_invalid=include_invalid,
        key=key,
    )
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
    job = consolidation.start(
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
    erased = services.purge(
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
    _, row = owned(request, READ, memory_id)
    services.reinforce([row.id])
    return MemoryOut.from_orm(row)


@memory.patch("/{memory_id}", response={200: MemoryOut, **ERRORS}, summary="Change a memory")
def patch_memory(request: HttpRequest, memory_id: str, body: PatchIn) -> MemoryOut:
    changes = body.model_dump(exclude_unset=True)
    nulls = sorted(k for k, v in changes.items() if v is None)
    if nulls:
        raise ValidationFailed(f"{nulls[0]}: may not be null", details={"fields": nulls})
    if not changes:
        raise ValidationFailed(
            "nothing to change: give content, type, importance, metadata, valid_from, "
            "valid_until, expires_at or ttl_seconds"
        )
    tenant, _ = owned(request, WRITE, memory_id)
    return MemoryOut.from_orm(services.update(memory_id, changes, tenant=tenant))


@memory.delete("/{memory_id}", response={200: dict, **ERRORS}, summary="Delete a memory")
def delete_memory(request: HttpRequest, memory_id: str) -> dict[str, Any]:
    tenant, row = owned(request, WRITE, memory_id)
    services.delete(memory_id, tenant=tenant)
    audited(request, "memory.delete", memory_id, namespace=row.namespace)
    return {"id": memory_id, "deleted": True}


@memory.post("/{memory_id}/restore", response={200: MemoryOut, **ERRORS}, summary="Un-archive")
def restore(request: HttpRequest, memory_id: str) -> MemoryOut:
    tenant, _ = owned(request, WRITE, memory_id)
    return MemoryOut.from_orm(services.restore(memory_id, tenant=tenant))


@memory.get(
    "/{memory_id}/history",
    response={200: MemoriesOut, **ERRORS},
    summary="Every version of a memory, oldest first (its key's, and by supersedes links)",
)
def history(request: HttpRequest, memory_id: str) -> MemoriesOut:
    _, row = owned(request, READ, memory_id)
    found = visible(request, services.history(row))
    return MemoriesOut(memories=[MemoryOut.from_orm(m) for m in found])


@memory.get("/{memory_id}/children", response={200: MemoriesOut, **ERRORS}, summary="Children")
def children(request: HttpRequest, memory_id: str) -> MemoriesOut:
    tenant, _ = owned(request, READ, memory_id)
    found = visible(request, links.children(tenant, memory_id))
    return MemoriesOut(memories=[MemoryOut.from_orm(m) for m in found])


@memory.get("/{memory_id}/parents", response={200: MemoriesOut, **ERRORS}, summary="Parents")
def parents(request: HttpRequest, memory_id: str) -> MemoriesOut:
    tenant, _ = owned(request, READ, memory_id)
    found = visible(request, links.parents(tenant, memory_id))
    return MemoriesOut(memories=[MemoryOut.from_orm(m) for m in found])


@memory.get("/{memory_id}/links", response={200: LinksOut, **ERRORS}, summary="Links in and out")
def list_links(
    request: HttpRequest,
    memory_id: str,
    kinds: list[str] = Query([]),  # noqa: B008
) -> LinksOut:
    tenant, _ = owned(request, READ, memory_id)
    edges = links.of(tenant, memory_id, kinds, within=principal(request).namespaces)
    return LinksOut(links=[LinkOut.of(e) for e in edges])


@memory.post("/{memory_id}/links", response={200: LinkOut, **ERRORS}, summary="Add a link")
def add_link(request: HttpRequest, memory_id: str, body: LinkIn) -> LinkOut:
    tenant, _ = owned(request, WRITE, memory_id)
    owned(request, WRITE, body.target)  # the target's namespace must be the key's too
    return LinkOut.of(links.add(tenant, memory_id, body.target, body.kind, body.weight))


@memory.delete("/{memory_id}/links", response={200: dict, **ERRORS}, summary="Remove a link")
def remove_link(request: HttpRequest, memory_id: str, target: str, kind: str) -> dict[str, Any]:
    tenant, _ = owned(request, WRITE, memory_id)
    owned(request, WRITE, target)  # the target's namespace must be the key's too, as for add
    links.remove(tenant, memory_id, target, kind)
    return {"source": memory_id, "target": target, "kind": kind, "deleted": True}


@graph_router.get("/{memory_id}", response={200: GraphOut, **ERRORS}, summary="Neighbourhood")
def graph(
    request: HttpRequest,
    memory_id: str,
    depth: int = Query(1, ge=0, le=links.MAX_DEPTH),
    kinds: list[str] = Query([]),  # noqa: B008
) -> GraphOut:
    tenant, _ = owned(request, READ, memory_id)
    found = links.graph(tenant, memory_id, depth=depth, kinds=kinds)
    nodes = visible(request, found.nodes)
    seen = {m.id for m in nodes}
    return GraphOut(
        nodes=[MemoryOut.from_orm(m) for m in nodes],
        edges=[LinkOut.of(e) for e in found.edges if e.source in seen and e.target in seen],
        truncated=found.truncated,
    )


@job_router.get("/{job_id}", response={200: JobOut, **ERRORS}, summary="A job's status")
def job_status(request: HttpRequest, job_id: str) -> JobOut:
    job = runner.get(job_id, tenant=principal(request).tenant)
    allow(request, READ, namespace=job.params.get("namespace"), resource=job_id)
    return JobOut.from_orm(job)


@namespace_router.get("", response={200: NamespacesOut, **ERRORS}, summary="Namespaces, counted")
def list_namespaces(request: HttpRequest) -> NamespacesOut:
    tenant, within = readable(request)
    found = services.namespaces(tenant=tenant, within=within)
    return NamespacesOut(namespaces=[NamespaceOut.of(n) for n in found])


@namespace_router.get("/{name}", response={200: NamespaceOut, **ERRORS}, summary="One namespace")
def namespace_stats(request: HttpRequest, name: str) -> NamespaceOut:
    tenant = allow(request, READ, namespace=name)
    found = services.namespaces(tenant=tenant, only=name)
    if not found:
        raise NotFound(f"no namespace {name!r}", details={"namespace": name})
    return NamespaceOut.of(found[0])


@namespace_router.get(
    "/{name}/policy", response={200: PolicyOut, **ERRORS}, summary="A namespace's expiry policy"
)
def get_policy(request: HttpRequest, name: str) -> PolicyOut:
    tenant = allow(request, READ, namespace=name)
    return PolicyOut.from_orm(tenancy.policy(tenant, name))


@namespace_router.put(
    "/{name}/policy",
    response={200: PolicyOut, **ERRORS},
    summary="Set a namespace's default time to live and what expiry does",
)
def put_policy(request: HttpRequest, name: str, body: PolicyIn) -> PolicyOut:
    if not re.match(NAMESPACE_PATTERN, name):
        raise ValidationFailed(
            "namespace: letters, digits and `_ . : -`, at most 128", details={"namespace": name}
        )
    tenant = allow(request, WRITE, namespace=name, resource=f"namespace:{name}")
    found = tenancy.set_policy(tenant, name, ttl_seconds=body.ttl_seconds, on_expiry=body.on_expiry)
    audited(request, "namespace.policy", name, **body.model_dump())
    return PolicyOut.from_orm(found)


@namespace_router.delete("/{name}", response={200: PurgeOut, **ERRORS}, summary="Erase a namespace")
def delete_namespace(request: HttpRequest, name: str, dry_run: bool = False) -> PurgeOut:
    tenant = allow(request, WRITE, namespace=name, resource=f"namespace:{name}")
    actor = principal(request).actor
    erased = services.purge(
        tenant=tenant, actor=actor, namespace=name, everything=True, dry_run=dry_run
    )
    return PurgeOut(**erased.as_dict())


@usage_router.get("", response={200: UsageOut, **ERRORS}, summary="The tenant's usage and limits")
def usage(request: HttpRequest) -> UsageOut:
    return UsageOut(**tenancy.usage(allow(request, READ)))


# -- admin: tenants, keys, audit ------------------------------------------------------------


@admin.get("/tenants", response={200: TenantsOut, **ERRORS}, summary="List tenants")
def list_tenants(request: HttpRequest) -> TenantsOut:
    operator(request, "tenants")
    return TenantsOut(tenants=[TenantOut.from_orm(t) for t in tenancy.list_tenants()])


@admin.post("/tenants", response={200: TenantOut, **ERRORS}, summary="Create or update a tenant")
def create_tenant(request: HttpRequest, body: TenantIn) -> TenantOut:
    operator(request, "tenants")
    if body.id == DEFAULT_TENANT and body.requests_per_minute is not None:
        raise Forbidden("the operator's own tenant is not rate limited (it manages the others)")
    tenant = tenancy.create_tenant(body.id, **body.model_dump(exclude={"id"}))
    audited(request, "tenant.create", body.id, **body.model_dump(exclude={"id"}))
    return TenantOut.from_orm(tenant)


@admin.delete("/tenants/{name}", response={200: dict, **ERRORS}, summary="Delete a tenant")
def delete_tenant(request: HttpRequest, name: str) -> dict[str, Any]:
    operator(request, f"tenant:{name}")
    if name == DEFAULT_TENANT:
        raise Forbidden("the default tenant cannot be deleted")
    counts = tenancy.delete_tenant(name)
    audited(request, "tenant.delete", name, **counts)
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
    audited(request, "key.create", made.key.id, tenant=tenant, scopes=made.key.scopes)
    return NewKeyOut(key=made.secret, **KeyOut.from_orm(made.key).model_dump())


@admin.delete("/keys/{key_id}", response={200: KeyOut, **ERRORS}, summary="Revoke an API key")
def revoke_key(request: HttpRequest, key_id: str) -> KeyOut:
    caller = allow(request, ADMIN, resource=key_id)
    key = tenancy.revoke_key(key_id, tenant=None if caller == DEFAULT_TENANT else caller)
    audited(request, "key.revoke", key_id, tenant=key.tenant_id)
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


# -- export and import ----------------------------------------------------------------------

NDJSON = "application/x-ndjson"


@transfer_router.get(
    "/export",
    response={200: None, **ERRORS},
    summary="The caller's memories as JSON lines (the `sfm export` format), streamed",
    openapi_extra={
        "responses": {
            "200": {
                "description": "One `sfm-memory/1` record per line.",
                "content": {NDJSON: {"schema": {"type": "string"}}},
            }
        }
    },
)
def export(
    request: HttpRequest,
    namespace: list[str] = Query([]),  # noqa: B008 - repeatable
) -> StreamingHttpResponse:
    tenant, within = readable(request)
    names = namespace or list(within)
    for name in names:
        allow(request, READ, namespace=name)
    ids = list(services.memory_ids(tenant, names))
    audited(request, "memory.export", ",".join(names) or "*", memories=len(ids))
    response = StreamingHttpResponse(services.export_lines(ids), content_type=NDJSON)
    response["Content-Disposition"] = 'attachment; filename="memories.jsonl"'
    return response


@transfer_router.post(
    "/import",
    response={200: ImportOut, **ERRORS},
    summary="Import JSON lines (an export) into the caller's tenant; idempotent",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {NDJSON: {"schema": {"type": "string"}}},
        }
    },
)
def import_memories(request: HttpRequest) -> ImportOut:
    tenant = principal(request).tenant
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationFailed("the body is not UTF-8 text") from None
    records = services.read_export(io.StringIO(text))  # the whole file, before any write
    for name in sorted({r["namespace"] for r in records}):
        allow(request, WRITE, namespace=name)
    done = services.load_records(records, tenant=tenant)
    audited(request, "memory.import", tenant, memories=done.memories, skipped=done.skipped)
    return ImportOut(**vars(done))


ROUTERS = {
    "/memory": memory,
    "/usage": usage_router,
    "/namespaces": namespace_router,
    "/admin": admin,
    "/graph": graph_router,
    "/jobs": job_router,
    "": transfer_router,
}
"""Where each router is mounted under /api/v2."""
