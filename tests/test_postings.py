"""The local engine's BM25 (vectors/postings.py) against BM25 computed the plain way, over
segments written, merged and killed at random."""

from __future__ import annotations

import math

import numpy as np
import pytest

from somafractalmemory.retrieval.lexical import BM25_B, BM25_K1, keyed_tokens
from somafractalmemory.vectors import postings


def reference(
    docs: list[np.ndarray],
    live: np.ndarray,
    allowed: np.ndarray,
    held: postings.Postings,
    query: np.ndarray,
    k: int,
) -> list[tuple[int, float]]:
    """BM25 document by document: N and the mean length over the live documents with any
    token, a term's document frequency over the postings the segments still hold."""
    lengths = [len(d) for d, alive in zip(docs, live, strict=True) if alive and len(d)]
    if not lengths:
        return []
    n, mean = len(lengths), sum(lengths) / len(lengths)
    df: dict[int, int] = {}
    for segment in held.segments:
        for i, term in enumerate(segment.terms):
            df[int(term)] = df.get(int(term), 0) + int(segment.starts[i + 1] - segment.starts[i])
    scores = {}
    for label, doc in enumerate(docs):
        if not allowed[label]:
            continue
        parts = []
        for term in {int(t) for t in query}:
            count = int(np.count_nonzero(doc == term))
            if count:
                idf = math.log(1 + (max(n, df[term]) - df[term] + 0.5) / (df[term] + 0.5))
                norm = BM25_K1 * (1 - BM25_B + BM25_B * len(doc) / mean)
                parts.append(idf * count * (BM25_K1 + 1) / (count + norm))
        if parts:
            scores[label] = sum(parts)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]


def same(found: list[tuple[int, float]], expected: list[tuple[int, float]]) -> bool:
    """The same scores in the same order, and the same labels above the last score (labels
    tied with it may differ)."""
    if len(found) != len(expected):
        return False
    if any(abs(a[1] - b[1]) > 1e-4 * max(1.0, b[1]) for a, b in zip(found, expected, strict=True)):
        return False
    last = expected[-1][1] if expected else 0.0
    return {i for i, s in found if s > last + 1e-4} == {i for i, s in expected if s > last + 1e-4}


@pytest.mark.parametrize("seed", range(40))
def test_top_is_bm25_over_live_allowed_documents(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, vocabulary = int(rng.integers(1, 400)), int(rng.integers(2, 60))
    docs = [
        rng.integers(0, vocabulary, size=int(rng.integers(0, 12))).astype(np.uint64)
        for _ in range(n)
    ]
    held, live = postings.Postings(), np.ones(n, dtype=np.bool_)
    written = 0
    while written < n:  # batches of random size, a few deaths after each, merges
        step = min(n - written, int(rng.integers(1, 50)))
        held.add(docs[written : written + step])
        written += step
        dead = sorted(
            {int(x) for x in rng.integers(0, written, size=3)} & set(np.flatnonzero(live))
        )
        live[dead] = False
        held.kill(dead)
        held.compact(live)
    for _ in range(5):
        allowed = live & (rng.random(n) < rng.uniform(0.2, 1.0))
        query = rng.integers(0, vocabulary + 5, size=int(rng.integers(1, 8))).astype(np.uint64)
        k = int(rng.integers(1, 30))
        assert same(held.top(query, allowed, k), reference(docs, live, allowed, held, query, k))


def test_rare_terms_first_and_common_ones_looked_up_only_where_they_can_matter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A query of one rare and one very common term: once the rare term's documents are
    scored, no document with the common term alone can reach the top 5, so the common term is
    looked up (MaxScore) in those documents, and the ranking is still exact."""
    rng = np.random.default_rng(7)
    docs = [np.array([1] + ([2] if i % 97 == 0 else []), dtype=np.uint64) for i in range(5000)]
    docs = [d if rng.random() < 0.5 else np.append(d, 3).astype(np.uint64) for d in docs]
    held = postings.Postings()
    held.add(docs)
    lookups: list[int] = []
    real = postings._lookup

    def counted(*args: object) -> None:
        lookups.append(1)
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(postings, "_lookup", counted)
    live = np.ones(len(docs), dtype=np.bool_)
    query = np.array([1, 2], dtype=np.uint64)
    assert same(held.top(query, live, 5), reference(docs, live, live, held, query, 5))
    assert lookups, "the common term was read whole"


def test_a_merge_leaves_the_dead_out_and_keeps_each_term_in_label_order() -> None:
    held = postings.Postings()
    held.add([np.array([5, 6], dtype=np.uint64), np.array([5], dtype=np.uint64)])
    held.add([np.array([6, 5, 5], dtype=np.uint64)])
    live = np.array([True, False, True])
    held.kill([1])
    held.compact(live)
    assert len(held.segments) == 1
    (segment,) = held.segments
    assert segment.terms.tolist() == [5, 6]
    assert segment.labels.tolist() == [0, 2, 0, 2]
    assert segment.counts.tolist() == [1, 2, 1, 1]
    assert segment.sizes.tolist() == [2, 3, 2, 3]
    assert (held.docs, held.tokens) == (2, 5)


def test_keyed_tokens_are_their_own_value_and_other_words_a_hash() -> None:
    tokens = keyed_tokens("Alice likes green tea", b"k" * 32)
    parsed = postings.parse(tokens)
    assert [f"{t:016x}" for t in parsed] == tokens.split()
    words = postings.parse("apple pie apple")
    assert words[0] == words[2] != words[1]
    assert postings.parse("").size == 0
