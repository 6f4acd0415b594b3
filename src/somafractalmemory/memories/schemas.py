"""Typed request and response bodies of the v2 API, and their converters from the domain's
objects (`of`). Unknown fields are rejected."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from ninja import Schema
from pydantic import ConfigDict, Field

from somafractalmemory.memories.limits import LIMIT_CEILINGS, MAX_QUERY_CHARS
from somafractalmemory.memories.remember import NewMemory

if TYPE_CHECKING:
    from somafractalmemory.memories.browse import NamespaceStats
    from somafractalmemory.memories.links import Edge
    from somafractalmemory.memories.models import Memory
    from somafractalmemory.memories.recall import Hit
    from somafractalmemory.memories.remember import Stored
    from somafractalmemory.retrieval.ranking import Scoring

MAX_TOP_K = 100
MAX_TTL = 10**10
ValidFrom = Field(
    default=None,
    description="Valid from this instant; default: its event time, or now if that is later.",
)
ValidUntil = Field(
    default=None,
    description="Valid until this instant (exclusive); default: open. Before now: it leaves "
    "default searches.",
)
ExpiresAt = Field(default=None, description="Leaves searches and listings at this instant.")
TtlSeconds = Field(
    default=None, ge=1, le=MAX_TTL, strict=True, description="Expires this many seconds from now."
)
MemoryTypeName = Literal["episodic", "semantic", "summary"]
NAMESPACE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"
Namespace = Field(
    default=None,
    min_length=1,
    max_length=128,
    pattern=NAMESPACE_PATTERN,
    description="Letters, digits and `_ . : -`; defaults to the `namespace` setting.",
)


class Strict(Schema):
    model_config = ConfigDict(extra="forbid")


class StoreIn(Strict):
    content: str = Field(min_length=1, description="The memory itself (UTF-8 text).")
    namespace: str | None = Namespace
    type: MemoryTypeName = "episodic"
    importance: float = Field(default=0.5, ge=0.0, le=1.0)
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = Field(
        default=None, description="Event time (ISO 8601); defaults to now. Naive means UTC."
    )
    dedupe: bool = Field(
        default=True,
        strict=True,
        description="Same content already in the namespace: return that memory (importance "
        "raised to the larger of the two) instead of storing it again. With a `key`: only "
        "when it is the key's current version.",
    )
    key: str = Field(
        default="",
        max_length=200,
        description="The fact's identity, chosen by the client (`user-123/preferences/theme`):"
        " a memory with the same key in the namespace is its next version, and the previous "
        "one stops being valid at this one's `valid_from`.",
    )
    supersedes: list[Annotated[str, Field(min_length=1, max_length=40)]] = Field(
        default_factory=list,
        max_length=100,
        description="Ids of memories of the namespace this one replaces: they stop being "
        "valid at its `valid_from` (kept, with their history).",
    )
    valid_from: datetime | None = ValidFrom
    valid_until: datetime | None = ValidUntil
    expires_at: datetime | None = ExpiresAt
    ttl_seconds: int | None = TtlSeconds

    def to_new(self) -> NewMemory:
        return NewMemory(**self.model_dump())


class NearDuplicateOut(Schema):
    id: str
    score: float


class StoreOut(Schema):
    id: str
    embedding_id: str
    importance: float
    created_at: datetime
    recorded_at: datetime = Field(description="When the service stored it.")
    key: str
    valid_from: datetime
    valid_until: datetime | None
    expires_at: datetime | None
    deduplicated: bool = False
    near_duplicates: list[NearDuplicateOut] = Field(default_factory=list)
    supersedes: list[str] = Field(
        default_factory=list, description="Versions this store closed (its key's previous one)."
    )
    possible_conflicts: list[NearDuplicateOut] = Field(
        default_factory=list,
        description="Valid semantic memories close to this one but not duplicates: facts "
        "that may say otherwise. Nothing is closed without a `key` or `supersedes`.",
    )

    @classmethod
    def of(cls, stored: Stored) -> StoreOut:
        m = stored.memory
        return cls(
            id=m.id,
            embedding_id=m.embedding_id,
            importance=m.importance,
            created_at=m.created_at,
            recorded_at=m.stored_at,
            key=m.key,
            valid_from=m.valid_from,
            valid_until=m.valid_until,
            expires_at=m.expires_at,
            deduplicated=stored.deduplicated,
            near_duplicates=[NearDuplicateOut(id=i, score=s) for i, s in stored.near_duplicates],
            supersedes=stored.supersedes,
            possible_conflicts=[
                NearDuplicateOut(id=i, score=s) for i, s in stored.possible_conflicts
            ],
        )


class BatchIn(Strict):
    memories: list[StoreIn] = Field(min_length=1)


class BatchOut(Schema):
    memories: list[StoreOut]


class WeightsIn(Strict):
    relevance: float = Field(default=0.85, ge=0.0, le=10.0)
    recency: float = Field(default=0.05, ge=0.0, le=10.0)
    importance: float = Field(default=0.10, ge=0.0, le=10.0)


class HalfLivesIn(Strict):
    """Days until recency halves."""

    episodic: float = Field(default=30.0, gt=0.0)
    semantic: float = Field(default=180.0, gt=0.0)
    summary: float = Field(default=365.0, gt=0.0)


class SearchIn(Strict):
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    namespace: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Search one namespace; omitted: every namespace of the tenant.",
    )
    top_k: int = Field(default=10, ge=1, le=MAX_TOP_K, strict=True)
    filters: dict[str, Any] | None = Field(
        default=None, description="Filter language, see docs/api.md#filters."
    )
    mode: Literal["hybrid", "vector", "lexical"] = "hybrid"
    types: list[MemoryTypeName] = Field(default_factory=list, description="Only these types.")
    created_after: datetime | None = Field(default=None, description="Event time >= this.")
    created_before: datetime | None = Field(default=None, description="Event time < this.")
    min_score: float | None = Field(default=None, ge=0.0, description="Drop hits scoring less.")
    explain: bool = Field(default=False, strict=True, description="Return each part of the score.")
    weights: WeightsIn | None = None
    half_lives: HalfLivesIn | None = None
    levels: list[Annotated[int, Field(ge=0, le=6)]] = Field(
        default_factory=list,
        description="Only these hierarchy levels: 0 episodes, 1 semantic, 2 and up summaries.",
    )
    expand: Literal["children", "parents"] | None = Field(
        default=None, description="Return each hit with its children or parents in the tree."
    )
    zoom: bool = Field(
        default=False,
        strict=True,
        description="Find the best semantic memories and summaries first, then answer with "
        "the best episodes under them.",
    )
    reinforce: bool = Field(
        default=True,
        strict=True,
        description="Count the hits as recalled (strength, recency); false for a read that "
        "must not change later rankings.",
    )
    as_of: datetime | None = Field(
        default=None,
        description="Only memories valid at this instant (default: now); expired ones never.",
    )


class ExplainOut(Schema):
    relevance: float
    recency: float
    importance: float
    retention: float = Field(
        description="Ebbinghaus retention (what forgetting compares with `forget_threshold`)."
    )
    weights: dict[str, float]
    legs: dict[str, dict[str, float]] = Field(
        description="Per retrieval leg: `rank` (1 = first) and its raw `score`."
    )


class RelatedOut(Schema):
    id: str
    content: str
    type: str
    level: int
    created_at: datetime

    @classmethod
    def of(cls, m: Memory) -> RelatedOut:
        return cls(id=m.id, content=m.content, type=m.type, level=m.level, created_at=m.created_at)


class SearchHitOut(Schema):
    id: str
    content: str
    score: float
    type: str
    level: int
    namespace: str
    importance: float
    metadata: dict[str, Any]
    created_at: datetime
    explain: ExplainOut | None = None
    children: list[RelatedOut] | None = None
    parents: list[RelatedOut] | None = None

    @classmethod
    def of(
        cls, hit: Hit, *, explain: Scoring | None = None, expand: str | None = None
    ) -> SearchHitOut:
        """A hit; with `explain` (the scoring it was ranked by), each part of its score;
        with `expand`, its `children` or `parents`."""
        m = hit.memory
        out = cls(
            id=m.id,
            content=m.content,
            score=round(hit.score, 4),
            type=m.type,
            level=m.level,
            namespace=m.namespace,
            importance=m.importance,
            metadata=m.metadata,
            created_at=m.created_at,
        )
        if explain is not None and hit.components is not None:
            out.explain = ExplainOut(
                relevance=round(hit.components.relevance, 6),
                recency=round(hit.components.recency, 6),
                importance=hit.components.importance,
                retention=round(hit.retention, 6),
                weights=dataclasses.asdict(explain.weights),
                legs={name: {"rank": r, "score": round(s, 6)} for name, (r, s) in hit.legs.items()},
            )
        if expand is not None:
            setattr(out, expand, [RelatedOut.of(r) for r in hit.related])
        return out


class HiddenOut(Schema):
    id: str
    reason: Literal["expired", "not_yet_valid", "no_longer_valid"]


class SearchOut(Schema):
    memories: list[SearchHitOut]
    latency_ms: float
    mode: str = Field(description="`vector`, or `lexical` when the vector index failed.")
    warnings: list[str] = Field(default_factory=list)
    hidden: list[HiddenOut] | None = Field(
        default=None,
        description="With `explain`: candidates left out as not valid at `as_of`, and why.",
    )


class MemoryOut(Schema):
    id: str
    namespace: str
    type: str
    content: str
    importance: float
    metadata: dict[str, Any]
    embedding_id: str
    created_at: datetime
    updated_at: datetime
    access_count: int
    last_accessed_at: datetime | None
    strength: float
    level: int
    span_end: datetime | None
    archived_at: datetime | None
    key: str
    recorded_at: datetime = Field(description="When the service stored it (never set by clients).")
    valid_from: datetime
    valid_until: datetime | None
    expires_at: datetime | None
    status: Literal["valid", "expired", "not_yet_valid", "no_longer_valid"] = Field(
        description="Now: `valid`, or why searches and listings leave it out."
    )


def _omit_not_null(schema: dict[str, Any]) -> None:
    """In the published schema, optional fields may be left out but are never null."""
    for spec in schema.get("properties", {}).values():
        options = spec.pop("anyOf", None)
        if options:
            spec.update(next(o for o in options if o.get("type") != "null"))
        if spec.get("default", "") is None:
            del spec["default"]


class PatchIn(Strict):
    """Only the fields given change; none may be null (the route refuses null, and the
    published schema does not offer it)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_omit_not_null)

    content: str | None = Field(default=None, min_length=1)
    type: MemoryTypeName | None = None
    importance: float | None = Field(default=None, ge=0.0, le=1.0)
    metadata: dict[str, Any] | None = Field(default=None, description="Replaces the metadata.")
    valid_from: datetime | None = ValidFrom
    valid_until: datetime | None = ValidUntil
    expires_at: datetime | None = ExpiresAt
    ttl_seconds: int | None = TtlSeconds


class PageOut(Schema):
    memories: list[MemoryOut]
    next_cursor: str | None


class ErrorBody(Schema):
    code: str
    message: str
    details: Any = None


class ErrorOut(Schema):
    error: ErrorBody


ERRORS: dict[int | frozenset[int], Any] = {
    frozenset({400, 401, 403, 404, 409, 413, 422, 429, 503}): ErrorOut,
}
"""The error answers every route declares (the envelope of `errors.SFMError`)."""


class MemoriesOut(Schema):
    memories: list[MemoryOut]


class LinkIn(Strict):
    target: str = Field(min_length=1, max_length=40)
    kind: str = Field(min_length=1, max_length=64, description="e.g. `related`, `contradicts`.")
    weight: float = Field(default=1.0, ge=0.0, le=1000.0)


class LinkOut(Schema):
    source: str
    target: str
    kind: str
    weight: float

    @classmethod
    def of(cls, edge: Edge) -> LinkOut:
        return cls(source=edge.source, target=edge.target, kind=edge.kind, weight=edge.weight)


class LinksOut(Schema):
    links: list[LinkOut]


class GraphOut(Schema):
    nodes: list[MemoryOut]
    edges: list[LinkOut]
    truncated: bool = Field(description="True when the walk stopped at the node limit.")


class ConsolidateIn(Strict):
    namespace: str | None = Namespace
    since: datetime | None = Field(default=None, description="Only episodes from this time.")
    until: datetime | None = Field(default=None, description="Only episodes before this time.")
    wait: bool = Field(
        default=False, strict=True, description="Run to the end and answer with the result."
    )


class ForgetIn(Strict):
    namespace: str | None = Field(default=None, min_length=1, max_length=128)
    dry_run: bool = Field(
        default=False, description="Count what would be archived, change nothing."
    )
    wait: bool = Field(
        default=False, strict=True, description="Run to the end and answer with the result."
    )


class PurgeIn(Strict):
    namespace: str | None = Field(
        default=None, min_length=1, max_length=128, description="Only this namespace."
    )
    filters: dict[str, Any] | None = Field(
        default=None, description="Which memories: the search filter language."
    )
    all: bool = Field(
        default=False, strict=True, description="Allow an empty filter: erase everything."
    )
    dry_run: bool = Field(
        default=False, strict=True, description="Count what would go, erase nothing."
    )


class PurgeOut(Schema):
    memories: int
    links: int = Field(description="Links from or to erased memories.")
    vectors: int = Field(description="Index entries deleted.")
    parents_resummarized: int = Field(description="Consolidated parents rewritten without them.")
    parents_removed: int = Field(description="Consolidated parents left with no child.")
    neighbours_rewritten: int = Field(description="Episodes whose context held erased text.")
    cache_entries: int = Field(description="Cached query vectors of the tenant dropped.")
    jobs: int = Field(description="Finished job records of an erased namespace.")
    namespaces: list[str]
    scrubbed: bool = Field(description="Storage rewritten without the erased bytes.")
    dry_run: bool
    job_id: str | None = Field(description="The purge job (its audit trail).")


class ImportOut(Schema):
    memories: int = Field(description="New memories written.")
    skipped: int = Field(description="Already there (the same id in this tenant): unchanged.")
    links: int = Field(description="New links written.")
    owed: int = Field(description="Memories whose vectors the outbox still owes.")


class JobOut(Schema):
    id: str
    kind: str
    status: Literal["queued", "running", "succeeded", "failed"]
    params: dict[str, Any]
    progress: dict[str, Any]
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class NamespaceOut(Schema):
    namespace: str
    memories: int = Field(description="Not archived.")
    archived: int
    by_type: dict[str, int]
    by_level: dict[int, int]
    first: datetime | None = Field(description="Earliest event time.")
    last: datetime | None = Field(description="Latest event time.")

    @classmethod
    def of(cls, stats: NamespaceStats) -> NamespaceOut:
        return cls(**vars(stats))


class PolicyIn(Strict):
    ttl_seconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TTL,
        strict=True,
        description="Stores without an expiry of their own expire this long after; null: never.",
    )
    on_expiry: Literal["archive", "erase"] = Field(
        default="archive",
        description="What forgetting does with expired memories (they leave searches at once).",
    )


class PolicyOut(Schema):
    namespace: str
    ttl_seconds: int | None
    on_expiry: str


class NamespacesOut(Schema):
    namespaces: list[NamespaceOut]


class UsageOut(Schema):
    tenant: str
    memories: int
    bytes: int = Field(description="UTF-8 bytes of content stored.")
    limits: dict[str, int | None]


class TenantIn(Strict):
    id: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    max_memories: int | None = Field(default=None, ge=1, le=LIMIT_CEILINGS["max_memories"])
    max_bytes: int | None = Field(default=None, ge=1, le=LIMIT_CEILINGS["max_bytes"])
    requests_per_minute: int | None = Field(
        default=None, ge=1, le=LIMIT_CEILINGS["requests_per_minute"]
    )


class TenantOut(Schema):
    id: str
    created_at: datetime
    max_memories: int | None
    max_bytes: int | None
    requests_per_minute: int | None


class TenantsOut(Schema):
    tenants: list[TenantOut]


class KeyIn(Strict):
    tenant: str | None = Field(default=None, description="Default: the caller's tenant.")
    scopes: list[Literal["read", "write", "admin"]] = Field(min_length=1)
    namespaces: list[
        Annotated[
            str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")
        ]
    ] = Field(default_factory=list, description="Allowed namespaces (their names); empty: all.")
    name: str = Field(default="", max_length=128)


class KeyOut(Schema):
    id: str
    tenant_id: str
    name: str
    prefix: str
    scopes: list[str]
    namespaces: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewKeyOut(KeyOut):
    key: str = Field(description="The key itself: shown this once, stored only as a hash.")


class KeysOut(Schema):
    keys: list[KeyOut]


class AuditEntryOut(Schema):
    id: int
    tenant: str
    actor: str
    action: str
    resource: str
    outcome: str
    details: dict[str, Any]
    created_at: datetime


class AuditOut(Schema):
    entries: list[AuditEntryOut]
