"""The SQL full-text index (SQLite FTS5 with triggers, PostgreSQL GIN), for migrations.

Version 1 (migrations 0003-0005) indexed the plaintext `content`; version 2 (0006 on)
indexes the keyed `tokens` column, since content is sealed. Migrations name the version they
were written for, so an old migration keeps doing what it did.

SQLite: Django rebuilds a table for most schema changes, which drops these triggers and
renumbers rowids. Any later migration that alters `memories_memory` must end by calling
`install(schema_editor)` again (it drops, recreates and rebuilds).
"""

from __future__ import annotations

from typing import Any

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
