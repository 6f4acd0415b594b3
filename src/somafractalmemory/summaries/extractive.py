"""Offline, deterministic summaries: the group's most central sentences, whole and attributed.

Centroid summarization (as MEAD does): each sentence is a tf-idf vector of its stemmed terms
(idf over the group's sentences), and scores its cosine with the group's centroid, damped for
sentences of fewer than MIN_TERMS terms (greetings and replies say little). The best are taken
greedily, skipping any that repeats a chosen one (term overlap above REDUNDANT), until about a
quarter of the group's words (SHARE; at least two sentences, within the size limit). They are
written in their original order, each run of one speaker's sentences led by "Speaker:", as the
memories wrote it ("Alice: I moved in May." is a sentence by Alice).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from somafractalmemory.retrieval.lexical import analyze
from somafractalmemory.summaries.base import clip

SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
SPEAKER = re.compile(r"^([A-Z][A-Za-z .'-]{0,39}):\s+(?=\S)")
"""A leading "Name: " (a capitalised name of at most 40 letters, no digits: "Standup 3:"
is a label, not a speaker) marks who speaks."""
MIN_TERMS = 4
REDUNDANT = 0.6
SHARE = 0.25
MIN_SENTENCES = 2


def sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE.split(text) if s.strip()]


@dataclass(frozen=True)
class Piece:
    speaker: str | None
    text: str
    terms: Counter[str]


def pieces_of(texts: Sequence[str]) -> list[Piece]:
    """Every sentence with its speaker: a text's leading "Name: " holds until another."""
    out = []
    for text in texts:
        speaker = None
        for sentence in sentences(text):
            found = SPEAKER.match(sentence)
            if found:
                speaker, sentence = found.group(1), sentence[found.end() :]
            out.append(Piece(speaker, sentence, Counter(analyze(sentence))))
    return out


def centrality(pieces: Sequence[Piece]) -> list[float]:
    """Cosine of each sentence's tf-idf vector with the group's centroid, damped for short
    sentences."""
    df = Counter(t for p in pieces for t in p.terms)
    idf = {t: math.log(1 + len(pieces) / n) for t, n in df.items()}
    vectors = [{t: f * idf[t] for t, f in p.terms.items()} for p in pieces]
    centroid: Counter[str] = Counter()
    for vector in vectors:
        centroid.update(vector)
    norm_c = math.sqrt(sum(v * v for v in centroid.values())) or 1.0
    scores = []
    for vector in vectors:
        norm = math.sqrt(sum(v * v for v in vector.values()))
        cosine = sum(w * centroid[t] for t, w in vector.items()) / (norm * norm_c) if norm else 0.0
        scores.append(cosine * min(1.0, len(vector) / MIN_TERMS))
    return scores


def _overlap(a: Counter[str], b: Counter[str]) -> float:
    if not a or not b:
        return 0.0
    return len(a.keys() & b.keys()) / min(len(a), len(b))


def _written(pieces: Sequence[Piece]) -> str:
    """The sentences in order, each run of one speaker's led by its name."""
    parts, last = [], None
    for piece in pieces:
        lead = piece.speaker is not None and piece.speaker != last
        parts.append(f"{piece.speaker}: {piece.text}" if lead else piece.text)
        last = piece.speaker if piece.speaker is not None else last
    return " ".join(parts)


class ExtractiveSummarizer:
    name = "extractive"

    def summarize(self, texts: Sequence[str], *, max_bytes: int) -> str:
        pieces = pieces_of(texts)
        if not pieces:
            return ""
        scores = centrality(pieces)
        budget = SHARE * sum(len(p.text.split()) for p in pieces)
        chosen: list[int] = []
        words = 0
        seen: set[str] = set()
        for i in sorted(range(len(pieces)), key=lambda i: (-scores[i], i)):
            piece = pieces[i]
            if words >= budget and len(chosen) >= MIN_SENTENCES:
                break
            if piece.text.lower() in seen or any(
                _overlap(piece.terms, pieces[j].terms) > REDUNDANT for j in chosen
            ):
                continue
            trial = _written([pieces[j] for j in sorted([*chosen, i])])
            if len(trial.encode()) > max_bytes and chosen:
                continue
            chosen.append(i)
            seen.add(piece.text.lower())
            words += len(piece.text.split())
        return clip(_written([pieces[j] for j in sorted(chosen)]), max_bytes)
