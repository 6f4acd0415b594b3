"""Shared fixtures. The embedding model and the Milvus Lite file are built once per run."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Each run gets its own data directory before anything reads the settings.
_RUN_DIR = Path(tempfile.mkdtemp(prefix="sfm-test-"))
os.environ["SFM_DATA_DIR"] = str(_RUN_DIR)
os.environ.pop("SFM_CONFIG", None)

from somafractalmemory.conf import get_config  # noqa: E402

get_config.cache_clear()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: starts real server processes")


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses: the vector index outlives each test's SQL rollback."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def run_dir() -> Path:
    return _RUN_DIR


class Api:
    """Django test client speaking JSON to /api/v2."""

    def __init__(self) -> None:
        from django.test import Client

        self.client = Client()

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        import json

        url = path if path.startswith("/") and not path.startswith("/memory") else f"/api/v2{path}"
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["data"] = body if isinstance(body, str | bytes) else json.dumps(body)
            kwargs["content_type"] = "application/json"
        elif params:
            kwargs["data"] = params
        return getattr(self.client, method.lower())(url, **kwargs)

    def ok(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        response = self.call(method, path, body, **params)
        assert response.status_code == 200, response.content
        return response.json()

    def error(self, status: int, method: str, path: str, body: Any = None, **params: Any) -> str:
        response = self.call(method, path, body, **params)
        assert response.status_code == status, response.content
        payload = response.json()
        assert set(payload) == {"error"}
        assert payload["error"]["message"]
        return str(payload["error"]["code"])


@pytest.fixture
def api(db: None) -> Iterator[Api]:
    yield Api()
