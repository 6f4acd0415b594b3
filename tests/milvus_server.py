"""A real Milvus standalone server for the tests and benchmarks (PyPI `milvus`, 2.3.5).

`standalone()` starts one on free loopback ports with its data in a fresh directory, waits until
it answers, and stops it (SIGTERM, then SIGKILL) when the block ends, however it ends. Every
component listens and dials on 127.0.0.1 (by default they announce the machine's first external
address). A server left behind by a killed run holds other ports and another directory, so a
second run never collides with it; `python -m tests.milvus_server` runs one in the foreground.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMPONENTS = (
    "rootCoord",
    "proxy",
    "queryCoord",
    "queryNode",
    "indexNode",
    "dataCoord",
    "dataNode",
    "indexCoord",
)
READY_TIMEOUT = 180.0
FOR_TESTS = {"proxy.timeTickInterval": "20"}
"""The test runs' server: a Strong search waits for the proxy's time tick, 200 ms by default
(30 ms at 20, measured); the suite makes thousands. Benchmarks keep the default."""


@dataclass
class Standalone:
    """A running server: its gRPC URI, data directory and process."""

    uri: str
    data: Path
    process: subprocess.Popen[bytes]
    _server: Any

    @property
    def log(self) -> Path:
        return self.data / "logs" / "milvus-stderr.log"

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._server.server_proc = None
        self._server.stop()  # closes its log files

    def restart(self) -> None:
        """Start again on the same ports and data (after `kill` or `stop`)."""
        self.stop()
        # The same config file: the ports it names may be in TIME_WAIT, which the package's
        # own port check (a bind without SO_REUSEADDR) would refuse.
        config = self._server.config
        resolve = config.resolve
        config.resolve = lambda: None
        try:
            _start(self._server)
        finally:
            config.resolve = resolve
        self.process = self._server.server_proc
        _wait(self.uri, self)

    def healthy(self) -> bool:
        """Its own health check (what a supervisor polls): every component serving."""
        import urllib.request

        url = f"http://127.0.0.1:{self._server.webservice_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return b"OK" in response.read()
        except OSError:
            return False

    def suspend(self) -> None:
        """SIGSTOP: the server holds its connections and answers nothing (a stalled server)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(server: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server.start()


def _wait(uri: str, running: Standalone) -> None:
    from pymilvus import MilvusClient

    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if running.process.poll() is not None:
            raise RuntimeError(f"Milvus server exited: {running.log.read_text()[-3000:]}")
        try:
            client = MilvusClient(uri=uri, timeout=3)
            client.list_collections()
            client.close()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Milvus server did not answer in {READY_TIMEOUT:.0f} s: "
                    f"{running.log.read_text()[-3000:]}"
                ) from None
            time.sleep(0.5)


@contextlib.contextmanager
def standalone(
    data: Path | None = None, extra: dict[str, str] | None = None
) -> Iterator[Standalone]:
    """A Milvus standalone server on free loopback ports; `extra` is milvus.yaml overrides."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from milvus import MilvusServer, MilvusServerConfig

    owned = data is None
    data = data or Path(tempfile.mkdtemp(prefix="sfm-milvus-"))
    server = MilvusServer(MilvusServerConfig(), wait_for_started=False)
    server.set_base_dir(str(data))
    for component in COMPONENTS:
        server.config.set(f"{component}.ip", "127.0.0.1")
    for key, value in (extra or {}).items():
        server.config.set(key, value)
    # The embedded etcd's peer port is not configurable through the package (2380 for every
    # server): its own config file gives it free client and peer ports.
    client, peer = _free_port(), _free_port()
    etcd = data / "embed-etcd.yaml"
    data.mkdir(parents=True, exist_ok=True)
    etcd.write_text(
        f"name: sfm\ndata-dir: {data / 'data' / 'etcd.data'}\n"
        f"listen-client-urls: http://127.0.0.1:{client}\n"
        f"advertise-client-urls: http://127.0.0.1:{client}\n"
        f"listen-peer-urls: http://127.0.0.1:{peer}\n"
        f"initial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
        f"initial-cluster: sfm=http://127.0.0.1:{peer}\n"
    )
    server.config.update(etcd_port=client)
    server.config.template_text = server.config.template_text.replace(
        "\n  use:\n    embed: true", f"\n  config:\n    path: {etcd}\n  use:\n    embed: true", 1
    )
    # MilvusServer picks free ports (the proxy's from 19530 up) and gives the process its own
    # run directory (pid file) under `data`.
    _start(server)
    running = Standalone(f"http://127.0.0.1:{server.listen_port}", data, server.server_proc, server)
    try:
        _wait(running.uri, running)
        yield running
    finally:
        running.stop()
        if owned:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    with standalone(Path(sys.argv[1]) if len(sys.argv) > 1 else None) as found:
        print(f"Milvus server at {found.uri} (data {found.data}, pid {os.getpid()})", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            found.process.wait()


def valid_name(prefix: str) -> str:
    """A fresh Milvus database name (letters, digits, underscores)."""
    import uuid

    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def create_database(uri: str, prefix: str = "sfm") -> str:
    from pymilvus import MilvusClient

    name = valid_name(prefix)
    client = MilvusClient(uri=uri, timeout=30)
    try:
        client.create_database(name)
    finally:
        client.close()
    return name


def drop_database(uri: str, name: str) -> None:
    """Drop `name` and its collections (Milvus drops only empty databases)."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri, db_name=name, timeout=30)
    try:
        for collection in client.list_collections():
            client.drop_collection(collection)
        client.drop_database(name)
    finally:
        client.close()
