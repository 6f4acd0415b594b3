"""Embeddings from any OpenAI-compatible `/v1/embeddings` endpoint."""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from somafractalmemory.embedding.base import SameForQueries, Vectors, normalise
from somafractalmemory.errors import EmbeddingUnavailable


class HttpEmbedder(SameForQueries):
    """POSTs `{"model", "input": [...]}` to `<base_url>/embeddings`, in batches."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        batch_size: int = 64,
        timeout: float = 30.0,
    ) -> None:
        self.name = model
        self._batch_size = batch_size
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.embed(["dimension probe"]).shape[1])
        return self._dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        rows: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            rows.extend(self._call(list(texts[start : start + self._batch_size])))
        return normalise(rows)

    def _call(self, batch: list[str]) -> list[list[float]]:
        try:
            response = self._client.post("/embeddings", json={"model": self.name, "input": batch})
            response.raise_for_status()
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            vectors = [item["embedding"] for item in data]
        except httpx.HTTPError as exc:
            raise EmbeddingUnavailable(f"embedding endpoint failed: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise EmbeddingUnavailable(
                f"embedding endpoint answered an unexpected body: {exc}"
            ) from exc
        if len(vectors) != len(batch) or len({len(v) for v in vectors}) != 1:
            raise EmbeddingUnavailable(
                f"embedding endpoint returned {len(vectors)} vectors for {len(batch)} texts"
            )
        return vectors
