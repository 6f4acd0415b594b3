"""The v2 API through HTTP (Django's test client): SQLite, the real model, Milvus Lite."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from somafractalmemory.memories.models import Memory, VectorTask
from tests.conftest import Api

ORIGINAL_STORE = {
    "content": "User prefers dark mode in all applications",
    "namespace": "user-preferences",
    "type": "semantic",
    "importance": 0.9,
    "metadata": {"user_id": "user-123", "category": "preferences"},
}
ORIGINAL_SEARCH = {
    "query": "What are the user preferences for UI?",
    "namespace": "user-preferences",
    "top_k": 10,
    "filters": {"category": "preferences"},
}


def store(api: Api, namespace: str, content: str, **fields: object) -> dict[str, Any]:
    body = {"content": content, "namespace": namespace, **fields}
    result: dict[str, Any] = api.ok("POST", "/memory/store", body)
    return result


def search(api: Api, namespace: str | None, query: str, **fields: object) -> list[dict[str, Any]]:
    body: dict[str, object] = {"query": query, **fields}
    if namespace:
        body["namespace"] = namespace
    result = api.ok("POST", "/memory/search", body)
    hits: list[dict[str, Any]] = result["memories"]
    return hits


def test_original_readme_store_search_delete(api: Api) -> None:
    stored = api.ok("POST", "/memory/store", ORIGINAL_STORE)
    assert {"id", "embedding_id", "importance", "created_at"} <= set(stored)
    assert stored["deduplicated"] is False and stored["near_duplicates"] == []
    assert stored["id"].startswith("mem_") and stored["embedding_id"].startswith("vec_")
    assert stored["importance"] == 0.9
    assert datetime.fromisoformat(stored["created_at"].replace("Z", "+00:00")).tzinfo

    found = api.ok("POST", "/memory/search", ORIGINAL_SEARCH)
    assert isinstance(found["latency_ms"], float) and found["latency_ms"] > 0
    top = found["memories"][0]
    assert {"id", "content", "score", "type"} <= set(top)
    assert top["id"] == stored["id"]
    assert top["content"] == ORIGINAL_STORE["content"]
    assert top["type"] == "semantic"
    assert 0 < top["score"] <= 1

    assert api.ok("DELETE", f"/memory/{stored['id']}") == {"id": stored["id"], "deleted": True}
    assert api.error(404, "GET", f"/memory/{stored['id']}") == "memory_not_found"
    ids = [m["id"] for m in api.ok("POST", "/memory/search", ORIGINAL_SEARCH)["memories"]]
    assert stored["id"] not in ids
    assert stored["id"] not in [m["id"] for m in api.ok("GET", "/memory")["memories"]]
    assert api.error(404, "DELETE", f"/memory/{stored['id']}") == "memory_not_found"


def test_search_ranks_by_meaning(api: Api, namespace: str) -> None:
    store(api, namespace, "The user's cat is called Miso and sleeps on the keyboard")
    store(api, namespace, "Quarterly revenue grew by twelve percent")
    target = store(api, namespace, "The user is allergic to peanuts and shellfish")
    hits = search(api, namespace, "what food allergies does the user have?", top_k=3)
    assert hits[0]["id"] == target["id"]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_get_returns_every_field(api: Api, namespace: str) -> None:
    stored = store(api, namespace, "Met Ana at the climbing gym", metadata={"who": "Ana"})
    memory = api.ok("GET", f"/memory/{stored['id']}")
    assert memory["content"] == "Met Ana at the climbing gym"
    assert memory["namespace"] == namespace
    assert memory["type"] == "episodic" and memory["importance"] == 0.5
    assert memory["metadata"] == {"who": "Ana"}
    assert memory["embedding_id"] == stored["embedding_id"]


def test_patch_content_reembeds(api: Api, namespace: str) -> None:
    stored = store(api, namespace, "The meeting is on Monday")
    patched = api.ok(
        "PATCH", f"/memory/{stored['id']}", {"content": "Bananas are rich in potassium"}
    )
    assert patched["content"] == "Bananas are rich in potassium"
    assert patched["embedding_id"] != stored["embedding_id"]
    hits = search(api, namespace, "which fruit has potassium?", top_k=1)
    assert hits[0]["id"] == stored["id"] and hits[0]["score"] > 0.5


def test_patch_metadata_and_importance_reach_the_index(api: Api, namespace: str) -> None:
    stored = store(api, namespace, "Deploys happen on Fridays", metadata={"team": "ops"})
    patched = api.ok(
        "PATCH", f"/memory/{stored['id']}", {"metadata": {"team": "dev"}, "importance": 1}
    )
    assert patched["embedding_id"] == stored["embedding_id"]
    assert patched["importance"] == 1.0
    assert search(api, namespace, "deploys", filters={"team": "ops"}) == []
    assert [h["id"] for h in search(api, namespace, "deploys", filters={"team": "dev"})] == [
        stored["id"]
    ]


def test_patch_rejects_bad_changes(api: Api, namespace: str) -> None:
    stored = store(api, namespace, "Something to keep")
    path = f"/memory/{stored['id']}"
    assert api.error(422, "PATCH", path, {}) == "validation_error"
    assert api.error(422, "PATCH", path, {"content": None}) == "validation_error"
    assert api.error(422, "PATCH", path, {"importance": 2}) == "validation_error"
    assert api.error(422, "PATCH", path, {"namespace": "elsewhere"}) == "validation_error"
    assert api.error(404, "PATCH", "/memory/mem_missing", {"importance": 0.1}) == "memory_not_found"
    assert api.ok("GET", path)["content"] == "Something to keep"


def test_list_pages_with_cursor_and_filters(api: Api, namespace: str) -> None:
    ids = []
    for day in range(1, 8):
        kind = "semantic" if day % 2 else "episodic"
        created = f"2025-03-0{day}T12:00:00Z"
        ids.append(store(api, namespace, f"Note of day {day}", type=kind, created_at=created)["id"])
    seen: list[str] = []
    cursor = None
    while True:
        params = {"namespace": namespace, "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = api.ok("GET", "/memory", **params)
        seen += [m["id"] for m in page["memories"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest event first, each exactly once
    semantic = api.ok("GET", "/memory", namespace=namespace, type="semantic")["memories"]
    assert [m["id"] for m in semantic] == [ids[6], ids[4], ids[2], ids[0]]
    assert api.error(400, "GET", "/memory", cursor="not-a-cursor") == "invalid_cursor"
    assert api.error(422, "GET", "/memory", type="dream") == "validation_error"
    assert api.error(422, "GET", "/memory", limit=0) == "validation_error"


def test_batch_stores_all_and_is_searchable(api: Api, namespace: str) -> None:
    items = [
        {"content": f"Fact number {i}: the sky shade {i}", "namespace": namespace}
        for i in range(150)
    ]
    items.append({"content": "The wifi password is on the fridge", "namespace": namespace})
    result = api.ok("POST", "/memory/batch", {"memories": items})
    assert len(result["memories"]) == 151
    assert len({m["id"] for m in result["memories"]}) == 151
    assert Memory.objects.filter(namespace=namespace).count() == 151
    assert not VectorTask.objects.exists()  # every vector write was paid
    hits = search(api, namespace, "where is the wifi password?", top_k=1)
    assert hits[0]["id"] == result["memories"][-1]["id"]


def test_batch_is_all_or_nothing(api: Api, namespace: str) -> None:
    items = [{"content": "fine", "namespace": namespace}, {"content": "", "namespace": namespace}]
    assert api.error(422, "POST", "/memory/batch", {"memories": items}) == "validation_error"
    big = [{"content": "x" * 40_000, "namespace": namespace}]
    assert (
        api.error(413, "POST", "/memory/batch", {"memories": items[:1] + big})
        == "content_too_large"
    )
    too_many = [{"content": f"m{i}", "namespace": namespace} for i in range(1001)]
    assert api.error(413, "POST", "/memory/batch", {"memories": too_many}) == "batch_too_large"
    assert api.error(422, "POST", "/memory/batch", {"memories": []}) == "validation_error"
    assert not Memory.objects.filter(namespace=namespace).exists()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"content": ""}, 422, "validation_error"),
        ({"content": "   "}, 422, "validation_error"),
        ({"content": "x" * 32_769}, 413, "content_too_large"),
        ({"content": "ok", "metadata": {"blob": "y" * 20_000}}, 413, "metadata_too_large"),
        ({"content": "ok", "type": "dream"}, 422, "validation_error"),
        ({"content": "ok", "importance": 1.5}, 422, "validation_error"),
        ({"content": "ok", "importance": -0.1}, 422, "validation_error"),
        ({"content": "ok", "colour": "blue"}, 422, "validation_error"),
        ({"content": "ok", "namespace": "has space"}, 422, "validation_error"),
        ({"content": "ok", "metadata": ["not", "an", "object"]}, 422, "validation_error"),
        ({"content": "ok", "created_at": "yesterday"}, 422, "validation_error"),
        ({}, 422, "validation_error"),
        ("{not json", 400, "malformed_json"),
    ],
)
def test_store_rejects_bad_input_and_writes_nothing(
    api: Api, body: object, status: int, code: str
) -> None:
    before = Memory.objects.count()
    assert api.error(status, "POST", "/memory/store", body) == code
    assert Memory.objects.count() == before


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"query": "x", "top_k": 0}, 422, "validation_error"),
        ({"query": "x", "top_k": 101}, 422, "validation_error"),
        ({"query": ""}, 422, "validation_error"),
        ({"query": "x", "filters": {"$where": "1"}}, 400, "invalid_filter"),
        ({"query": "x", "filters": {"n": {"$gt": "ten"}}}, 400, "invalid_filter"),
        ({"query": "x", "filters": {"n": {"$in": []}}}, 400, "invalid_filter"),
        ({"query": "x", "filters": {"bad key": 1}}, 400, "invalid_filter"),
        ({"query": "x", "filters": {"type": "dream"}}, 400, "invalid_filter"),
        ({"query": "x", "filters": {"created_at": {"$gte": "last week"}}}, 400, "invalid_filter"),
        ({"query": "x", "filters": "category = 1"}, 422, "validation_error"),
        ({"query": "x", "limit": 3}, 422, "validation_error"),
    ],
)
def test_search_rejects_bad_input(api: Api, body: object, status: int, code: str) -> None:
    assert api.error(status, "POST", "/memory/search", body) == code


def test_filters_run_inside_the_search(api: Api, namespace: str) -> None:
    """top_k matches come back even when far better non-matching memories exist."""
    for i in range(30):
        store(
            api,
            namespace,
            f"Coffee tasting note {i}: bright and fruity",
            metadata={"kind": "coffee"},
        )
    tea = [
        store(api, namespace, f"Tea log {i}", metadata={"kind": "tea", "cups": i})["id"]
        for i in range(3)
    ]
    hits = search(api, namespace, "coffee tasting notes", top_k=3, filters={"kind": "tea"})
    assert sorted(h["id"] for h in hits) == sorted(tea)
    hits = search(api, namespace, "coffee", top_k=10, filters={"cups": {"$gte": 1}})
    assert sorted(h["id"] for h in hits) == sorted(tea[1:])


def test_filter_language(api: Api, namespace: str) -> None:
    rows = {
        "a": {"lang": "en", "n": 1, "tags": {"x": True}},
        "b": {"lang": "de", "n": 5},
        "c": {"lang": "fr", "n": 9, "draft": True},
        "d": {"lang": "en"},
    }
    ids = {k: store(api, namespace, f"document {k}", metadata=v)["id"] for k, v in rows.items()}

    def matching(spec: dict[str, object]) -> set[str]:
        hits = search(api, namespace, "document", top_k=10, filters=spec)
        by_id = {v: k for k, v in ids.items()}
        return {by_id[str(h["id"])] for h in hits}

    assert matching({"lang": "en"}) == {"a", "d"}
    assert matching({"lang": {"$ne": "en"}}) == {"b", "c"}
    assert matching({"lang": {"$in": ["de", "fr"]}}) == {"b", "c"}
    assert matching({"lang": {"$nin": ["de", "fr"]}}) == {"a", "d"}
    assert matching({"n": {"$gt": 1, "$lte": 9}}) == {"b", "c"}
    assert matching({"n": {"$lt": 5}}) == {"a"}
    assert matching({"draft": {"$exists": True}}) == {"c"}
    assert matching({"draft": {"$exists": False}}) == {"a", "b", "d"}
    assert matching({"tags.x": True}) == {"a"}
    assert matching({"metadata.lang": "de"}) == {"b"}
    assert matching({"$or": [{"lang": "de"}, {"n": 9}]}) == {"b", "c"}
    assert matching({"$and": [{"lang": "en"}, {"n": {"$exists": True}}]}) == {"a"}
    assert matching({"$not": {"lang": "en"}}) == {"b", "c"}
    assert matching({"n": {"$not": {"$gt": 4}}}) == {"a", "d"}  # a missing key is not > 4
    assert matching({"$not": {"$or": [{"lang": "en"}, {"n": 5}]}}) == {"c"}
    assert matching({"type": "episodic", "importance": {"$gte": 0.5}}) == {"a", "b", "c", "d"}
    assert matching({"type": {"$ne": "episodic"}}) == set()


def test_created_at_is_event_time_and_filterable(api: Api, namespace: str) -> None:
    old = store(api, namespace, "Moved to Lisbon", created_at="2019-06-01T09:00:00Z")
    new = store(api, namespace, "Moved to Porto", created_at="2024-02-10T09:00:00+01:00")
    assert old["created_at"].startswith("2019-06-01T09:00:00")
    assert api.ok("GET", f"/memory/{new['id']}")["created_at"].startswith("2024-02-10T08:00:00")
    ranged = {"created_at": {"$gte": "2020-01-01", "$lt": "2025-01-01T00:00:00Z"}}
    assert [h["id"] for h in search(api, namespace, "moved", filters=ranged)] == [new["id"]]
    epoch = {"created_at": {"$lt": 1577836800}}  # 2020-01-01 in epoch seconds
    assert [h["id"] for h in search(api, namespace, "moved", filters=epoch)] == [old["id"]]
    born = store(api, namespace, "Moved to Faro", created_at="1965-04-01T00:00:00Z")
    every = {"importance": {"$exists": True}}
    found = {h["id"] for h in search(api, namespace, "moved", filters=every)}
    assert found == {old["id"], new["id"], born["id"]}  # event times before 1970 included


def test_search_scopes_by_namespace_or_spans_the_tenant(api: Api, namespace: str) -> None:
    other = f"{namespace}-other"
    mine = store(api, namespace, "Pasta recipe with basil")
    theirs = store(api, other, "Pasta recipe with garlic")
    assert [h["id"] for h in search(api, namespace, "pasta recipe")] == [mine["id"]]
    spanning = {h["id"] for h in search(api, None, "pasta recipe with basil or garlic", top_k=100)}
    assert {mine["id"], theirs["id"]} <= spanning


def test_default_namespace_comes_from_settings(api: Api) -> None:
    stored = api.ok("POST", "/memory/store", {"content": "No namespace given"})
    assert api.ok("GET", f"/memory/{stored['id']}")["namespace"] == "default"


def test_unknown_routes_and_methods_answer_json(api: Api) -> None:
    assert api.error(404, "GET", "/nowhere") == "not_found"
    assert api.error(405, "PUT", "/memory/store", {"content": "x"}) == "method_not_allowed"


def test_probes_openapi_and_docs(api: Api) -> None:
    assert api.ok("GET", "/healthz")["status"] == "ok"
    ready = api.ok("GET", "/readyz")
    assert ready["status"] == "ready"
    assert set(ready["checks"].values()) == {"ok"}
    spec = api.ok("GET", "/api/v2/openapi.json")
    for route in ("/api/v2/memory/store", "/api/v2/memory/search", "/api/v2/memory/{memory_id}"):
        assert route in spec["paths"]
    docs = api.call("GET", "/api/v2/docs")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()
    script = api.call("GET", "/static/ninja/swagger-ui-bundle.js")
    try:
        assert script.status_code == 200
        assert len(b"".join(script.streaming_content)) > 100_000
    finally:
        script.close()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ('{"content": "x", "metadata": {"a": NaN}}', 422, "validation_error"),
        ('{"content": "x", "metadata": {"a": Infinity}}', 422, "validation_error"),
        ({"content": "nul \u0000 inside"}, 422, "validation_error"),
        ({"content": "x", "metadata": {"k": "nul \u0000"}}, 422, "validation_error"),
        ({"content": "x", "created_at": "0001-01-01T00:00:00+01:00"}, 422, "validation_error"),
        (
            {
                "content": "x",
                "metadata": {
                    f"{'k' * 60}{i}": {f"{'n' * 60}{j}": 1 for j in range(40)} for i in range(40)
                },
            },
            413,
            "metadata_too_large",
        ),
    ],
)
def test_values_the_stores_cannot_hold_are_refused(
    api: Api, body: object, status: int, code: str
) -> None:
    before = Memory.objects.count()
    assert api.error(status, "POST", "/memory/store", body) == code
    assert Memory.objects.count() == before


def test_extreme_times_in_filters_are_refused(api: Api) -> None:
    for spec in (
        {"created_at": {"$gt": 1e300}},
        {"created_at": {"$lt": "9999-12-31T23:00:00-05:00"}},
    ):
        assert (
            api.error(400, "POST", "/memory/search", {"query": "x", "filters": spec})
            == "invalid_filter"
        )


def test_oversized_body_is_413(api: Api, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = {"memories": [{"content": "y" * 600}, {"content": "z" * 600}]}
    assert api.error(413, "POST", "/memory/batch", body) == "payload_too_large"
