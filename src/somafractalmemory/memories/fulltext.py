"""The SQL full-text index (SQLite FTS5 with triggers, PostgreSQL GIN): its schema, which
migrations install, and `search` over it, the only raw SQL of the service.

Version 1 (migrations 0003-0005) indexed the plaintext `content`; version 2 (0006 on)
indexes the keyed `tokens` column, since content is sealed; version 3 (0009 on) also
`context_tokens` (the memory with its neighbouring episodes). Migrations name the version they
were written for, so an old migration keeps doing what it did.

SQLite: Django rebuilds a table for most schema changes, which drops these triggers and
renumbers rowids. Any later migration that alters `memories_memory` must end by calling
`install(schema_editor)` again (it drops, recreates and rebuilds).
"""

from __future__ import annotations

import time
from typing import Any

from django.db import connection
from django.db.models import BooleanField, F, QuerySet
from django.db.models.expressions import RawSQL

from somafractalmemory.retrieval.lexical import BM25_B, BM25_K1, MAX_TERMS

CURRENT = 3


def _sqlite_up(column: str, tokenizer: str, table: str = "memories_fts") -> list[str]:
    return [
        f"CREATE VIRTUAL TABLE {table} USING fts5("
        f"{column}, content='memories_memory', content_rowid='rowid', tokenize='{tokenizer}')",
        f"CREATE TRIGGER {table}_ai AFTER INSERT ON memories_memory BEGIN "
        f"INSERT INTO {table}(rowid, {column}) VALUES (new.rowid, new.{column}); END",
        f"CREATE TRIGGER {table}_ad AFTER DELETE ON memories_memory BEGIN "
        f"INSERT INTO {table}({table}, rowid, {column}) "
        f"VALUES ('delete', old.rowid, old.{column}); END",
        f"CREATE TRIGGER {table}_au AFTER UPDATE OF {column} ON memories_memory BEGIN "
        f"INSERT INTO {table}({table}, rowid, {column}) "
        f"VALUES ('delete', old.rowid, old.{column}); "
        f"INSERT INTO {table}(rowid, {column}) VALUES (new.rowid, new.{column}); END",
        f"INSERT INTO {table}({table}) VALUES ('rebuild')",
    ]


def _sqlite_down(table: str) -> list[str]:
    return [
        f"DROP TRIGGER IF EXISTS {table}_ai",
        f"DROP TRIGGER IF EXISTS {table}_ad",
        f"DROP TRIGGER IF EXISTS {table}_au",
        f"DROP TABLE IF EXISTS {table}",
    ]


SQLITE_DOWN = _sqlite_down("memories_fts") + _sqlite_down("memories_context_fts")
_SQLITE_TOKENS = _sqlite_up("tokens", "unicode61")
SQLITE_UP = {
    1: _sqlite_up("content", "porter unicode61"),
    2: _SQLITE_TOKENS,
    # Version 3 (0009 on): also the tokens of each memory with its neighbours, for the
    # context-lexical leg where the vector index has no BM25.
    3: _SQLITE_TOKENS + _sqlite_up("context_tokens", "unicode61", "memories_context_fts"),
}
_POSTGRES_TOKENS = [
    "DROP INDEX IF EXISTS memories_content_fts",
    "CREATE INDEX IF NOT EXISTS memories_tokens_fts ON memories_memory "
    "USING GIN (to_tsvector('simple', tokens))",
]
POSTGRES_UP = {
    1: [
        "CREATE INDEX IF NOT EXISTS memories_content_fts ON memories_memory "
        "USING GIN (to_tsvector('english', content))",
    ],
    2: _POSTGRES_TOKENS,
    3: [
        *_POSTGRES_TOKENS,
        "CREATE INDEX IF NOT EXISTS memories_context_tokens_fts ON memories_memory "
        "USING GIN (to_tsvector('simple', context_tokens))",
    ],
}
POSTGRES_DOWN = [
    "DROP INDEX IF EXISTS memories_content_fts",
    "DROP INDEX IF EXISTS memories_tokens_fts",
    "DROP INDEX IF EXISTS memories_context_tokens_fts",
]


def install(schema_editor: Any, version: int) -> None:
    vendor = schema_editor.connection.vendor
    statements = {"sqlite": SQLITE_DOWN + SQLITE_UP[version], "postgresql": POSTGRES_UP[version]}
    for sql in statements.get(vendor, []):
        schema_editor.execute(sql)


def uninstall(schema_editor: Any) -> None:
    vendor = schema_editor.connection.vendor
    for sql in {"sqlite": SQLITE_DOWN, "postgresql": POSTGRES_DOWN}.get(vendor, []):
        schema_editor.execute(sql)


# -- search ----------------------------------------------------------------------------


def search(
    queryset: QuerySet, tokens: list[str], limit: int, *, context: bool = False
) -> list[tuple[str, float]]:
    """(memory id, score) of the best matches of keyed `tokens` among `queryset` (the
    caller's tenant and namespace, applied inside the query), best first; `context` matches
    the memories with their neighbours (`context_tokens`) instead."""
    tokens = [t for t in tokens if t.isalnum()][:MAX_TERMS]
    if not tokens:
        return []
    if connection.vendor == "postgresql":
        return _postgres(queryset, tokens, limit, "context_tokens" if context else "tokens")
    return _sqlite(queryset, tokens, limit, "memories_context_fts" if context else "memories_fts")


def _sqlite(
    queryset: QuerySet, tokens: list[str], limit: int, table: str
) -> list[tuple[str, float]]:
    match = " OR ".join(f'"{t}"' for t in tokens)
    # The scope as a subquery on each match's own row: `m.id IN (scope)` built the whole
    # scope's id list first, every search (24 of 25 ms at 10,000 memories here).
    correlated = queryset.extra(where=[f'"memories_memory".rowid = {table}.rowid'])
    inner, params = correlated.values("id").query.sql_with_params()
    sql = (
        f"SELECT m.id, -bm25({table}) AS score FROM {table} "
        f"JOIN memories_memory m ON m.rowid = {table}.rowid "
        f"WHERE {table} MATCH %s AND EXISTS ({inner}) ORDER BY score DESC LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [match, *params, limit])
        return [(str(row[0]), float(row[1])) for row in cursor.fetchall()]


# Every token is 16 hex characters and tokens are separated by single spaces, so a token's
# count in a document is a substring count and a document's length is its character length
# over 17: no tsvector needed to rank.
TOKEN_WIDTH = 16

_POSTGRES_BM25 = f"""
WITH hit AS MATERIALIZED ({{hits}}),
terms AS (SELECT DISTINCT t FROM unnest(%s::text[]) AS t),
tf AS MATERIALIZED (
  SELECT hit.id, terms.t, (length(hit.doc) + 1) / {TOKEN_WIDTH + 1}.0 AS dl,
         (length(hit.doc) - length(replace(hit.doc, terms.t, ''))) / {TOKEN_WIDTH}.0 AS f
  FROM hit JOIN terms ON strpos(hit.doc, terms.t) > 0
),
df AS MATERIALIZED (SELECT t, count(*) AS n FROM tf GROUP BY t),
scope AS (SELECT %s::float AS docs, %s::float AS avgdl)
SELECT tf.id, sum(
  ln(1 + (greatest(scope.docs, df.n) - df.n + 0.5) / (df.n + 0.5))
  * tf.f * {BM25_K1 + 1} / (tf.f + {BM25_K1} * (1 - {BM25_B} + {BM25_B} * tf.dl
                                             / greatest(scope.avgdl, 1)))
) AS score
FROM tf JOIN df ON df.t = tf.t CROSS JOIN scope
GROUP BY tf.id ORDER BY score DESC, tf.id LIMIT %s
"""
STATS_SECONDS = 60.0
"""How long a scope's document count and mean length are reused: reading them scans the
whole scope (0.4 s at 100,000 memories here, more than the rest of the ranking), and BM25
moves little when they are a minute old."""
_stats: dict[tuple[Any, ...], tuple[float, int, float]] = {}


def _postgres(
    queryset: QuerySet, tokens: list[str], limit: int, column: str
) -> list[tuple[str, float]]:
    """BM25 over the keyed tokens: the GIN index finds the documents holding any query token;
    document frequencies come from those, the document count and average length from the
    caller's scope (its tenant and namespace), as FTS5 and Milvus take theirs from the whole
    index."""
    tsquery = " | ".join(tokens)
    matching = queryset.alias(
        lexical_hit=RawSQL(
            f"to_tsvector('simple', {column}) @@ to_tsquery('simple', %s)",
            (tsquery,),
            output_field=BooleanField(),
        )
    ).filter(lexical_hit=True)
    hits, hit_params = _as_doc(matching, column)
    docs, avgdl = _scope_stats(queryset, column)
    with connection.cursor() as cursor:
        cursor.execute(_POSTGRES_BM25.format(hits=hits), [*hit_params, tokens, docs, avgdl, limit])
        return [(str(row[0]), float(row[1])) for row in cursor.fetchall()]


def _scope_stats(queryset: QuerySet, column: str) -> tuple[int, float]:
    """(documents, mean length in tokens) of the scope, reused for STATS_SECONDS."""
    scope, params = _as_doc(queryset, column)
    key = (connection.settings_dict["NAME"], scope, params)
    now = time.monotonic()
    held = _stats.get(key)
    if held is not None and now - held[0] < STATS_SECONDS:
        return held[1], held[2]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*), coalesce(avg((length(doc) + 1) / {TOKEN_WIDTH + 1}.0), 0) "
            f"FROM ({scope}) AS s",
            params,
        )
        docs, avgdl = cursor.fetchone()
    if len(_stats) > 10_000:
        _stats.clear()
    _stats[key] = (now, int(docs), float(avgdl))
    return int(docs), float(avgdl)


def _as_doc(queryset: QuerySet, column: str) -> tuple[str, tuple[Any, ...]]:
    """The SQL of `queryset` selecting (id, `column` AS doc)."""
    sql, params = (
        queryset.annotate(doc=F(column)).values("id", "doc").order_by().query.sql_with_params()
    )
    return sql, tuple(params)
