"""Offline, deterministic summaries: the group's most representative sentences.

A sentence represents the group when its words are the group's frequent words: each sentence
scores the mean, over its distinct stemmed terms, of the share of the group's texts that use
the term. The best sentences (about one per three texts, at least two, at most eight) are
kept in their original order, without repeats, up to the size limit.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from somafractalmemory.retrieval.lexical import analyze
from somafractalmemory.summaries.base import clip

SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE.split(text) if s.strip()]


class ExtractiveSummarizer:
    name = "extractive"

    def summarize(self, texts: Sequence[str], *, max_bytes: int) -> str:
        pieces = [(t, n, s) for t, text in enumerate(texts) for n, s in enumerate(sentences(text))]
        if not pieces:
            return ""
        terms = [set(analyze(s)) for _, _, s in pieces]
        used_by: Counter[str] = Counter()
        for t in range(len(texts)):
            used_by.update(set().union(*(terms[i] for i, p in enumerate(pieces) if p[0] == t)))

        def representative(i: int) -> float:
            if not terms[i]:
                return 0.0
            return sum(used_by[w] for w in terms[i]) / (len(terms[i]) * len(texts))

        keep = min(8, max(2, round(len(texts) / 3)))
        order = sorted(range(len(pieces)), key=lambda i: (-representative(i), i))
        chosen: list[int] = []
        seen: set[str] = set()
        size = 0
        for i in order:
            text = pieces[i][2]
            if text.lower() in seen:
                continue
            if size + len(text.encode()) + 1 > max_bytes and chosen:
                continue
            chosen.append(i)
            seen.add(text.lower())
            size += len(text.encode()) + 1
            if len(chosen) == keep:
                break
        return clip(" ".join(pieces[i][2] for i in sorted(chosen)), max_bytes)
