"""BM25 in this process, for the local engine's lexical legs: an inverted index over the keyed
tokens (retrieval.lexical.keyed_tokens: 16 hex digits each, held here as 64-bit integers).

The postings live in frozen segments, each its distinct terms sorted and, per term, the labels
holding it (ascending) with their counts. A write adds a segment for its documents; a segment
merges with the one before it while that is not more than twice its size, so an index of n
postings has O(log n) segments and a posting is rewritten O(log n) times over its life. A merge
leaves out the postings of dead labels.

A search adds up BM25 as Lucene and Milvus rank it (the document count and mean length of the
live documents; a term's document frequency counts the dead ones until a merge drops them, as
Lucene's does), in numpy, term by term from the one that can add most to a score. Each
segment keeps, per term, the largest count and the shortest document among its postings, so a
term's largest possible share of a score is known before reading it. Once the best k scores so
far exceed what the unread terms could add together, no document they hold alone can enter the
top k (MaxScore, Turtle and Flood 1995): those terms are looked up only in the documents already
scored, by binary search, instead of read whole. The most common terms, the longest postings,
come last and are mostly skipped. Pure: no I/O.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from somafractalmemory.retrieval.lexical import BM25_B, BM25_K1

Terms = npt.NDArray[np.uint64]
Labels = npt.NDArray[np.intp]
Mask = npt.NDArray[np.bool_]
MAX_COUNT = np.iinfo(np.uint16).max
MERGE_RATIO = 2
LOOKUP_RATIO = 16
"""A term's postings are searched for the scored labels when this many times longer (a
binary search each), else read whole."""
EMPTY = np.zeros(0, dtype=np.uint64)
EMPTY_LABELS = np.zeros(0, dtype=np.intp)


def parse(tokens: str) -> Terms:
    """Space-separated tokens as integers: a keyed token (16 hex digits) its value, any
    other word a 64-bit hash of it."""
    words = tokens.split()
    if not words:
        return EMPTY
    if all(len(w) == 16 for w in words):
        with contextlib.suppress(ValueError):
            return np.frombuffer(bytes.fromhex("".join(words)), dtype=">u8").astype(np.uint64)
    return np.fromiter((_term(w) for w in words), dtype=np.uint64, count=len(words))


def _term(word: str) -> int:
    if len(word) == 16:
        with contextlib.suppress(ValueError):
            return int(word, 16)
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class Segment:
    terms: Terms
    """Distinct terms, ascending."""
    starts: npt.NDArray[np.int64]
    """Term i's postings are [starts[i], starts[i + 1])."""
    labels: npt.NDArray[np.uint32]
    counts: npt.NDArray[np.uint16]
    sizes: npt.NDArray[np.uint16]
    """Per posting: its document's length (read in order, not looked up per label)."""
    top_count: npt.NDArray[np.uint16]
    """Per term: the largest count among its postings..."""
    shortest: npt.NDArray[np.uint16]
    """...and the shortest document (both bound what the term adds to a score)."""

    def __len__(self) -> int:
        return len(self.labels)

    def find(self, terms: Terms) -> npt.NDArray[np.int64]:
        """The position of each of `terms` here, -1 when absent."""
        at = np.searchsorted(self.terms, terms)
        found = at < len(self.terms)
        found[found] = self.terms[at[found]] == terms[found]
        return np.where(found, at, -1)


def _segment(
    terms: Terms,
    labels: npt.NDArray[np.uint32],
    counts: npt.NDArray[np.uint16],
    lengths: npt.NDArray[Any],
) -> Segment:
    """A segment from postings sorted by (term, label), `lengths` their documents' lengths."""
    sizes = np.minimum(lengths, MAX_COUNT).astype(np.uint16)
    if not len(terms):
        return Segment(EMPTY, np.zeros(1, np.int64), labels, counts, sizes, counts, sizes)
    first = np.ones(len(terms), dtype=np.bool_)
    first[1:] = terms[1:] != terms[:-1]
    at = np.flatnonzero(first)
    return Segment(
        terms[at],
        np.append(at, len(terms)).astype(np.int64),
        labels,
        counts,
        sizes,
        np.maximum.reduceat(counts, at),
        np.minimum.reduceat(sizes, at),
    )


def build(first: int, docs: Sequence[Terms]) -> Segment:
    """The segment of documents labelled first, first + 1, ..."""
    sizes = np.fromiter((len(d) for d in docs), dtype=np.uint32, count=len(docs))
    terms = np.concatenate(docs) if len(docs) else EMPTY
    labels = np.repeat(np.arange(first, first + len(docs), dtype=np.uint32), sizes)
    order = np.lexsort((labels, terms))
    terms, labels = terms[order], labels[order]
    new = np.ones(len(terms), dtype=np.bool_)
    new[1:] = (terms[1:] != terms[:-1]) | (labels[1:] != labels[:-1])
    at = np.flatnonzero(new)
    counts = np.minimum(np.diff(np.append(at, len(terms))), MAX_COUNT).astype(np.uint16)
    labels = labels[at]
    return _segment(terms[at], labels, counts, sizes[labels - first])


def merge(older: Segment, newer: Segment, live: Mask) -> Segment:
    """One segment holding both (`newer`'s labels all above `older`'s), without the postings
    of labels not `live`."""
    terms = np.concatenate([np.repeat(s.terms, np.diff(s.starts)) for s in (older, newer)])
    labels = np.concatenate([older.labels, newer.labels])
    keep = live[labels]
    terms, labels = terms[keep], labels[keep]
    counts = np.concatenate([older.counts, newer.counts])[keep]
    sizes = np.concatenate([older.sizes, newer.sizes])[keep]
    # Stable: within a term, the older segment's (lower) labels stay first. Two sorted runs,
    # which numpy's timsort merges in linear time.
    order = np.argsort(terms, kind="stable")
    return _segment(terms[order], labels[order], counts[order], sizes[order])


class Postings:
    """One field's inverted index over labels 0..n-1 (appended in order)."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.lengths = np.zeros(1024, dtype=np.uint32)
        self.size = 0
        self.docs = 0
        """Live documents (labels with any token)."""
        self.tokens = 0
        """Their tokens, in all."""

    def add(self, docs: Sequence[Terms]) -> None:
        """Documents for the next labels, as one more segment (`compact` merges it)."""
        first = self.size
        self.size += len(docs)
        if self.size > len(self.lengths):
            grown = np.zeros(max(self.size, 2 * len(self.lengths)), dtype=np.uint32)
            grown[:first] = self.lengths[:first]
            self.lengths = grown
        sizes = np.fromiter((len(d) for d in docs), dtype=np.uint32, count=len(docs))
        self.lengths[first : self.size] = sizes
        self.docs += int(np.count_nonzero(sizes))
        self.tokens += int(sizes.sum())
        if sizes.any():
            self.segments = [*self.segments, build(first, docs)]

    def compact(self, live: Mask) -> None:
        """Merge the newest segments while the one before is not more than MERGE_RATIO times
        the size of the last, leaving out the labels not `live` (which must not change
        meanwhile; searches may run, on the segments as they were)."""
        segments = list(self.segments)
        while len(segments) > 1 and len(segments[-2]) <= MERGE_RATIO * len(segments[-1]):
            newer = segments.pop()
            segments[-1] = merge(segments[-1], newer, live)
        self.segments = segments  # one assignment: a search sees the old list or the new

    def kill(self, labels: Sequence[int]) -> None:
        """Labels no longer live (each once): out of the document statistics."""
        for label in labels:
            length = int(self.lengths[label])
            if length:
                self.docs -= 1
                self.tokens -= length
                self.lengths[label] = 0

    def postings(self) -> int:
        return sum(len(s) for s in self.segments)

    def top(self, terms: Terms, allowed: Mask, k: int) -> list[tuple[int, float]]:
        """(label, BM25) of the best `k` allowed labels holding any of `terms`, best first
        (ties: the lower label first)."""
        segments, docs = self.segments, self.docs
        terms = np.unique(terms)
        if not len(terms) or not segments or not docs or k < 1:
            return []
        mean = self.tokens / docs
        at = np.stack([s.find(terms) for s in segments])  # segment x term
        df = np.zeros(len(terms), dtype=np.int64)
        bound = np.zeros(len(terms))
        for s, segment in enumerate(segments):
            held = at[s] >= 0
            where = at[s][held]
            df[held] += segment.starts[where + 1] - segment.starts[where]
            most = _weight(segment.top_count[where], segment.shortest[where], mean)
            bound[held] = np.maximum(bound[held], most)
        idf = np.log(1 + (np.maximum(docs, df) - df + 0.5) / (df + 0.5))
        bound *= idf
        order = [t for t in np.argsort(-bound, kind="stable") if df[t]]
        rest = np.cumsum(bound[order][::-1])[::-1]  # rest[i]: the most terms i.. can add
        scratch = _scratch_for(len(allowed))
        acc = scratch.acc
        scored: list[Labels] = []
        try:
            for i, t in enumerate(order):
                if i and _beyond(acc, scored, k, rest[i]):
                    labels = np.concatenate(scored)
                    _lookup(segments, acc, labels, order[i:], at, idf, mean)
                    return _finish(acc, labels, k)
                for s, segment in enumerate(segments):
                    if at[s, t] < 0:
                        continue
                    a, b = segment.starts[at[s, t]], segment.starts[at[s, t] + 1]
                    labels = segment.labels[a:b].astype(np.intp)
                    keep = allowed[labels]
                    labels = labels[keep]
                    if not len(labels):
                        continue
                    share = idf[t] * _weight(
                        segment.counts[a:b][keep], segment.sizes[a:b][keep], mean
                    )
                    held = acc[labels]
                    scored.append(labels[held == 0])  # every share is above 0
                    acc[labels] = held + share
            return _finish(acc, np.concatenate(scored) if scored else EMPTY_LABELS, k)
        finally:
            for labels in scored:
                acc[labels] = 0.0


def _weight(counts: npt.NDArray[Any], lengths: npt.NDArray[Any], mean: float) -> npt.NDArray[Any]:
    """BM25's share of a term in a document, before its idf (float32: half the work)."""
    c = counts.astype(np.float32)
    scale = np.float32(BM25_K1 * BM25_B / mean)
    return c * np.float32(BM25_K1 + 1) / (c + np.float32(BM25_K1 * (1 - BM25_B)) + scale * lengths)


def _beyond(acc: npt.NDArray[np.float32], scored: list[Labels], k: int, rest: float) -> bool:
    """Whether the k-th best score so far is above `rest` (what the unread terms can add)."""
    held = sum(len(s) for s in scored)
    if held < k:
        return False
    scores = acc[np.concatenate(scored)]
    return float(np.partition(scores, held - k)[held - k]) > rest


def _lookup(
    segments: Sequence[Segment],
    acc: npt.NDArray[np.float32],
    labels: Labels,
    terms: Sequence[int],
    at: npt.NDArray[np.int64],
    idf: npt.NDArray[np.float64],
    mean: float,
) -> None:
    """Add `terms`' shares to the scored `labels` alone (those whose score is above 0): by
    binary search in a term's postings (sorted by label) when they are many times longer,
    else by reading them."""
    ordered: Labels | None = None
    for t in terms:
        for s, segment in enumerate(segments):
            if at[s, t] < 0:
                continue
            a, b = segment.starts[at[s, t]], segment.starts[at[s, t] + 1]
            held = segment.labels[a:b]
            if len(labels) * LOOKUP_RATIO < len(held):
                ordered = np.sort(labels) if ordered is None else ordered
                where = np.minimum(np.searchsorted(held, ordered), len(held) - 1)
                where = where[held[where] == ordered]
            else:
                where = np.flatnonzero(acc[held.astype(np.intp)] > 0)
            found = held[where].astype(np.intp)
            share = _weight(segment.counts[a:b][where], segment.sizes[a:b][where], mean)
            acc[found] += idf[t] * share


def _finish(acc: npt.NDArray[np.float32], labels: Labels, k: int) -> list[tuple[int, float]]:
    """The best `k` of `labels` (distinct) by score, then label."""
    scores = acc[labels]
    if len(labels) > k:
        floor = np.partition(scores, len(labels) - k)[len(labels) - k]
        keep = scores >= floor
        labels, scores = labels[keep], scores[keep]
    order = np.lexsort((labels, -scores))[:k]
    return [(int(labels[i]), float(scores[i])) for i in order]


class _Scratch(threading.local):
    acc = np.zeros(0, dtype=np.float32)


_scratch = _Scratch()


def _scratch_for(n: int) -> _Scratch:
    """This thread's score per label (zero between searches)."""
    if len(_scratch.acc) < n:
        size = max(n, 1024) * 5 // 4
        _scratch.acc = np.zeros(size, dtype=np.float32)
    return _scratch
