"""Lexical retrieval in SQL (SQLite FTS5 / PostgreSQL full text over keyed tokens), and the
filter language evaluated in Python (the fallback's filter, since metadata is sealed in SQL).

Runs on whichever database the suite runs on (`make test` runs both).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from django.db import connection
from hypothesis import given, settings

from somafractalmemory.memories import fulltext, identity, services
from somafractalmemory.memories.models import Memory
from somafractalmemory.retrieval import filters
from tests.test_filters import DOCS, reference, specs


def scope(namespace: str) -> Any:
    return Memory.objects.filter(tenant_id="default", namespace=namespace)


def find(namespace: str, text: str, limit: int) -> list[tuple[str, float]]:
    return fulltext.search(scope(namespace), identity.tokens_of(text, "default").split(), limit)


@pytest.mark.django_db
def test_lexical_search_ranks_matching_words(namespace: str) -> None:
    texts = [
        "Alice adopted a greyhound named Comet",
        "The greyhound races were cancelled because of rain",
        "Bob prefers tea over coffee",
        "Running shoes wear out after 800 km",
    ]
    ids = [services.remember(services.NewMemory(t, namespace=namespace)).id for t in texts]
    found = find(namespace, "what is the name of Alice's greyhound?", 10)
    assert [i for i, _ in found][:2] == [ids[0], ids[1]]
    assert ids[2] not in [i for i, _ in found]
    stemmed = find(namespace, "runs in new shoe", 10)  # stemming
    assert [i for i, _ in stemmed] == [ids[3]]
    assert find(f"{namespace}-x", "greyhound", 10) == []


@pytest.mark.django_db
def test_lexical_index_follows_updates_and_deletes(namespace: str) -> None:
    memory = services.remember(
        services.NewMemory("The spare key is under the plant", namespace=namespace)
    )
    services.update(memory.id, {"content": "The spare key is with the neighbour"})
    assert find(namespace, "plant", 5) == []
    assert [i for i, _ in find(namespace, "neighbour", 5)] == [memory.id]
    services.delete(memory.id)
    assert find(namespace, "neighbour", 5) == []


def bm25(docs: dict[str, list[str]], query: list[str]) -> dict[str, float]:
    """BM25 as Lucene and Milvus define it (k1 1.2, b 0.75), over `docs` alone."""
    k1, b = 1.2, 0.75
    avgdl = sum(len(d) for d in docs.values()) / len(docs)
    scores: dict[str, float] = {}
    for term in dict.fromkeys(query):
        holding = [i for i, d in docs.items() if term in d]
        idf = math.log(1 + (len(docs) - len(holding) + 0.5) / (len(holding) + 0.5))
        for i in holding:
            f, dl = docs[i].count(term), len(docs[i])
            scores[i] = scores.get(i, 0.0) + idf * f * (k1 + 1) / (
                f + k1 * (1 - b + b * dl / avgdl)
            )
    return scores


@pytest.mark.django_db
def test_lexical_search_ranks_by_bm25(namespace: str) -> None:
    """A rare word outweighs a common one (IDF), a short match beats a long one (length), a
    repeated word counts but saturates (tf): both SQL engines. ts_rank_cd, which PostgreSQL
    ranked by before, ties the first two cases."""
    texts = {
        "rare": "axolotl grass field",
        "common": "quokka grass field",
        "short": "quokka naps",
        "long": "quokka naps beneath warm sunny sandstone rocks near the quiet river bend",
        "repeated": "quokka quokka quokka grass field",
        **{f"filler{n}": f"quokka number {n} grass field" for n in range(6)},
    }
    ids = {
        name: services.remember(services.NewMemory(text, namespace=namespace)).id
        for name, text in texts.items()
    }
    ranked = [i for i, _ in find(namespace, "axolotl or quokka", 20)]
    assert ranked[0] == ids["rare"]
    assert ranked.index(ids["short"]) < ranked.index(ids["long"])
    assert ranked.index(ids["repeated"]) < ranked.index(ids["common"])
    if connection.vendor == "postgresql":  # statistics of the caller's scope: exact BM25
        docs = {
            ids[name]: identity.tokens_of(text, "default").split() for name, text in texts.items()
        }
        query = identity.tokens_of("axolotl or quokka", "default").split()
        expected = bm25(docs, query)
        found = dict(find(namespace, "axolotl or quokka", 20))
        assert found.keys() == expected.keys()
        for i, score in expected.items():
            assert found[i] == pytest.approx(score, rel=1e-9)


@settings(max_examples=300, deadline=None)
@given(spec=specs)
def test_python_filters_agree_with_the_reference(spec: dict[str, Any]) -> None:
    node = filters.parse(spec)
    assert node is not None
    columns = {"id": "m", "type": "episodic", "importance": 0.5, "created_at": 0}
    got = [filters.matches(node, filters.Facts(columns, doc)) for doc in DOCS]
    assert got == [reference(spec, doc) for doc in DOCS]


@pytest.mark.parametrize("text", ["Running with the dogs, at dawn!", "x " * 40_000, "Ünïcode 42"])
def test_the_sealing_migration_keeps_what_it_wrote(text: str) -> None:
    """Migration 0006 keeps a frozen copy of the keyed tokens and hash; today it must still
    write what the live code writes (a database migrated now finds its memories)."""
    import importlib

    sealed = importlib.import_module("somafractalmemory.memories.migrations.0006_sealed")
    assert sealed.tokens_of(text, "t1") == identity.tokens_of(text, "t1")
    assert sealed.content_hash(text, "t1") == identity.content_hash(text, "t1")
    assert sealed.tokens_of(text, "t1") != identity.tokens_of(text, "t2")


@pytest.mark.parametrize(
    ("metadata", "words"),
    [
        ({"speaker": "Caroline"}, 1),
        ({"speaker": "Anna Maria de la Cruz"}, 4),  # at most four words
        ({"speaker": 7}, 0),
        ({}, 0),
        (None, 0),
    ],
)
def test_the_speaker_migration_keeps_what_it_wrote(metadata: Any, words: int) -> None:
    import importlib

    speakers = importlib.import_module("somafractalmemory.memories.migrations.0010_speaker")
    wrote = speakers.speaker_tokens(metadata, "t1")
    assert wrote == identity.speaker_tokens(metadata, "t1")
    assert len(wrote.split()) == words
