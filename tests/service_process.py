"""A service started as its container starts it (`python -m services.<name>`), its gRPC health, and its JSON log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from shared.auth import authenticated_channel

ROOT = Path(__file__).resolve().parent.parent
TEST_CALLER = "test"
TEST_TOKEN = "test-token-" + "0123456789abcdef" * 2  # accepted by every service_process unless `env` says otherwise


@contextmanager
def service_process(name: str, env: dict[str, str], stop_timeout: float = 60) -> Iterator[subprocess.Popen]:
    """`python -m services.<name>` with `env` added to ours (and TEST_CALLER's token accepted, unless `env` sets
    PNEUMONIA_AUTH_TOKENS or PNEUMONIA_AUTH_DISABLED); leaving the block sends SIGTERM and expects exit code 0 within
    `stop_timeout` (the process is killed if anything fails)."""
    auth = (
        {}
        if {"PNEUMONIA_AUTH_TOKENS", "PNEUMONIA_AUTH_DISABLED"} & set(env)
        else {"PNEUMONIA_AUTH_TOKENS": f"{TEST_CALLER}={TEST_TOKEN}"}
    )
    process = subprocess.Popen(
        [sys.executable, "-m", f"services.{name}"],
        cwd=ROOT,
        env={**os.environ, **auth, **env},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=stop_timeout) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@contextmanager
def serving_channel(port: int, service_name: str, token: str | None = TEST_TOKEN) -> Iterator[grpc.Channel]:
    """A channel to 127.0.0.1:`port` whose calls carry `token`, once the server is up and its health check says
    `service_name` is SERVING."""
    with authenticated_channel(f"127.0.0.1:{port}", token) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=service_name), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        yield channel


def assert_health_and_reflection(channel: grpc.Channel, service_name: str) -> None:
    """Health answers SERVING for the service and for the server as a whole; reflection lists both services."""
    health = health_pb2_grpc.HealthStub(channel)
    for name in (service_name, ""):
        response = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert {service_name, "grpc.health.v1.Health"} <= set(services)


def json_log(process: subprocess.Popen) -> list[dict[str, Any]]:
    """The finished process's stderr, one JSON object per line (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in process.stderr.read().splitlines() if line.strip()]
