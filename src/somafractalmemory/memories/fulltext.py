"""The SQL full-text index (SQLite FTS5 with triggers, PostgreSQL GIN), for migrations.

SQLite: Django rebuilds a table for most schema changes, which drops these triggers and
renumbers rowids. Any later migration that alters `memories_memory` must end by calling
`install(schema_editor)` again (it drops, recreates and rebuilds).
"""

from __future__ import annotations

from typing import Any

SQLITE_UP = [
    "CREATE VIRTUAL TABLE memories_fts USING fts5("
    "content, content='memories_memory', content_rowid='rowid', tokenize='porter unicode61')",
    "CREATE TRIGGER memories_fts_ai AFTER INSERT ON memories_memory BEGIN "
    "INSERT INTO memories_fts(rowid, content) VALUES (new.rowid, new.content); END",
    "CREATE TRIGGER memories_fts_ad AFTER DELETE ON memories_memory BEGIN "
    "INSERT INTO memories_fts(memories_fts, rowid, content) "
    "VALUES ('delete', old.rowid, old.content); END",
    "CREATE TRIGGER memories_fts_au AFTER UPDATE OF content ON memories_memory BEGIN "
    "INSERT INTO memories_fts(memories_fts, rowid, content) "
    "VALUES ('delete', old.rowid, old.content); "
    "INSERT INTO memories_fts(rowid, content) VALUES (new.rowid, new.content); END",
    "INSERT INTO memories_fts(memories_fts) VALUES ('rebuild')",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS memories_fts_ai",
    "DROP TRIGGER IF EXISTS memories_fts_ad",
    "DROP TRIGGER IF EXISTS memories_fts_au",
    "DROP TABLE IF EXISTS memories_fts",
]
POSTGRES_UP = [
    "CREATE INDEX IF NOT EXISTS memories_content_fts ON memories_memory "
    "USING GIN (to_tsvector('english', content))",
]
POSTGRES_DOWN = ["DROP INDEX IF EXISTS memories_content_fts"]


def install(schema_editor: Any) -> None:
    vendor = schema_editor.connection.vendor
    statements = {"sqlite": SQLITE_DOWN + SQLITE_UP, "postgresql": POSTGRES_UP}
    for sql in statements.get(vendor, []):
        schema_editor.execute(sql)


def uninstall(schema_editor: Any) -> None:
    vendor = schema_editor.connection.vendor
    for sql in {"sqlite": SQLITE_DOWN, "postgresql": POSTGRES_DOWN}.get(vendor, []):
        schema_editor.execute(sql)
