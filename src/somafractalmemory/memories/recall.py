"""Search: retrieval legs, fusion and scoring; zoom and expand over the tree; reinforcement.

`search` is the verb the API calls: a flat `recall` (or `zoom`, best consolidated memories
first), then each hit's children or parents. A search runs up to four legs at once (dense and
BM25, each over the memories and over their episode contexts), fuses them by reciprocal rank
and scores the result (`retrieval.ranking`); the SQL row decides whether a hit still exists.
When the vector index fails, SQL full text answers and the result says so.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from django.db import close_old_connections, connection, connections
from django.db.models import F

from somafractalmemory import backends, metrics
from somafractalmemory.conf import get_config
from somafractalmemory.embedding.cache import embed_query
from somafractalmemory.errors import IndexUnavailable, ValidationFailed
from somafractalmemory.memories import fulltext, indexing, limits, links, tree
from somafractalmemory.memories.identity import lexical_key, tokens_of, utc
from somafractalmemory.memories.models import (
    DEFAULT_TENANT,
    VALIDITY_FIELDS,
    Memory,
    hidden_because,
    last_seen,
)
from somafractalmemory.retrieval import dates, filters, lexical, ranking
from somafractalmemory.vectors.base import VectorHit

log = logging.getLogger(__name__)

MODES = ("hybrid", "vector", "lexical")
SQL_LEGS = (("lexical", False), ("context_lexical", True))
"""The lexical legs SQL full text serves where the index has no BM25: (leg, context)."""
LEG_THREADS = 8
_LEG_POOL = ThreadPoolExecutor(max_workers=LEG_THREADS, thread_name_prefix="sfm-leg")


def close_leg_connections() -> None:
    """Close the database connections of the leg pool's threads (each keeps its own between
    searches, as a request thread does): before the database is dropped, or at shutdown."""
    barrier = threading.Barrier(LEG_THREADS)

    def close() -> None:
        barrier.wait(timeout=60)  # every thread holds one job until all do: one each
        connections.close_all()

    for done in [_LEG_POOL.submit(close) for _ in range(LEG_THREADS)]:
        done.result()


@dataclass(frozen=True)
class Query:
    """What a search asks for, beyond the text."""

    namespace: str | None = None
    top_k: int = 10
    mode: str = "hybrid"
    filters: dict[str, Any] | None = None
    types: tuple[str, ...] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    min_score: float | None = None
    levels: tuple[int, ...] = ()
    """Hierarchy levels (0: stored by clients, 1 and up: made by consolidation). Empty: level
    0 only, unless `types` is given (then every level of those types)."""

    @property
    def allowed_levels(self) -> tuple[int, ...]:
        """Levels a hit may have; empty: any."""
        return self.levels or (() if self.types else (0,))

    scoring: ranking.Scoring = field(default_factory=ranking.Scoring)
    reinforce: bool = True
    """Count the hits as recalled (strength, recency). The dashboard's reads do not."""
    zoom: bool = False
    """Best consolidated memories first, then the best episodes under them (`zoom`)."""
    expand: str | None = None
    """`children` or `parents`: each hit comes with those (one level of the tree)."""
    visible: tuple[str, ...] = ()
    """Namespaces the expanded memories may come from (a namespace-limited key's); empty:
    any of the tenant's."""
    as_of: datetime | None = None
    """Only memories valid at this instant (None: now); expired ones never."""
    pool: int | None = None
    """Candidates per leg (None: `candidate_pool(top_k)`); a search that hid invalid
    candidates and came back short asks again with more."""

    @property
    def candidates(self) -> int:
        return self.pool or candidate_pool(self.top_k)


@dataclass(frozen=True)
class Hit:
    memory: Memory
    score: float
    components: ranking.Components | None = None
    legs: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Per retrieval leg: (rank, raw score)."""
    retention: float = 1.0
    """Ebbinghaus retention now (what forgetting compares with `forget_threshold`)."""
    related: list[Memory] = field(default_factory=list)
    """Its children or parents, when the query asked to `expand`."""


@dataclass(frozen=True)
class Recall:
    hits: list[Hit]
    latency_ms: float
    embedding_ms: float
    index_ms: float
    """Waiting for the index legs once the query is embedded (the lexical legs start before
    the embedding and run while it is computed)."""
    mode: str = "vector"
    """Which retrieval answered: `vector`, or `lexical` when the vector index failed."""
    warnings: list[str] = field(default_factory=list)
    hidden: dict[str, str] = field(default_factory=dict)
    """Candidates left out as not valid at `as_of` (or expired): id -> why
    (`models.hidden_because`)."""


def retention(memory: Memory, now: datetime, half_lives: ranking.HalfLives | None = None) -> float:
    half_lives = half_lives or ranking.HalfLives()
    return ranking.retention(
        (now - memory.last_seen).total_seconds(),
        half_lives.seconds(memory.type),
        memory.importance,
        memory.strength,
    )


def search(text: str, query: Query | None = None, *, tenant: str = DEFAULT_TENANT) -> Recall:
    """The memories that answer `text` (`recall`, or `zoom` when the query asks), each with
    its children or parents when the query asks to `expand`."""
    query = query or Query()
    found = (zoom if query.zoom else recall)(text, query, tenant=tenant)
    if query.expand is None:
        return found
    related = expand([h.memory for h in found.hits], query.expand, tenant=tenant)
    hits = [
        dataclasses.replace(
            h,
            related=[
                m
                for m in related.get(h.memory.id, [])
                if not query.visible or m.namespace in query.visible
            ],
        )
        for h in found.hits
    ]
    return dataclasses.replace(found, hits=hits)


def _where(query: Query) -> filters.Node | None:
    parts: list[dict[str, Any]] = [query.filters] if query.filters else []
    if query.types:
        parts.append({"type": {"$in": list(query.types)}})
    if query.levels:  # the index knows types; _score checks levels above 2 on the rows
        types = sorted({"episodic" if v == 0 else tree.parent_type(v) for v in query.levels})
        parts.append({"type": {"$in": types}})
    if query.created_after:
        parts.append({"created_at": {"$gte": utc(query.created_after).isoformat()}})
    if query.created_before:
        parts.append({"created_at": {"$lt": utc(query.created_before).isoformat()}})
    return filters.parse({"$and": parts} if parts else None)


def candidate_pool(top_k: int) -> int:
    """How many candidates each retrieval leg brings to fusion."""
    return min(max(4 * top_k, 40), 200)


MAX_POOL = 1000
"""Most candidates per leg when invalid versions crowded the first pool."""


def recall(text: str, query: Query | None = None, *, tenant: str = DEFAULT_TENANT) -> Recall:
    """The memories that best answer `text`: retrieval legs fused, then scored (ranking.py)."""
    query = query or Query()
    started = time.perf_counter()
    if query.mode not in MODES:
        raise ValidationFailed(f"mode must be one of {list(MODES)}", details={"mode": query.mode})
    where = _where(query)
    limits.check_query(text)
    pool = query.candidates
    mode, warnings = query.mode, []
    legs: dict[str, list[VectorHit]] = {}
    futures: dict[str, Any] = {}
    failure: IndexUnavailable | None = None

    def leg(search: Any, probe: Any, context: bool) -> Any:
        return _LEG_POOL.submit(
            contextvars.copy_context().run,
            search,
            probe,
            tenant=tenant,
            namespace=query.namespace,
            where=where,
            top_k=pool,
            context=context,
        )

    # The legs are independent index calls, run at once; the lexical ones need no vector,
    # so they start before the query is embedded and run while it is.
    sql_lexical = False
    asked = list(dict.fromkeys(lexical.keyed_tokens(text, lexical_key(tenant)).split()))
    try:
        index = backends.vector_index()
        by_index = not indexing.sql_lexical()
        if query.mode != "vector" and by_index:
            tokens = " ".join(asked)
            futures["lexical"] = leg(index.search_lexical, tokens, False)
            futures["context_lexical"] = leg(index.search_lexical, tokens, True)
        # An index without BM25 (a Milvus server before 2.5): SQL full text is the lexical leg.
        sql_lexical = query.mode != "vector" and not by_index
        if sql_lexical and not connection.in_atomic_block and not _memory_db():
            # Off this thread, at once, on the pool threads' own database connections: only
            # outside a transaction, whose uncommitted rows other connections cannot see.
            for name, context in SQL_LEGS:
                futures[name] = _LEG_POOL.submit(
                    contextvars.copy_context().run,
                    _sql_leg,
                    tenant,
                    query,
                    where,
                    text,
                    pool,
                    context=context,
                )
            sql_lexical = False
    except IndexUnavailable as exc:
        failure = exc
    embedding_started = time.perf_counter()
    vector = (
        embed_query(backends.embedder(), text, tenant=tenant) if query.mode != "lexical" else None
    )
    embedded = time.perf_counter()
    try:
        if failure is not None:
            raise failure
        if vector is not None:
            futures["vector"] = leg(index.search, vector, False)
            futures["context_vector"] = leg(index.search, vector, True)
        if sql_lexical:  # in a transaction: on this thread (its connection), meanwhile
            for name, context in SQL_LEGS:
                legs[name] = _sql_lexical(tenant, query, where, text, pool, context=context)
        order = ("vector", "context_vector", "lexical", "context_lexical")
        legs |= {name: futures[name].result() for name in order if name in futures}
        # Equal scores in id order, whatever the engine returned them in (its writing
        # order): an imported export then ranks as the original did.
        legs = {name: sorted(hits, key=lambda h: (-h.score, h.id)) for name, hits in legs.items()}
    except IndexUnavailable as exc:
        # SQL still knows every memory: answer from its full-text index, and say so.
        log.warning("search falls back to SQL full text: %s", exc.message)
        mode = "lexical"
        warnings.append(f"{exc.code}: the vector index failed; results are lexical only")
        legs = {"lexical": _sql_lexical(tenant, query, where, text, pool)}
    searched = time.perf_counter()
    hits, hidden = _score(legs, query, tenant, frozenset(asked), dates.windows(text))
    short = bool(hidden) and len(hits) < query.top_k and pool < MAX_POOL
    if short and any(len(found) >= pool for found in legs.values()):
        # Versions no longer valid took places the legs had: ask them for more (the
        # answer's times count both rounds).
        wider = recall(
            text, dataclasses.replace(query, pool=min(4 * pool, MAX_POOL)), tenant=tenant
        )
        return dataclasses.replace(
            wider,
            latency_ms=wider.latency_ms + (time.perf_counter() - started) * 1000,
            embedding_ms=wider.embedding_ms + (embedded - embedding_started) * 1000,
            index_ms=wider.index_ms + (searched - embedded) * 1000,
            hidden=hidden | wider.hidden,
        )
    if query.reinforce:
        reinforce(h.memory.id for h in hits)
    done = time.perf_counter()
    metrics.SEARCHES.labels(mode).inc()
    if vector is not None:
        metrics.EMBEDDING.labels("query").observe(embedded - embedding_started)
    metrics.INDEX.labels("search").observe(searched - embedded)
    return Recall(
        hits=hits,
        latency_ms=(done - started) * 1000,
        embedding_ms=(embedded - embedding_started) * 1000,
        index_ms=(searched - embedded) * 1000,
        mode=mode,
        warnings=warnings,
        hidden=hidden,
    )


def _relevance(legs: dict[str, list[VectorHit]], fusion: ranking.Fusion) -> dict[str, float]:
    legs = {name: hits for name, hits in legs.items() if hits}
    if not legs:
        return {}
    if len(legs) > 1:
        return ranking.rrf(
            [[h.id for h in hits] for hits in legs.values()],
            k=fusion.k,
            weights=[getattr(fusion, name) for name in legs],
        )
    ((name, hits),) = legs.items()
    if name == "vector":
        return {h.id: max(0.0, min(1.0, h.score)) for h in hits}
    best = max((h.score for h in hits), default=0.0)
    return {h.id: h.score / best for h in hits} if best > 0 else {}


RANKING_FIELDS = (
    "id",
    "tenant_id",
    "type",
    "importance",
    "level",
    "created_at",
    "last_accessed_at",
    "archived_at",
    "speaker",
    *VALIDITY_FIELDS,
)
"""The columns ranking reads of a candidate, as plain tuples (no model instances: a search
ranks up to 160 candidates): no sealed field, so nothing is decrypted for the candidates
that do not make the top k."""
_COLUMNS = tuple(str(f.column) for f in Memory._meta.concrete_fields)


def _by_id(columns: Sequence[str], ids: Sequence[str]) -> str:
    """SELECT `columns` of the rows with these primary keys (`id`): the plain statement the
    ORM would write, without building a query each time (a search makes two)."""
    name = connection.ops.quote_name
    return "SELECT {} FROM {} WHERE {} IN ({})".format(
        ", ".join(name(c) for c in columns),
        name(Memory._meta.db_table),
        name("id"),
        ", ".join(["%s"] * len(ids)),
    )


class Candidate(NamedTuple):
    """What ranking reads of a candidate's row (RANKING_FIELDS)."""

    type: str
    importance: float
    seen: datetime
    """Its event time or last recall, the later."""
    named: bool
    """Whether the query's words name its speaker."""
    created: datetime


def _candidates(
    ids: list[str], query: Query, tenant: str, asked: frozenset[str]
) -> tuple[dict[str, Candidate], dict[str, str]]:
    """The candidates whose row still stands and is valid at the query's `as_of`, and
    (id -> why) those hidden as not valid then (`models.hidden_because`). A hit without its
    row was deleted (or archived) after the index answered, and the row decides. One
    statement by primary key alone: with the tenant in the WHERE clause SQLite walks a
    tenant index instead (every row of a one-tenant store: 150 ms at 100,000 memories).
    Plain SQL: building the query and converting its rows took the ORM 1.2 ms of a search
    at 10,000 memories, the statement 0.5 ms."""
    if not ids:
        return {}, {}
    allowed = query.allowed_levels
    with connection.cursor() as cursor:
        cursor.execute(_by_id(RANKING_FIELDS, ids), ids)
        rows = cursor.fetchall()
    now = datetime.now(UTC)
    as_of = utc(query.as_of) if query.as_of is not None else now
    out, hidden = {}, {}
    for row in rows:
        i, owner, kind, importance, level, created, accessed, archived, speaker = row[:9]
        if owner != tenant or archived is not None or (allowed and level not in allowed):
            continue
        start, end, expiry = (utc(t) if t is not None else None for t in row[9:])
        why = hidden_because(start, end, expiry, as_of=as_of, now=now)  # type: ignore[arg-type]
        if why is not None:
            hidden[i] = why
            continue
        created = utc(created)
        seen = last_seen(created, accessed and utc(accessed))
        out[i] = Candidate(kind, importance, seen, not asked.isdisjoint(speaker.split()), created)
    return out, hidden


def _score(
    legs: dict[str, list[VectorHit]],
    query: Query,
    tenant: str,
    asked: frozenset[str],
    spans: Sequence[dates.Window] = (),
) -> tuple[list[Hit], dict[str, str]]:
    """The candidates ranked (`retrieval.ranking`), and those hidden as not valid at the
    query's `as_of`, which are not fused; then credited when
    the query's words (`asked`, keyed tokens) name their speaker or its dates (`spans`)
    their event time; lifted by their sitting; blended with recency and importance."""
    ids = list(dict.fromkeys(h.id for hits in legs.values() for h in hits))
    rows, hidden = _candidates(ids, query, tenant, asked)
    # Memories not valid at as_of never count in fusion. The others without a row here
    # (deleted since the index answered, archived, of another level) keep their ranks, as
    # the fusion constants were fitted with them, and leave after it.
    valid = {name: [h for h in hits if h.id not in hidden] for name, hits in legs.items()}
    fusion = query.scoring.fusion
    relevance = ranking.credit(
        {i: r for i, r in _relevance(valid, fusion).items() if i in rows},
        {i for i, row in rows.items() if row.named},
        fusion.speaker,
    )
    if spans:
        dated = {i for i, row in rows.items() if any(w.holds(row.created) for w in spans)}
        relevance = ranking.credit(relevance, dated, fusion.dates)
    # Sittings lift only where some leg came back full: the store held more matches than
    # the pool, so being a candidate says something (in a small store everything is one).
    if any(len(hits) >= query.candidates for hits in legs.values()):
        episodes = {i: row.created.timestamp() for i, row in rows.items() if row.type == "episodic"}
        gap = float(get_config().context_window_seconds)
        sitting = ranking.sittings(episodes, gap)
        relevance = ranking.lift_sittings(relevance, sitting, fusion.sitting)
    now = datetime.now(UTC)
    ranked = ranking.rank(
        relevance,
        ages={i: (now - row.seen).total_seconds() for i, row in rows.items()},
        types={i: row.type for i, row in rows.items()},
        importance={i: row.importance for i, row in rows.items()},
        scoring=query.scoring,
    )
    positions = {
        name: {h.id: (n + 1, h.score) for n, h in enumerate(hits)} for name, hits in legs.items()
    }
    floor = query.min_score
    top = [(i, parts) for i, parts in ranked if floor is None or parts.score >= floor]
    top = top[: query.top_k]
    chosen = [i for i, _ in top]  # by primary key alone, as above
    full = {}
    if chosen:
        full = {m.id: m for m in Memory.objects.raw(_by_id(_COLUMNS, chosen), chosen)}
    return [
        Hit(
            full[i],
            parts.score,
            parts,
            {n: pos[i] for n, pos in positions.items() if i in pos},
            retention(full[i], now, query.scoring.half_lives),
        )
        for i, parts in top
        # Deleted or archived between the two reads: the row decides.
        if i in full and full[i].tenant_id == tenant and full[i].archived_at is None
    ], hidden


SQL_FILTER_POOL = 2000


def _memory_db() -> bool:
    """An in-memory SQLite database (the tests'): its connections share one cache with
    table locks, so a leg reading on another connection can lock out this one's writes."""
    sqlite: Any = connection  # django.db.backends.sqlite3's wrapper
    return connection.vendor == "sqlite" and bool(sqlite.is_in_memory_db())


def _sql_leg(*args: Any, **kwargs: Any) -> list[VectorHit]:
    """`_sql_lexical` on a pool thread: its connection is health-checked and aged as a
    request's is (a broken or old one is replaced)."""
    close_old_connections()
    return _sql_lexical(*args, **kwargs)


def _sql_lexical(
    tenant: str,
    query: Query,
    where: filters.Node | None,
    text: str,
    pool: int,
    *,
    context: bool = False,
) -> list[VectorHit]:
    """Full text over the keyed tokens in SQL (`context`: of the memories with their
    neighbours): the lexical legs where the index has no BM25, and the fallback when it
    fails. Metadata is sealed in SQL, so a filter is checked on the decrypted rows of up to
    SQL_FILTER_POOL best matches."""
    scope = Memory.objects.filter(tenant_id=tenant, archived_at__isnull=True)
    if query.namespace is not None:
        scope = scope.filter(namespace=query.namespace)
    words = list(dict.fromkeys(tokens_of(text, tenant).split()))
    found = fulltext.search(
        scope, words, pool if where is None else SQL_FILTER_POOL, context=context
    )
    if where is not None:
        rows = Memory.objects.in_bulk([i for i, _ in found])
        found = [(i, s) for i, s in found if i in rows and filters.matches(where, rows[i].facts())]
    return [VectorHit(i, s) for i, s in found[:pool]]


# -- searches over the tree ------------------------------------------------------------------


def expand(hits: Sequence[Memory], direction: str, *, tenant: str) -> dict[str, list[Memory]]:
    """Each hit's children or parents (one level)."""
    ids = [m.id for m in hits]
    related = links.child_ids(ids) if direction == "children" else links.parent_ids(ids)
    rows = Memory.objects.in_bulk([r for rs in related.values() for r in rs])
    out: dict[str, list[Memory]] = {}
    for memory_id, others in related.items():
        found = [rows[o] for o in others if o in rows and rows[o].tenant_id == tenant]
        out[memory_id] = sorted(found, key=lambda m: (m.created_at, m.id))
    return out


ZOOM_PARENTS = 3


def zoom(text: str, query: Query, *, tenant: str = DEFAULT_TENANT) -> Recall:
    """Best consolidated memories first, then the best episodes under them. Falls back to a
    plain search of episodes when nothing is consolidated yet."""
    top = recall(
        text,
        Query(
            namespace=query.namespace,
            top_k=ZOOM_PARENTS,
            mode=query.mode,
            filters=query.filters,
            types=("semantic", "summary"),
            levels=tuple(range(1, tree.MAX_LEVEL + 1)),
            scoring=query.scoring,
            as_of=query.as_of,
        ),
        tenant=tenant,
    )
    under = sorted(links.descendants([h.memory.id for h in top.hits], max_nodes=1000))
    parts = [f for f in (query.filters, {"id": {"$in": under[:1000]}} if under else None) if f]
    episodes = recall(
        text,
        Query(
            namespace=query.namespace,
            top_k=query.top_k,
            mode=query.mode,
            filters={"$and": parts} if parts else None,
            types=("episodic",),
            created_after=query.created_after,
            created_before=query.created_before,
            min_score=query.min_score,
            scoring=query.scoring,
            as_of=query.as_of,
        ),
        tenant=tenant,
    )
    return Recall(
        hits=episodes.hits,
        latency_ms=top.latency_ms + episodes.latency_ms,
        embedding_ms=top.embedding_ms + episodes.embedding_ms,
        index_ms=top.index_ms + episodes.index_ms,
        mode=episodes.mode,
        hidden=top.hidden | episodes.hidden,
        warnings=top.warnings
        + episodes.warnings
        + ([] if under else ["zoom: nothing consolidated matched; episodes searched directly"]),
    )


# -- reinforcement: recalled memories gain access count, recency and strength ------------

STRENGTH_STEP = 0.5
MAX_PENDING = 100_000


class _Pending:
    """Recalls counted in memory and written in batches, off the request's latency path."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, ids: Iterable[str]) -> None:
        with self._lock:
            if len(self._counts) < MAX_PENDING:
                self._counts.update(ids)

    def take(self) -> Counter[str]:
        with self._lock:
            counts, self._counts = self._counts, Counter()
        return counts


_pending = _Pending()


def reinforce(ids: Iterable[str]) -> None:
    """Note that these memories were recalled (written by `flush_reinforcements`)."""
    _pending.add(ids)


def flush_reinforcements() -> int:
    """Write the noted recalls: one UPDATE per distinct count. Returns memories touched."""
    counts = _pending.take()
    by_count: dict[int, list[str]] = {}
    for memory_id, times in counts.items():
        by_count.setdefault(times, []).append(memory_id)
    now = datetime.now(UTC)
    for times, ids in by_count.items():
        Memory.objects.filter(id__in=ids).update(
            access_count=F("access_count") + times,
            last_accessed_at=now,
            strength=F("strength") + STRENGTH_STEP * times,
        )
    return len(counts)
