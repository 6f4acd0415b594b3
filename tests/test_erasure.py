"""Erasure on demand: purge by filter, delete a namespace, dry runs, audit, resumption."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from somafractalmemory import backends
from somafractalmemory.memories import fulltext, identity, indexing
from somafractalmemory.memories.jobs import erasure, runner
from somafractalmemory.memories.models import AuditEntry, Job, Link, Memory, VectorTask
from somafractalmemory.retrieval import lexical
from tests.conftest import Api
from tests.servers import free_port, run_sfm, server
from tests.test_hierarchy import consolidate
from tests.test_tenancy import tenant_with_key

SECRET = "Zanzibarquokka"
SUBJECT = [
    f"{SECRET} booked a flight to Paris for the design conference in May.",
    f"The Paris hotel {SECRET} chose is two streets from the Louvre.",
    f"{SECRET} plans a Paris day at the Louvre during the conference trip.",
]
OTHER = [
    "Bea booked a flight to Paris for the design conference too.",
    "Bea's Paris hotel for the conference is near the Seine.",
    "Bea wants to see Montmartre on the Paris conference trip.",
]


def store_both(api: Api, namespace: str) -> dict[str, list[str]]:
    """Two subjects' episodes about the same trip, interleaved in one day."""
    stored: dict[str, list[str]] = {"subject": [], "other": []}
    for n, (mine, theirs) in enumerate(zip(SUBJECT, OTHER, strict=True)):
        for who, text, minute in (("subject", mine, 2 * n), ("other", theirs, 2 * n + 1)):
            user = "u-subject" if who == "subject" else "u-other"
            body = {
                "content": text,
                "namespace": namespace,
                "metadata": {
                    "user_id": user,
                    "note": f"{who} {SECRET if who == 'subject' else ''}",
                },
                "created_at": f"2024-05-01T09:{minute:02d}:00Z",
            }
            stored[who].append(api.ok("POST", "/memory/store", body)["id"])
    return stored


def context_matches(token: str, namespace: str) -> list[str]:
    """Memories whose context (with its neighbours) holds `token`, wherever the context-lexical
    leg lives: Milvus BM25, or SQL full text."""
    if not indexing.sql_lexical():
        found = backends.vector_index().search_lexical(
            token, tenant="default", namespace=namespace, where=None, top_k=10, context=True
        )
        return [h.id for h in found]
    scope = Memory.objects.filter(tenant_id="default", namespace=namespace)
    return [i for i, _ in fulltext.search(scope, [token], 10, context=True)]


def hits(api: Api, query: str, namespace: str | None = None, **fields: Any) -> list[dict[str, Any]]:
    body = {"query": query, "top_k": 20, "namespace": namespace, **fields}
    found: list[dict[str, Any]] = api.ok("POST", "/memory/search", body)["memories"]
    return found


def test_purge_by_filter_erases_the_subject_and_keeps_the_rest(api: Api, namespace: str) -> None:
    stored = store_both(api, namespace)
    elsewhere = f"{namespace}-b"
    far = api.ok(
        "POST",
        "/memory/store",
        {
            "content": f"{SECRET} likes tea.",
            "namespace": elsewhere,
            "metadata": {"user_id": "u-subject"},
        },
    )["id"]
    consolidate(api, namespace)
    mixed = [
        p
        for p in api.ok("GET", "/memory", namespace=namespace, type="semantic")["memories"]
        if set(c["id"] for c in api.ok("GET", f"/memory/{p['id']}/children")["memories"])
        & set(stored["subject"])
    ]
    assert mixed, "consolidation put the subject's episodes into parents"
    api.ok(
        "POST",
        f"/memory/{stored['other'][0]}/links",
        {"target": stored["subject"][1], "kind": "about"},
    )
    assert hits(api, SECRET, namespace)  # the query vector is cached now

    spec = {"filters": {"user_id": "u-subject"}}
    plan = api.ok("POST", "/memory/purge", {**spec, "dry_run": True})
    assert (
        plan["dry_run"]
        and plan["memories"] == 4
        and plan["namespaces"] == sorted([elsewhere, namespace])
    )
    assert plan["links"] >= 4 and plan["parents_resummarized"] + plan["parents_removed"] >= 1
    assert api.ok("GET", f"/memory/{far}")["id"] == far  # a dry run erases nothing

    done = api.ok("POST", "/memory/purge", spec)
    assert done["memories"] == 4 and done["vectors"] == 4 and not done["dry_run"]
    assert done["links"] == plan["links"]
    assert done["parents_resummarized"] + done["parents_removed"] >= 1
    assert done["cache_entries"] >= 1 and done["scrubbed"]

    for memory_id in [*stored["subject"], far]:
        assert api.error(404, "GET", f"/memory/{memory_id}") == "memory_not_found"
    assert not hits(api, SECRET, mode="lexical")  # nothing left says it, in any namespace
    for hit in hits(api, SECRET, levels=[0, 1, 2, 3]):  # nearest by meaning: the others
        assert SECRET not in hit["content"] and hit["id"] not in stored["subject"]
    left = api.ok("GET", "/memory", namespace=namespace, limit=100)["memories"]
    left += api.ok("GET", "/memory", namespace=namespace, type="semantic")["memories"]
    assert not [m for m in left if SECRET in m["content"] or SECRET in str(m["metadata"])]
    assert {m["id"] for m in left} >= set(stored["other"])  # the other subject is untouched
    for parent in mixed:  # re-summarized from the children left, or gone
        response = api.call("GET", f"/memory/{parent['id']}")
        if response.status_code == 200:
            kids = api.ok("GET", f"/memory/{parent['id']}/children")["memories"]
            assert {k["id"] for k in kids} <= set(stored["other"]) and kids
            assert SECRET not in response.json()["content"]
    gone = set(stored["subject"])
    assert not Link.objects.filter(source_id__in=gone).exists()
    assert not Link.objects.filter(target_id__in=gone).exists()
    # The neighbours' context (vector and tokens) no longer holds the erased words.
    token = lexical.keyed_tokens(SECRET.lower(), identity.lexical_key("default"))
    assert not context_matches(token, namespace)
    assert not VectorTask.objects.filter(memory_id__in=gone).exists()  # deletes paid

    entry = AuditEntry.objects.filter(action="memory.purge").latest("id")
    assert entry.details["filters"] == {"user_id": "u-subject"}
    assert entry.details["memories"] == 4 and SECRET not in str(entry.details)


def test_erasure_refuses_an_empty_filter_and_bad_input(api: Api, namespace: str) -> None:
    api.ok("POST", "/memory/store", {"content": "Keep me.", "namespace": namespace})
    assert api.error(422, "POST", "/memory/purge", {}) == "filter_required"
    assert api.error(422, "POST", "/memory/purge", {"namespace": namespace}) == "filter_required"
    bad = {"filters": {"importance": {"$near": 1}}}
    assert api.error(400, "POST", "/memory/purge", bad) == "invalid_filter"
    assert api.error(422, "POST", "/memory/purge", {"filters": {}, "every": True}) == (
        "validation_error"
    )
    assert api.ok("GET", "/memory", namespace=namespace)["memories"]


def test_deleting_a_namespace_leaves_other_tenants_alone(api: Api, namespace: str) -> None:
    for n in range(3):
        api.ok(
            "POST",
            "/memory/store",
            {"content": f"Mine {n}: the boat is blue.", "namespace": namespace},
        )
    _, theirs = tenant_with_key()
    kept = theirs.ok(
        "POST", "/memory/store", {"content": "Theirs: the boat is red.", "namespace": namespace}
    )["id"]
    consolidate(api, namespace)

    plan = api.ok("DELETE", f"/namespaces/{namespace}?dry_run=true")
    assert plan["memories"] == 4 and plan["dry_run"]  # three episodes and their parent
    done = api.ok("DELETE", f"/namespaces/{namespace}")
    assert done["memories"] == 4 and done["jobs"] == 1 and done["namespaces"] == [namespace]
    assert not api.ok("GET", "/memory", namespace=namespace)["memories"]
    assert api.error(404, "GET", f"/namespaces/{namespace}") == "not_found"
    assert not Job.objects.filter(tenant_id="default", params__namespace=namespace).exclude(
        kind="purge"
    )
    assert theirs.ok("GET", f"/memory/{kept}")["id"] == kept
    assert [h["id"] for h in hits(theirs, "boat", namespace)] == [kept]
    again = api.ok("DELETE", f"/namespaces/{namespace}")  # idempotent
    assert again["memories"] == 0
    assert AuditEntry.objects.filter(action="namespace.delete", resource=namespace).count() == 2


def test_a_namespace_limited_key_erases_only_its_namespace(namespace: str, db: None) -> None:
    from somafractalmemory.memories import tenancy

    name, full = tenant_with_key()
    limited = Api(tenancy.create_key(name, ["read", "write"], namespaces=[namespace]).secret)
    full.ok(
        "POST",
        "/memory/store",
        {"content": "x", "namespace": f"{namespace}-other", "metadata": {"k": 1}},
    )
    assert limited.error(403, "POST", "/memory/purge", {"filters": {"k": 1}}) == "forbidden"
    assert limited.error(403, "DELETE", f"/namespaces/{namespace}-other") == "forbidden"
    assert limited.ok("DELETE", f"/namespaces/{namespace}")["memories"] == 0


def test_an_interrupted_purge_is_resumed(api: Api, namespace: str) -> None:
    stored = store_both(api, namespace)
    consolidate(api, namespace)
    parents = [
        p["id"] for p in api.ok("GET", "/memory", namespace=namespace, type="semantic")["memories"]
    ]
    # A day later: one more of the subject's episodes, and another's right after it.
    lone = api.ok(
        "POST",
        "/memory/store",
        {
            "content": f"{SECRET} flew home on Sunday.",
            "namespace": namespace,
            "metadata": {"user_id": "u-subject"},
            "created_at": "2024-05-02T09:00:00Z",
        },
    )["id"]
    api.ok(
        "POST",
        "/memory/store",
        {
            "content": "Bea stayed one more night.",
            "namespace": namespace,
            "metadata": {"user_id": "u-other"},
            "created_at": "2024-05-02T09:01:00Z",
        },
    )
    # What a purge killed after its first chunk leaves: that episode's row and vector gone
    # (its neighbour's context still holds its words), its place and the parents recorded,
    # its job running for a process that no longer exists.
    gone = Memory.objects.get(id=lone)
    Memory.objects.filter(id=lone).delete()
    backends.vector_index().delete([lone])
    dead = f"{runner.HOLDER.rsplit(':', 1)[0]}:{2**22 + 12345}"
    params = {"namespace": namespace, "filters": {"user_id": "u-subject"}, "all": False}
    job = runner.create("default", erasure.KIND, {**params, "holder": dead})
    state = {"parents": parents, "episodes": [erasure._place(gone)]}
    Job.objects.filter(id=job.id).update(status=Job.Status.RUNNING, result=state)
    alive = runner.create("default", erasure.KIND, {**params, "holder": runner.HOLDER})
    Job.objects.filter(id=alive.id).update(status=Job.Status.RUNNING)

    found = erasure.interrupted()
    assert job.id in [j.id for j in found] and alive.id not in [j.id for j in found]
    done = erasure.resume(next(j for j in found if j.id == job.id))
    assert done.memories == 3 and done.neighbours_rewritten >= 1
    assert not Memory.objects.filter(id__in=stored["subject"]).exists()
    assert not hits(api, SECRET, namespace, levels=[0, 1, 2], mode="lexical")
    token = lexical.keyed_tokens(SECRET.lower(), identity.lexical_key("default"))
    # The lone episode's neighbour was rewritten from the recorded place.
    assert not context_matches(token, namespace)
    assert job.id not in [j.id for j in erasure.interrupted()]
    Job.objects.filter(id=alive.id).delete()


def test_erasing_nothing_makes_no_job(api: Api, namespace: str) -> None:
    done = api.ok("POST", "/memory/purge", {"filters": {"user_id": "nobody"}})
    assert done["memories"] == 0 and done["job_id"] is None and not done["scrubbed"]
    assert not Job.objects.filter(kind=erasure.KIND, params__filters={"user_id": "nobody"})


def test_spans_next_to_deleted_episodes() -> None:
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    keys = [(t0 + timedelta(minutes=n), t0, f"e{n}") for n in range(6)]
    gone = [keys[2]]
    left = [k for k in keys if k not in gone]
    spans = indexing.spans_next_to(left, gone, timedelta(minutes=2))
    assert spans == {"e1": ["e0", "e1", "e3"], "e3": ["e1", "e3", "e4"]}
    # Two in a row gone: the survivors around them now neighbour each other if near enough.
    gone = [keys[2], keys[3]]
    left = [k for k in keys if k not in gone]
    assert indexing.spans_next_to(left, gone, timedelta(minutes=3)) == {
        "e1": ["e0", "e1", "e4"],
        "e4": ["e1", "e4", "e5"],
    }
    assert indexing.spans_next_to(left, gone, timedelta(minutes=2)) == {
        "e1": ["e0", "e1"],
        "e4": ["e4", "e5"],
    }
    assert indexing.spans_next_to(left, gone, timedelta(seconds=30)) == {}


def test_planning_parents(api: Api, namespace: str) -> None:
    stored = store_both(api, namespace)
    consolidate(api, namespace)
    every = set(stored["subject"] + stored["other"])
    removed, changed = erasure.plan_parents(every)
    assert removed and not changed  # all children gone: every parent goes, to the top
    removed, changed = erasure.plan_parents({stored["subject"][0]})
    assert changed and not removed


@pytest.mark.parametrize("spec", [{"user_id": "u-subject"}, {"note": {"$exists": True}}])
def test_matching_reads_sealed_metadata(api: Api, namespace: str, spec: dict[str, Any]) -> None:
    stored = store_both(api, namespace)
    from somafractalmemory.retrieval import filters

    found = {m.id for m in erasure.matching("default", namespace, filters.parse(spec))}
    expected = (
        set(stored["subject"]) if "user_id" in spec else {i for ids in stored.values() for i in ids}
    )
    assert found == expected


# -- real server processes: no bytes left behind, and a purge killed half way -------------


def sql_rows(env: dict[str, str], query: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the server's database directly (SQLite file or its PostgreSQL database)."""
    url = env.get("SFM_DATABASE_URL")
    if url:
        import psycopg

        with psycopg.connect(url) as conn:
            return list(conn.execute(query.replace("?", "%s"), args).fetchall())
    import sqlite3

    path = Path(env["SFM_DATA_DIR"]) / "sfm.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return list(conn.execute(query, args).fetchall())


def stored_files(env: dict[str, str]) -> list[Path]:
    """Every file holding the server's data: its data directory (SQLite, Milvus Lite) and,
    on PostgreSQL, its database's files and the WAL (after a checkpoint)."""
    files = [p for p in Path(env["SFM_DATA_DIR"]).rglob("*") if p.is_file()]
    url = env.get("SFM_DATABASE_URL")
    if url:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
            (oid,) = conn.execute(
                "SELECT oid FROM pg_database WHERE datname = current_database()"
            ).fetchone()  # type: ignore[misc]
            (home,) = conn.execute("SHOW data_directory").fetchone()  # type: ignore[misc]
        root = Path(home)
        files += [p for p in (root / "base" / str(oid)).iterdir() if p.is_file()]
        files += [p for p in (root / "pg_wal").iterdir() if p.is_file()]
    return files


@pytest.mark.slow
def test_purge_leaves_no_trace_in_any_file(tmp_path: Path, server_env: dict[str, str]) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v2"
    with (
        server(server_env, port, tmp_path / "server.log"),
        httpx.Client(base_url=base, timeout=120) as http,
    ):
        stored: dict[str, list[str]] = {"subject": [], "other": []}
        for n, (mine, theirs) in enumerate(zip(SUBJECT, OTHER, strict=True)):
            for who, text, minute in (("subject", mine, 2 * n), ("other", theirs, 2 * n + 1)):
                body = {
                    "content": text,
                    "namespace": "trip",
                    "metadata": {"user_id": f"u-{who}", "note": f"{who}: {text}"},
                    "created_at": f"2024-05-01T09:{minute:02d}:00Z",
                }
                stored[who].append(http.post("/memory/store", json=body).json()["id"])
        job = http.post("/memory/consolidate", json={"namespace": "trip", "wait": True}).json()
        assert job["status"] == "succeeded"
        http.post(
            f"/memory/{stored['other'][0]}/links",
            json={"target": stored["subject"][0], "kind": "about"},
        )
        assert http.post("/memory/search", json={"query": SECRET}).json()["memories"]
        ids = stored["subject"]
        marks = ",".join("?" * len(ids))
        sealed = sql_rows(
            server_env, f"SELECT content, metadata FROM memories_memory WHERE id IN ({marks})", *ids
        )
        assert len(sealed) == 3 and all(SECRET not in c for row in sealed for c in row)
        # A piece of each sealed value: if a copy of the ciphertext survives, it is found.
        pieces = [value.rsplit(":", 1)[-1][16:48].encode() for row in sealed for value in row]

        response = http.post("/memory/purge", json={"filters": {"user_id": "u-subject"}})
        assert response.status_code == 200, response.text
        done = response.json()
        assert done["memories"] == 3 and done["scrubbed"]

        for memory_id in ids:
            assert http.get(f"/memory/{memory_id}").status_code == 404
            assert http.get(f"/graph/{memory_id}").status_code == 404
        lexical_hits = http.post(
            "/memory/search", json={"query": SECRET, "mode": "lexical", "levels": [0, 1, 2, 3]}
        ).json()["memories"]
        assert lexical_hits == []
        listed = http.get("/memory", params={"limit": 100}).json()["memories"]
        listed += http.get("/memory", params={"type": "semantic"}).json()["memories"]
        assert {m["id"] for m in listed} >= set(stored["other"])
        assert not [m for m in listed if SECRET in json.dumps(m)]
        for parent in http.get("/memory", params={"type": "semantic"}).json()["memories"]:
            kids = http.get(f"/memory/{parent['id']}/children").json()["memories"]
            assert kids and not {k["id"] for k in kids} & set(ids)

        needles = [SECRET.encode(), SECRET.lower().encode(), *pieces]
        if server_env.get("SFM_DATABASE_URL"):
            needles = needles[:2]  # PostgreSQL keeps deleted sealed bytes until reused
        for path in stored_files(server_env):
            data = path.read_bytes()
            for needle in needles:
                assert needle not in data, f"{needle!r} is still in {path}"


@pytest.mark.slow
def test_a_purge_killed_half_way_is_finished_by_doctor(
    tmp_path: Path, server_env: dict[str, str]
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v2"
    log = tmp_path / "server.log"
    with server(server_env, port, log) as process, httpx.Client(base_url=base, timeout=120) as http:
        for start in range(0, 1500, 500):
            items = [
                {
                    "content": f"Subject note {n}: {SECRET} visited room {n}.",
                    "namespace": "n",
                    "metadata": {"user_id": "u-subject"},
                }
                for n in range(start, start + 500)
            ]
            assert http.post("/memory/batch", json={"memories": items}).is_success
        kept = http.post(
            "/memory/store", json={"content": "Bea visited room 7.", "namespace": "n"}
        ).json()["id"]

        def erase() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the server dies under it
                http.post("/memory/purge", json={"filters": {"user_id": "u-subject"}})

        eraser = threading.Thread(target=erase)
        eraser.start()
        deadline = time.monotonic() + 60
        while not sql_rows(server_env, "SELECT id FROM memories_job WHERE kind = 'purge'"):
            assert time.monotonic() < deadline, "the purge did not start"
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        eraser.join(timeout=60)
    left = sql_rows(server_env, "SELECT COUNT(*) FROM memories_memory")[0][0]
    assert 1 <= left <= 1501  # killed half way (or at the very end: then only `kept`)

    doctor = run_sfm("doctor", env=server_env, timeout=600)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "index matches SQL" in doctor.stdout
    if left > 1:
        jobs_left = sql_rows(server_env, "SELECT id, status, params, error FROM memories_job")
        assert "finished interrupted purge" in doctor.stdout, jobs_left
    assert sql_rows(server_env, "SELECT id FROM memories_memory") == [(kept,)]
    with server(server_env, port, log), httpx.Client(base_url=base, timeout=60) as http:
        body = {"query": SECRET, "mode": "lexical", "namespace": "n"}
        assert http.post("/memory/search", json=body).json()["memories"] == []
        assert http.get(f"/memory/{kept}").status_code == 200


@pytest.mark.slow
def test_cli_purge_asks_exports_and_erases(tmp_path: Path, server_env: dict[str, str]) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v2"
    with server(server_env, port, tmp_path / "server.log"), httpx.Client(base_url=base) as http:
        for n, user in enumerate(["u1", "u1", "u2"]):
            body = {
                "content": f"Note {n} of {user}: {SECRET}.",
                "namespace": "cli",
                "metadata": {"user_id": user},
            }
            assert http.post("/memory/store", json=body).is_success

    def sfm(*args: str, answer: str = "") -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "somafractalmemory.cli", "purge", *args]
        return subprocess.run(
            command, env=server_env, input=answer, capture_output=True, text=True, timeout=300
        )

    bad = sfm("--filter", "{user_id: u1}")
    assert bad.returncode == 2 and "validation_error" in bad.stderr
    unfiltered = sfm("--namespace", "cli")
    assert unfiltered.returncode == 2 and "filter_required" in unfiltered.stderr
    plan = sfm("--filter", '{"user_id": "u1"}', "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["memories"] == 2
    declined = sfm("--filter", '{"user_id": "u1"}', answer="n\n")
    assert declined.returncode == 1 and "Erase 2 memories" in declined.stdout
    assert json.loads(sfm("--filter", '{"user_id": "u1"}', "--dry-run").stdout)["memories"] == 2
    saved = tmp_path / "erased.jsonl"
    done = sfm("--filter", '{"user_id": "u1"}', "--export", str(saved), "--yes")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["memories"] == 2
    assert "purge: erasing: 2/2" in done.stderr  # progress
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert sorted(line["content"] for line in lines) == [
        f"Note 0 of u1: {SECRET}.",
        f"Note 1 of u1: {SECRET}.",
    ]
    assert all(
        line["metadata"] == {"user_id": "u1"} and line["namespace"] == "cli" for line in lines
    )
    assert any(link["kind"] == "follows" for line in lines for link in line["links"])
    assert json.loads(sfm("--filter", '{"user_id": "u1"}', "--dry-run").stdout)["memories"] == 0
    assert json.loads(sfm("--filter", '{"user_id": "u2"}', "--dry-run").stdout)["memories"] == 1
