"""The dashboard's pages. Each page authenticates like the API (the key a login stored in an
HttpOnly cookie, or no key when `auth` is optional) and asks the API's own authorization
(`memories/access.py`), so it shows exactly what the key may read. Reading in the dashboard
does not reinforce memories (it is not the agent recalling)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render

from somafractalmemory.conf import get_config
from somafractalmemory.errors import SFMError
from somafractalmemory.memories import access, links, services, tenancy
from somafractalmemory.memories.models import Memory
from somafractalmemory.memories.schemas import LinkOut, NamespaceOut, SearchHitOut
from somafractalmemory.retrieval import ranking

COOKIE = "sfm_dashboard_key"
ACTIVITY_DAYS = 30
SEARCH_TOP_K = 20


class LoginNeeded(Exception):
    pass


def _principal(request: HttpRequest) -> tenancy.Principal:
    key = request.COOKIES.get(COOKIE)
    if not key and get_config().auth == "required":
        raise LoginNeeded
    header = f"Bearer {key}" if key else None
    caller = tenancy.authenticate(header, access.client_address(request))
    request.principal = caller  # type: ignore[attr-defined]
    return caller


def page(view: Any) -> Any:
    """Authenticate, then render; the service's errors become an error page with their
    status and code."""

    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            caller = _principal(request)
            context = view(request, *args, **kwargs)
        except LoginNeeded:
            return HttpResponseRedirect("/login")
        except SFMError as exc:
            if exc.code in ("unauthorized", "invalid_api_key"):
                return HttpResponseRedirect("/login")
            context = {"error": exc, "caller": None}
            return render(request, "dashboard/error.html", context, status=exc.status)
        context.setdefault("caller", caller)
        context["login"] = bool(request.COOKIES.get(COOKIE))
        return render(request, f"dashboard/{view.__name__}.html", context)

    wrapped.__name__ = view.__name__
    return wrapped


@dataclass(frozen=True)
class Bar:
    day: str
    count: int
    height: float
    x: float
    y: float


def activity(tenant: str, within: tuple[str, ...]) -> list[Bar]:
    """Memories stored per day over the last ACTIVITY_DAYS days (bars of an SVG chart)."""
    since = (datetime.now(UTC) - timedelta(days=ACTIVITY_DAYS - 1)).date()
    counts = services.stored_per_day(tenant, since, within)
    days = [since + timedelta(days=i) for i in range(ACTIVITY_DAYS)]
    top = max(counts.values(), default=0) or 1
    heights = [100 * counts.get(day, 0) / top for day in days]
    return [
        Bar(day.isoformat(), counts.get(day, 0), h, 20.0 * i, 110 - h)
        for i, (day, h) in enumerate(zip(days, heights, strict=True))
    ]


@page
def home(request: HttpRequest) -> dict[str, Any]:
    tenant, within = access.readable(request)
    listed = [NamespaceOut.of(n) for n in services.namespaces(tenant=tenant, within=within)]
    bars = activity(tenant, access.principal(request).namespaces)
    return {
        "namespaces": listed,
        "totals": {
            "memories": sum(n.memories for n in listed),
            "archived": sum(n.archived for n in listed),
        },
        "bars": bars,
        "stored_recently": sum(b.count for b in bars),
        "days": ACTIVITY_DAYS,
    }


@page
def search(request: HttpRequest) -> dict[str, Any]:
    text = request.GET.get("q", "").strip()
    namespace = request.GET.get("namespace") or None
    if not text:
        return {"query": "", "namespace": namespace or "", "hits": None}
    tenant = access.allow(request, access.READ, namespace=namespace)
    scoring = ranking.Scoring()
    query = services.Query(
        namespace=namespace, top_k=SEARCH_TOP_K, scoring=scoring, reinforce=False
    )
    found = services.search(text, query, tenant=tenant)
    hits = [SearchHitOut.of(hit, explain=scoring) for hit in found.hits]
    return {
        "query": text,
        "namespace": namespace or "",
        "hits": hits,
        "latency_ms": found.latency_ms,
        "mode": found.mode,
        "warnings": found.warnings,
    }


def _ancestors(request: HttpRequest, tenant: str, memory_id: str) -> list[list[Memory]]:
    """The levels above a memory, nearest first: its parents, their parents, ..."""
    levels, frontier, seen = [], [memory_id], {memory_id}
    while frontier:
        above = {p.id: p for i in frontier for p in links.parents(tenant, i) if p.id not in seen}
        found = access.visible(request, list(above.values()))
        if not found:
            break
        levels.append(found)
        seen |= {p.id for p in found}
        frontier = [p.id for p in found]
    return levels


@dataclass(frozen=True)
class Node:
    id: str
    label: str
    level: int
    x: float
    y: float
    centre: bool


def _layout(centre: Memory, nodes: list[Memory]) -> list[Node]:
    """The memory in the middle, its neighbours on a circle around it (SVG coordinates)."""
    others = [n for n in nodes if n.id != centre.id]
    placed = [Node(centre.id, centre.content[:40], centre.level, 200.0, 150.0, True)]
    for i, n in enumerate(others):
        angle = 2 * math.pi * i / max(len(others), 1)
        x, y = 200 + 140 * math.cos(angle), 150 + 110 * math.sin(angle)
        placed.append(Node(n.id, n.content[:40], n.level, x, y, False))
    return placed


@page
def memory(request: HttpRequest, memory_id: str) -> dict[str, Any]:
    tenant, row = access.owned(request, access.READ, memory_id)
    within = access.principal(request).namespaces
    edges = [LinkOut.of(e) for e in links.of(tenant, memory_id, within=within)]
    found = links.graph(tenant, memory_id, depth=1, kinds=[])
    nodes = access.visible(request, found.nodes)
    placed = {n.id: n for n in _layout(row, nodes)}
    lines = [
        (placed[e.source], placed[e.target], e.kind)
        for e in found.edges
        if e.source in placed and e.target in placed
    ]
    return {
        "memory": row,
        "links": edges,
        "ancestors": _ancestors(request, tenant, memory_id),
        "children": access.visible(request, links.children(tenant, memory_id)),
        "history": access.visible(request, services.history(row)),
        "nodes": list(placed.values()),
        "lines": lines,
        "truncated": found.truncated,
    }


def login(request: HttpRequest) -> HttpResponse:
    """A form for an API key; a valid one is kept in an HttpOnly, same-site cookie."""
    error = None
    if request.method == "POST":
        key = request.POST.get("key", "").strip()
        try:
            tenancy.authenticate(f"Bearer {key}", access.client_address(request))
        except SFMError as exc:
            error = exc
        else:
            response = HttpResponseRedirect("/")
            response.set_cookie(
                COOKIE,
                key,
                httponly=True,
                samesite="Strict",
                secure=request.is_secure(),
                max_age=7 * 24 * 3600,
            )
            return response
    context = {"error": error, "caller": None}
    return render(request, "dashboard/login.html", context, status=401 if error else 200)


def logout(request: HttpRequest) -> HttpResponse:
    response = HttpResponseRedirect("/login")
    response.delete_cookie(COOKIE)
    return response
