"""Names and keyed fingerprints: ids, the tenant's lexical key, content hashes and tokens.

Everything here is keyed per tenant (HMAC with the service's secret), so the database holds no
plain hash or word that would let a reader confirm a guessed content.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from somafractalmemory.conf import get_config
from somafractalmemory.errors import ValidationFailed
from somafractalmemory.retrieval import lexical


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def utc(moment: datetime | None) -> datetime:
    """`moment` in UTC (naive means UTC); None is now."""
    if moment is None:
        return datetime.now(UTC)
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        raise ValidationFailed(
            f"time {moment.isoformat()} is outside years 1 to 9999 in UTC"
        ) from None


def lexical_key(tenant: str) -> bytes:
    """The tenant's key for opaque lexical tokens (per-tenant data keys replace it later)."""
    secret = get_config().secret_key.encode()
    return hmac.new(secret, f"sfm-lexical\0{tenant}".encode(), hashlib.sha256).digest()


def content_hash(content: str, tenant: str) -> str:
    """Identity of a content within a tenant (for deduplication), keyed."""
    return hmac.new(lexical_key(tenant), content.strip().encode("utf-8"), "sha256").hexdigest()


def tokens_of(content: str, tenant: str) -> str:
    """The keyed lexical tokens of a content (the SQL full-text index holds these)."""
    return lexical.keyed_tokens(content, lexical_key(tenant))


SPEAKER = "speaker"
"""The metadata key that names who said (or wrote) a memory."""
SPEAKER_TERMS = 4


def speaker_tokens(metadata: Any, tenant: str) -> str:
    """The keyed tokens of who said a memory (`metadata.speaker`, when it is a string; up to
    four words), space-separated: a search whose text names them ranks the memory higher
    (`ranking.credit`). Keyed like the lexical tokens, so no name is stored plain."""
    who = metadata.get(SPEAKER) if isinstance(metadata, dict) else None
    if not isinstance(who, str):
        return ""
    return " ".join(tokens_of(who, tenant).split()[:SPEAKER_TERMS])


def sources_hash_of(children: Iterable[tuple[str, str]]) -> str:
    """Identity of what a parent summarizes, from its children's (id, content hash)."""
    parts = sorted(f"{i}:{h}" for i, h in children)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
