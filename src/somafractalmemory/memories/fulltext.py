"""The SQL full-text index (SQLite FTS5 with triggers, PostgreSQL GIN): its schema, which
migrations install, and `search` over it, the only raw SQL of the service.

Version 1 (migrations 0003-0005) indexed the plaintext `content`; version 2 (0006 on)
indexes the keyed `tokens` column, since content is sealed. Migrations name the version they
were written for, so an old migration keeps doing what it did.

SQLite: Django rebuilds a table for most schema changes, which drops these triggers and
renumbers rowids. Any later migration that alters `memories_memory` must end by calling
`install(schema_editor)` again (it drops, recreates and rebuilds).
"""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.db.models import BooleanField, FloatField, QuerySet
from django.db.models.expressions import RawSQL

from somafractalmemory.retrieval.lexical import MAX_TERMS

CURRENT = 2


def _sqlite_up(column: str, tokenizer: str) -> list[str]:
    return [
        "CREATE VIRTUAL TABLE memories_fts USING fts5("
        f"{column}, content='memories_memory', content_rowid='rowid', tokenize='{tokenizer}')",
        "CREATE TRIGGER memories_fts_ai AFTER INSERT ON memories_memory BEGIN "
        f"INSERT INTO memories_fts(rowid, {column}) VALUES (new.rowid, new.{column}); END",
        "CREATE TRIGGER memories_fts_ad AFTER DELETE ON memories_memory BEGIN "
        f"INSERT INTO memories_fts(memories_fts, rowid, {column}) "
        f"VALUES ('delete', old.rowid, old.{column}); END",
        f"CREATE TRIGGER memories_fts_au AFTER UPDATE OF {column} ON memories_memory BEGIN "
        f"INSERT INTO memories_fts(memories_fts, rowid, {column}) "
        f"VALUES ('delete', old.rowid, old.{column}); "
        f"INSERT INTO memories_fts(rowid, {column}) VALUES (new.rowid, new.{column}); END",
        "INSERT INTO memories_fts(memories_fts) VALUES ('rebuild')",
    ]


SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS memories_fts_ai",
    "DROP TRIGGER IF EXISTS memories_fts_ad",
    "DROP TRIGGER IF EXISTS memories_fts_au",
    "DROP TABLE IF EXISTS memories_fts",
]
SQLITE_UP = {1: _sqlite_up("content", "porter unicode61"), 2: _sqlite_up("tokens", "unicode61")}
POSTGRES_UP = {
    1: [
        "CREATE INDEX IF NOT EXISTS memories_content_fts ON memories_memory "
        "USING GIN (to_tsvector('english', content))",
    ],
    2: [
        "DROP INDEX IF EXISTS memories_content_fts",
        "CREATE INDEX IF NOT EXISTS memories_tokens_fts ON memories_memory "
        "USING GIN (to_tsvector('simple', tokens))",
    ],
}
POSTGRES_DOWN = [
    "DROP INDEX IF EXISTS memories_content_fts",
    "DROP INDEX IF EXISTS memories_tokens_fts",
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


def search(queryset: QuerySet, tokens: list[str], limit: int) -> list[tuple[str, float]]:
    """(memory id, score) of the best matches of keyed `tokens` among `queryset` (the
    caller's tenant and namespace, applied inside the query), best first."""
    tokens = [t for t in tokens if t.isalnum()][:MAX_TERMS]
    if not tokens:
        return []
    if connection.vendor == "postgresql":
        return _postgres(queryset, tokens, limit)
    return _sqlite(queryset, tokens, limit)


def _sqlite(queryset: QuerySet, tokens: list[str], limit: int) -> list[tuple[str, float]]:
    match = " OR ".join(f'"{t}"' for t in tokens)
    inner, params = queryset.values("id").query.sql_with_params()
    sql = (
        "SELECT m.id, -bm25(memories_fts) AS score FROM memories_fts "
        "JOIN memories_memory m ON m.rowid = memories_fts.rowid "
        f"WHERE memories_fts MATCH %s AND m.id IN ({inner}) ORDER BY score DESC LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [match, *params, limit])
        return [(str(row[0]), float(row[1])) for row in cursor.fetchall()]


def _postgres(queryset: QuerySet, tokens: list[str], limit: int) -> list[tuple[str, float]]:
    tsquery = " | ".join(tokens)
    vector = "to_tsvector('simple', tokens)"
    rows = (
        queryset.alias(
            lexical_hit=RawSQL(
                f"{vector} @@ to_tsquery('simple', %s)", (tsquery,), output_field=BooleanField()
            )
        )
        .filter(lexical_hit=True)
        .annotate(
            lexical_score=RawSQL(
                f"ts_rank_cd({vector}, to_tsquery('simple', %s))",
                (tsquery,),
                output_field=FloatField(),
            )
        )
        .order_by("-lexical_score", "id")
        .values_list("id", "lexical_score")[:limit]
    )
    return [(str(i), float(s)) for i, s in rows]
