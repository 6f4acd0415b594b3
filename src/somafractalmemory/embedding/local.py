"""The local embedder on torch: a sentence-transformers model loaded from disk, never
downloaded (`embedding_runtime: torch`; `embedding.onnx` runs the same weights faster)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from somafractalmemory.embedding.base import SameForQueries, Vectors, normalise
from somafractalmemory.embedding.catalog import BUNDLED_MODEL, model_directory


class LocalEmbedder(SameForQueries):
    """A sentence-transformers model on the CPU, loaded once per process, thread-safe."""

    def __init__(
        self, model: str = BUNDLED_MODEL, *, cache_dir: Path, batch_size: int = 64
    ) -> None:
        self.name = model
        self._cache_dir = cache_dir
        self._batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                # No network at run time: fail rather than reach for a hub.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                path = model_directory(self.name, self._cache_dir)
                self._model = SentenceTransformer(str(path), device="cpu")
            return self._model

    @property
    def dim(self) -> int:
        model = self._load()
        # sentence-transformers 6 renamed the getter; accept both.
        getter = getattr(model, "get_embedding_dimension", None)
        return int(getter() if getter else model.get_sentence_embedding_dimension())

    def embed(self, texts: Sequence[str]) -> Vectors:
        model = self._load()
        rows = model.encode(
            list(texts),
            batch_size=self._batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return normalise(rows)
