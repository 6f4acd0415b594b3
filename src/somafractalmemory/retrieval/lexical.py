"""Lexical retrieval: the analyzer for the BM25 leg in the vector index, and full-text
search inside the SQL database (SQLite FTS5 BM25 / PostgreSQL), used when the index is down.

Neither sees plaintext: each stemmed word is replaced by an HMAC keyed per tenant, so both
indexes hold opaque tokens (the SQL one indexes the `tokens` column, not the sealed content),
and a query can only match tokens made with its own tenant's key. SQL full text runs where
the rows are, restricted by the caller's queryset (tenant, namespace) inside the query.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from django.db import connection
from django.db.models import BooleanField, FloatField, QuerySet
from django.db.models.expressions import RawSQL

MAX_TERMS = 64
MAX_INDEXED_CHARS = 65_000  # the index's text field holds 65,535 characters
_TERM = re.compile(r"\w+", re.UNICODE)
# Function words carry no meaning for retrieval (the common English list, as in Lucene/NLTK).
_STOP_TEXT = """
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further
had has have having he her here hers herself him himself his how i if in into is it its itself
just me more most my myself no nor not now of off on once only or other our ours ourselves out
over own same she should so some such than that the their theirs them themselves then there
these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves s t d ll m o re ve y
"""
STOP_WORDS = frozenset(_STOP_TEXT.split())
_stemmer = None


def analyze(text: str) -> list[str]:
    """Lower-case words without stop words, Snowball-stemmed, duplicates kept (for BM25 tf)."""
    global _stemmer
    if _stemmer is None:
        import Stemmer

        _stemmer = Stemmer.Stemmer("english")
    words = [w for w in (t.lower() for t in _TERM.findall(text)) if w not in STOP_WORDS]
    return list(_stemmer.stemWords(words))


def keyed_tokens(text: str, key: bytes) -> str:
    """The analyzed words of `text` as opaque per-key tokens, space-separated."""
    tokens = " ".join(
        hmac.new(key, word.encode(), hashlib.sha256).hexdigest()[:16] for word in analyze(text)
    )
    return (
        tokens[:MAX_INDEXED_CHARS].rsplit(" ", 1)[0] if len(tokens) > MAX_INDEXED_CHARS else tokens
    )


def search(queryset: QuerySet, tokens: list[str], limit: int) -> list[tuple[str, float]]:
    """(memory id, score) of the best matches of keyed `tokens` among `queryset`, best first."""
    tokens = [t for t in tokens if t.isalnum()][:MAX_TERMS]
    if not tokens:
        return []
    if connection.vendor == "postgresql":
        return _postgres(queryset, tokens, limit)
    return _sqlite(queryset, tokens, limit)


def _sqlite(queryset: QuerySet, tokens: list[str], limit: int) -> list[tuple[str, float]]:
    match = " OR ".join(f'"{t}"' for t in tokens)
    inner, params = queryset.values("id").query.sql_with_params()
    sql = (
        "SELECT m.id, -bm25(memories_fts) AS score FROM memories_fts "
        "JOIN memories_memory m ON m.rowid = memories_fts.rowid "
        f"WHERE memories_fts MATCH %s AND m.id IN ({inner}) ORDER BY score DESC LIMIT %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [match, *params, limit])
        return [(str(row[0]), float(row[1])) for row in cursor.fetchall()]


def _postgres(queryset: QuerySet, tokens: list[str], limit: int) -> list[tuple[str, float]]:
    tsquery = " | ".join(tokens)
    vector = "to_tsvector('simple', tokens)"
    rows = (
        queryset.alias(
            lexical_hit=RawSQL(
                f"{vector} @@ to_tsquery('simple', %s)", (tsquery,), output_field=BooleanField()
            )
        )
        .filter(lexical_hit=True)
        .annotate(
            lexical_score=RawSQL(
                f"ts_rank_cd({vector}, to_tsquery('simple', %s))",
                (tsquery,),
                output_field=FloatField(),
            )
        )
        .order_by("-lexical_score", "id")
        .values_list("id", "lexical_score")[:limit]
    )
    return [(str(i), float(s)) for i, s in rows]
