"""Lexical tokens: the analyzer behind the BM25 leg in the vector index and the SQL
full-text index (`memories/fulltext.py`, used when the index is down).

Neither index sees plaintext: each stemmed word is replaced by an HMAC keyed per tenant, so
both hold opaque tokens (the SQL one indexes the `tokens` column, not the sealed content), and
a query can only match tokens made with its own tenant's key. Pure: no Django, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import re

MAX_TERMS = 64
BM25_K1 = 1.2
BM25_B = 0.75
"""BM25 as Lucene and Milvus rank (and every lexical leg of the service)."""
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
