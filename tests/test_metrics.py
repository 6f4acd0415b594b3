"""`/metrics`: Prometheus text format counting what the service did."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Api

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(api: Api) -> Samples:
    response = api.client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_stores_searches_and_denials(api: Api, namespace: str) -> None:
    before = scrape(api)
    for i in range(3):
        text = f"metric note {i}: the deploy finished at {10 + i} o'clock"
        api.ok("POST", "/memory/store", {"content": text, "namespace": namespace})
    api.ok(
        "POST", "/memory/search", {"query": "when did the deploy finish?", "namespace": namespace}
    )
    api.error(404, "GET", "/memory/mem_nope")
    after = scrape(api)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    store_route = "/api/v2/memory/store"
    assert grew("sfm_http_requests_total", method="POST", route=store_route, status="200") == 3
    by_id = "/api/v2/memory/<memory_id>"
    assert grew("sfm_http_requests_total", method="GET", route=by_id, status="404") == 1
    assert grew("sfm_http_request_duration_seconds_count", method="POST", route=store_route) == 3
    assert grew("sfm_memories_stored_total") == 3
    assert grew("sfm_searches_total", mode="hybrid") == 1
    assert grew("sfm_embedding_seconds_count", kind="query") == 1
    assert grew("sfm_embedding_seconds_count", kind="store") == 3
    assert grew("sfm_vector_index_seconds_count", operation="search") == 1
    assert grew("sfm_vector_index_seconds_count", operation="upsert") >= 3
    assert value(after, "sfm_outbox_depth") >= 0


def test_quota_denials_are_counted(api: Api, namespace: str) -> None:
    from somafractalmemory.memories.models import Tenant

    Tenant.objects.update_or_create(id="default", defaults={"max_memories": 0})
    before = value(scrape(api), "sfm_quota_denials_total", code="quota_exceeded")
    body = {"content": "one too many", "namespace": namespace}
    assert api.error(403, "POST", "/memory/store", body) == "quota_exceeded"
    assert value(scrape(api), "sfm_quota_denials_total", code="quota_exceeded") == before + 1
