"""The menu: what the service does, one verb each. The API, the dashboard, the CLI, the
benchmarks and the tests call these; each lives in the module that owns its job.

- remember: `store_many`, `remember`, `remember_many`, `get`, `update`, `delete`; the versions
  of a memory: `history`
- recall: `search` (the API's), `recall` (one flat search), `reinforce`, `flush_reinforcements`
- browse: `list_memories`, `namespaces`, `stored_per_day`
- the index: `drain_outbox`, `outbox_depth`, `outbox_health`
- long work, as jobs (`memories/jobs/`): `consolidate`, `archive_faded`, `restore`, `purge`,
  `export`, `load`, `reindex`, `doctor`; over HTTP: `memory_ids`, `export_lines`,
  `read_export`, `load_records`
"""

from __future__ import annotations

from somafractalmemory.memories.browse import (
    NamespaceStats,
    Page,
    list_memories,
    namespaces,
    stored_per_day,
)
from somafractalmemory.memories.indexing import (
    check_model,
    drain_outbox,
    outbox_depth,
    outbox_health,
)
from somafractalmemory.memories.jobs.consolidation import consolidate
from somafractalmemory.memories.jobs.erasure import purge
from somafractalmemory.memories.jobs.forgetting import archive_faded, restore
from somafractalmemory.memories.jobs.maintenance import doctor, reindex
from somafractalmemory.memories.jobs.transfer import lines as export_lines
from somafractalmemory.memories.jobs.transfer import load, load_records, memory_ids
from somafractalmemory.memories.jobs.transfer import parse as read_export
from somafractalmemory.memories.jobs.transfer import write as export
from somafractalmemory.memories.recall import (
    Hit,
    Query,
    Recall,
    flush_reinforcements,
    recall,
    reinforce,
    search,
)
from somafractalmemory.memories.remember import (
    NewMemory,
    Stored,
    delete,
    get,
    remember,
    remember_many,
    store_many,
    update,
)
from somafractalmemory.memories.versions import history

__all__ = [
    "Hit",
    "NamespaceStats",
    "NewMemory",
    "Page",
    "Query",
    "Recall",
    "Stored",
    "archive_faded",
    "check_model",
    "consolidate",
    "delete",
    "doctor",
    "drain_outbox",
    "export",
    "export_lines",
    "flush_reinforcements",
    "get",
    "history",
    "list_memories",
    "load",
    "load_records",
    "memory_ids",
    "namespaces",
    "outbox_depth",
    "outbox_health",
    "purge",
    "read_export",
    "recall",
    "reindex",
    "reinforce",
    "remember",
    "remember_many",
    "restore",
    "search",
    "store_many",
    "stored_per_day",
    "update",
]
