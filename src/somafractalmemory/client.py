"""Python client of the SomaFractalMemory REST API: `Memory` (blocking) and `AsyncMemory`.

    from somafractalmemory.client import Memory

    with Memory("http://127.0.0.1:10101") as memory:
        memory.remember("Alice prefers the window seat", metadata={"user": "alice"})
        for hit in memory.recall("where does Alice like to sit?"):
            print(f"{hit.score:.2f} {hit.content}")

Needs only httpx (no Django). Every call returns typed results; an error answer raises the
`ApiError` subclass of its status with the service's stable `code`, `message` and
`details`. Answers 429 and 503 are retried with exponential backoff, honouring
`Retry-After`; so is a request that could not be sent (connection refused), and a read that
timed out when the call has no side effect.
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
import random
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, TypeVar, overload

import httpx

DEFAULT_URL = "http://127.0.0.1:10101"
API = "/api/v2"
BATCH = 1000  # the service's largest batch
RETRIED_STATUS = frozenset({429, 503})

T = TypeVar("T")


# -- results ------------------------------------------------------------------------------


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time as the API writes it (`Z` for UTC); None for none."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


class _Result:
    """A frozen dataclass built from an API object (unknown keys are ignored, so a newer
    server adding fields does not break an older client)."""

    _times: tuple[str, ...] = ()

    @classmethod
    def of(cls: type[T], data: Mapping[str, Any]) -> T:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        values = {k: v for k, v in data.items() if k in names}
        for name in cls._times:  # type: ignore[attr-defined]
            if name in values:
                values[name] = parse_time(values[name])
        return cls(**values)


@dataclass(frozen=True)
class Stored(_Result):
    """A stored memory (or, when deduplicated, the one already stored with that content)."""

    id: str
    embedding_id: str
    importance: float
    created_at: datetime
    deduplicated: bool = False
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)
    recorded_at: datetime | None = None
    key: str = ""
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    expires_at: datetime | None = None
    supersedes: list[str] = field(default_factory=list)
    """Ids of the versions this store closed (its key's previous one, `supersedes`)."""
    possible_conflicts: list[dict[str, Any]] = field(default_factory=list)
    """`{id, score}` of valid semantic memories close to this one: facts that may disagree."""
    _times = ("created_at", "recorded_at", "valid_from", "valid_until", "expires_at")


@dataclass(frozen=True)
class MemoryRecord(_Result):
    id: str
    namespace: str
    type: str
    content: str
    importance: float
    metadata: dict[str, Any]
    embedding_id: str
    created_at: datetime
    updated_at: datetime
    access_count: int = 0
    last_accessed_at: datetime | None = None
    strength: float = 1.0
    level: int = 0
    span_end: datetime | None = None
    archived_at: datetime | None = None
    key: str = ""
    recorded_at: datetime | None = None
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    expires_at: datetime | None = None
    status: str = "valid"
    """Now: `valid`, `expired`, `not_yet_valid` or `no_longer_valid`."""
    _times = (
        "created_at",
        "updated_at",
        "last_accessed_at",
        "span_end",
        "archived_at",
        "recorded_at",
        "valid_from",
        "valid_until",
        "expires_at",
    )


@dataclass(frozen=True)
class Hit(_Result):
    """A search result: the memory and its score (with `explain`, the parts of the score)."""

    id: str
    content: str
    score: float
    type: str
    level: int
    namespace: str
    importance: float
    metadata: dict[str, Any]
    created_at: datetime
    explain: dict[str, Any] | None = None
    children: list[dict[str, Any]] | None = None
    parents: list[dict[str, Any]] | None = None
    _times = ("created_at",)


@dataclass(frozen=True)
class Recall:
    """The hits of a search, best first (iterable), with the server's latency and mode."""

    hits: list[Hit]
    latency_ms: float
    mode: str
    warnings: list[str]
    hidden: list[dict[str, Any]] | None = None
    """With `explain`: `{id, reason}` of candidates left out as not valid at `as_of`."""

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    @overload
    def __getitem__(self, index: int) -> Hit: ...

    @overload
    def __getitem__(self, index: slice) -> list[Hit]: ...

    def __getitem__(self, index: int | slice) -> Hit | list[Hit]:
        """`found[0]`, the best hit; `found[:3]`, the first three (a list)."""
        return self.hits[index]

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Recall:
        return cls(
            [Hit.of(h) for h in data["memories"]],
            float(data["latency_ms"]),
            str(data.get("mode", "")),
            list(data.get("warnings", [])),
            data.get("hidden"),
        )


@dataclass(frozen=True)
class Link(_Result):
    source: str
    target: str
    kind: str
    weight: float = 1.0


@dataclass(frozen=True)
class Job(_Result):
    """A background job (consolidation, forgetting); `result` once it has finished."""

    id: str
    kind: str
    status: str
    params: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    _times = ("created_at", "started_at", "finished_at")

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed")


@dataclass(frozen=True)
class Graph:
    """The memories around one, within `depth` links, and the links between them."""

    nodes: list[MemoryRecord]
    edges: list[Link]
    truncated: bool

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Graph:
        nodes = [MemoryRecord.of(m) for m in data["nodes"]]
        return cls(nodes, [Link.of(e) for e in data["edges"]], bool(data["truncated"]))


@dataclass(frozen=True)
class Namespace(_Result):
    """A namespace counted: memories by type and level (archived apart), first and last."""

    namespace: str
    memories: int
    archived: int
    by_type: dict[str, int]
    by_level: dict[str, int]
    first: datetime | None = None
    last: datetime | None = None
    _times = ("first", "last")


@dataclass(frozen=True)
class Purged(_Result):
    """What an erasure took (or, with `dry_run`, would take)."""

    memories: int
    links: int
    vectors: int
    parents_resummarized: int
    parents_removed: int
    neighbours_rewritten: int
    cache_entries: int
    jobs: int
    namespaces: list[str]
    scrubbed: bool
    dry_run: bool
    job_id: str | None = None


@dataclass(frozen=True)
class Policy(_Result):
    """A namespace's default time to live (seconds) and what expiry does (`archive`, `erase`)."""

    namespace: str
    ttl_seconds: int | None = None
    on_expiry: str = "archive"


@dataclass(frozen=True)
class Usage(_Result):
    tenant: str
    memories: int
    bytes: int
    limits: dict[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Tenant(_Result):
    id: str
    created_at: datetime
    max_memories: int | None = None
    max_bytes: int | None = None
    requests_per_minute: int | None = None
    _times = ("created_at",)


@dataclass(frozen=True)
class Key(_Result):
    """An API key's record; `key`, the secret itself, only in the answer that created it."""

    id: str
    tenant_id: str
    name: str
    prefix: str
    scopes: list[str]
    namespaces: list[str]
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    key: str | None = None
    _times = ("created_at", "last_used_at", "revoked_at")


@dataclass(frozen=True)
class AuditEntry(_Result):
    id: int
    tenant: str
    actor: str
    action: str
    resource: str
    outcome: str
    details: dict[str, Any]
    created_at: datetime
    _times = ("created_at",)


# -- errors -------------------------------------------------------------------------------


class ApiError(Exception):
    """The service answered with an error: HTTP `status`, stable `code`, `message`."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details


class BadRequest(ApiError):
    """400 or 422: the request was refused as invalid; nothing was changed."""


class Unauthorized(ApiError):
    """401: no API key, or an unknown one."""


class Forbidden(ApiError):
    """403: the key may not do this (scope, namespace, policy, quota)."""


class NotFound(ApiError):
    """404: no such memory (or not visible to this key)."""


class Conflict(ApiError):
    """409: the operation conflicts with one in progress."""


class RateLimited(ApiError):
    """429 after every retry."""


class Unavailable(ApiError):
    """503 after every retry: a dependency of the service is down."""


class ServerError(ApiError):
    """Another 5xx: a bug in the service."""


class TransportError(Exception):
    """The service could not be reached (after the retries that were safe)."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: BadRequest,
    422: BadRequest,
    429: RateLimited,
    503: Unavailable,
}


def _error(response: httpx.Response) -> ApiError:
    try:
        body = response.json().get("error", {})
    except ValueError:
        body = {}
    kind = _BY_STATUS.get(response.status_code)
    if kind is None:
        kind = ServerError if response.status_code >= 500 else ApiError
    return kind(
        response.status_code,
        str(body.get("code", "http_error")),
        str(body.get("message", response.text[:200] or response.reason_phrase)),
        body.get("details"),
    )


# -- calls --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request and how to read its answer: the part Memory and AsyncMemory share."""

    method: str
    path: str
    json: Any = None
    params: Mapping[str, Any] | None = None
    safe: bool = False  # no side effect: a timed-out read may be sent again
    text: str | None = None
    """A body of JSON lines (an import), instead of `json`."""
    raw: bool = False
    """The answer is text (an export), not JSON."""

    def request(self) -> dict[str, Any]:
        request: dict[str, Any] = {"method": self.method, "url": API + self.path}
        if self.json is not None:
            request["json"] = self.json
        if self.text is not None:
            request["content"] = self.text.encode("utf-8")
            request["headers"] = {"Content-Type": "application/x-ndjson"}
        if self.params:
            request["params"] = {k: v for k, v in self.params.items() if v is not None}
        return request


def _clean(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body without unset options, datetimes as ISO 8601."""
    return {
        k: v.isoformat() if isinstance(v, datetime) else v for k, v in body.items() if v is not None
    }


def _store_body(content: str, **options: Any) -> dict[str, Any]:
    return _clean({"content": content, **options})


def _item(item: str | Mapping[str, Any]) -> dict[str, Any]:
    return _store_body(item) if isinstance(item, str) else _clean(item)


class _Calls:
    """The API, as Calls (shared by the blocking and the asyncio client)."""

    @staticmethod
    def remember(content: str, **options: Any) -> Call:
        return Call("POST", "/memory/store", _store_body(content, **options))

    @staticmethod
    def batch(items: list[dict[str, Any]]) -> Call:
        return Call("POST", "/memory/batch", {"memories": items})

    @staticmethod
    def recall(query: str, **options: Any) -> Call:
        if "types" in options and options["types"] is not None:
            options["types"] = list(options["types"])
        return Call("POST", "/memory/search", _clean({"query": query, **options}), safe=True)

    @staticmethod
    def get(memory_id: str) -> Call:
        return Call("GET", f"/memory/{memory_id}", safe=True)

    @staticmethod
    def update(memory_id: str, changes: Mapping[str, Any]) -> Call:
        return Call("PATCH", f"/memory/{memory_id}", _clean(changes), safe=True)

    @staticmethod
    def forget(memory_id: str) -> Call:
        return Call("DELETE", f"/memory/{memory_id}", safe=True)

    @staticmethod
    def page(
        namespace: str | None,
        types: Iterable[str],
        archived: bool,
        limit: int,
        cursor: str | None,
        as_of: datetime | None = None,
        include_invalid: bool = False,
        key: str | None = None,
    ) -> Call:
        params = {
            "key": key,
            "namespace": namespace,
            "type": list(types) or None,
            "limit": limit,
            "cursor": cursor,
            "archived": "true" if archived else None,
            "as_of": as_of.isoformat() if as_of is not None else None,
            "include_invalid": "true" if include_invalid else None,
        }
        return Call("GET", "/memory", params=params, safe=True)

    @staticmethod
    def history(memory_id: str) -> Call:
        return Call("GET", f"/memory/{memory_id}/history", safe=True)

    @staticmethod
    def link(source: str, target: str, kind: str, weight: float) -> Call:
        body = {"target": target, "kind": kind, "weight": weight}
        return Call("POST", f"/memory/{source}/links", body)

    @staticmethod
    def unlink(source: str, target: str, kind: str) -> Call:
        params = {"target": target, "kind": kind}
        return Call("DELETE", f"/memory/{source}/links", params=params, safe=True)

    @staticmethod
    def links(memory_id: str) -> Call:
        return Call("GET", f"/memory/{memory_id}/links", safe=True)

    @staticmethod
    def related(memory_id: str, direction: str) -> Call:
        return Call("GET", f"/memory/{memory_id}/{direction}", safe=True)

    @staticmethod
    def consolidate(namespace: str | None, wait: bool) -> Call:
        return Call("POST", "/memory/consolidate", _clean({"namespace": namespace, "wait": wait}))

    @staticmethod
    def job(job_id: str) -> Call:
        return Call("GET", f"/jobs/{job_id}", safe=True)

    @staticmethod
    def graph(memory_id: str, depth: int, kinds: Iterable[str]) -> Call:
        params = {"depth": depth, "kinds": list(kinds) or None}
        return Call("GET", f"/graph/{memory_id}", params=params, safe=True)

    @staticmethod
    def restore(memory_id: str) -> Call:
        return Call("POST", f"/memory/{memory_id}/restore", safe=True)

    @staticmethod
    def forget_faded(namespace: str | None, dry_run: bool, wait: bool) -> Call:
        body = _clean({"namespace": namespace, "dry_run": dry_run, "wait": wait})
        return Call("POST", "/memory/forget", body)

    @staticmethod
    def purge(
        namespace: str | None, filters: Mapping[str, Any] | None, everything: bool, dry_run: bool
    ) -> Call:
        body = {"namespace": namespace, "filters": filters, "all": everything, "dry_run": dry_run}
        return Call("POST", "/memory/purge", _clean(body), safe=dry_run)

    @staticmethod
    def namespaces(name: str | None = None) -> Call:
        return Call("GET", f"/namespaces/{name}" if name else "/namespaces", safe=True)

    @staticmethod
    def delete_namespace(name: str, dry_run: bool) -> Call:
        params = {"dry_run": "true" if dry_run else None}
        return Call("DELETE", f"/namespaces/{name}", params=params, safe=True)

    @staticmethod
    def policy(name: str, body: Mapping[str, Any] | None = None) -> Call:
        if body is None:
            return Call("GET", f"/namespaces/{name}/policy", safe=True)
        return Call("PUT", f"/namespaces/{name}/policy", dict(body), safe=True)

    @staticmethod
    def export(namespaces: Iterable[str]) -> Call:
        params = {"namespace": list(namespaces) or None}
        return Call("GET", "/export", params=params, safe=True, raw=True)

    @staticmethod
    def import_(lines: str | Iterable[str]) -> Call:
        text = (
            lines
            if isinstance(lines, str)
            else "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        )
        return Call("POST", "/import", text=text, safe=True)  # idempotent

    @staticmethod
    def usage() -> Call:
        return Call("GET", "/usage", safe=True)

    @staticmethod
    def create_tenant(tenant_id: str, limits: Mapping[str, int | None]) -> Call:
        return _Calls.admin("POST", "tenants", _clean({"id": tenant_id, **limits}))

    @staticmethod
    def create_key(
        scopes: Iterable[str], tenant: str | None, namespaces: Iterable[str], name: str
    ) -> Call:
        body = {"scopes": list(scopes), "tenant": tenant, "namespaces": list(namespaces)}
        return _Calls.admin("POST", "keys", _clean({**body, "name": name}))

    @staticmethod
    def admin(method: str, path: str, body: Any = None, **params: Any) -> Call:
        params = {k: v for k, v in params.items() if v is not None}
        return Call(method, f"/admin/{path}", body, params=params or None, safe=method != "POST")


def _links(data: Mapping[str, Any]) -> list[Link]:
    return [Link.of(link) for link in data["links"]]


def _memories(data: Mapping[str, Any]) -> list[MemoryRecord]:
    return [MemoryRecord.of(m) for m in data["memories"]]


def _chunks(items: Iterable[str | Mapping[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for item in items:
        chunk.append(_item(item))
        if len(chunk) == BATCH:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass(frozen=True)
class Retries:
    """How often and how long to retry 429/503 and unsent requests."""

    attempts: int = 4
    backoff: float = 0.25  # seconds before the first retry, doubled after each
    most: float = 30.0  # longest wait, Retry-After included

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        after = response.headers.get("Retry-After") if response is not None else None
        if after is not None:
            try:
                return min(self.most, max(0.0, float(after)))
            except ValueError:
                pass
        return min(self.most, self.backoff * 2**attempt * (0.5 + random.random() / 2))


def _retryable(call: Call, error: httpx.TransportError) -> bool:
    """A request that never left is always safe to send again; one that may have been
    processed only when it has no side effect."""
    return isinstance(error, httpx.ConnectError | httpx.ConnectTimeout) or (
        call.safe and isinstance(error, httpx.TimeoutException | httpx.RemoteProtocolError)
    )


def _retry_after(
    call: Call, retries: Retries, attempt: int, outcome: httpx.Response | httpx.TransportError
) -> float | None:
    """Seconds to wait before sending `call` again after this outcome, or None: it stands.
    The retry policy both clients share; they differ only in how they wait."""
    if attempt >= retries.attempts:
        return None
    if isinstance(outcome, httpx.TransportError):
        return retries.delay(attempt, None) if _retryable(call, outcome) else None
    return retries.delay(attempt, outcome) if outcome.status_code in RETRIED_STATUS else None


def _result(call: Call, outcome: httpx.Response | httpx.TransportError) -> Any:
    """The answer's JSON, or the error the outcome stands for."""
    if isinstance(outcome, httpx.TransportError):
        raise TransportError(f"{call.method} {call.path}: {outcome}") from outcome
    if outcome.status_code >= 400:
        raise _error(outcome)
    return outcome.text if call.raw else outcome.json()


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": "somafractalmemory-client"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


# -- the blocking client ----------------------------------------------------------------------


class Memory:
    """The service at `url` (default http://127.0.0.1:10101), as `api_key` when auth is on."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: Retries | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retries = retries or Retries()
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers=_headers(api_key),
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call) -> Any:
        for attempt in itertools.count():
            try:
                outcome: httpx.Response | httpx.TransportError = self._http.request(
                    **call.request()
                )
            except httpx.TransportError as exc:
                outcome = exc
            wait = _retry_after(call, self.retries, attempt, outcome)
            if wait is None:
                return _result(call, outcome)
            time.sleep(wait)
        raise AssertionError("unreachable")

    def remember(
        self,
        content: str,
        *,
        namespace: str | None = None,
        type: str | None = None,
        importance: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        created_at: datetime | None = None,
        dedupe: bool | None = None,
        key: str | None = None,
        supersedes: Iterable[str] | None = None,
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
        expires_at: datetime | None = None,
        ttl_seconds: int | None = None,
    ) -> Stored:
        """Store one memory; the same content again in the namespace returns the stored one
        (unless `dedupe=False`). With `key`, it is that key's next version (the previous
        one stops being valid); `supersedes` closes those memories; `ttl_seconds` or
        `expires_at`: it leaves searches then."""
        return Stored.of(
            self._send(
                _Calls.remember(
                    content,
                    namespace=namespace,
                    type=type,
                    importance=importance,
                    metadata=dict(metadata) if metadata is not None else None,
                    created_at=created_at,
                    dedupe=dedupe,
                    key=key,
                    supersedes=list(supersedes) if supersedes is not None else None,
                    valid_from=valid_from,
                    valid_until=valid_until,
                    expires_at=expires_at,
                    ttl_seconds=ttl_seconds,
                )
            )
        )

    def batch(self, items: Iterable[str | Mapping[str, Any]]) -> builtins.list[Stored]:
        """Store many memories (texts, or dicts with the fields of `remember`), sent in
        batches of 1,000, each all or nothing."""
        stored: builtins.list[Stored] = []
        for chunk in _chunks(items):
            stored += [Stored.of(s) for s in self._send(_Calls.batch(chunk))["memories"]]
        return stored

    def recall(
        self,
        query: str,
        *,
        top_k: int = 10,
        namespace: str | None = None,
        filters: Mapping[str, Any] | None = None,
        mode: str | None = None,
        types: Iterable[str] | None = None,
        levels: Iterable[int] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        min_score: float | None = None,
        explain: bool | None = None,
        expand: str | None = None,
        zoom: bool | None = None,
        reinforce: bool | None = None,
        as_of: datetime | None = None,
    ) -> Recall:
        """The memories that best answer `query`, best first (`reinforce=False`: without
        counting them as recalled; `as_of`: among those valid at that instant)."""
        return Recall.of(
            self._send(
                _Calls.recall(
                    query,
                    top_k=top_k,
                    namespace=namespace,
                    filters=filters,
                    mode=mode,
                    types=types,
                    levels=list(levels) if levels is not None else None,
                    created_after=created_after,
                    created_before=created_before,
                    min_score=min_score,
                    explain=explain,
                    expand=expand,
                    zoom=zoom,
                    reinforce=reinforce,
                    as_of=as_of,
                )
            )
        )

    def get(self, memory_id: str) -> MemoryRecord:
        return MemoryRecord.of(self._send(_Calls.get(memory_id)))

    def update(self, memory_id: str, **changes: Any) -> MemoryRecord:
        """Change `content`, `type`, `importance`, `metadata` (which is replaced),
        `valid_from`, `valid_until`, `expires_at` or `ttl_seconds`."""
        return MemoryRecord.of(self._send(_Calls.update(memory_id, changes)))

    def history(self, memory_id: str) -> builtins.list[MemoryRecord]:
        """Every version of a memory, oldest first (its key's, and by `supersedes`)."""
        return _memories(self._send(_Calls.history(memory_id)))

    def forget(self, memory_id: str) -> None:
        """Delete a memory, its links and vector."""
        self._send(_Calls.forget(memory_id))

    def list(
        self,
        *,
        namespace: str | None = None,
        types: Iterable[str] = (),
        archived: bool = False,
        page_size: int = 100,
        as_of: datetime | None = None,
        include_invalid: bool = False,
        key: str | None = None,
    ) -> Iterator[MemoryRecord]:
        """Every memory valid `as_of` (default: now; `include_invalid`: every one), newest
        first, fetched a page at a time; with `key`, that key's versions only."""
        cursor: str | None = None
        while True:
            page = self._send(
                _Calls.page(
                    namespace, types, archived, page_size, cursor, as_of, include_invalid, key
                )
            )
            yield from _memories(page)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def link(self, source: str, target: str, kind: str = "related", weight: float = 1.0) -> Link:
        return Link.of(self._send(_Calls.link(source, target, kind, weight)))

    def unlink(self, source: str, target: str, kind: str = "related") -> None:
        self._send(_Calls.unlink(source, target, kind))

    def links(self, memory_id: str) -> builtins.list[Link]:
        return _links(self._send(_Calls.links(memory_id)))

    def children(self, memory_id: str) -> builtins.list[MemoryRecord]:
        """What a consolidated memory was made from."""
        return _memories(self._send(_Calls.related(memory_id, "children")))

    def parents(self, memory_id: str) -> builtins.list[MemoryRecord]:
        """The consolidated memories made from this one."""
        return _memories(self._send(_Calls.related(memory_id, "parents")))

    def consolidate(self, namespace: str | None = None, *, wait: bool = True) -> Job:
        """Consolidate episodes into semantic memories and summaries; with `wait`, the
        finished job, else the job to poll with `job()`."""
        return Job.of(self._send(_Calls.consolidate(namespace, wait)))

    def job(self, job_id: str) -> Job:
        return Job.of(self._send(_Calls.job(job_id)))

    def graph(self, memory_id: str, *, depth: int = 1, kinds: Iterable[str] = ()) -> Graph:
        """The memories within `depth` links of one (of these `kinds`), and the links."""
        return Graph.of(self._send(_Calls.graph(memory_id, depth, kinds)))

    def restore(self, memory_id: str) -> MemoryRecord:
        """Bring an archived memory back into search."""
        return MemoryRecord.of(self._send(_Calls.restore(memory_id)))

    def forget_faded(
        self, namespace: str | None = None, *, dry_run: bool = False, wait: bool = True
    ) -> Job:
        """Archive faded, unimportant memories (and expired ones): a job."""
        return Job.of(self._send(_Calls.forget_faded(namespace, dry_run, wait)))

    def purge(
        self,
        *,
        namespace: str | None = None,
        filters: Mapping[str, Any] | None = None,
        everything: bool = False,
        dry_run: bool = False,
    ) -> Purged:
        """Erase every memory `filters` matches (`everything=True`: all of the namespace or
        tenant), with its traces; `dry_run` counts first."""
        return Purged.of(self._send(_Calls.purge(namespace, filters, everything, dry_run)))

    def namespaces(self) -> builtins.list[Namespace]:
        return [Namespace.of(n) for n in self._send(_Calls.namespaces())["namespaces"]]

    def namespace(self, name: str) -> Namespace:
        return Namespace.of(self._send(_Calls.namespaces(name)))

    def delete_namespace(self, name: str, *, dry_run: bool = False) -> Purged:
        return Purged.of(self._send(_Calls.delete_namespace(name, dry_run)))

    def policy(self, namespace: str) -> Policy:
        return Policy.of(self._send(_Calls.policy(namespace)))

    def set_policy(
        self, namespace: str, *, ttl_seconds: int | None = None, on_expiry: str = "archive"
    ) -> Policy:
        body = {"ttl_seconds": ttl_seconds, "on_expiry": on_expiry}
        return Policy.of(self._send(_Calls.policy(namespace, body)))

    def usage(self) -> Usage:
        return Usage.of(self._send(_Calls.usage()))

    def export(self, namespaces: Iterable[str] = ()) -> str:
        """Every memory of the caller's tenant (in these namespaces) as JSON lines, the
        `sfm export` format: every field, links and hierarchy."""
        text: str = self._send(_Calls.export(namespaces))
        return text

    def import_(self, lines: str | Iterable[str]) -> dict[str, int]:
        """Import an export into the caller's tenant (the whole text is checked first;
        memories already there are skipped): counts of `memories`, `skipped`, `links`,
        `owed`."""
        answer: dict[str, int] = self._send(_Calls.import_(lines))
        return answer

    def tenants(self) -> builtins.list[Tenant]:
        return [Tenant.of(t) for t in self._send(_Calls.admin("GET", "tenants"))["tenants"]]

    def create_tenant(self, tenant_id: str, **limits: int | None) -> Tenant:
        """Create (or update the limits of) a tenant: `max_memories`, `max_bytes`,
        `requests_per_minute`."""
        return Tenant.of(self._send(_Calls.create_tenant(tenant_id, limits)))

    def delete_tenant(self, tenant_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._send(_Calls.admin("DELETE", f"tenants/{tenant_id}"))
        return answer

    def keys(self, tenant: str | None = None) -> builtins.list[Key]:
        return [Key.of(k) for k in self._send(_Calls.admin("GET", "keys", tenant=tenant))["keys"]]

    def create_key(
        self,
        scopes: Iterable[str],
        *,
        tenant: str | None = None,
        namespaces: Iterable[str] = (),
        name: str = "",
    ) -> Key:
        """A new API key; its `key` (the secret) is in this answer only."""
        return Key.of(self._send(_Calls.create_key(scopes, tenant, namespaces, name)))

    def revoke_key(self, key_id: str) -> Key:
        return Key.of(self._send(_Calls.admin("DELETE", f"keys/{key_id}")))

    def audit(
        self, *, tenant: str | None = None, limit: int = 100, before: int | None = None
    ) -> builtins.list[AuditEntry]:
        call = _Calls.admin("GET", "audit", tenant=tenant, limit=limit, before=before)
        return [AuditEntry.of(e) for e in self._send(call)["entries"]]


# -- the asyncio client ---------------------------------------------------------------------


class AsyncMemory:
    """`Memory` for asyncio: the same methods, awaited (`list` is an async iterator)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: Retries | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retries = retries or Retries()
        self._http = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers=_headers(api_key),
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncMemory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call) -> Any:
        for attempt in itertools.count():
            try:
                outcome: httpx.Response | httpx.TransportError = await self._http.request(
                    **call.request()
                )
            except httpx.TransportError as exc:
                outcome = exc
            wait = _retry_after(call, self.retries, attempt, outcome)
            if wait is None:
                return _result(call, outcome)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def remember(self, content: str, **options: Any) -> Stored:
        """See `Memory.remember`."""
        if options.get("metadata") is not None:
            options["metadata"] = dict(options["metadata"])
        if options.get("supersedes") is not None:
            options["supersedes"] = list(options["supersedes"])
        return Stored.of(await self._send(_Calls.remember(content, **options)))

    async def batch(self, items: Iterable[str | Mapping[str, Any]]) -> builtins.list[Stored]:
        stored: builtins.list[Stored] = []
        for chunk in _chunks(items):
            answer = await self._send(_Calls.batch(chunk))
            stored += [Stored.of(s) for s in answer["memories"]]
        return stored

    async def recall(self, query: str, *, top_k: int = 10, **options: Any) -> Recall:
        """See `Memory.recall`."""
        if options.get("levels") is not None:
            options["levels"] = list(options["levels"])
        return Recall.of(await self._send(_Calls.recall(query, top_k=top_k, **options)))

    async def get(self, memory_id: str) -> MemoryRecord:
        return MemoryRecord.of(await self._send(_Calls.get(memory_id)))

    async def update(self, memory_id: str, **changes: Any) -> MemoryRecord:
        return MemoryRecord.of(await self._send(_Calls.update(memory_id, changes)))

    async def history(self, memory_id: str) -> builtins.list[MemoryRecord]:
        """See `Memory.history`."""
        return _memories(await self._send(_Calls.history(memory_id)))

    async def forget(self, memory_id: str) -> None:
        await self._send(_Calls.forget(memory_id))

    async def list(
        self,
        *,
        namespace: str | None = None,
        types: Iterable[str] = (),
        archived: bool = False,
        page_size: int = 100,
        as_of: datetime | None = None,
        include_invalid: bool = False,
        key: str | None = None,
    ) -> AsyncIterator[MemoryRecord]:
        cursor: str | None = None
        while True:
            page = await self._send(
                _Calls.page(
                    namespace, types, archived, page_size, cursor, as_of, include_invalid, key
                )
            )
            for record in _memories(page):
                yield record
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def link(
        self, source: str, target: str, kind: str = "related", weight: float = 1.0
    ) -> Link:
        return Link.of(await self._send(_Calls.link(source, target, kind, weight)))

    async def unlink(self, source: str, target: str, kind: str = "related") -> None:
        await self._send(_Calls.unlink(source, target, kind))

    async def links(self, memory_id: str) -> builtins.list[Link]:
        return _links(await self._send(_Calls.links(memory_id)))

    async def children(self, memory_id: str) -> builtins.list[MemoryRecord]:
        return _memories(await self._send(_Calls.related(memory_id, "children")))

    async def parents(self, memory_id: str) -> builtins.list[MemoryRecord]:
        return _memories(await self._send(_Calls.related(memory_id, "parents")))

    async def consolidate(self, namespace: str | None = None, *, wait: bool = True) -> Job:
        return Job.of(await self._send(_Calls.consolidate(namespace, wait)))

    async def job(self, job_id: str) -> Job:
        return Job.of(await self._send(_Calls.job(job_id)))

    async def graph(self, memory_id: str, *, depth: int = 1, kinds: Iterable[str] = ()) -> Graph:
        return Graph.of(await self._send(_Calls.graph(memory_id, depth, kinds)))

    async def restore(self, memory_id: str) -> MemoryRecord:
        return MemoryRecord.of(await self._send(_Calls.restore(memory_id)))

    async def forget_faded(
        self, namespace: str | None = None, *, dry_run: bool = False, wait: bool = True
    ) -> Job:
        return Job.of(await self._send(_Calls.forget_faded(namespace, dry_run, wait)))

    async def purge(
        self,
        *,
        namespace: str | None = None,
        filters: Mapping[str, Any] | None = None,
        everything: bool = False,
        dry_run: bool = False,
    ) -> Purged:
        return Purged.of(await self._send(_Calls.purge(namespace, filters, everything, dry_run)))

    async def namespaces(self) -> builtins.list[Namespace]:
        return [Namespace.of(n) for n in (await self._send(_Calls.namespaces()))["namespaces"]]

    async def namespace(self, name: str) -> Namespace:
        return Namespace.of(await self._send(_Calls.namespaces(name)))

    async def delete_namespace(self, name: str, *, dry_run: bool = False) -> Purged:
        return Purged.of(await self._send(_Calls.delete_namespace(name, dry_run)))

    async def policy(self, namespace: str) -> Policy:
        return Policy.of(await self._send(_Calls.policy(namespace)))

    async def set_policy(
        self, namespace: str, *, ttl_seconds: int | None = None, on_expiry: str = "archive"
    ) -> Policy:
        body = {"ttl_seconds": ttl_seconds, "on_expiry": on_expiry}
        return Policy.of(await self._send(_Calls.policy(namespace, body)))

    async def usage(self) -> Usage:
        return Usage.of(await self._send(_Calls.usage()))

    async def export(self, namespaces: Iterable[str] = ()) -> str:
        text: str = await self._send(_Calls.export(namespaces))
        return text

    async def import_(self, lines: str | Iterable[str]) -> dict[str, int]:
        answer: dict[str, int] = await self._send(_Calls.import_(lines))
        return answer

    async def tenants(self) -> builtins.list[Tenant]:
        answer = await self._send(_Calls.admin("GET", "tenants"))
        return [Tenant.of(t) for t in answer["tenants"]]

    async def create_tenant(self, tenant_id: str, **limits: int | None) -> Tenant:
        return Tenant.of(await self._send(_Calls.create_tenant(tenant_id, limits)))

    async def delete_tenant(self, tenant_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._send(_Calls.admin("DELETE", f"tenants/{tenant_id}"))
        return answer

    async def keys(self, tenant: str | None = None) -> builtins.list[Key]:
        answer = await self._send(_Calls.admin("GET", "keys", tenant=tenant))
        return [Key.of(k) for k in answer["keys"]]

    async def create_key(
        self,
        scopes: Iterable[str],
        *,
        tenant: str | None = None,
        namespaces: Iterable[str] = (),
        name: str = "",
    ) -> Key:
        return Key.of(await self._send(_Calls.create_key(scopes, tenant, namespaces, name)))

    async def revoke_key(self, key_id: str) -> Key:
        return Key.of(await self._send(_Calls.admin("DELETE", f"keys/{key_id}")))

    async def audit(
        self, *, tenant: str | None = None, limit: int = 100, before: int | None = None
    ) -> builtins.list[AuditEntry]:
        call = _Calls.admin("GET", "audit", tenant=tenant, limit=limit, before=before)
        return [AuditEntry.of(e) for e in (await self._send(call))["entries"]]
