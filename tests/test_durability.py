"""An acknowledged store survives `kill -9` of the server right after the response."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(env: dict[str, str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "somafractalmemory.cli", "serve", "--port", str(port)]
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail(f"server did not become ready: {log.read_text()[-3000:]}")
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


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
