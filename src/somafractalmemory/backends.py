"""The one factory: the only module that names concrete implementations.

Implementations are built once per process (models and clients are expensive) and shared by
all request threads; `reset()` drops them (tests, `sfm` commands that swap settings).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

from somafractalmemory.conf import Config, get_config
from somafractalmemory.embedding.base import Embedder
from somafractalmemory.errors import ConfigError, VectorDimMismatch
from somafractalmemory.summaries.base import Summarizer
from somafractalmemory.vectors.base import VectorIndex


class LiteFileServer(Protocol):
    uri: str

    def running(self) -> bool: ...
    def stop(self) -> None: ...


_lock = threading.RLock()
_embedder: Embedder | None = None
_index: VectorIndex | None = None
_summarizer: Summarizer | None = None


def build_embedder(config: Config) -> Embedder:
    if config.embedder == "http":
        from somafractalmemory.embedding.http import HttpEmbedder

        assert config.embedding_url is not None  # checked by load_config
        return HttpEmbedder(
            config.embedding_url,
            config.embedding_model,
            api_key=config.embedding_api_key,
            batch_size=config.embedding_batch_size,
            timeout=config.embedding_timeout,
        )
    if config.embedding_runtime == "onnx":
        from somafractalmemory.embedding.onnx import OnnxEmbedder

        return OnnxEmbedder(
            config.embedding_model,
            cache_dir=config.effective_model_cache_dir,
            batch_size=config.embedding_batch_size,
            int8_queries=config.query_encoder == "int8",
        )
    from somafractalmemory.embedding.local import LocalEmbedder

    return LocalEmbedder(
        config.embedding_model,
        cache_dir=config.effective_model_cache_dir,
        batch_size=config.embedding_batch_size,
    )


def check_dimension(config: Config, embedder: Embedder) -> int:
    """The model's dimension, which `vector_dim` (when set) must equal."""
    dim = embedder.dim
    if config.vector_dim is not None and config.vector_dim != dim:
        raise VectorDimMismatch(
            f"vector_dim is {config.vector_dim} in the settings, but the embedding model "
            f"{embedder.name!r} produces {dim}-dimensional vectors: set vector_dim to {dim} "
            "(or unset it), or configure a model of that dimension",
            details={"configured": config.vector_dim, "model": embedder.name, "model_dim": dim},
        )
    return dim


def build_index(config: Config, embedder: Embedder) -> VectorIndex:
    dim = check_dimension(config, embedder)
    if config.local_index:
        from somafractalmemory.vectors.local import LocalIndex

        return LocalIndex(
            config.data_dir / "vectors",
            model=embedder.name,
            dim=dim,
            ef=config.local_search_ef,
            predecessor=Path(config.effective_milvus_uri),
        )
    from somafractalmemory.vectors.clock import RedisClock
    from somafractalmemory.vectors.milvus import MilvusIndex

    uri = config.effective_milvus_uri
    if not config.milvus_server:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    return MilvusIndex(
        uri,
        model=embedder.name,
        dim=dim,
        token=config.milvus_token,
        db_name=config.milvus_db,
        timeout=config.milvus_timeout,
        index_type=config.milvus_index_type,
        ef=config.milvus_search_ef,
        consistency=consistency_of(config),
        clock=RedisClock(config.redis_url) if config.redis_url else None,
    )


def consistency_of(config: Config) -> str:
    """`auto`: Session on a Milvus server whose workers share write times through Redis
    (vectors/clock.py), Strong otherwise (Milvus Lite; a server without Redis, whose other
    workers' writes a process could not wait for)."""
    if config.milvus_consistency != "auto":
        return config.milvus_consistency
    return "Session" if config.milvus_server and config.redis_url else "Strong"


def serve_lite_file(config: Config, host: str, port: int) -> LiteFileServer:
    """Serve the embedded Milvus Lite file over gRPC (see `sfm milvus-lite`)."""
    from somafractalmemory.vectors.milvus import LiteServer

    if config.milvus_server:
        raise ConfigError(
            "milvus_uri/milvus_host is set: the index is a Milvus server already, there is no "
            "Lite file to serve"
        )
    return LiteServer(Path(config.effective_milvus_uri), host, port)


def build_summarizer(config: Config) -> Summarizer:
    if config.summarizer == "llm":
        from somafractalmemory.summaries.llm import LlmSummarizer

        assert config.llm_url is not None  # checked by load_config
        return LlmSummarizer(
            config.llm_url, config.llm_model, api_key=config.llm_api_key, timeout=config.llm_timeout
        )
    from somafractalmemory.summaries.extractive import ExtractiveSummarizer

    return ExtractiveSummarizer()


def summarizer() -> Summarizer:
    global _summarizer
    with _lock:
        if _summarizer is None:
            _summarizer = build_summarizer(get_config())
        return _summarizer


def embedder() -> Embedder:
    global _embedder
    with _lock:
        if _embedder is None:
            _embedder = build_embedder(get_config())
        return _embedder


def vector_index() -> VectorIndex:
    global _index
    with _lock:
        if _index is None:
            _index = build_index(get_config(), embedder())
        return _index


def is_ready() -> dict[str, bool]:
    """Which shared components exist already (without building any)."""
    return {"embedder": _embedder is not None, "vector_index": _index is not None}


def reset() -> None:
    """Close and forget the shared components."""
    global _embedder, _index, _summarizer
    with _lock:
        _summarizer = None
        if _index is not None:
            _index.close()
        _index = None
        _embedder = None
