"""Lexical retrieval inside the SQL database: SQLite FTS5 (BM25) or PostgreSQL full text.

Used today when the vector index is down (search keeps answering, from SQL alone). The
candidates are restricted by the caller's queryset (tenant, namespace, filters) inside the
database query, never trimmed afterwards.
"""

from __future__ import annotations

import re

from django.db import connection
from django.db.models import BooleanField, FloatField, QuerySet
from django.db.models.expressions import RawSQL

MAX_TERMS = 64
_TERM = re.compile(r"\w+", re.UNICODE)


def terms(text: str) -> list[str]:
    """Lower-case word tokens, first occurrence order, at most MAX_TERMS."""
    return list(dict.fromkeys(t.lower() for t in _TERM.findall(text)))[:MAX_TERMS]


def search(queryset: QuerySet, query: str, limit: int) -> list[tuple[str, float]]:
    """(memory id, score) of the best lexical matches among `queryset`, best first."""
    words = terms(query)
    if not words:
        return []
    if connection.vendor == "postgresql":
        return _postgres(queryset, words, limit)
    return _sqlite(queryset, words, limit)


def _sqlite(queryset: QuerySet, words: list[str], limit: int) -> list[tuple[str, float]]:
    match = " OR ".join(f'"{w}"' for w in words)
    inner, params = queryset.values("id").query.sql_with_params()
    sql = (
        "SELECT m.id, -bm25(memories_fts) AS score FROM memories_fts "
        "JOIN memories_memory m ON m.rowid = memories_fts.rowid "
        f"WHERE memories_fts MATCH %s AND m.id IN ({inner}) ORDER BY score DESC LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [match, *params, limit])
        return [(str(row[0]), float(row[1])) for row in cursor.fetchall()]


def _postgres(queryset: QuerySet, words: list[str], limit: int) -> list[tuple[str, float]]:
    tsquery = " | ".join(words)
    vector = "to_tsvector('english', content)"
    rows = (
        queryset.alias(
            lexical_hit=RawSQL(
                f"{vector} @@ to_tsquery('english', %s)", (tsquery,), output_field=BooleanField()
            )
        )
        .filter(lexical_hit=True)
        .annotate(
            lexical_score=RawSQL(
                f"ts_rank_cd({vector}, to_tsquery('english', %s))",
                (tsquery,),
                output_field=FloatField(),
            )
        )
        .order_by("-lexical_score", "id")
        .values_list("id", "lexical_score")[:limit]
    )
    return [(str(i), float(s)) for i, s in rows]
