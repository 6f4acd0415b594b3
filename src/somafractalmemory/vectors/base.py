"""The VectorIndex protocol: derived data that can always be rebuilt from SQL."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from somafractalmemory.retrieval.filters import Node


@dataclass(frozen=True)
class VectorRecord:
    """One memory as the index holds it: its vector and the fields filters need."""

    id: str
    embedding_id: str
    vector: npt.NDArray[np.float32]
    tenant: str
    namespace: str
    type: str
    importance: float
    created_at_ms: int
    metadata: dict[str, Any] = field(default_factory=dict)
    lexical: str = ""
    """Opaque tokens for the BM25 leg (see retrieval.lexical.keyed_tokens)."""
    context_vector: npt.NDArray[np.float32] | None = None
    """The memory with its neighbouring episodes (defaults to `vector`)."""
    context_lexical: str = ""
    """Tokens of the memory with its neighbouring episodes."""


@dataclass(frozen=True)
class VectorHit:
    id: str
    score: float
    """Cosine similarity in [-1, 1] (dense), or a BM25 score (lexical)."""


class VectorIndex(Protocol):
    @property
    def lexical(self) -> bool:
        """Whether `search_lexical` answers (Milvus BM25); if not, the lexical legs are the SQL
        full-text index's."""
        ...

    def notes(self) -> list[str]:
        """What works differently on this back end than the full design, one line each."""
        ...

    def upsert(self, records: Sequence[VectorRecord]) -> None: ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def search(
        self,
        vector: npt.NDArray[np.float32],
        *,
        tenant: str,
        namespace: str | None,
        where: Node | None,
        top_k: int,
        context: bool = False,
    ) -> list[VectorHit]:
        """The `top_k` nearest memories of `tenant` (and `namespace`) that match `where`;
        `context` searches the memories-with-neighbours vectors instead."""
        ...

    def nearest(
        self, vectors: npt.NDArray[np.float32], *, tenant: str, namespace: str, top_k: int
    ) -> list[list[VectorHit]]:
        """`search` for many vectors at once (one call), without a filter: one hit list
        per row of `vectors`."""
        ...

    def search_lexical(
        self,
        tokens: str,
        *,
        tenant: str,
        namespace: str | None,
        where: Node | None,
        top_k: int,
        context: bool = False,
    ) -> list[VectorHit]:
        """The `top_k` best BM25 matches of `tokens` (as made by keyed_tokens)."""
        ...

    def vectors(self, ids: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        """The stored (content) vectors of those `ids` the index holds."""
        ...

    def entries(self) -> Iterator[tuple[str, str]]:
        """Every (memory id, embedding id) the index holds."""
        ...

    def scrub(self) -> bool:
        """Remove deleted entries' bytes from storage (after an erasure); whether it could."""
        ...

    def reset(self) -> None:
        """Empty the index (drop and recreate)."""
        ...

    def count(self) -> int: ...

    def close(self) -> None: ...
