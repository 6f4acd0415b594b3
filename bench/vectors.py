"""The default encoder's vectors of the synthetic corpus (bench/corpus.py), computed once and
kept in chunk files, so that a benchmark at a million memories need not spend an hour and a
half encoding them again: the same texts, model and runtime give the same vectors.

    .venv/bin/python bench/vectors.py --n 1000000     # fill the cache (resumable), then exit

Chunks live in ~/.cache/sfm-bench/vectors/ (or $SFM_BENCH_CACHE/vectors/), outside the
checkout so that a new clone finds them, named by the weights' digest, the
corpus seed and the chunk number; each is written to a temporary name and renamed, so an
interrupted run leaves whole chunks only and the next run goes on from there.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import corpus  # bench/corpus.py
import numpy as np
import numpy.typing as npt

CACHE = Path(os.environ.get("SFM_BENCH_CACHE") or Path.home() / ".cache" / "sfm-bench")
CHUNK = 20_000
SEED = 7  # corpus.memories' default

Matrix = npt.NDArray[np.float32]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class CorpusVectors:
    """Vectors of corpus.memories(n) by the bundled model on onnxruntime (the default)."""

    def __init__(self, cache: Path = CACHE) -> None:
        from somafractalmemory.embedding.catalog import model_directory
        from somafractalmemory.embedding.onnx import OnnxEmbedder, weights_digest

        self.dir = cache / "vectors"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.embedder = OnnxEmbedder(cache_dir=cache / "models")
        self.digest = weights_digest(model_directory(self.embedder.name, cache / "models"))

    def _chunk_path(self, number: int) -> Path:
        return self.dir / f"onnx-{self.digest}-seed{SEED}-{CHUNK}-{number:04d}.npy"

    def _chunk(self, number: int, texts: Sequence[str]) -> Matrix:
        path = self._chunk_path(number)
        if path.is_file():
            found: Matrix = np.load(path)
            if len(found) == len(texts):
                return found
        vectors = self.embedder.embed(texts)  # sorted by length inside: little padding
        partial = path.with_suffix(".partial.npy")
        np.save(partial, vectors)
        os.replace(partial, path)
        return vectors

    def of(self, items: Sequence[corpus.Item]) -> Matrix:
        """Vectors of `items`, which must be corpus.memories(len(items)) (a prefix of it)."""
        parts: list[Matrix] = []
        chunks = (len(items) + CHUNK - 1) // CHUNK
        for number in range(chunks):
            start = number * CHUNK
            texts = [item.content for item in items[start : start + CHUNK]]
            path = self._chunk_path(number)
            if len(texts) < CHUNK:  # a partial last chunk: from its full chunk if cached
                whole = np.load(path)[: len(texts)] if path.is_file() else None
                parts.append(whole if whole is not None else self.embedder.embed(texts))
            else:
                cached = path.is_file()
                parts.append(self._chunk(number, texts))
                if not cached:
                    _log(f"[vectors] chunk {number + 1}/{chunks} encoded and cached")
        return np.concatenate(parts) if parts else np.zeros((0, 384), dtype=np.float32)

    def cached(self, n: int) -> int:
        """How many of the first `n` vectors are in the cache."""
        return sum(CHUNK for k in range(n // CHUNK) if self._chunk_path(k).is_file())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args(argv)
    vectors = CorpusVectors()
    _log(f"[vectors] {vectors.cached(args.n):,} of {args.n:,} cached in {vectors.dir}")
    vectors.of(corpus.memories(args.n))
    _log(f"[vectors] {vectors.cached(args.n):,} of {args.n:,} cached")
    return 0


if __name__ == "__main__":
    sys.exit(main())
