"""A real S3-protocol server on 127.0.0.1 for tests: a `minio` binary if one is on PATH, else moto's server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3TestServer:
    """An S3 server on 127.0.0.1:`port`; `start` and `stop` may be called repeatedly (data survives)."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    _server: Any = field(default=None, repr=False)  # a minio process or a ThreadedMotoServer

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        if shutil.which("minio"):
            env = {**os.environ, "MINIO_ROOT_USER": self.access_key, "MINIO_ROOT_PASSWORD": self.secret_key}
            self._server = subprocess.Popen(
                ["minio", "server", str(self.data_dir), "--address", self.endpoint, "--quiet"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self._wait_until_live()
        else:
            from moto.server import ThreadedMotoServer

            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()

    def _wait_until_live(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.endpoint}/minio/health/live", timeout=1):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"minio server on {self.endpoint} did not come up within {timeout} s")

    def stop(self) -> None:
        if isinstance(self._server, subprocess.Popen):
            self._server.terminate()
            self._server.wait(timeout=10)
        elif self._server is not None:
            self._server.stop()
        self._server = None


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3TestServer]:
    """One S3 server for the whole session, stopped at the end."""
    server = S3TestServer(tmp_path_factory.mktemp("s3-data"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
