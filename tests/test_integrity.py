"""Deleted means deleted, acknowledged means indexed: the races and values an independent
probe found (issue 17). Each race is replayed deterministically by running the competing
request at the exact moment it hurt; a thread race on PostgreSQL repeats the real thing."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from somafractalmemory.errors import MemoryNotFound
from somafractalmemory.memories import indexing, limits, services
from somafractalmemory.memories.jobs import maintenance
from somafractalmemory.memories.models import Memory
from somafractalmemory.vectors.base import VectorIndex
from tests.conftest import Api


def store(api: Api, namespace: str, content: str, **fields: Any) -> str:
    body = {"content": content, "namespace": namespace, **fields}
    return str(api.ok("POST", "/memory/store", body)["id"])


def indexed(index: VectorIndex) -> set[str]:
    return {memory_id for memory_id, _ in index.entries()}


@contextlib.contextmanager
def first_call_runs(target: Any, name: str, action: Any) -> Iterator[None]:
    """Patch `target.name` so that its first call runs `action` first: the competing
    request, at the exact moment it hurt. The action may itself call what is patched."""
    original = getattr(target, name)
    done: list[bool] = []

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not done:
            done.append(True)
            action()
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(target, name, wrapped)
        yield


def test_a_delete_while_a_patch_embeds_stays_deleted(
    api: Api, namespace: str, fresh_index: VectorIndex
) -> None:
    victim = store(api, namespace, "victim of a race")
    # The DELETE commits while the PATCH computes its embedding.
    with first_call_runs(indexing, "embed_texts", lambda: services.delete(victim)):
        code = api.error(404, "PATCH", f"/memory/{victim}", {"content": "patched meanwhile"})
        assert code == "memory_not_found"
    assert api.error(404, "GET", f"/memory/{victim}") == "memory_not_found"
    assert not Memory.objects.filter(id=victim).exists()
    assert victim not in indexed(fresh_index)


def test_an_index_write_landing_after_a_delete_leaves_no_vector(
    api: Api, namespace: str, fresh_index: VectorIndex
) -> None:
    victim = store(api, namespace, "written late by a patch")
    # The DELETE commits and clears the index before the PATCH's write lands.
    with first_call_runs(fresh_index, "upsert", lambda: services.delete(victim)):
        api.ok("PATCH", f"/memory/{victim}", {"content": "patched before the delete"})
    assert api.error(404, "GET", f"/memory/{victim}") == "memory_not_found"
    assert victim not in indexed(fresh_index)
    found = api.ok("POST", "/memory/search", {"query": "patched delete", "namespace": namespace})
    assert victim not in [h["id"] for h in found["memories"]]
    assert maintenance.doctor().clean


def test_a_neighbours_context_refresh_does_not_bring_back_a_deleted_episode(
    api: Api, namespace: str, fresh_index: VectorIndex
) -> None:
    at = "2026-03-01T10:00:00Z"
    first = store(api, namespace, "the quince orchard burned down", created_at=at)
    # The neighbour goes while the next episode's write is in flight.
    with first_call_runs(fresh_index, "upsert", lambda: services.delete(first)):
        second = store(api, namespace, "we planted walnuts instead", created_at=at)
    assert first not in indexed(fresh_index)
    assert second in indexed(fresh_index)
    # The survivor's context no longer holds the deleted text.
    body = {"query": "quince orchard burned", "namespace": namespace, "mode": "lexical"}
    assert api.ok("POST", "/memory/search", body)["memories"] == []
    assert maintenance.doctor().clean


def test_concurrent_patches_keep_each_others_fields(api: Api, namespace: str) -> None:
    memory = store(api, namespace, "two editors at once", importance=0.2)
    # Another PATCH commits while this one embeds.
    with first_call_runs(
        indexing, "embed_texts", lambda: services.update(memory, {"importance": 0.9})
    ):
        api.ok("PATCH", f"/memory/{memory}", {"metadata": {"editor": "first"}})
    row = api.ok("GET", f"/memory/{memory}")
    assert row["importance"] == 0.9 and row["metadata"] == {"editor": "first"}


def test_a_repeat_of_a_memory_deleted_meanwhile_is_refused_not_lost(
    api: Api, namespace: str
) -> None:
    held = store(api, namespace, "said twice", importance=0.1)
    # The repeated memory goes after the repeat was recognised.
    with first_call_runs(limits, "check_quota", lambda: services.delete(held)):
        body = {"content": "said twice", "namespace": namespace, "importance": 0.8}
        assert api.error(409, "POST", "/memory/store", body) == "conflict"
    again = api.ok("POST", "/memory/store", body)
    assert not again["deduplicated"] and api.ok("GET", f"/memory/{again['id']}")


@pytest.mark.parametrize(
    "metadata",
    [
        {"x": 18446744073709551616},
        {"x": -(2**63) - 1},
        {"deep": {"list": [1, 2**64]}},
        {"k": "\udfff"},
        {"\udfff": 1},
    ],
)
def test_metadata_the_index_cannot_hold_is_refused(
    api: Api, namespace: str, metadata: dict[str, Any]
) -> None:
    import json

    from django.test import Client

    body = json.dumps({"content": "poison", "namespace": namespace, "metadata": metadata})
    response = Client().post("/api/v2/memory/store", body, content_type="application/json")
    assert response.status_code == 422, response.content
    assert response.json()["error"]["code"] == "validation_error"
    assert not Memory.objects.filter(namespace=namespace).exists()
    # The next episode of the namespace is stored and found.
    kept = store(api, namespace, "the healthy neighbour", metadata={"x": 2**63 - 1})
    found = api.ok("POST", "/memory/search", {"query": "healthy neighbour", "namespace": namespace})
    assert [h["id"] for h in found["memories"]] == [kept]


def test_a_lone_surrogate_in_content_is_refused(api: Api, namespace: str) -> None:
    from django.test import Client

    body = '{"content": "x \\udfff y", "namespace": "' + namespace + '"}'
    response = Client().post("/api/v2/memory/store", body, content_type="application/json")
    assert response.status_code == 422, response.content
    assert not Memory.objects.filter(namespace=namespace).exists()


@pytest.mark.django_db(transaction=True)
def test_patch_and_delete_racing_on_threads_never_resurrect(namespace: str) -> None:
    from django.db import connection, connections

    if connection.vendor == "sqlite":
        pytest.skip("background writers on in-memory SQLite; covered by the PostgreSQL run")
    rounds = 12
    ids = [
        services.remember(services.NewMemory(f"victim {n}", namespace=namespace)).id
        for n in range(rounds)
    ]
    failures: list[BaseException] = []

    def run(work: Any) -> None:
        try:
            work()
        except MemoryNotFound:
            pass  # the DELETE won
        except BaseException as exc:
            failures.append(exc)
        finally:
            connections.close_all()

    for n, memory_id in enumerate(ids):
        threads = [
            threading.Thread(
                target=run,
                args=(lambda m=memory_id, n=n: services.update(m, {"content": f"patched {n}"}),),
            ),
            threading.Thread(target=run, args=(lambda m=memory_id: services.delete(m),)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert not failures, failures
    assert not Memory.objects.filter(id__in=ids).exists()
    from somafractalmemory import backends

    assert not set(ids) & {i for i, _ in backends.vector_index().entries()}


def test_a_write_the_index_refuses_is_dead_lettered_and_blocks_nothing(
    api: Api, namespace: str, fresh_index: VectorIndex
) -> None:
    from datetime import UTC, datetime

    from somafractalmemory.memories.models import VectorTask

    at = "2026-03-02T10:00:00Z"
    first = store(api, namespace, "a poisoned episode", created_at=at)
    # As stored before the check existed: metadata the index cannot hold.
    Memory.objects.filter(id=first).update(metadata={"x": 2**64})
    VectorTask.objects.create(memory_id=first, action="upsert", next_attempt_at=datetime.now(UTC))
    second = store(api, namespace, "the episode after it", created_at=at)
    assert second in indexed(fresh_index)  # its neighbour's refresh failing did not keep it out
    for _ in range(indexing.DEAD_AFTER):
        VectorTask.objects.update(next_attempt_at=datetime.now(UTC))
        indexing.drain_outbox()
    dead = indexing.dead_letters()  # the test's task and the one its refresh owed
    assert {t.memory_id for t in dead} == {first} and all(t.last_error for t in dead)
    assert indexing.drain_outbox(due_only=False) == 0  # no longer retried
    ready = api.ok("GET", "/readyz")
    assert ready["status"] == "degraded" and "dead-lettered" in ready["checks"]["outbox"]
    assert f"sfm_outbox_dead {len(dead)}.0" in api.call("GET", "/metrics").content.decode()
    drift = maintenance.doctor(repair=True)  # reports instead of failing
    assert first in drift.dead and first in drift.failed and not drift.clean
    Memory.objects.filter(id=first).update(metadata={"x": 1})  # the cause fixed
    assert maintenance.doctor(repair=True).failed == {}
    assert maintenance.doctor().clean and first in indexed(fresh_index)


def test_out_of_range_times_are_refused_not_server_errors(api: Api, namespace: str) -> None:
    import base64
    import json

    for moment in ("9999-12-31T23:59:00-05:00", "0001-01-01T00:00:00+05:00"):
        raw = json.dumps([moment, "mem_x"]).encode()
        cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        assert api.error(400, "GET", "/memory", cursor=cursor) == "invalid_cursor"
        body = {"namespace": namespace, "since": moment, "wait": True}
        assert api.error(422, "POST", "/memory/consolidate", body) == "validation_error"


def test_search_text_and_filters_are_bounded_and_checked(api: Api, namespace: str) -> None:
    long = {"query": "word " * 1000, "namespace": namespace}
    assert api.error(422, "POST", "/memory/search", long) == "validation_error"
    surrogate = '{"query": "x", "filters": {"k": "\\udfff"}}'
    assert api.error(400, "POST", "/memory/search", surrogate) == "invalid_filter"
    text = '{"query": "x \\udfff"}'
    assert api.error(422, "POST", "/memory/search", text) == "validation_error"


def test_filters_the_docs_allow_run_in_the_index(api: Api, namespace: str) -> None:
    kept = store(api, namespace, "the filtered one", metadata={"k7": 7})
    store(api, namespace, "the other one", metadata={"k7": 8})
    for combinator in ("$or", "$and"):
        many = [{f"k{i}": i} for i in range(128)] if combinator == "$or" else [{"k7": 7}] * 256
        body = {"query": "one", "namespace": namespace, "filters": {combinator: many}}
        found = api.ok("POST", "/memory/search", body)
        assert found["mode"] == "hybrid" and not found["warnings"], found["warnings"]
        assert [h["id"] for h in found["memories"]] == [kept]
    deep: dict[str, Any] = {"k7": 7}
    for _ in range(40):
        deep = {"$and": [deep, {"k9": {"$exists": False}}]}
    body = {"query": "one", "namespace": namespace, "filters": deep}
    assert api.error(400, "POST", "/memory/search", body) == "invalid_filter"


def test_a_neighbour_deleted_while_its_context_is_rewritten_stays_out(
    api: Api, namespace: str, fresh_index: VectorIndex
) -> None:
    at = "2026-03-03T10:00:00Z"
    first = store(api, namespace, "the first of two episodes", created_at=at)
    second = store(api, namespace, "the second of two episodes", created_at=at)
    # The neighbour goes while deleting `first` rewrites its context.
    with first_call_runs(fresh_index, "upsert", lambda: services.delete(second)):
        services.delete(first)
    assert not {first, second} & indexed(fresh_index)
    assert maintenance.doctor().clean


def test_the_schema_is_as_strict_as_the_server(api: Api, namespace: str) -> None:
    for lax in ({"query": "x", "top_k": "10"}, {"query": "x", "explain": "yes"}):
        assert api.error(422, "POST", "/memory/search", lax) == "validation_error", lax
    store_body = {"content": "strict", "namespace": namespace, "dedupe": 0}
    assert api.error(422, "POST", "/memory/store", store_body) == "validation_error"
    spec = api.ok("GET", "/api/v2/openapi.json")
    patch = spec["components"]["schemas"]["PatchIn"]["properties"]
    assert all("anyOf" not in field for field in patch.values()), patch  # no nulls offered
    memory = store(api, namespace, "patch me")
    assert api.error(422, "PATCH", f"/memory/{memory}", {"type": None}) == "validation_error"
    for names in ([""], ["../x"]):
        key = {"scopes": ["read"], "namespaces": names}
        assert api.error(422, "POST", "/admin/keys", key) == "validation_error"
    throttle = {"id": "default", "requests_per_minute": 1}
    assert api.error(403, "POST", "/admin/tenants", throttle) == "forbidden"


def test_an_uncontended_write_is_written_once(
    api: Api, namespace: str, fresh_index: VectorIndex
) -> None:
    """The check after each index write finds nothing to redo when nothing raced it."""
    calls: list[int] = []
    upsert = fresh_index.upsert

    def counted(records: Any) -> None:
        calls.append(len(records))
        upsert(records)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fresh_index, "upsert", counted)
        memory = store(api, namespace, "alone in its namespace", type="semantic")
        api.ok("PATCH", f"/memory/{memory}", {"importance": 0.7})
        items = [{"content": f"batch {n}", "namespace": namespace} for n in range(3)]
        api.ok("POST", "/memory/batch", {"memories": items})
    assert calls == [1, 1, 3]
