"""Lexical retrieval in SQL (SQLite FTS5 / PostgreSQL full text) and the filter language as SQL.

Runs on whichever database the suite runs on (`make test` runs both).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from somafractalmemory.memories import services
from somafractalmemory.memories.models import Memory
from somafractalmemory.retrieval import filters, lexical
from tests.test_filters import DOCS, reference, specs


def test_terms_are_words_deduplicated() -> None:
    assert lexical.terms("Where's the cat? The CAT!") == ["where", "s", "the", "cat"]
    assert lexical.terms("...") == []


def scope(namespace: str) -> Any:
    return Memory.objects.filter(tenant_id="default", namespace=namespace)


@pytest.mark.django_db
def test_lexical_search_ranks_matching_words(namespace: str) -> None:
    texts = [
        "Alice adopted a greyhound named Comet",
        "The greyhound races were cancelled because of rain",
        "Bob prefers tea over coffee",
        "Running shoes wear out after 800 km",
    ]
    ids = [services.remember(services.NewMemory(t, namespace=namespace)).id for t in texts]
    found = lexical.search(scope(namespace), "what is the name of Alice's greyhound?", 10)
    assert [i for i, _ in found][:2] == [ids[0], ids[1]]
    assert ids[2] not in [i for i, _ in found]
    stemmed = lexical.search(scope(namespace), "runs in new shoe", 10)  # stemming
    assert [i for i, _ in stemmed] == [ids[3]]
    assert lexical.search(scope(f"{namespace}-x"), "greyhound", 10) == []


@pytest.mark.django_db
def test_lexical_index_follows_updates_and_deletes(namespace: str) -> None:
    memory = services.remember(
        services.NewMemory("The spare key is under the plant", namespace=namespace)
    )
    services.update(memory.id, {"content": "The spare key is with the neighbour"})
    assert lexical.search(scope(namespace), "plant", 5) == []
    assert [i for i, _ in lexical.search(scope(namespace), "neighbour", 5)] == [memory.id]
    services.forget(memory.id)
    assert lexical.search(scope(namespace), "neighbour", 5) == []


@pytest.fixture
def sql_docs(db: None) -> dict[str, int]:
    rows = [
        Memory(
            id=f"m{i}", tenant_id="default", namespace="sqlfilter", content="doc",
            metadata=doc, embedding_id="v", created_at="2024-01-01T00:00:00Z",
        )
        for i, doc in enumerate(DOCS)
    ]  # fmt: skip
    Memory.objects.bulk_create(rows)
    return {f"m{i}": i for i in range(len(DOCS))}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(spec=specs)
def test_sql_filters_agree_with_the_reference(
    sql_docs: dict[str, int], spec: dict[str, Any]
) -> None:
    node = filters.parse(spec)
    assert node is not None
    got = set(scope("sqlfilter").filter(filters.to_q(node)).values_list("id", flat=True))
    expected = {key for key, i in sql_docs.items() if reference(spec, DOCS[i])}
    assert got == expected
