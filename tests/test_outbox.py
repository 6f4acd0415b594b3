"""Outbox, rebuild and drift repair: SQL decides, the vector index follows."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from somafractalmemory import backends
from somafractalmemory.errors import EmbeddingModelChanged
from somafractalmemory.memories import indexing, services
from somafractalmemory.memories.jobs import maintenance
from somafractalmemory.memories.models import Lease, Memory, VectorTask
from somafractalmemory.vectors.base import VectorIndex
from somafractalmemory.vectors.local import LocalIndex
from somafractalmemory.vectors.milvus import MilvusIndex
from tests.conftest import MILVUS_SERVER, ON_LITE, Api, embedded, server_environment
from tests.servers import run_sfm


def reopen(index: Any, monkeypatch: pytest.MonkeyPatch) -> VectorIndex:
    """The index comes back (same files, or same server database with a new client)."""
    embedder = backends.embedder()
    again: VectorIndex = (
        LocalIndex(index.directory.parent, model=embedder.name, dim=embedder.dim)
        if isinstance(index, LocalIndex)
        else MilvusIndex(index.uri, model=embedder.name, dim=embedder.dim, db_name=index.db_name)
    )
    monkeypatch.setattr(backends, "_index", again)
    return again


def test_one_process_drains_the_outbox_at_a_time(
    api: Api, namespace: str, fresh_index: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_index.close()
    stored = api.ok("POST", "/memory/store", {"content": "Owed once", "namespace": namespace})
    again = reopen(fresh_index, monkeypatch)
    VectorTask.objects.update(next_attempt_at=datetime.now(UTC))  # due now
    # Another worker (another host's process) is draining the outbox.
    Lease.objects.create(
        name=maintenance.OUTBOX_LEASE,
        holder="another-host:1",
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )

    def loops(n: int) -> None:
        """Run this process's outbox worker for n rounds."""
        stop, rounds = threading.Event(), []

        def counted() -> None:
            rounds.append(1)
            if len(rounds) == n:
                stop.set()

        monkeypatch.setattr(maintenance, "flush_reinforcements", counted)
        # It would close this test's connection, whose transaction is the test's database.
        monkeypatch.setattr(maintenance, "close_old_connections", lambda: None)
        maintenance.run_outbox_worker(stop, interval=0.001)

    loops(3)
    task = VectorTask.objects.get(memory_id=stored["id"])
    assert task.attempts == 0 and stored["id"] not in dict(again.entries())
    Lease.objects.filter(name=maintenance.OUTBOX_LEASE).delete()  # that worker is done
    loops(1)
    assert not VectorTask.objects.exists() and stored["id"] in dict(again.entries())
    assert not Lease.objects.exists()  # and this one let go of it


def test_store_is_acknowledged_while_the_index_is_down(
    api: Api, namespace: str, fresh_index: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_index.close()  # every call now fails, as with a dead Milvus
    stored = api.ok("POST", "/memory/store", {"content": "Owed but kept", "namespace": namespace})
    assert Memory.objects.filter(id=stored["id"]).exists()
    assert VectorTask.objects.filter(memory_id=stored["id"]).count() == 1
    body = {"query": "which one was kept?", "namespace": namespace}
    fallback = api.ok("POST", "/memory/search", body)
    assert fallback["mode"] == "lexical"
    assert fallback["warnings"][0].startswith("vector_index_unavailable")
    assert [h["id"] for h in fallback["memories"]] == [stored["id"]]

    # Owed tasks wait until the request that wrote them has had its chance...
    assert services.drain_outbox() == 0
    assert VectorTask.objects.get(memory_id=stored["id"]).attempts == 0
    # ...except for a worker started after them (their process died): due at once, once.
    started = datetime.now(UTC)
    assert services.drain_outbox(owed_before=started) == 0  # the index is still down
    assert VectorTask.objects.get(memory_id=stored["id"]).attempts == 1
    assert services.drain_outbox(owed_before=started) == 0  # then backoff applies
    assert VectorTask.objects.get(memory_id=stored["id"]).attempts == 1
    VectorTask.objects.update(attempts=0)
    VectorTask.objects.update(next_attempt_at=datetime.now(UTC))
    # A drain while the index is still down backs off instead of spinning.
    assert services.drain_outbox() == 0
    task = VectorTask.objects.get(memory_id=stored["id"])
    assert task.attempts == 1 and task.next_attempt_at > task.created_at
    assert services.drain_outbox() == 0  # not due yet
    assert VectorTask.objects.get(memory_id=stored["id"]).attempts == 1

    reopen(fresh_index, monkeypatch)
    VectorTask.objects.update(next_attempt_at=task.created_at)
    assert services.drain_outbox() == 1
    assert not VectorTask.objects.exists()
    answer = api.ok("POST", "/memory/search", body)
    assert answer["mode"] == "hybrid" and answer["warnings"] == []
    assert [h["id"] for h in answer["memories"]] == [stored["id"]]


def test_delete_while_the_index_is_down_is_paid_later(
    api: Api, namespace: str, fresh_index: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = api.ok("POST", "/memory/store", {"content": "Soon gone", "namespace": namespace})
    fresh_index.close()
    api.ok("DELETE", f"/memory/{stored['id']}")
    assert VectorTask.objects.get().action == "delete"
    index = reopen(fresh_index, monkeypatch)
    assert dict(index.entries()).keys() == {stored["id"]}
    assert services.drain_outbox(due_only=False) == 1
    assert list(index.entries()) == []


def test_backoff_doubles_and_caps() -> None:
    delays = [indexing.backoff_seconds(n) for n in range(1, 12)]
    assert delays[:4] == [1, 2, 4, 8]
    assert max(delays) == indexing.MAX_BACKOFF_SECONDS
    assert delays == sorted(delays)


def test_reindex_rebuilds_an_empty_index(api: Api, namespace: str, fresh_index: Any) -> None:
    items = [{"content": f"Rebuild me {i}", "namespace": namespace} for i in range(30)]
    ids = {m["id"] for m in api.ok("POST", "/memory/batch", {"memories": items})["memories"]}
    fresh_index.reset()
    seen: list[tuple[int, int]] = []

    def progress(done: int, total: int, stage: str = "") -> None:
        seen.append((done, total))

    report = maintenance.reindex(progress=progress)
    total = Memory.objects.count()
    assert report.indexed == total and seen[-1] == (total, total)
    assert ids <= dict(fresh_index.entries()).keys()
    hits = api.ok("POST", "/memory/search", {"query": "Rebuild me 7", "namespace": namespace})
    # The rebuilt index answers: "Rebuild me 7" among the first three of thirty near
    # duplicates (its neighbours 6 and 8 share its context word for word).
    assert "Rebuild me 7" in [m["content"] for m in hits["memories"][:3]]


class Renamed:
    """The service's embedder under another model's name: what a changed config looks like."""

    def __init__(self, inner: Any, name: str) -> None:
        self._inner, self.name = inner, name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)

    @property
    def query_name(self) -> str:
        return self.name


def test_a_new_embedding_model_needs_an_explicit_reembed(
    api: Api, namespace: str, fresh_index: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [{"content": f"Lisbon trip note {i}", "namespace": namespace} for i in range(5)]
    ids = {m["id"] for m in api.ok("POST", "/memory/batch", {"memories": items})["memories"]}
    before = backends.embedder().name
    assert services.check_model() == before  # recorded with the data
    monkeypatch.setattr(backends, "_embedder", Renamed(backends.embedder(), "other-model"))
    fresh_index.reset()  # the new model's collection starts empty
    for refused in (services.check_model, maintenance.reindex):
        with pytest.raises(EmbeddingModelChanged) as changed:
            refused()
        assert changed.value.code == "embedding_model_changed"
        assert "sfm reindex --reembed" in changed.value.message
        assert changed.value.details == {"recorded": before, "configured": "other-model"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 503 and "--reembed" in ready.json()["checks"]["embedder"]
    assert not dict(fresh_index.entries())  # nothing written to the new collection meanwhile
    report = maintenance.reindex(reembed=True)
    assert report.indexed == Memory.objects.count() and ids <= dict(fresh_index.entries()).keys()
    assert services.check_model() == "other-model"  # the data now has the new model
    hits = api.ok("POST", "/memory/search", {"query": "Lisbon trip", "namespace": namespace})
    assert {m["id"] for m in hits["memories"]} == ids


def test_doctor_finds_and_repairs_drift(api: Api, namespace: str, fresh_index: Any) -> None:
    items = [{"content": f"Drift case {i}", "namespace": namespace} for i in range(4)]
    ids = [m["id"] for m in api.ok("POST", "/memory/batch", {"memories": items})["memories"]]
    assert maintenance.doctor().clean

    fresh_index.delete([ids[0]])  # missing
    Memory.objects.filter(id=ids[1]).update(embedding_id="vec_newer")  # stale
    ghost = Memory.objects.get(id=ids[2])
    Memory.objects.filter(id=ids[2]).delete()  # orphaned: the row is gone, the vector stays
    drift = maintenance.doctor()
    assert (drift.missing, drift.stale, drift.orphaned) == ([ids[0]], [ids[1]], [ghost.id])

    maintenance.doctor(repair=True)
    assert maintenance.doctor().clean
    assert dict(fresh_index.entries())[ids[1]] == "vec_newer"


def test_serve_refuses_several_workers_on_the_embedded_index(tmp_path: Path) -> None:
    import os

    env = embedded({**os.environ, "SFM_DATA_DIR": str(tmp_path)})
    result = run_sfm("serve", "--workers", "2", env=env)
    assert result.returncode == 2
    assert "embedded vector index" in result.stderr and "config_error" in result.stderr


@pytest.mark.parametrize("engine", ["local", pytest.param("milvus", marks=ON_LITE)])
def test_maintenance_commands_refuse_a_locked_index(tmp_path: Path, engine: str) -> None:
    """Another process holds the embedded index's files (the local engine's, a Lite file)."""
    held: VectorIndex = (
        LocalIndex(tmp_path / "vectors", model="all-MiniLM-L6-v2", dim=384)
        if engine == "local"
        else MilvusIndex(str(tmp_path / "milvus.db"), model="all-MiniLM-L6-v2", dim=384)
    )
    with server_environment(tmp_path) as env:
        env = {**embedded(env), "SFM_VECTOR_ENGINE": engine}
        try:
            for command in (["doctor"], ["reindex"], ["worker"]):
                result = run_sfm(*command, env=env)
                assert result.returncode == 2, result.stderr
                assert "vector_index_locked" in result.stderr and "another process" in result.stderr
        finally:
            held.close()
        # Closed is released: the engine that held the file has stopped.
        assert run_sfm("migrate", env=env).returncode == 0
        doctor = run_sfm("doctor", env=env)
        assert doctor.returncode == 0, doctor.stderr


def test_cli_maintenance_on_a_healthy_store(server_env: dict[str, str]) -> None:
    assert run_sfm("migrate", env=server_env).returncode == 0
    doctor = run_sfm("doctor", env=server_env)
    assert doctor.returncode == 0, doctor.stderr
    assert "missing: 0" in doctor.stdout and "index matches SQL" in doctor.stdout
    rebuilt = run_sfm("reindex", env=server_env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "indexed 0 memories, removed 0 orphaned vectors" in rebuilt.stdout
    pending = run_sfm("reindex", "--pending", env=server_env)
    assert pending.returncode == 0 and "0 still owed" in pending.stdout


def test_cli_consolidate_and_forget(server_env: dict[str, str]) -> None:
    assert run_sfm("migrate", env=server_env).returncode == 0
    done = run_sfm("consolidate", "--namespace", "notes", env=server_env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["namespace"] == "notes"
    assert json.loads(done.stdout)["created"] == 0
    assert "level 0" not in done.stderr  # nothing to fold: no level ran past its query
    forgot = run_sfm("forget", "--dry-run", env=server_env)
    assert forgot.returncode == 0, forgot.stderr
    assert json.loads(forgot.stdout) == {
        "tenant": "default",
        "considered": 0,
        "archived": 0,
        "deleted": 0,
        "expired_archived": 0,
        "expired_erased": 0,
        "dry_run": True,
        "sample": [],
    }


def test_doctor_keeps_archived_memories_out_of_the_index(
    api: Api, namespace: str, fresh_index: Any
) -> None:
    from somafractalmemory.memories.jobs import forgetting

    kept = api.ok("POST", "/memory/store", {"content": "Kept note", "namespace": namespace})["id"]
    gone = api.ok("POST", "/memory/store", {"content": "Old note", "namespace": namespace})["id"]
    forgetting.archive([gone])
    assert set(fresh_index.embedding_ids([kept, gone])) == {kept}
    fresh_index.upsert([indexing.vector_record(Memory.objects.get(id=gone), unit_vector())])
    drift = maintenance.doctor(repair=True)
    assert drift.orphaned == [gone] and not drift.missing
    assert maintenance.doctor().clean
    assert maintenance.reindex().indexed == 1
    assert set(fresh_index.embedding_ids([kept, gone])) == {kept}


def unit_vector() -> Any:
    import numpy as np

    vector = np.ones(backends.embedder().dim, dtype=np.float32)
    return vector / np.linalg.norm(vector)


_STORE = """
import json, sys
from somafractalmemory.cli import _django
_django()
from django.core.management import call_command
call_command("migrate", interactive=False, verbosity=0)
from somafractalmemory.memories import services
from somafractalmemory.memories.remember import NewMemory
facts = json.loads(sys.argv[1])
stored = services.remember_many([NewMemory(f, namespace="move") for f in facts])
print(json.dumps([m.id for m in stored]))
"""
_SEARCH = """
import json, sys
from somafractalmemory.cli import _django
_django()
from somafractalmemory.memories import services
found = services.recall(sys.argv[1], services.Query(namespace="move", top_k=3))
print(json.dumps({"mode": found.mode, "ids": [h.memory.id for h in found.hits]}))
"""


def _python(code: str, arg: str, env: dict[str, str]) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", code, arg], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_embedded_store_moves_onto_a_milvus_server(
    tmp_path: Path, server_env: dict[str, str], request: pytest.FixtureRequest
) -> None:
    """The two ways docs/deployment.md gives: `sfm reindex` against the server (same SQL), and
    `sfm export` / `sfm import` (new SQL too). Production-stack run only."""
    if not MILVUS_SERVER:
        pytest.skip("production-stack run only (make test runs it with SFM_TEST_MILVUS=server)")
    facts = [
        "Ada keeps her bike in the shed behind the bakery.",
        "The quarterly review moved to the second Thursday.",
        "Ravi's cat is called Miso and hates thunderstorms.",
    ]
    from tests.milvus_server import create_database, drop_database

    lite = embedded(server_env)  # SQLite and Milvus Lite in data_dir
    lite.pop("SFM_DATABASE_URL", None)
    ids = _python(_STORE, json.dumps(facts), lite)
    # 1. Same SQLite file, vectors rebuilt on the server (a database of their own).
    uri = server_env["SFM_MILVUS_URI"]
    onto_server = {**lite, "SFM_MILVUS_URI": uri, "SFM_MILVUS_DB": create_database(uri, "move")}
    request.addfinalizer(lambda: drop_database(uri, onto_server["SFM_MILVUS_DB"]))
    rebuilt = run_sfm("reindex", env=onto_server)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "indexed 3 memories" in rebuilt.stdout
    assert run_sfm("doctor", env=onto_server).returncode == 0
    found = _python(_SEARCH, "where is the bike kept?", onto_server)
    assert found["mode"] == "hybrid" and found["ids"][0] == ids[0]
    # 2. Export from the embedded store, import into the production stack's SQL and server.
    dump = tmp_path / "all.jsonl"
    exported = run_sfm("export", str(dump), env=lite)
    assert exported.returncode == 0, exported.stderr
    production = {**server_env, "SFM_DATA_DIR": str(tmp_path / "prod")}
    imported = run_sfm("import", str(dump), env=production)
    assert imported.returncode == 0, imported.stderr
    assert "imported 3 memories" in imported.stdout
    found = _python(_SEARCH, "what is the cat's name?", production)
    assert found["mode"] == "hybrid" and found["ids"][0] == ids[2]


def test_reindex_embeds_each_memory_about_once(
    api: Api, namespace: str, fresh_index: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rebuilt in episode order, a chunk's episodes find their neighbours' vectors in the
    chunk or in the index (the chunk before): only chunk edges embed again (in id order,
    which is random, nearly every episode's neighbours were embedded again)."""
    items = [
        {
            "content": f"Turn {i} of one long talk",
            "namespace": namespace,
            "created_at": f"2024-05-01T10:{i:02d}:00Z",
        }
        for i in range(40)
    ]
    api.ok("POST", "/memory/batch", {"memories": items})
    fresh_index.reset()
    embedded: list[int] = []
    encode = indexing.embed_texts

    def counting(texts: Any) -> Any:
        embedded.append(len(texts))
        return encode(texts)

    monkeypatch.setattr(indexing, "embed_texts", counting)
    monkeypatch.setattr(maintenance, "CHUNK", 10)
    report = maintenance.reindex()
    assert report.indexed == Memory.objects.count() == 40
    # Beyond the 40, each chunk's edge: the next episode and its neighbour (whose context
    # the edge's refresh needs), not yet indexed.
    assert sum(embedded) <= 40 + 2 * 4
