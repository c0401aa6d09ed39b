"""shared.healthcheck against real servers on 127.0.0.1: a GrpcServer and a small HTTP server."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from grpc_health.v1 import health_pb2
from pneumonia_proto.v1 import generator_pb2_grpc

from shared.grpc_service import GrpcServer, Service
from shared.healthcheck import check, main

SERVICE = "pneumonia.v1.GeneratorService"


@pytest.fixture(scope="module")
def grpc_server() -> Iterator[GrpcServer]:
    servicer = generator_pb2_grpc.GeneratorServiceServicer()  # health only: no RPC of it is called here
    server = GrpcServer(
        [Service(SERVICE, servicer, generator_pb2_grpc.add_GeneratorServiceServicer_to_server)],
        "127.0.0.1:0",
        callers=None,
    )
    server.start()
    yield server
    server.stop(grace=0)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(5)


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_command_exits_zero_for_a_serving_grpc_server(grpc_server: GrpcServer) -> None:
    """The exact command the Dockerfiles' HEALTHCHECK runs, as a process."""
    result = subprocess.run(
        [sys.executable, "-m", "shared.healthcheck", grpc_server.address], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SERVING" in result.stdout


def test_named_service_is_checked(grpc_server: GrpcServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([grpc_server.address, "--service", SERVICE]) == 0
    assert main([grpc_server.address, "--service", "pneumonia.v1.NoSuchService"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().out


def test_not_serving_is_unhealthy(grpc_server: GrpcServer) -> None:
    grpc_server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        healthy, found = check(grpc_server.address)
        assert not healthy
        assert "NOT_SERVING" in found
    finally:
        grpc_server.health.set("", health_pb2.HealthCheckResponse.SERVING)
    assert check(grpc_server.address)[0]


def test_nothing_listening_is_unhealthy() -> None:
    healthy, found = check(f"127.0.0.1:{unused_port()}", timeout=1)
    assert not healthy
    assert "UNAVAILABLE" in found or "DEADLINE_EXCEEDED" in found


def test_http_answers(http_base: str) -> None:
    assert check(f"{http_base}/healthz") == (True, f"{http_base}/healthz: HTTP 200")
    assert check(f"{http_base}/other") == (False, f"{http_base}/other: HTTP 503")
    assert main([f"http://127.0.0.1:{unused_port()}/healthz", "--timeout", "1"]) == 1


def test_target_takes_environment_variables(
    grpc_server: GrpcServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Dockerfiles' exec-form HEALTHCHECKs name the port variable; it is read from the environment."""
    monkeypatch.setenv("PNEUMONIA_TEST_PORT", str(grpc_server.port))
    assert main(["127.0.0.1:${PNEUMONIA_TEST_PORT}"]) == 0
    monkeypatch.delenv("PNEUMONIA_TEST_PORT")
    assert main(["127.0.0.1:${PNEUMONIA_TEST_PORT}"]) == 1
    assert "not set" in capsys.readouterr().out
