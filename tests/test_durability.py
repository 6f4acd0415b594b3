"""An acknowledged store survives `kill -9` of the server right after the response."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port, server

pytestmark = pytest.mark.slow


def test_acknowledged_store_survives_kill_9(tmp_path: Path, server_env: dict[str, str]) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v2"
    log = tmp_path / "server.log"
    with server(server_env, port, log) as process:
        stored = [
            httpx.post(
                f"{base}/memory/store",
                json={
                    "content": f"Durable fact {i}: the vault code is {1000 + i}",
                    "namespace": "d",
                },
                timeout=30,
            )
            for i in range(5)
        ]
        assert all(r.status_code == 200 for r in stored)
        # The whole process group dies at once: gunicorn master, worker, Milvus Lite.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    with server(server_env, port, log):
        for response in stored:
            memory = httpx.get(f"{base}/memory/{response.json()['id']}", timeout=30)
            assert memory.status_code == 200
        hits = httpx.post(
            f"{base}/memory/search",
            json={"query": "what is the vault code?", "namespace": "d", "top_k": 5},
            timeout=30,
        ).json()["memories"]
        assert {h["id"] for h in hits} == {r.json()["id"] for r in stored}
