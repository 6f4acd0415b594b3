"""The Embedder protocol: texts in, L2-normalised float32 rows out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    name: str
    """Model identity; names the vector collection, so a new model means a new index."""

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One row per text, unit length, shape (len(texts), dim)."""
        ...

    @property
    def query_name(self) -> str:
        """Identity of the vectors `embed_queries` gives (the query cache's key)."""
        ...

    def embed_queries(self, texts: Sequence[str]) -> Vectors:
        """Search queries' vectors: `embed`'s, or a faster model's close to them."""
        ...


class SameForQueries:
    """For an embedder that embeds queries as it embeds memories."""

    name: str

    @property
    def query_name(self) -> str:
        return self.name

    def embed_queries(self, texts: Sequence[str]) -> Vectors:
        return self.embed(texts)  # type: ignore[attr-defined]


def normalise(rows: npt.ArrayLike) -> Vectors:
    """Rows scaled to unit length (zero rows stay zero)."""
    array = np.asarray(rows, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-d array, got shape {array.shape}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return array / norms
