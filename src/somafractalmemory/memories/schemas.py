"""Typed request and response bodies of the v2 API. Unknown fields are rejected."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from ninja import Schema
from pydantic import ConfigDict, Field

MAX_TOP_K = 100
MemoryTypeName = Literal["episodic", "semantic", "summary"]
Namespace = Field(
    default=None,
    min_length=1,
    max_length=128,
    pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$",
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
        description="Same content already in the namespace: return that memory (importance "
        "raised to the larger of the two) instead of storing it again.",
    )


class NearDuplicateOut(Schema):
    id: str
    score: float


class StoreOut(Schema):
    id: str
    embedding_id: str
    importance: float
    created_at: datetime
    deduplicated: bool = False
    near_duplicates: list[NearDuplicateOut] = Field(default_factory=list)


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
    query: str = Field(min_length=1)
    namespace: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Search one namespace; omitted: every namespace of the tenant.",
    )
    top_k: int = Field(default=10, ge=1, le=MAX_TOP_K)
    filters: dict[str, Any] | None = Field(
        default=None, description="Filter language, see docs/api.md#filters."
    )
    mode: Literal["hybrid", "vector", "lexical"] = "hybrid"
    types: list[MemoryTypeName] = Field(default_factory=list, description="Only these types.")
    created_after: datetime | None = Field(default=None, description="Event time >= this.")
    created_before: datetime | None = Field(default=None, description="Event time < this.")
    min_score: float | None = Field(default=None, ge=0.0, description="Drop hits scoring less.")
    explain: bool = Field(default=False, description="Return each part of the score.")
    weights: WeightsIn | None = None
    half_lives: HalfLivesIn | None = None


class ExplainOut(Schema):
    relevance: float
    recency: float
    importance: float
    weights: dict[str, float]
    legs: dict[str, dict[str, float]] = Field(
        description="Per retrieval leg: `rank` (1 = first) and its raw `score`."
    )


class SearchHitOut(Schema):
    id: str
    content: str
    score: float
    type: str
    namespace: str
    importance: float
    metadata: dict[str, Any]
    created_at: datetime
    explain: ExplainOut | None = None


class SearchOut(Schema):
    memories: list[SearchHitOut]
    latency_ms: float
    mode: str = Field(description="`vector`, or `lexical` when the vector index failed.")
    warnings: list[str] = Field(default_factory=list)


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


class PatchIn(Strict):
    content: str | None = Field(default=None, min_length=1)
    type: MemoryTypeName | None = None
    importance: float | None = Field(default=None, ge=0.0, le=1.0)
    metadata: dict[str, Any] | None = Field(default=None, description="Replaces the metadata.")


class PageOut(Schema):
    memories: list[MemoryOut]
    next_cursor: str | None


class ErrorBody(Schema):
    code: str
    message: str
    details: Any = None


class ErrorOut(Schema):
    error: ErrorBody
